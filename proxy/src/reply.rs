//! One-shot answers from the identity threads to a worker: the thread sends, the worker awaits
//! without blocking (an atomic slot or a one-place channel, and a waker).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

const PENDING: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;
const FAILED: u8 = 3;

/// Where one answer lands.
#[derive(Default)]
struct Slot {
    state: AtomicU8,
    waker: AtomicWaker,
}

/// The answering side of a [`reply`]: dropped without [`Replier::send`], it answers "failed".
pub struct Replier(Arc<Slot>);

impl Replier {
    pub fn send(self, yes: bool) {
        self.0.state.store(if yes { YES } else { NO }, Ordering::Release);
        self.0.waker.wake();
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if self.0.state.compare_exchange(PENDING, FAILED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.0.waker.wake();
        }
    }
}

/// The awaiting side: `Some(yes)`, or `None` when the call failed or was never made.
pub struct Reply(Arc<Slot>);

/// A one-shot answer from another thread.
pub fn reply() -> (Replier, Reply) {
    let slot = Arc::new(Slot::default());
    (Replier(slot.clone()), Reply(slot))
}

impl Future for Reply {
    type Output = Option<bool>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<bool>> {
        let read = |s: &Slot| match s.state.load(Ordering::Acquire) {
            PENDING => None,
            YES => Some(Some(true)),
            NO => Some(Some(false)),
            _ => Some(None),
        };
        if let Some(a) = read(&self.0) {
            return Poll::Ready(a);
        }
        self.0.waker.register(cx.waker());
        match read(&self.0) {
            Some(a) => Poll::Ready(a),
            None => Poll::Pending,
        }
    }
}

/// The answering side of a [`body_reply`]: dropped without sending, it answers `None`.
pub struct BodySender {
    tx: Sender<Option<Vec<u8>>>,
    waker: Arc<AtomicWaker>,
}

impl BodySender {
    pub fn send(self, body: Option<Vec<u8>>) {
        let _ = self.tx.try_send(body);
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        self.waker.wake();
    }
}

/// The awaiting side of a [`body_reply`].
pub struct BodyReply {
    rx: Receiver<Option<Vec<u8>>>,
    waker: Arc<AtomicWaker>,
}

/// A one-shot body (or `None`) from another thread.
pub fn body_reply() -> (BodySender, BodyReply) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let waker = Arc::new(AtomicWaker::new());
    (BodySender { tx, waker: waker.clone() }, BodyReply { rx, waker })
}

impl Future for BodyReply {
    type Output = Option<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let read = |rx: &Receiver<Option<Vec<u8>>>| match rx.try_recv() {
            Ok(v) => Some(v),
            Err(TryRecvError::Disconnected) => Some(None),
            Err(TryRecvError::Empty) => None,
        };
        if let Some(v) = read(&self.rx) {
            return Poll::Ready(v);
        }
        self.waker.register(cx.waker());
        match read(&self.rx) {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }
}
