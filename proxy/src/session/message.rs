//! What passes through a session, whatever its protocol: how long an answer's body is, what
//! goes with its head, pieces of a request body, and how waiting for a request head ended.

use ringway_policy::ResponseExtras;

use crate::respond::ProxyError;

/// How long the body of an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// No body (an answer to HEAD, a 204 or 304): framing fields the head's list kept describe
    /// the resource, not this message.
    None,
    Known(u64),
    /// Streamed until it ends.
    Unknown,
}

/// What goes with an answer's head besides its fields.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub body: BodyLen,
    /// Transfer codings the body already carries (they go on to the client when it accepts
    /// them; HTTP/1 only).
    pub codings: &'a [u8],
    /// Numeric fields the policies add.
    pub extras: Option<&'a ResponseExtras>,
    /// `Age`, for a stored response.
    pub age: Option<u64>,
    /// End the connection after this answer.
    pub close: bool,
}

impl<'a> Answer<'a> {
    pub fn new(body: BodyLen, close: bool) -> Self {
        Answer { body, codings: b"", extras: None, age: None, close }
    }
}

/// A piece of a request body, decoded from the client's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Data(&'a [u8]),
    /// The body ended (after all its data).
    End,
}

/// The outcome of waiting for a request head.
pub enum HeadRead {
    /// A complete head of this many bytes is ready.
    Ready(usize),
    /// The connection ended (or is idle while draining): close quietly.
    Closed,
    /// Answer with this error and close.
    Fail(ProxyError),
}

/// What a request's head said about how it may be answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked {
    /// An HTTP/1.0 client (HTTP/1 only).
    pub http10: bool,
    /// Transfer codings the client accepts besides chunked (`TE`, as bits; HTTP/1 only).
    pub te_accepts: u8,
    /// The request was a HEAD: answers carry no body.
    pub head_only: bool,
}
