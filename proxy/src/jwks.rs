//! The key-fetch thread (`jwks-fetch`): fetches issuers' key sets (JWKS) into the node's
//! [`KeyStore`], on a worker's request (the first token of an issuer, or a `kid` the set does
//! not have) and again on each issuer's schedule. Requests for a set fetched moments ago are
//! answered from what is there, so a stream of tokens naming unknown keys costs the endpoint
//! one fetch per interval, not one per token. A failed fetch keeps the keys already held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use ringway_policy::keys::{KeySet, KeyStore};

use crate::reply::{reply, Replier, Reply};

/// Fetch requests waiting at most.
const QUEUE: usize = 256;
/// The longest a JWKS endpoint may take, and the largest set accepted.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_SET_BYTES: usize = 1 << 20;

struct Job {
    uri: Arc<str>,
    refresh_ms: u64,
    replier: Replier,
}

/// A worker's handle on the fetch thread.
#[derive(Clone)]
pub struct KeyFetcher {
    tx: Sender<Job>,
}

impl std::fmt::Debug for KeyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFetcher(queued {})", self.tx.len())
    }
}

impl KeyFetcher {
    /// Starts the thread filling `store`. It ends when every handle is dropped.
    pub fn start(store: Arc<KeyStore>) -> std::io::Result<KeyFetcher> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        ringway_runtime::spawn_background("jwks-fetch", move || run(&store, rx))?;
        Ok(KeyFetcher { tx })
    }

    /// Asks for the set at `uri` (kept fresh every `refresh_ms` from now on); answers whether
    /// the store holds a fetched set for it.
    pub fn fetch(&self, uri: Arc<str>, refresh_ms: u64) -> Reply {
        let (replier, answer) = reply();
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.tx.try_send(Job { uri, refresh_ms, replier })
        {
            drop(job);
        }
        answer
    }
}

struct Issuer {
    refresh: Duration,
    /// When a fetch was last tried, and when the next is due.
    tried: Option<Instant>,
    due: Instant,
}

impl Issuer {
    /// The shortest spell between two fetches a worker can cause.
    fn min_interval(&self) -> Duration {
        (self.refresh / 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

fn run(store: &KeyStore, rx: Receiver<Job>) {
    let mut issuers: HashMap<Arc<str>, Issuer> = HashMap::new();
    loop {
        let now = Instant::now();
        let wait =
            issuers.values().map(|i| i.due.saturating_duration_since(now)).min().unwrap_or(Duration::from_secs(60));
        match rx.recv_timeout(wait) {
            Ok(job) => {
                let refresh = Duration::from_millis(job.refresh_ms.max(10_000));
                let i = issuers.entry(job.uri.clone()).or_insert(Issuer { refresh, tried: None, due: now });
                i.refresh = i.refresh.min(refresh);
                let recent = i.tried.is_some_and(|t| t.elapsed() < i.min_interval());
                if !recent {
                    fetch(store, &job.uri, i);
                }
                job.replier.send(store.get(&job.uri).is_some_and(|s| s.fetched));
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                for (uri, i) in issuers.iter_mut().filter(|(_, i)| i.due <= now) {
                    fetch(store, uri, i);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn fetch(store: &KeyStore, uri: &str, i: &mut Issuer) {
    let now = Instant::now();
    i.tried = Some(now);
    i.due = now + i.refresh;
    let got = crate::fetch::request(uri, "GET", &[("Accept", "application/json")], b"", FETCH_TIMEOUT, MAX_SET_BYTES)
        .and_then(|f| if f.status == 200 { Ok(f.body) } else { Err(format!("status {}", f.status)) })
        .and_then(|body| KeySet::parse(&body));
    match got {
        Ok(set) => {
            log::debug!("jwks {uri}: {} key(s)", set.keys.len());
            store.put(uri, set);
        }
        Err(e) => {
            log::warn!("jwks {uri}: cannot fetch the key set: {e}");
            // After a failure, try again sooner than the schedule.
            i.due = now + i.min_interval().max(Duration::from_secs(5)).min(i.refresh);
            if store.get(uri).is_none() {
                store.put(uri, KeySet::default());
            }
        }
    }
}
