//! The bytes between an HTTP/2 connection and its socket. h2 reads and writes through tokio's
//! poll traits; the gateway's streams (plaintext or TLS) are completion-based. The connection
//! task moves bytes between the two: what the socket delivers goes into `inbound`, where h2
//! reads it; what h2 writes collects in `outbound`, which the task writes to the socket. Both
//! sides run in one task, so the buffers are shared without locks.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes h2 may leave unwritten before its writes wait for the socket.
pub const OUTBOUND_MAX: usize = 256 * 1024;

#[derive(Default)]
pub struct Pipe {
    /// Received from the client, not yet read by h2.
    pub inbound: Vec<u8>,
    pub in_pos: usize,
    /// The client closed its side.
    pub eof: bool,
    /// Written by h2, not yet sent.
    pub outbound: Vec<u8>,
    /// h2, waiting for bytes to read or room to write.
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The connection task, waiting for bytes to send.
    pub sender: Option<Waker>,
}

impl Pipe {
    /// Bytes from the socket: h2 may read them.
    pub fn received(&mut self, data: &[u8]) {
        if self.in_pos == self.inbound.len() {
            self.inbound.clear();
            self.in_pos = 0;
        }
        self.inbound.extend_from_slice(data);
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    pub fn closed(&mut self) {
        self.eof = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// Takes what h2 wrote, to be sent; h2 may write again.
    pub fn take_outbound(&mut self, into: &mut Vec<u8>) {
        std::mem::swap(into, &mut self.outbound);
        self.outbound.clear();
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Bytes received and not yet read by h2.
    pub fn unread(&self) -> usize {
        self.inbound.len() - self.in_pos
    }
}

/// h2's end of the pipe.
pub struct PipeIo(pub Rc<RefCell<Pipe>>);

impl AsyncRead for PipeIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut p = self.0.borrow_mut();
        let n = p.unread().min(buf.remaining());
        if n > 0 {
            let from = p.in_pos;
            buf.put_slice(&p.inbound[from..from + n]);
            p.in_pos += n;
            return Poll::Ready(Ok(()));
        }
        if p.eof {
            return Poll::Ready(Ok(()));
        }
        p.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for PipeIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        if p.outbound.len() >= OUTBOUND_MAX {
            p.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        p.outbound.extend_from_slice(data);
        if let Some(w) = p.sender.take() {
            w.wake();
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sending is the connection task's: flushed bytes are in `outbound` already.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_pass_both_ways_and_writes_wait_when_full() {
        let pipe = Rc::new(RefCell::new(Pipe::default()));
        let mut io = PipeIo(pipe.clone());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut store = [0u8; 8];
        let mut buf = ReadBuf::new(&mut store);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
        pipe.borrow_mut().received(b"hello world");
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"hello wo");
        let big = vec![7u8; OUTBOUND_MAX];
        assert!(matches!(Pin::new(&mut io).poll_write(&mut cx, &big), Poll::Ready(Ok(n)) if n == OUTBOUND_MAX));
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"x").is_pending(), "full: h2 waits");
        let mut sent = Vec::new();
        pipe.borrow_mut().take_outbound(&mut sent);
        assert_eq!(sent.len(), OUTBOUND_MAX);
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"x").is_ready());
        pipe.borrow_mut().closed();
        let mut buf = ReadBuf::new(&mut store);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"rld");
    }
}
