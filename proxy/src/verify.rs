//! The password-check pool: argon2 verification costs tens of milliseconds of CPU, so it never
//! runs on a worker. A worker hands a check over a bounded queue to a few named threads
//! (`password-check-N`) and awaits its answer; a full queue answers "cannot check now" at
//! once instead of queueing without end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::reply::{reply, Replier, Reply};

/// Checks waiting at most (all workers together).
pub const QUEUE: usize = 1024;

struct Job {
    /// `None`: the decoy.
    hash: Option<Arc<str>>,
    password: Box<[u8]>,
    replier: Replier,
    /// Past it the worker has stopped waiting: the check is skipped.
    deadline: Instant,
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
            ringway_runtime::spawn_background(format!("password-check-{i}"), move || check(rx))?;
        }
        Ok(Verifier { tx })
    }

    /// Whether `password` matches `hash`; `None` when the check cannot be made now (the queue
    /// is full, or the pool stopped).
    pub fn verify(&self, hash: Option<Arc<str>>, password: Box<[u8]>) -> Reply {
        let (replier, answer) = reply();
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.tx.try_send(Job { hash, password, replier, deadline: Instant::now() + Duration::from_secs(10) })
        {
            // Dropped unanswered: its answer is "cannot check now".
            drop(job);
        }
        answer
    }
}

fn check(rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        if Instant::now() > job.deadline {
            // Dropped unanswered: nobody waits for it any more.
            continue;
        }
        let hash = job.hash.as_deref().unwrap_or_else(|| ringway_policy::consumer::decoy_hash());
        // A decoy never matches, whatever the password.
        let ok = ringway_policy::consumer::verify_password(hash, &job.password) && job.hash.is_some();
        job.replier.send(ok);
    }
}
