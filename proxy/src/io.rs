//! Socket helpers over monoio's ownership-passing buffers, each bounded by a deadline.
//!
//! Hot path. When a deadline fires, the in-flight operation is dropped together with the
//! buffer it owned; callers close the connection then, so a fresh empty buffer is returned.

use std::io;
use std::ops::Range;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// Reads more bytes after `buf`'s content, first making room for at least `want` bytes.
pub async fn read_more(
    s: &mut TcpStream,
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
    s: &mut TcpStream,
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
pub async fn write_all_untimed(s: &mut TcpStream, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    if buf.is_empty() {
        return (Ok(()), buf);
    }
    let (r, buf) = s.write_all(buf).await;
    (r.map(|_| ()), buf)
}

/// Writes all of `buf`.
pub async fn write_all(s: &mut TcpStream, buf: Vec<u8>, timeout: Duration) -> (io::Result<()>, Vec<u8>) {
    let len = buf.len();
    write_range(s, buf, 0..len, timeout).await
}

/// Closes a connection after an error answer without destroying that answer: stops sending,
/// then reads and discards what the client still sends (bounded in bytes and time), so the
/// kernel does not reset the connection over unread data before the client reads the answer.
pub async fn linger(s: &mut TcpStream) {
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

/// Appends a chunk of the chunked coding (`size CRLF data CRLF`) to `out`.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in lower-case hex.
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut v = n;
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Appends `n` in decimal.
pub fn push_dec(out: &mut Vec<u8>, n: u64) {
    let mut tmp = [0u8; 20];
    out.extend_from_slice(format_dec(n, &mut tmp));
}

/// `n` in decimal, written at the end of `buf`: two digits per step from a table.
pub fn format_dec(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut i = buf.len();
    let mut v = n;
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formatting() {
        for n in [0u64, 7, 10, 99, 100, 101, 999, 1000, 65_536, 1_000_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_dec(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn numbers() {
        let mut v = Vec::new();
        push_hex(&mut v, 0);
        v.push(b' ');
        push_hex(&mut v, 0x1a2b);
        v.push(b' ');
        push_dec(&mut v, 0);
        v.push(b' ');
        push_dec(&mut v, u64::MAX);
        assert_eq!(v, b"0 1a2b 0 18446744073709551615");
        let mut c = Vec::new();
        encode_chunk(&mut c, b"hello");
        encode_chunk(&mut c, b"");
        assert_eq!(c, b"5\r\nhello\r\n");
    }
}
