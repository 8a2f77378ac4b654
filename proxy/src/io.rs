//! Socket helpers over monoio's ownership-passing buffers, each bounded by a deadline.
//!
//! Hot path. When a deadline fires, the in-flight operation is dropped together with the
//! buffer it owned; callers close the connection then, so a fresh empty buffer is returned.

use std::io;
use std::ops::Range;
use std::time::Duration;

use crate::stream::Stream;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::time::Instant;

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// Reads more bytes after `buf`'s content, first making room for at least `want` bytes.
pub async fn read_more(
    s: &mut Stream,
    mut buf: Vec<u8>,
    want: usize,
    deadline: Instant,
) -> (io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    match monoio::time::timeout_at(deadline, s.read(buf.slice_mut(len..cap))).await {
        Ok((r, slice)) => (r, slice.into_inner()),
        Err(_) => (Err(timed_out()), Vec::new()),
    }
}

/// Writes `buf[range]` fully.
pub async fn write_range(
    s: &mut Stream,
    buf: Vec<u8>,
    range: Range<usize>,
    timeout: Duration,
) -> (io::Result<()>, Vec<u8>) {
    if range.is_empty() {
        return (Ok(()), buf);
    }
    match monoio::time::timeout(timeout, s.write_all(buf.slice(range))).await {
        Ok((r, slice)) => (r.map(|_| ()), slice.into_inner()),
        Err(_) => (Err(timed_out()), Vec::new()),
    }
}

/// Writes all of `buf` with no deadline: only for writes that cannot wait on the peer.
pub async fn write_all_untimed(s: &mut Stream, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    if buf.is_empty() {
        return (Ok(()), buf);
    }
    let (r, buf) = s.write_all(buf).await;
    (r.map(|_| ()), buf)
}

/// Writes all of `buf`.
pub async fn write_all(s: &mut Stream, buf: Vec<u8>, timeout: Duration) -> (io::Result<()>, Vec<u8>) {
    let len = buf.len();
    write_range(s, buf, 0..len, timeout).await
}

/// Closes a connection after an error answer without destroying that answer: stops sending,
/// then reads and discards what the client still sends (bounded in bytes and time), so the
/// kernel does not reset the connection over unread data before the client reads the answer.
pub async fn linger(s: &mut Stream) {
    let _ = monoio::io::AsyncWriteRent::shutdown(s).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut discarded = 0;
    while discarded < 1024 * 1024 {
        buf.clear();
        let (r, b) = read_more(s, buf, 16 * 1024, deadline).await;
        buf = b;
        match r {
            Ok(n) if n > 0 => discarded += n,
            _ => return,
        }
    }
}
