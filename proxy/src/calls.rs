//! The calls policies ask the engine to make ([`ringway_policy::Outbound`]): each goes to a
//! thread of its own kind (password checks, key fetches) over a bounded queue, and its answer
//! comes back through a one-shot [`reply`] a worker awaits without blocking.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::cell::RefCell;
use std::rc::Rc;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use ringway_policy::{Answer, Outbound};
use rustc_hash::FxHashMap;

use crate::event::LocalEvent;

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

/// The node's identity services, as a worker reaches them.
#[derive(Debug, Clone)]
pub struct IdentityCalls {
    pub verifier: crate::verify::Verifier,
    pub keys: crate::jwks::KeyFetcher,
    pub introspect: crate::introspect::Introspector,
}

/// A call under way on a worker that requests with the same token wait for.
#[derive(Default)]
pub struct Shared {
    done: LocalEvent,
    answer: RefCell<Option<Answer>>,
}

/// An introspection asked: the endpoint, the client asking, the token.
type Asked = (Arc<str>, Arc<str>, Box<[u8]>);

/// A worker's introspection calls under way, by endpoint, client and token.
pub type InFlight = RefCell<FxHashMap<Asked, Rc<Shared>>>;

/// Ends a leading call however it ends: waiters wake (with no answer when it was dropped).
struct Leading<'w> {
    calls: &'w InFlight,
    key: Option<Asked>,
    shared: Rc<Shared>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.calls.borrow_mut().remove(&k);
        }
        self.shared.done.fire();
    }
}

/// Makes `call` for a request of a worker: an introspection of a token another request of
/// this worker is already asking about waits for that answer instead of asking again.
pub async fn make(services: Option<&IdentityCalls>, calls: &InFlight, call: Outbound) -> Answer {
    let Outbound::Introspect { endpoint, client_auth, token, .. } = &call else {
        return outbound(services, call).await;
    };
    let key = (endpoint.clone(), client_auth.clone(), token.clone());
    let waiting = calls.borrow().get(&key).cloned();
    if let Some(shared) = waiting {
        let _ = monoio::time::timeout(CALL_TIMEOUT, shared.done.wait()).await;
        let answer = shared.answer.borrow().clone();
        return answer.unwrap_or(Answer::Introspected(None));
    }
    let shared = Rc::new(Shared::default());
    calls.borrow_mut().insert(key.clone(), shared.clone());
    let lead = Leading { calls, key: Some(key), shared };
    let answer = outbound(services, call).await;
    *lead.shared.answer.borrow_mut() = Some(answer.clone());
    drop(lead);
    answer
}

/// How long a request waits for an answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes `call` through `services` and gives its answer (a failure when there are none).
pub fn outbound(services: Option<&IdentityCalls>, call: Outbound) -> impl Future<Output = Answer> {
    enum Pending {
        Password(Option<Reply>),
        Keys(Option<Reply>),
        Body(Option<BodyReply>, Duration),
    }
    let pending = match (call, services) {
        (Outbound::VerifyPassword { hash, password }, s) => {
            Pending::Password(s.map(|s| s.verifier.verify(hash, password)))
        }
        (Outbound::FetchKeys { uri, refresh_ms }, s) => Pending::Keys(s.map(|s| s.keys.fetch(uri, refresh_ms))),
        (Outbound::Introspect { endpoint, client_auth, token, timeout_ms }, s) => {
            let wait = Duration::from_millis(timeout_ms) + Duration::from_secs(1);
            Pending::Body(s.map(|s| s.introspect.ask(endpoint, client_auth, token, timeout_ms)), wait)
        }
    };
    async move {
        async fn within<T>(r: Option<impl Future<Output = Option<T>>>, limit: Duration) -> Option<T> {
            match r {
                Some(r) => monoio::time::timeout(limit, r).await.ok().flatten(),
                None => None,
            }
        }
        match pending {
            Pending::Password(r) => Answer::Password(within(r, CALL_TIMEOUT).await),
            Pending::Keys(r) => Answer::Keys(within(r, CALL_TIMEOUT).await.unwrap_or(false)),
            Pending::Body(r, limit) => Answer::Introspected(within(r, limit).await.map(Rc::from)),
        }
    }
}
