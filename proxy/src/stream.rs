//! The byte stream under a client connection, an upstream exchange and the pool: plain TCP or
//! TLS ([`crate::tls::TlsStream`]); the code above it reads and writes a `Stream` whatever it
//! carries.
//!
//! Hot path: one match per operation.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;

/// A connected byte stream.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<crate::tls::TlsStream>),
    /// One request on a multiplexed HTTP/2 upstream connection.
    H2(Box<crate::h2::up::H2Up>),
}

impl Stream {
    /// A new TCP connection to `addr` (Nagle off).
    pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
        let s = TcpStream::connect_addr(addr).await?;
        let _ = s.set_nodelay(true);
        Ok(Stream::Tcp(s))
    }

    /// Waits until the stream has something to read (or is closed).
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable(false).await,
            Stream::Tls(s) => s.readable().await,
            // Never asked (no `Expect` wait on HTTP/2 upstreams): the answer is read when due.
            Stream::H2(_) => std::future::pending().await,
        }
    }

    /// Whether an idle connection is quiet: no byte and no end-of-stream pending (a TLS
    /// peer's handshake messages aside). Never waits.
    pub fn quiet(&mut self) -> bool {
        match self {
            Stream::Tcp(s) => {
                let mut b = 0u8;
                // SAFETY: a valid socket descriptor owned by `s`, and a one-byte buffer.
                let n =
                    unsafe { libc::recv(s.as_raw_fd(), (&raw mut b).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
                n < 0 && matches!(io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN))
            }
            Stream::Tls(s) => s.quiet(),
            Stream::H2(_) => false,
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.tcp().as_raw_fd(),
            // A stream of a shared connection has no socket of its own.
            Stream::H2(_) => -1,
        }
    }
}

/// One of two futures, polled in place: the plaintext arm is the TCP operation itself, so a
/// plaintext stream pays nothing for the others (TLS, HTTP/2: boxed, since their state machines
/// are much larger and every byte of a future's size is copied as it moves into its caller).
pub enum Either<A, B> {
    Tcp(A),
    Tls(B),
}

impl<A: Future, B: Future<Output = A::Output>> Future for Either<A, B> {
    type Output = A::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        // SAFETY: structural pinning: the variant's future is never moved out of `self`.
        unsafe {
            match self.get_unchecked_mut() {
                Either::Tcp(a) => Pin::new_unchecked(a).poll(cx),
                Either::Tls(b) => Pin::new_unchecked(b).poll(cx),
            }
        }
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

impl AsyncReadRent for Stream {
    #[inline]
    fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        match self {
            Stream::Tcp(s) => Either::Tcp(s.read(buf)),
            Stream::Tls(s) => Either::Tls(Box::pin(s.read(buf)) as Boxed<'_, _>),
            Stream::H2(s) => Either::Tls(Box::pin(s.read(buf)) as Boxed<'_, _>),
        }
    }

    #[inline]
    fn readv<T: IoVecBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        match self {
            Stream::Tcp(s) => Either::Tcp(s.readv(buf)),
            Stream::Tls(s) => Either::Tls(Box::pin(s.readv(buf)) as Boxed<'_, _>),
            Stream::H2(s) => Either::Tls(Box::pin(s.readv(buf)) as Boxed<'_, _>),
        }
    }
}

impl AsyncWriteRent for Stream {
    #[inline]
    fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        match self {
            Stream::Tcp(s) => Either::Tcp(s.write(buf)),
            Stream::Tls(s) => Either::Tls(Box::pin(s.write(buf)) as Boxed<'_, _>),
            Stream::H2(s) => Either::Tls(Box::pin(s.write(buf)) as Boxed<'_, _>),
        }
    }

    #[inline]
    fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        match self {
            Stream::Tcp(s) => Either::Tcp(s.writev(buf)),
            Stream::Tls(s) => Either::Tls(Box::pin(s.writev(buf)) as Boxed<'_, _>),
            Stream::H2(s) => Either::Tls(Box::pin(s.writev(buf)) as Boxed<'_, _>),
        }
    }

    #[inline]
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        match self {
            Stream::Tcp(s) => Either::Tcp(s.flush()),
            Stream::Tls(s) => Either::Tls(Box::pin(s.flush()) as Boxed<'_, _>),
            Stream::H2(s) => Either::Tls(Box::pin(s.flush()) as Boxed<'_, _>),
        }
    }

    #[inline]
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        match self {
            Stream::Tcp(s) => Either::Tcp(s.shutdown()),
            Stream::Tls(s) => Either::Tls(Box::pin(s.shutdown()) as Boxed<'_, _>),
            Stream::H2(s) => Either::Tls(Box::pin(s.shutdown()) as Boxed<'_, _>),
        }
    }
}
