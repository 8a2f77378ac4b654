//! A strict, incremental decoder for the chunked transfer coding (RFC 9112 section 7.1).
//!
//! Hot path: runs over every byte of a chunked body's framing (not its data).

use std::ops::Range;

/// Longest chunk-size line (size, extensions, CRLF) accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted (they are dropped, not forwarded).
const MAX_TRAILERS: usize = 16 * 1024;

/// What the decoder found next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Body data at this range of the input.
    Data(Range<usize>),
    /// The input is used up; feed more.
    NeedMore,
    /// The body ended (after the trailer section); the cursor points past it.
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed chunk size")]
    BadSize,
    #[error("chunk size overflows")]
    Overflow,
    #[error("malformed chunk extension")]
    BadExtension,
    #[error("chunk data not followed by CRLF")]
    BadDataEnd,
    #[error("bare CR or LF in chunked framing")]
    BadLineEnding,
    #[error("chunk framing line too long")]
    LineTooLong,
    #[error("malformed or oversized trailer section")]
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeStart,
    Size,
    /// White space after the size: only a ';' may follow.
    SizeWs,
    Ext,
    /// Inside a quoted-string extension value.
    ExtQuoted,
    ExtQuotedEscape,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Incremental chunked-body decoder.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line: usize,
    trailer_bytes: usize,
    /// The trailer section's bytes, when asked to keep them (`keep_trailers`).
    trailers: Option<Vec<u8>>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self { state: State::SizeStart, size: 0, digits: 0, line: 0, trailer_bytes: 0, trailers: None }
    }

    /// A decoder that keeps the trailer section's lines (`name: value\r\n` each) for
    /// [`ChunkedDecoder::take_trailers`].
    pub fn keep_trailers() -> Self {
        Self { trailers: Some(Vec::new()), ..Self::new() }
    }

    /// The trailer lines kept so far (empty when there were none, or none were kept).
    pub fn take_trailers(&mut self) -> Vec<u8> {
        self.trailers.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input[*pos..]`, advancing `pos`.
    pub fn decode(&mut self, input: &[u8], pos: &mut usize) -> Result<Chunk, ChunkError> {
        // A finished body takes nothing more: what follows belongs to the next message.
        if self.state == State::Done {
            return Ok(Chunk::Done);
        }
        while *pos < input.len() {
            if self.state == State::Data {
                let avail = (input.len() - *pos) as u64;
                let take = avail.min(self.size) as usize;
                let start = *pos;
                *pos += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Chunk::Data(start..start + take));
            }
            let b = input[*pos];
            *pos += 1;
            self.step(b)?;
            if self.state == State::Done {
                return Ok(Chunk::Done);
            }
        }
        Ok(if self.state == State::Done { Chunk::Done } else { Chunk::NeedMore })
    }

    fn line_byte(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }

    fn end_size_line(&mut self) {
        self.line = 0;
        self.digits = 0;
        self.state = if self.size == 0 { State::TrailerStart } else { State::Data };
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        match self.state {
            SizeStart | Size => {
                self.line_byte()?;
                if let Some(d) = (b as char).to_digit(16) {
                    self.digits += 1;
                    if self.digits > 16 {
                        return Err(ChunkError::Overflow);
                    }
                    self.size = self.size.checked_mul(16).ok_or(ChunkError::Overflow)? | u64::from(d);
                    self.state = Size;
                } else if self.state == SizeStart {
                    return Err(ChunkError::BadSize);
                } else {
                    match b {
                        b'\r' => self.state = SizeLf,
                        b';' => self.state = Ext,
                        b' ' | b'\t' => self.state = SizeWs,
                        b'\n' => return Err(ChunkError::BadLineEnding),
                        _ => return Err(ChunkError::BadSize),
                    }
                }
            }
            SizeWs => {
                self.line_byte()?;
                match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = Ext,
                    _ => return Err(ChunkError::BadExtension),
                }
            }
            Ext => {
                self.line_byte()?;
                match b {
                    b'\r' => self.state = SizeLf,
                    b'"' => self.state = ExtQuoted,
                    b'\n' => return Err(ChunkError::BadLineEnding),
                    b'\t' | b' '..=b'~' => {}
                    _ => return Err(ChunkError::BadExtension),
                }
            }
            ExtQuoted => {
                self.line_byte()?;
                match b {
                    b'"' => self.state = Ext,
                    b'\\' => self.state = ExtQuotedEscape,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                    _ => return Err(ChunkError::BadExtension),
                }
            }
            ExtQuotedEscape => {
                self.line_byte()?;
                match b {
                    b'\t' | b' '..=b'~' | 0x80..=0xff => self.state = ExtQuoted,
                    _ => return Err(ChunkError::BadExtension),
                }
            }
            SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                self.end_size_line();
            }
            Data => unreachable!("data is consumed in bulk by decode"),
            DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::BadDataEnd);
                }
                self.state = DataLf;
            }
            DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadDataEnd);
                }
                self.state = SizeStart;
            }
            TrailerStart => match b {
                b'\r' => self.state = EndLf,
                b'\n' => return Err(ChunkError::BadLineEnding),
                b' ' | b'\t' => return Err(ChunkError::BadTrailer),
                _ => {
                    self.trailer_bytes += 1;
                    if let Some(t) = self.trailers.as_mut() {
                        t.push(b);
                    }
                    self.state = TrailerLine;
                }
            },
            TrailerLine => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(ChunkError::BadTrailer);
                }
                match b {
                    b'\r' => self.state = TrailerLf,
                    b'\n' | 0 => return Err(ChunkError::BadTrailer),
                    _ => {}
                }
                if let Some(t) = self.trailers.as_mut() {
                    t.push(b);
                }
            }
            TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                if let Some(t) = self.trailers.as_mut() {
                    t.push(b);
                }
                self.state = TrailerStart;
            }
            EndLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                self.state = Done;
            }
            Done => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        // Feed one byte at a time to exercise every state boundary.
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for end in 1..=input.len() {
            let mut pos = end - 1;
            loop {
                match d.decode(&input[..end], &mut pos)? {
                    Chunk::Data(r) => out.extend_from_slice(&input[r]),
                    Chunk::NeedMore => break,
                    Chunk::Done => return Ok((out, pos)),
                }
            }
        }
        Err(ChunkError::BadSize)
    }

    #[test]
    fn valid_bodies() {
        let input = b"5\r\nhello\r\n6;a=b;c=\"x;y\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (b, used) = decode_all(input).unwrap();
        assert_eq!(b, b"hello world");
        assert_eq!(&input[used..], b"NEXT");
        assert_eq!(decode_all(b"000\r\n\r\n").unwrap().0, b"");
        assert_eq!(decode_all(b"A \t;ext\r\n0123456789\r\n0\r\n\r\n").unwrap().0, b"0123456789");
    }

    #[test]
    fn a_finished_body_takes_nothing_more() {
        let input = b"0\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::new();
        let mut pos = 0;
        assert_eq!(d.decode(input, &mut pos), Ok(Chunk::Done));
        assert_eq!(pos, 5);
        assert_eq!(d.decode(input, &mut pos), Ok(Chunk::Done));
        assert_eq!(pos, 5);
    }

    #[test]
    fn refuses_malformed_framing() {
        for bad in [
            &b"\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\n\n",
            b"0\r\nX: y\n\r\n",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(decode_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
