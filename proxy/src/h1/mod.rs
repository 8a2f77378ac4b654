//! HTTP/1.1 framing: strict head checks and the chunked coding.

pub mod chunked;
pub mod head;
