//! The password-check pool: argon2 verification costs tens of milliseconds of CPU, so it never
//! runs on a worker. A worker hands a check over a bounded queue to a few named threads
//! (`password-check-N`) and awaits its answer; a full queue answers "cannot check now" at
//! once instead of queueing without end.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Checks waiting at most (all workers together).
pub const QUEUE: usize = 1024;

const PENDING: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;
const FAILED: u8 = 3;

/// Where one check's answer lands.
#[derive(Default)]
struct Slot {
    state: AtomicU8,
    waker: AtomicWaker,
}

struct Job {
    /// `None`: the decoy.
    hash: Option<Arc<str>>,
    password: Box<[u8]>,
    slot: Arc<Slot>,
}

impl Drop for Job {
    /// A check that never ran (the pool stopped) still answers.
    fn drop(&mut self) {
        if self.slot.state.load(Ordering::Acquire) == PENDING {
            self.slot.state.store(FAILED, Ordering::Release);
            self.slot.waker.wake();
        }
    }
}

/// A worker's handle on the pool.
#[derive(Clone)]
pub struct Verifier {
    tx: Sender<Job>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier(queued {})", self.tx.len())
    }
}

impl Verifier {
    /// Starts `threads` checking threads. They end when every handle is dropped.
    pub fn start(threads: usize) -> std::io::Result<Verifier> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        // The decoy hash is made now, on this thread, not on the first check of an unknown name.
        let _ = ringway_policy::consumer::decoy_hash();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("password-check-{i}")).spawn(move || check(rx))?;
        }
        Ok(Verifier { tx })
    }

    /// Whether `password` matches `hash`; `None` when the check cannot be made now (the queue
    /// is full, or the pool stopped).
    pub fn verify(&self, hash: Option<Arc<str>>, password: Box<[u8]>) -> impl Future<Output = Option<bool>> {
        let slot = Arc::new(Slot::default());
        let queued = match self.tx.try_send(Job { hash, password, slot: slot.clone() }) {
            Ok(()) => true,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                // Its answer is "failed": nothing to wait for.
                drop(job);
                false
            }
        };
        Answer { slot, queued }
    }
}

struct Answer {
    slot: Arc<Slot>,
    queued: bool,
}

impl Future for Answer {
    type Output = Option<bool>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<bool>> {
        let read = |s: &Slot| match s.state.load(Ordering::Acquire) {
            PENDING => None,
            YES => Some(Some(true)),
            NO => Some(Some(false)),
            _ => Some(None),
        };
        if !self.queued {
            return Poll::Ready(None);
        }
        if let Some(a) = read(&self.slot) {
            return Poll::Ready(a);
        }
        self.slot.waker.register(cx.waker());
        match read(&self.slot) {
            Some(a) => Poll::Ready(a),
            None => Poll::Pending,
        }
    }
}

fn check(rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let hash = job.hash.as_deref().unwrap_or_else(|| ringway_policy::consumer::decoy_hash());
        // A decoy never matches, whatever the password.
        let ok = ringway_policy::consumer::verify_password(hash, &job.password) && job.hash.is_some();
        job.slot.state.store(if ok { YES } else { NO }, Ordering::Release);
        job.slot.waker.wake();
    }
}
