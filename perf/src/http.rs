//! HTTP/1.1 message framing shared by the origin (request bodies) and the load generator
//! (response bodies): how a body is delimited, and a sans-I/O decoder that walks a body through
//! whatever bytes have arrived so far.
//!
//! The harness only needs to find where a message ends, so body bytes are counted and dropped,
//! never copied.

use anyhow::{bail, Result};

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body runs until the peer closes the connection (responses only).
    UntilClose,
}

/// What the head of a message says about its body and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadInfo {
    /// Body delimitation.
    pub framing: Framing,
    /// Whether the connection may carry another message after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (requests only).
    pub expect_continue: bool,
}

/// Reads framing and connection headers common to requests and responses.
///
/// Rejects conflicting or duplicated framing headers, as a strict peer would.
fn scan_headers(headers: &[httparse::Header<'_>], http10: bool) -> Result<(Framing, HeadInfo)> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut keep_alive = !http10;
    let mut expect_continue = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value)?.trim();
            let value: u64 = text.parse()?;
            if length.is_some_and(|l| l != value) {
                bail!("conflicting Content-Length headers");
            }
            length = Some(value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let text = std::str::from_utf8(h.value)?;
            let last = text.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                bail!("unsupported Transfer-Encoding {text:?}");
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let text = std::str::from_utf8(h.value)?;
            for token in text.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if chunked && length.is_some() {
        bail!("both Content-Length and Transfer-Encoding: chunked");
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(0)) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::UntilClose,
    };
    let info = HeadInfo { framing, keep_alive, expect_continue };
    Ok((framing, info))
}

/// Framing of a request: a request without a length has no body.
pub fn request_head(req: &httparse::Request<'_, '_>) -> Result<HeadInfo> {
    let http10 = req.version == Some(0);
    let (framing, mut info) = scan_headers(req.headers, http10)?;
    if framing == Framing::UntilClose {
        info.framing = Framing::Empty;
    }
    Ok(info)
}

/// Framing of a response to a request that was not `HEAD`.
///
/// 1xx, 204 and 304 carry no body; a response with neither length nor chunking runs until
/// close, and then the connection cannot be reused.
pub fn response_head(resp: &httparse::Response<'_, '_>) -> Result<HeadInfo> {
    let http10 = resp.version == Some(0);
    let code = resp.code.unwrap_or(0);
    let (framing, mut info) = scan_headers(resp.headers, http10)?;
    if (100..200).contains(&code) || code == 204 || code == 304 {
        info.framing = Framing::Empty;
    } else if framing == Framing::UntilClose {
        info.keep_alive = false;
    }
    Ok(info)
}

/// Where a chunked body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size line (extensions ignored).
    Size { value: u64, digits: u32, in_ext: bool },
    /// Expecting the LF that ends the size line.
    SizeLf { value: u64 },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// In the trailer section, at the start of a line (an empty line ends the message).
    TrailerLineStart,
    /// In a trailer line, waiting for its LF.
    TrailerLine,
    /// Saw CR at the start of a trailer line; expecting the final LF.
    FinalLf,
    /// The whole body has been read.
    Done,
}

/// Walks a message body through incoming bytes without storing it.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    kind: DecoderKind,
    /// Body bytes seen so far (payload only, not chunk framing).
    pub payload: u64,
}

#[derive(Debug, Clone)]
enum DecoderKind {
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
    Done,
}

/// Largest chunk-size line digit count accepted (16 hex digits fill a u64).
const MAX_SIZE_DIGITS: u32 = 16;

impl BodyDecoder {
    /// A decoder for a body with the given framing.
    pub fn new(framing: Framing) -> Self {
        let kind = match framing {
            Framing::Empty => DecoderKind::Done,
            Framing::Length(n) => DecoderKind::Length(n),
            Framing::Chunked => DecoderKind::Chunked(ChunkState::Size { value: 0, digits: 0, in_ext: false }),
            Framing::UntilClose => DecoderKind::UntilClose,
        };
        BodyDecoder { kind, payload: 0 }
    }

    /// True once the body is complete.
    pub fn is_done(&self) -> bool {
        matches!(self.kind, DecoderKind::Done)
    }

    /// True if the body only ends when the peer closes.
    pub fn until_close(&self) -> bool {
        matches!(self.kind, DecoderKind::UntilClose)
    }

    /// Consumes as much of `data` as belongs to this body; returns how many bytes were used.
    ///
    /// Bytes after the end of the body (a pipelined next message) are left unconsumed.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize> {
        match &mut self.kind {
            DecoderKind::Done => Ok(0),
            DecoderKind::UntilClose => {
                self.payload += data.len() as u64;
                Ok(data.len())
            }
            DecoderKind::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                self.payload += take;
                if *left == 0 {
                    self.kind = DecoderKind::Done;
                }
                Ok(take as usize)
            }
            DecoderKind::Chunked(state) => {
                let mut state = *state;
                let used = feed_chunked(&mut state, data, &mut self.payload)?;
                self.kind = if state == ChunkState::Done { DecoderKind::Done } else { DecoderKind::Chunked(state) };
                Ok(used)
            }
        }
    }
}

/// Advances a chunked-body state machine over `data`; returns the bytes consumed.
fn feed_chunked(state: &mut ChunkState, data: &[u8], payload: &mut u64) -> Result<usize> {
    let mut i = 0;
    while i < data.len() {
        match *state {
            ChunkState::Done => break,
            ChunkState::Data(left) => {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                *payload += take;
                *state = if left == take { ChunkState::DataCr } else { ChunkState::Data(left - take) };
                continue;
            }
            _ => {}
        }
        let b = data[i];
        i += 1;
        *state = match *state {
            ChunkState::Size { value, digits, in_ext } => match b {
                b'\r' if digits > 0 => ChunkState::SizeLf { value },
                _ if in_ext => ChunkState::Size { value, digits, in_ext },
                b';' | b' ' | b'\t' if digits > 0 => ChunkState::Size { value, digits, in_ext: true },
                _ => {
                    let d = (b as char).to_digit(16).ok_or_else(|| anyhow::anyhow!("bad chunk size byte {b:#x}"))?;
                    if digits >= MAX_SIZE_DIGITS {
                        bail!("chunk size too long");
                    }
                    ChunkState::Size { value: value * 16 + u64::from(d), digits: digits + 1, in_ext: false }
                }
            },
            ChunkState::SizeLf { value } => match (b, value) {
                (b'\n', 0) => ChunkState::TrailerLineStart,
                (b'\n', n) => ChunkState::Data(n),
                _ => bail!("expected LF after chunk size"),
            },
            ChunkState::DataCr if b == b'\r' => ChunkState::DataLf,
            ChunkState::DataLf if b == b'\n' => ChunkState::Size { value: 0, digits: 0, in_ext: false },
            ChunkState::DataCr | ChunkState::DataLf => bail!("expected CRLF after chunk data"),
            ChunkState::TrailerLineStart if b == b'\r' => ChunkState::FinalLf,
            ChunkState::TrailerLineStart | ChunkState::TrailerLine if b == b'\n' => ChunkState::TrailerLineStart,
            ChunkState::TrailerLineStart | ChunkState::TrailerLine => ChunkState::TrailerLine,
            ChunkState::FinalLf if b == b'\n' => ChunkState::Done,
            ChunkState::FinalLf => bail!("expected LF ending the chunked body"),
            ChunkState::Data(_) | ChunkState::Done => unreachable!("handled above"),
        };
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, input: &[u8], step: usize) -> (BodyDecoder, usize) {
        let mut d = BodyDecoder::new(framing);
        let mut used = 0;
        while used < input.len() && !d.is_done() {
            let end = (used + step).min(input.len());
            let n = d.feed(&input[used..end]).expect("valid body");
            used += n;
            if n == 0 {
                break;
            }
        }
        (d, used)
    }

    #[test]
    fn chunked_body_in_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (d, used) = decode_all(Framing::Chunked, body, step);
            assert!(d.is_done(), "step {step}");
            assert_eq!(d.payload, 11);
            assert_eq!(&body[used..], b"NEXT");
        }
    }

    #[test]
    fn chunked_rejects_garbage() {
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"zz\r\n").is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"\r\n").is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"2\r\nabXY").is_err());
    }

    #[test]
    fn length_body_stops_at_boundary() {
        let (d, used) = decode_all(Framing::Length(4), b"abcdefg", 3);
        assert!(d.is_done());
        assert_eq!(used, 4);
    }

    #[test]
    fn response_framing_rules() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").unwrap();
        let info = response_head(&resp).unwrap();
        assert_eq!(info.framing, Framing::Length(3));
        assert!(info.keep_alive);

        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        let info = response_head(&resp).unwrap();
        assert_eq!(info.framing, Framing::UntilClose);
        assert!(!info.keep_alive);

        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(response_head(&resp).is_err());
    }

    #[test]
    fn request_without_length_has_no_body() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let info = request_head(&req).unwrap();
        assert_eq!(info.framing, Framing::Empty);
        assert!(!info.keep_alive);
    }
}
