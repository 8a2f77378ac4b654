//! The calls policies ask the engine to make ([`ringway_policy::Outbound`]): each goes to a
//! thread of its own kind (password checks, key fetches, introspection) over a bounded queue,
//! and its answer comes back through a one-shot reply (`crate::reply`) a worker awaits without
//! blocking.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ringway_policy::{Answer, Outbound};
use rustc_hash::FxHashMap;

use crate::event::LocalEvent;
use crate::reply::{BodyReply, Reply};

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
