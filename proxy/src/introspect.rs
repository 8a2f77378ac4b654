//! The introspection threads (`introspect-N`): RFC 7662 calls for `oauth2_introspection`, made
//! off the workers over a bounded queue (a full queue answers "cannot ask now" at once, which
//! the policy turns into a 503).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::reply::{body_reply, BodyReply, BodySender};

/// Calls waiting at most (all workers together), and the largest answer accepted.
const QUEUE: usize = 1024;
const MAX_ANSWER: usize = 64 * 1024;

struct Job {
    endpoint: Arc<str>,
    client_auth: Arc<str>,
    token: Box<[u8]>,
    timeout: Duration,
    reply: BodySender,
    /// Past it the worker has stopped waiting: the call is not made.
    deadline: std::time::Instant,
}

/// A worker's handle on the threads.
#[derive(Clone)]
pub struct Introspector {
    tx: Sender<Job>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Introspector(queued {})", self.tx.len())
    }
}

impl Introspector {
    /// Starts `threads` threads. They end when every handle is dropped.
    pub fn start(threads: usize) -> std::io::Result<Introspector> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            ringway_runtime::spawn_background(format!("introspect-{i}"), move || run(rx))?;
        }
        Ok(Introspector { tx })
    }

    /// Asks `endpoint` about `token`; the answer's body when the endpoint answered 200.
    pub fn ask(&self, endpoint: Arc<str>, client_auth: Arc<str>, token: Box<[u8]>, timeout_ms: u64) -> BodyReply {
        let (reply, answer) = body_reply();
        let timeout = Duration::from_millis(timeout_ms);
        let deadline = std::time::Instant::now() + timeout + Duration::from_secs(1);
        let job = Job { endpoint, client_auth, token, timeout, reply, deadline };
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = self.tx.try_send(job) {
            drop(job);
        }
        answer
    }
}

fn run(rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        if std::time::Instant::now() > job.deadline {
            continue;
        }
        let mut body = b"token=".to_vec();
        form_encode(&job.token, &mut body);
        body.extend_from_slice(b"&token_type_hint=access_token");
        let headers = [
            ("Authorization", &*job.client_auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", "application/json"),
        ];
        let got = crate::fetch::request(&job.endpoint, "POST", &headers, &body, job.timeout, MAX_ANSWER);
        let answer = match got {
            Ok(f) if f.status == 200 => Some(f.body),
            Ok(f) => {
                log::warn!("introspection {}: status {}", job.endpoint, f.status);
                None
            }
            Err(e) => {
                log::warn!("introspection {}: {e}", job.endpoint);
                None
            }
        };
        job.reply.send(answer);
    }
}

/// `application/x-www-form-urlencoded` for a value.
fn form_encode(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}
