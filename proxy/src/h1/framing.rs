//! Body framing (RFC 9112 section 6): which of `Transfer-Encoding` and `Content-Length` decides
//! where a message body ends. The same rules read requests from clients and responses from
//! upstreams; where the two directions differ, the difference is named here.
//!
//! Sans I/O; hot path, allocation-free.

use super::head::{parse_content_length, BodyKind};

/// Which direction a message travels: the rules differ in a few places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A client's request: refused on any doubt (duplicated `Content-Length` even when equal,
    /// a transfer coding other than `chunked` alone).
    Request,
    /// An upstream's response: equal duplicated lengths pass; codings before `chunked` are
    /// kept; a body without `chunked` last runs until the connection closes.
    Response,
}

/// The framing fields of one message head, gathered field by field.
#[derive(Debug, Default, Clone, Copy)]
pub struct FramingFields<'h> {
    content_length: Option<u64>,
    transfer_encoding: Option<&'h [u8]>,
}

/// A body's framing, with the transfer codings applied before `chunked` (responses only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing<'h> {
    pub body: BodyKind,
    /// Codings other than the chunked framing (`gzip` of `gzip, chunked`): they go on to the
    /// client with the body.
    pub codings: &'h [u8],
    /// Whether a `Transfer-Encoding` was present.
    pub has_transfer_encoding: bool,
}

/// Why framing fields were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Malformed or contradictory (400 on a request, 502 on a response).
    Bad(&'static str),
    /// Well-formed but not supported (501 on a request).
    Unsupported(&'static str),
}

impl<'h> FramingFields<'h> {
    /// Adds a `Content-Length` field.
    pub fn content_length(&mut self, v: &[u8], side: Side) -> Result<(), FramingError> {
        let n = parse_content_length(v).ok_or(FramingError::Bad("invalid Content-Length"))?;
        match (self.content_length, side) {
            (Some(_), Side::Request) => return Err(FramingError::Bad("more than one Content-Length")),
            (Some(prev), Side::Response) if prev != n => {
                return Err(FramingError::Bad("conflicting Content-Length values"))
            }
            _ => {}
        }
        self.content_length = Some(n);
        Ok(())
    }

    /// Adds a `Transfer-Encoding` field.
    pub fn transfer_encoding(&mut self, v: &'h [u8]) -> Result<(), FramingError> {
        if self.transfer_encoding.is_some() {
            return Err(FramingError::Bad("more than one Transfer-Encoding"));
        }
        self.transfer_encoding = Some(v);
        Ok(())
    }

    /// The framing these fields give. `http10`: the message is HTTP/1.0 (a request of which may
    /// not use transfer codings).
    pub fn framing(&self, side: Side, http10: bool) -> Result<Framing<'h>, FramingError> {
        let mut f = Framing { body: BodyKind::None, codings: b"", has_transfer_encoding: false };
        match (self.transfer_encoding, self.content_length) {
            (Some(_), Some(_)) => return Err(FramingError::Bad("both Transfer-Encoding and Content-Length")),
            (Some(_), None) if side == Side::Request && http10 => {
                return Err(FramingError::Bad("Transfer-Encoding in an HTTP/1.0 request"))
            }
            (Some(v), None) => {
                f.has_transfer_encoding = true;
                if side == Side::Request {
                    // A request body in any coding but chunked alone is not accepted.
                    if !v.eq_ignore_ascii_case(b"chunked") {
                        return Err(FramingError::Unsupported("only Transfer-Encoding: chunked is supported"));
                    }
                    f.body = BodyKind::Chunked;
                    return Ok(f);
                }
                let (others, chunked) = split_codings(v)?;
                f.codings = others;
                f.body = if chunked { BodyKind::Chunked } else { BodyKind::UntilClose };
            }
            (None, Some(n)) => f.body = BodyKind::Length(n),
            (None, None) => {
                f.body = match side {
                    Side::Request => BodyKind::None,
                    Side::Response => BodyKind::UntilClose,
                }
            }
        }
        Ok(f)
    }
}

/// Splits a Transfer-Encoding into the codings before the chunked framing and whether it ends
/// with `chunked`. `chunked` anywhere but last is malformed; without `chunked` last, the whole
/// value is returned as the codings.
pub fn split_codings(v: &[u8]) -> Result<(&[u8], bool), FramingError> {
    let v = v.trim_ascii();
    let (init, last) = match v.iter().rposition(|b| *b == b',') {
        Some(i) => (v[..i].trim_ascii(), v[i + 1..].trim_ascii()),
        None => (&b""[..], v),
    };
    if init.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")) {
        return Err(FramingError::Bad("chunked transfer coding not applied last"));
    }
    if init.split(|b| *b == b',').any(|t| t.trim_ascii().is_empty()) && !init.is_empty() || last.is_empty() {
        return Err(FramingError::Bad("malformed Transfer-Encoding"));
    }
    if last.eq_ignore_ascii_case(b"chunked") {
        Ok((init, true))
    } else {
        Ok((v, false))
    }
}

/// The transfer codings (besides chunked) a client's `TE` value accepts, as bits; a coding
/// with `q=0` is refused.
pub fn accepted_codings(v: &[u8]) -> u8 {
    v.split(|b| *b == b',').fold(0, |acc, item| {
        let mut parts = item.split(|b| *b == b';');
        let bit = coding_bit(parts.next().unwrap_or(b"").trim_ascii());
        let refused = parts.any(|p| {
            let p = p.trim_ascii();
            p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q=") && p[2..].iter().all(|b| matches!(b, b'0' | b'.'))
        });
        if refused {
            acc
        } else {
            acc | bit
        }
    })
}

/// The bit of a transfer coding name (0: one the proxy does not know).
pub fn coding_bit(name: &[u8]) -> u8 {
    if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
        1
    } else if name.eq_ignore_ascii_case(b"deflate") {
        2
    } else if name.eq_ignore_ascii_case(b"compress") || name.eq_ignore_ascii_case(b"x-compress") {
        4
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn te_values() {
        assert_eq!(accepted_codings(b"gzip"), 1);
        assert_eq!(accepted_codings(b"trailers, deflate;q=0.5, GZIP"), 3);
        assert_eq!(accepted_codings(b"gzip;q=0, compress"), 4);
        assert_eq!(accepted_codings(b"trailers"), 0);
    }

    #[test]
    fn transfer_codings() {
        assert_eq!(split_codings(b"chunked").unwrap(), (&b""[..], true));
        assert_eq!(split_codings(b"gzip, chunked").unwrap(), (&b"gzip"[..], true));
        assert_eq!(split_codings(b"gzip ,  deflate ,Chunked").unwrap(), (&b"gzip ,  deflate"[..], true));
        assert_eq!(split_codings(b"gzip").unwrap(), (&b"gzip"[..], false));
        assert!(split_codings(b"chunked, gzip").is_err());
        assert!(split_codings(b"gzip,,chunked").is_err());
        assert!(split_codings(b"gzip, ").is_err());
    }

    fn framing(side: Side, cl: &[&str], te: &[&str], http10: bool) -> Result<Framing<'static>, FramingError> {
        let mut f = FramingFields::default();
        for v in cl {
            f.content_length(v.as_bytes(), side)?;
        }
        for v in te {
            f.transfer_encoding(Box::leak(v.as_bytes().to_vec().into_boxed_slice()))?;
        }
        f.framing(side, http10)
    }

    #[test]
    fn one_set_of_rules_for_both_directions() {
        use BodyKind::*;
        let body = |r: Result<Framing<'_>, FramingError>| r.map(|f| f.body);
        // Shared: both fields, two Transfer-Encodings, chunked not last.
        for side in [Side::Request, Side::Response] {
            assert!(framing(side, &["5"], &["chunked"], false).is_err());
            assert!(framing(side, &[], &["chunked", "chunked"], false).is_err());
            assert!(framing(side, &[], &["chunked, gzip"], false).is_err());
            assert!(framing(side, &[], &["chunked, chunked"], false).is_err());
            assert!(framing(side, &["-1"], &[], false).is_err());
            assert_eq!(body(framing(side, &["7"], &[], false)), Ok(Length(7)));
            assert_eq!(body(framing(side, &[], &["Chunked"], false)), Ok(Chunked));
        }
        // Where the directions differ.
        assert!(framing(Side::Request, &["5", "5"], &[], false).is_err());
        assert_eq!(body(framing(Side::Response, &["5", "5"], &[], false)), Ok(Length(5)));
        assert!(framing(Side::Response, &["5", "6"], &[], false).is_err());
        assert_eq!(
            framing(Side::Request, &[], &["gzip, chunked"], false),
            Err(FramingError::Unsupported("only Transfer-Encoding: chunked is supported"))
        );
        assert_eq!(framing(Side::Response, &[], &["gzip, chunked"], false).unwrap().codings, b"gzip");
        assert_eq!(body(framing(Side::Response, &[], &["gzip"], false)), Ok(UntilClose));
        assert!(framing(Side::Request, &[], &["chunked"], true).is_err());
        assert_eq!(body(framing(Side::Request, &[], &[], false)), Ok(None));
        assert_eq!(body(framing(Side::Response, &[], &[], false)), Ok(UntilClose));
    }
}
