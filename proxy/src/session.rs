//! A client connection's state between and during requests (HTTP/1 today): its stream, the
//! bytes received and not yet used, scratch for heads, who the peer is, and the record of the
//! request in progress. [`crate::conn`] runs the connection; [`crate::forward`] runs each
//! request on it.

use std::net::SocketAddr;

use monoio::time::Instant;

use crate::record::{Record, RequestText};
use crate::stream::Stream;

/// A client connection's state between requests.
pub struct Conn {
    pub stream: Stream,
    pub peer: SocketAddr,
    /// Bytes received and not yet used (the start of the next request, when pipelined).
    pub rbuf: Vec<u8>,
    /// Scratch for serialising heads.
    pub out: Vec<u8>,
    /// The client address as text, made once per connection.
    pub peer_ip: String,
    /// The peer is a trusted proxy: its `X-Forwarded-For` names the client.
    pub trusted: bool,
    /// When the first byte of the next request's head arrived.
    pub first_byte: Option<Instant>,
    /// The current request's record.
    pub rec: Record,
    /// The current request's text for the access log.
    pub text: RequestText,
}

impl Conn {
    /// Drops the first `n` received bytes.
    pub fn consume(&mut self, n: usize) {
        if n >= self.rbuf.len() {
            self.rbuf.clear();
        } else {
            self.rbuf.copy_within(n.., 0);
            self.rbuf.truncate(self.rbuf.len() - n);
        }
    }
}
