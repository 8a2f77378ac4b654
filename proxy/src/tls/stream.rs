//! A TLS connection over a monoio TCP stream, driven through rustls's own buffered API with
//! buffers the gateway owns: ciphertext is read by io_uring into `inbuf` and handed to rustls;
//! what rustls has to send is gathered into `out` and written in one operation.
//!
//! Plaintext reads copy once, from rustls's buffer into the caller's; plaintext writes are
//! encrypted by rustls and the records copied once into `out`. One task uses a stream at a time
//! (the HTTP/1 session and the upstream exchange do), so no state is shared.

use std::io::{self, BufRead, Write};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::Connection;

/// Ciphertext read at once: a full TLS record and its header.
const READ_CHUNK: usize = 16 * 1024 + 512;
/// Most plaintext or ciphertext rustls buffers for a connection.
const BUFFER_LIMIT: usize = 64 * 1024;

/// One TLS connection, client or server side.
pub struct TlsStream {
    tcp: TcpStream,
    conn: Connection,
    /// Ciphertext received; `inbuf[in_pos..]` is not yet handed to rustls.
    inbuf: Vec<u8>,
    in_pos: usize,
    /// Records to send (kept between writes for its capacity).
    out: Vec<u8>,
    /// The peer closed its side of the TCP connection.
    eof: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("fd", &std::os::fd::AsRawFd::as_raw_fd(&self.tcp)).finish()
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// A connection whose handshake is still to run ([`TlsStream::handshake`]); `received`:
    /// ciphertext already read from `tcp` and not given to `conn`.
    pub fn new(tcp: TcpStream, mut conn: Connection, received: Vec<u8>) -> TlsStream {
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        TlsStream { tcp, conn, inbuf: received, in_pos: 0, out: Vec::new(), eof: false }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The rustls state (negotiated protocol, peer certificates).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Runs the handshake to its end (the caller bounds it in time).
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.send_pending().await?;
                continue;
            }
            if !self.take_in().await? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed during the handshake"));
            }
        }
        // What the handshake left to send (the server's last flight, session tickets).
        self.send_pending().await
    }

    /// Hands received ciphertext to rustls while it takes more; `Ok(true)` when some was taken.
    /// A protocol error is answered with its alert (sent later by [`Self::send_pending`]).
    fn feed(&mut self) -> io::Result<bool> {
        let mut took = false;
        while self.in_pos < self.inbuf.len() && self.conn.wants_read() {
            let n = self.conn.read_tls(&mut &self.inbuf[self.in_pos..])?;
            self.in_pos += n;
            took |= n > 0;
            if let Err(e) = self.conn.process_new_packets() {
                return Err(invalid(e));
            }
            if n == 0 {
                break;
            }
        }
        if self.in_pos == self.inbuf.len() {
            self.inbuf.clear();
            self.in_pos = 0;
        }
        Ok(took)
    }

    /// Hands received ciphertext to rustls, or reads more when none waits. A failure sends the
    /// alert rustls queued for it first. `Ok(false)`: the peer's socket has ended.
    async fn take_in(&mut self) -> io::Result<bool> {
        let r = match self.feed() {
            Ok(true) => return Ok(true),
            Ok(false) if self.eof => return Ok(false),
            Ok(false) => self.receive().await,
            Err(e) => Err(e),
        };
        if r.is_err() {
            let _ = self.send_pending().await;
        }
        r.map(|()| true)
    }

    /// Reads more ciphertext from the socket; at its end, tells rustls.
    async fn receive(&mut self) -> io::Result<()> {
        if self.in_pos > 0 {
            self.inbuf.drain(..self.in_pos);
            self.in_pos = 0;
        }
        let mut buf = std::mem::take(&mut self.inbuf);
        buf.reserve(READ_CHUNK);
        let (len, cap) = (buf.len(), buf.capacity());
        let (r, slice) = self.tcp.read(buf.slice_mut(len..cap)).await;
        self.inbuf = slice.into_inner();
        if r? == 0 {
            self.eof = true;
            let _ = self.conn.read_tls(&mut &[][..]);
            self.conn.process_new_packets().map_err(invalid)?;
        }
        Ok(())
    }

    /// Writes every record rustls has queued (alerts included, also after an error).
    async fn send_pending(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.out)?;
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (r, mut out) = self.tcp.write_all(out).await;
        out.clear();
        self.out = out;
        r.map(|_| ())
    }

    /// Plaintext into `dst`: `Ok(0)` at the end of the stream (a clean close, or the peer's
    /// socket closed without one).
    async fn read_plain(&mut self, dst: *mut u8, room: usize) -> io::Result<usize> {
        loop {
            match self.conn.reader().fill_buf() {
                Ok(data) => {
                    let n = data.len().min(room);
                    // SAFETY: `dst` is valid for `room` bytes (the caller's buffer), and rustls's
                    // buffer cannot overlap it.
                    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, n) };
                    self.conn.reader().consume(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A client that closes its socket without close_notify has ended its stream;
                // an upstream that does may have had its answer cut short, so it is an error.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return if matches!(self.conn, Connection::Client(_)) { Err(e) } else { Ok(0) };
                }
                Err(e) => return Err(e),
            }
            if self.conn.wants_write() {
                // Answers to the peer's control records (a key update) go before waiting.
                self.send_pending().await?;
            }
            if !self.take_in().await? {
                return Ok(0);
            }
        }
    }

    /// Encrypts as much of `slices` as rustls takes and sends it; returns the plaintext bytes
    /// taken.
    async fn write_plain(&mut self, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        loop {
            let n = self.conn.writer().write_vectored(slices)?;
            self.send_pending().await?;
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Whether plaintext can be read without waiting (then, or once the socket is readable).
    pub async fn readable(&mut self) -> io::Result<()> {
        let ready = self.conn.process_new_packets().map_err(invalid)?.plaintext_bytes_to_read() > 0
            || self.in_pos < self.inbuf.len()
            || self.eof;
        if ready {
            return Ok(());
        }
        self.tcp.readable(false).await
    }

    /// Whether an idle connection is still fit for another request: reads what has arrived
    /// without waiting (a peer's session tickets are taken in); anything else (data, an
    /// alert, the end of the stream) means it is not.
    pub fn quiet(&mut self) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.tcp);
        let mut buf = [0u8; 4096];
        // A record cut short would come out in front of the next answer: not quiet.
        let mut records = Records::default();
        loop {
            // SAFETY: a valid socket descriptor owned by `self.tcp`, and a buffer on the stack.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                return records.whole() && matches!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
            }
            records.feed(&buf[..n as usize]);
            if n == 0 {
                return false;
            }
            self.inbuf.extend_from_slice(&buf[..n as usize]);
            if self.feed().is_err() {
                return false;
            }
            match self.conn.process_new_packets() {
                // Bytes that do not make a whole record would come out before the next answer.
                Ok(s) if s.plaintext_bytes_to_read() == 0 && !s.peer_has_closed() => {}
                _ => return false,
            }
        }
    }

    /// Sends `close_notify`, then ends the TCP stream's sending side.
    pub async fn close(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        let _ = self.send_pending().await;
        self.tcp.shutdown().await
    }
}

/// Walks TLS record boundaries over bytes as they arrive.
#[derive(Default)]
struct Records {
    head: [u8; 5],
    have: usize,
    left: usize,
}

impl Records {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                self.left = usize::from(u16::from_be_bytes([self.head[3], self.head[4]]));
            }
        }
    }

    /// No record is cut short.
    fn whole(&self) -> bool {
        self.have == 0 && self.left == 0
    }
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let (ptr, room) = (buf.write_ptr(), buf.bytes_total());
        match self.read_plain(ptr, room).await {
            Ok(n) => {
                // SAFETY: `n` bytes from the start of the buffer were written.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Into the first iovec with room: a short read is allowed.
        let (iov, n) = (buf.write_iovec_ptr(), buf.write_iovec_len());
        // SAFETY: the buffer owns `n` iovecs at `iov`.
        let first = (0..n).map(|i| unsafe { *iov.add(i) }).find(|v| v.iov_len > 0);
        let Some(v) = first else { return (Ok(0), buf) };
        let before: usize = (0..n)
            // SAFETY: as above.
            .map(|i| unsafe { *iov.add(i) })
            .take_while(|w| w.iov_base != v.iov_base)
            .map(|w| w.iov_len)
            .sum();
        match self.read_plain(v.iov_base.cast(), v.iov_len).await {
            Ok(got) => {
                // SAFETY: the iovecs before the first with room hold nothing, and `got` bytes
                // of it were written.
                unsafe { buf.set_init(before + got) };
                (Ok(got), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's initialised bytes, which it owns while this call holds it.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let r = self.write_plain(&[io::IoSlice::new(data)]).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (iov, n) = (buf.read_iovec_ptr(), buf.read_iovec_len());
        let mut slices: [io::IoSlice<'_>; 4] = [io::IoSlice::new(&[]); 4];
        let mut used = 0;
        for i in 0..n.min(slices.len()) {
            // SAFETY: the buffer owns `n` iovecs, each over initialised bytes it owns while
            // this call holds it.
            let v = unsafe { *iov.add(i) };
            slices[i] = io::IoSlice::new(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
            used += 1;
        }
        let r = self.write_plain(&slices[..used]).await;
        (r, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send_pending().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.close().await
    }
}
