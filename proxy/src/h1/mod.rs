//! The HTTP/1.1 codec, without I/O: request and response heads parsed and checked, body framing
//! (one set of rules for both directions), the request target and its canonical path, the
//! chunked coding, and the writers of heads and chunks. Its errors are its own
//! ([`head::HeadError`], [`framing::FramingError`], [`chunked::ChunkError`]).

pub mod chunked;
pub mod framing;
pub mod head;
pub mod path;
pub mod request;
pub mod response;
pub mod write;
