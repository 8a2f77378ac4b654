//! A TCP connection with a read buffer, for ownership-passing monoio I/O.
//!
//! Unparsed bytes live in `buf[start..buf.len()]`; reads append after them. Message heads are
//! parsed in place and body bytes are walked through without copying.

use std::io;
use std::rc::Rc;

use anyhow::{anyhow, bail, Result};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::http::BodyDecoder;

/// Read buffer capacity; also the largest message head accepted.
pub const READ_BUF: usize = 64 * 1024;

/// Headers parsed per message at most.
pub const MAX_HEADERS: usize = 64;

/// A connection plus its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        Conn { stream, buf: Vec::with_capacity(READ_BUF), start: 0 }
    }

    /// Bytes received but not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` pending bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.start = 0;
            self.buf.clear();
        }
    }

    /// Reads more bytes from the socket; returns 0 at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.len() == self.buf.capacity() {
            if self.start == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "message head larger than the read buffer"));
            }
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        let buf = std::mem::take(&mut self.buf);
        let (res, slice) = self.stream.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        res
    }

    /// Waits for a complete head and parses it with `parse`, which returns `Ok(None)` while the
    /// head is incomplete and `Ok(Some((head_len, value)))` once it is whole.
    ///
    /// Returns `Ok(None)` if the peer closed cleanly before sending any byte of a new head.
    pub async fn read_head<T>(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, T)>>,
    ) -> Result<Option<T>> {
        loop {
            if !self.pending().is_empty() {
                if let Some((len, value)) = parse(self.pending())? {
                    self.consume(len);
                    return Ok(Some(value));
                }
            }
            let had = self.pending().len();
            if self.fill().await? == 0 {
                if had == 0 {
                    return Ok(None);
                }
                bail!("connection closed inside a message head");
            }
        }
    }

    /// Reads and discards a body; returns the payload size. A body delimited by close ends at
    /// end of stream; any other body cut short is an error.
    pub async fn skip_body(&mut self, mut decoder: BodyDecoder) -> Result<u64> {
        loop {
            if !self.pending().is_empty() {
                let used = decoder.feed(self.pending())?;
                self.consume(used);
            }
            if decoder.is_done() {
                return Ok(decoder.payload);
            }
            if self.fill().await? == 0 {
                if decoder.until_close() {
                    return Ok(decoder.payload);
                }
                return Err(anyhow!("connection closed inside a body"));
            }
        }
    }

    /// Writes all of a shared buffer.
    pub async fn write_all(&mut self, data: Rc<Vec<u8>>) -> io::Result<()> {
        let (res, _) = self.stream.write_all(data).await;
        res.map(|_| ())
    }
}
