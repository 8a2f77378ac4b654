//! HTTP/1.1 framing: strict head checks, the request target and its canonical path, and the
//! chunked coding.

pub mod chunked;
pub mod head;
pub mod path;
