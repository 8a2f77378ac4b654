//! The byte stream under a client connection, an upstream exchange and the pool: plain TCP or
//! TLS ([`crate::tls::TlsStream`]); the code above it reads and writes a `Stream` whatever it
//! carries.
//!
//! Hot path: one match per operation.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;

/// A connected byte stream.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<crate::tls::TlsStream>),
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
        }
    }

    /// Whether it carries TLS.
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
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
        }
    }
}

impl AsyncReadRent for Stream {
    #[inline]
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    #[inline]
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.readv(buf).await,
            Stream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Stream {
    #[inline]
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.write(buf).await,
            Stream::Tls(s) => s.write(buf).await,
        }
    }

    #[inline]
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.writev(buf).await,
            Stream::Tls(s) => s.writev(buf).await,
        }
    }

    #[inline]
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush().await,
            Stream::Tls(s) => s.flush().await,
        }
    }

    #[inline]
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }
}
