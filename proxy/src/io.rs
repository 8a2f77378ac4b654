//! Socket helpers over monoio's ownership-passing buffers, each bounded by a deadline.
//!
//! Hot path. When a deadline fires, the in-flight operation is dropped together with the
//! buffer it owned; callers close the connection then, so a fresh empty buffer is returned.

use std::io;
use std::ops::Range;
use std::time::Duration;

use crate::stream::Stream;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
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

/// Two owned buffers written as one (`writev`): `a`, then `b[range]`, with no copy. The iovec
/// pair lives on the heap (`iov`), so its address stays put while the runtime owns the value.
pub struct Pair {
    a: Vec<u8>,
    b: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
    /// The first iovec not yet written in full.
    first: usize,
}

impl Pair {
    /// `iov` is scratch to reuse (its contents are overwritten).
    pub fn new(a: Vec<u8>, b: Vec<u8>, range: Range<usize>, mut iov: Box<[libc::iovec; 2]>) -> Pair {
        assert!(range.start <= range.end && range.end <= b.len());
        iov[0] = libc::iovec { iov_base: a.as_ptr() as *mut libc::c_void, iov_len: a.len() };
        // SAFETY: `range` is within `b` (checked above). The buffers are private: nothing can
        // reallocate them while the iovecs point into them.
        let start = unsafe { b.as_ptr().add(range.start) };
        iov[1] = libc::iovec { iov_base: start as *mut libc::c_void, iov_len: range.len() };
        Pair { a, b, iov, first: 0 }
    }

    /// Gives back the two buffers and the iovec scratch.
    pub fn into_parts(self) -> (Vec<u8>, Vec<u8>, Box<[libc::iovec; 2]>) {
        (self.a, self.b, self.iov)
    }

    fn remaining(&self) -> usize {
        self.iov[self.first..].iter().map(|v| v.iov_len).sum()
    }

    /// Marks `n` more bytes written.
    fn consume(&mut self, mut n: usize) {
        while n > 0 && self.first < 2 {
            let v = &mut self.iov[self.first];
            let k = n.min(v.iov_len);
            // SAFETY: `k` is within the iovec's buffer.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(k) } as *mut libc::c_void;
            v.iov_len -= k;
            n -= k;
            if v.iov_len == 0 {
                self.first += 1;
            }
        }
    }
}

// SAFETY: the iovecs point into `a` and `b`, which are not touched while the runtime owns the
// value, and live in a box whose address does not change when the value moves.
unsafe impl IoVecBuf for Pair {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.first.min(1)..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        2 - self.first.min(2)
    }
}

/// Writes all of `pair`, with no deadline of its own (the caller watches it).
pub async fn write_pair(s: &mut Stream, mut pair: Pair) -> (io::Result<()>, Pair) {
    while pair.remaining() > 0 {
        let (r, p) = s.writev(pair).await;
        pair = p;
        match r {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), pair),
            Ok(n) => pair.consume(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), pair),
        }
    }
    (Ok(()), pair)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_pair_is_written_whole_through_partial_writes() {
        // Far more than the socket buffers hold, read slowly: the vectored write comes back
        // short many times, across the boundary between the two buffers too.
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
        let range = 1_000..450_000;
        let mut want = a.clone();
        want.extend_from_slice(&b[range.clone()]);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        small_buffers(std::os::fd::AsRawFd::as_raw_fd(&listener), libc::SO_RCVBUF);
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 7_000];
            loop {
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&chunk[..n]);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
        let (a_back, b_back) = rt.block_on(async move {
            let mut s = Stream::connect(addr).await.unwrap();
            small_buffers(std::os::fd::AsRawFd::as_raw_fd(&s), libc::SO_SNDBUF);
            let iov = Box::new([libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2]);
            let (r, pair) = write_pair(&mut s, Pair::new(a, b, range, iov)).await;
            r.unwrap();
            let (a, b, _) = pair.into_parts();
            (a.len(), b.len())
        });
        assert_eq!((a_back, b_back), (300_000, 500_000), "both buffers come back whole");
        let got = reader.join().unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes arrive in order: the head, then the body's range");
    }

    /// Shrinks a socket's buffer so writes come back short.
    fn small_buffers(fd: std::os::fd::RawFd, which: libc::c_int) {
        let size: libc::c_int = 4096;
        // SAFETY: a valid socket and a pointer to an int of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                which,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }

    #[test]
    fn a_pair_counts_written_bytes_across_its_two_buffers() {
        let iov = Box::new([libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2]);
        let mut p = Pair::new(vec![1; 10], vec![2; 100], 20..50, iov);
        assert_eq!((p.remaining(), p.read_iovec_len()), (40, 2));
        p.consume(4);
        assert_eq!((p.remaining(), p.read_iovec_len()), (36, 2));
        p.consume(10);
        // Into the second buffer: the first iovec is done.
        assert_eq!((p.remaining(), p.read_iovec_len()), (26, 1));
        // SAFETY: the iovec points into the pair's second buffer, 4 bytes past the range start.
        let next = unsafe { *(p.read_iovec_ptr().read().iov_base as *const u8) };
        assert_eq!(next, 2);
        assert_eq!(p.read_iovec_ptr(), p.iov[1..].as_ptr());
        p.consume(26);
        assert_eq!((p.remaining(), p.read_iovec_len()), (0, 0));
    }
}
