//! A single-consumer mailbox that a worker awaits as a task and any thread can post to.
//!
//! The queue is a lock-free crossbeam channel; the wake-up is an `AtomicWaker`, which monoio's
//! `sync` feature turns into an eventfd write when the worker's ring is parked.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// The sending half, held by the control thread.
pub struct MailboxSender<T> {
    tx: Sender<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), waker: self.waker.clone() }
    }
}

impl<T> MailboxSender<T> {
    /// Posts a value; returns it back if the worker is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        self.tx.send(value).map_err(|e| e.0)?;
        self.waker.wake();
        Ok(())
    }
}

/// The receiving half, owned by one worker.
pub struct Mailbox<T> {
    rx: Receiver<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Mailbox<T> {
    /// Waits for the next value; `None` once every sender is dropped.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            match self.rx.try_recv() {
                Ok(v) => return Poll::Ready(Some(v)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {}
            }
            self.waker.register(cx.waker());
            // A value may have arrived between the check and the registration.
            match self.rx.try_recv() {
                Ok(v) => Poll::Ready(Some(v)),
                Err(TryRecvError::Disconnected) => Poll::Ready(None),
                Err(TryRecvError::Empty) => Poll::Pending,
            }
        })
        .await
    }

    /// The next value waiting, if any.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// The newest value waiting, dropping older ones ("latest wins").
    pub fn try_latest(&self) -> Option<T> {
        let mut last = None;
        while let Ok(v) = self.rx.try_recv() {
            last = Some(v);
        }
        last
    }
}

/// A new mailbox pair.
pub fn mailbox<T>() -> (MailboxSender<T>, Mailbox<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(AtomicWaker::new());
    (MailboxSender { tx, waker: waker.clone() }, Mailbox { rx, waker })
}
