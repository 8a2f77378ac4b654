//! What the engine hands a policy besides the request: the time, the worker's own policy
//! state, the identity the authentication policies found, the answer of an outbound call, and
//! where to put response headers and held permits (a concurrency limit's slot, freed when the
//! request ends).

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::calls::Answer;
use crate::limits::worker::WorkerLimits;

/// Headers with numeric values that policies add to whatever answer the request gets (the
/// upstream's response or a reply of the engine's). Fixed capacity: no allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseExtras {
    items: [(&'static str, u64); 12],
    len: usize,
    /// One textual header (the cache status).
    pub text: Option<(&'static str, &'static str)>,
}

impl ResponseExtras {
    /// Adds a header; past the capacity it is dropped.
    pub fn push(&mut self, name: &'static str, value: u64) {
        if self.len < self.items.len() {
            self.items[self.len] = (name, value);
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.items[..self.len].iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The state a worker keeps for its policies: the limit shards and leases, and one value of
/// each type a policy asks for (its caches), made on first use. One per worker thread; never
/// shared across threads.
#[derive(Debug)]
pub struct WorkerPolicyState {
    pub limits: WorkerLimits,
    /// The node's token-signing keys (shared by every worker).
    pub keys: Arc<crate::keys::KeyStore>,
    typed: Vec<(TypeId, Box<dyn Any>)>,
}

impl WorkerPolicyState {
    /// State for one of `workers` workers, tracking at most `limit_keys` rate-limit keys, and
    /// leasing from the node's `bank`.
    pub fn new(workers: usize, limit_keys: usize, bank: std::sync::Arc<crate::limits::LimitBank>) -> Self {
        WorkerPolicyState {
            limits: WorkerLimits::new(workers, limit_keys, bank),
            keys: Arc::default(),
            typed: Vec::new(),
        }
    }

    /// This worker's value of type `T` (a policy's cache), made with `T::default()` on first
    /// use. A handful of types: found by a short scan.
    pub fn typed<T: Default + 'static>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let at = match self.typed.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.typed.push((id, Box::new(T::default())));
                self.typed.len() - 1
            }
        };
        // The entry at `at` holds a `T`: it was filed under `T`'s id.
        self.typed[at].1.downcast_mut::<T>().expect("typed state filed under its own type")
    }
}

/// Who the authentication policies found the caller to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The consumer's slot in the snapshot's consumers (`None`: authenticated without one).
    pub consumer: Option<u32>,
    pub credential: Credential,
}

/// Which credential authenticated the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The consumer's `key_auth[i]`.
    Key(u16),
    /// The consumer's `basic_auth`.
    Basic,
    /// A token `jwt_auth` verified.
    Jwt,
    /// A token an introspection endpoint said is active.
    Token,
    /// A verified client certificate (mutual TLS).
    Certificate,
}

/// The answers a request's outbound calls came back with so far, one per kind.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// A password check: whether it matched (`None`: it could not be made).
    pub password: Option<Option<bool>>,
    /// A key fetch: whether the set is held.
    pub keys: Option<bool>,
    /// An introspection: the endpoint's answer (`None`: it could not be asked).
    pub introspected: Option<Option<std::rc::Rc<[u8]>>>,
}

impl Answers {
    /// Keeps `a` (replacing an earlier answer of its kind).
    pub fn add(&mut self, a: Answer) {
        match a {
            Answer::Password(p) => self.password = Some(p),
            Answer::Keys(k) => self.keys = Some(k),
            Answer::Introspected(i) => self.introspected = Some(i),
        }
    }
}

/// Up to this many authentication policies' challenges are kept for a 401.
const CHALLENGES: usize = 4;

/// Everything a policy may use besides the request itself.
pub struct Context {
    state: Rc<RefCell<WorkerPolicyState>>,
    unix_ms: Option<u64>,
    /// How far the gateway's clock runs ahead of the system's (moved only in tests).
    skew_ms: i64,
    /// Headers for the answer, whichever it is.
    pub extras: ResponseExtras,
    /// Held until the request ends (concurrency limits).
    pub permits: [Option<Permit>; 2],
    /// The policy that answered the request, when one did.
    pub answered_by: Option<&'static str>,
    /// Who the caller is, once an authentication policy said so.
    pub identity: Option<Identity>,
    /// Whether an authentication policy ran (without one, a request needs no identity).
    pub authenticating: bool,
    /// The `WWW-Authenticate` values of the authentication policies that did not authenticate
    /// the request, for a 401 (allocated only then: a passing request carries none).
    pub(crate) challenges: Vec<Arc<str>>,
    /// The answers to the outbound calls policies asked for, handed back when the request is
    /// planned again (see [`crate::Verdict::Call`]): all of them, one per kind. Boxed: most
    /// requests make no call, and the context travels with the request.
    pub answers: Option<Box<Answers>>,
    /// A query parameter that carried a credential: always kept out of the log, and removed
    /// from the upstream request too when the flag is set (`hide_credentials`).
    pub query_credential: Option<(Arc<str>, bool)>,
    /// Claims an authentication policy chose to keep (`jwt_auth`'s `claims_to_headers`), by
    /// name, for the policies after it.
    pub claims: Vec<(Rc<str>, Rc<[u8]>)>,
}

impl Context {
    pub fn new(state: Rc<RefCell<WorkerPolicyState>>) -> Self {
        Context {
            state,
            unix_ms: None,
            skew_ms: 0,
            extras: ResponseExtras::default(),
            permits: [None, None],
            answered_by: None,
            identity: None,
            authenticating: false,
            challenges: Vec::new(),
            answers: None,
            query_credential: None,
            claims: Vec::new(),
        }
    }

    /// Notes that an authentication policy ran without authenticating the request, and what
    /// it would have the client send (`WWW-Authenticate`).
    pub fn challenge(&mut self, value: &Arc<str>) {
        self.authenticating = true;
        if self.challenges.len() < CHALLENGES {
            self.challenges.push(value.clone());
        }
    }

    /// A context on a clock `skew_ms` ahead of the system's.
    pub fn with_skew(state: Rc<RefCell<WorkerPolicyState>>, skew_ms: i64) -> Self {
        Context { skew_ms, ..Context::new(state) }
    }

    /// A context whose clock reads `unix_ms` (tests).
    pub fn at(state: Rc<RefCell<WorkerPolicyState>>, unix_ms: u64) -> Self {
        Context { unix_ms: Some(unix_ms), ..Context::new(state) }
    }

    /// Milliseconds since the Unix epoch, read once per request and only when a policy asks.
    pub fn now_ms(&mut self) -> u64 {
        *self.unix_ms.get_or_insert_with(|| {
            let system = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            system.saturating_add_signed(self.skew_ms)
        })
    }

    pub fn state(&self) -> &Rc<RefCell<WorkerPolicyState>> {
        &self.state
    }

    /// Keeps `p` until the request ends.
    pub fn hold(&mut self, p: Permit) {
        if let Some(slot) = self.permits.iter_mut().find(|s| s.is_none()) {
            *slot = Some(p);
        }
    }
}

/// A concurrency slot held until the request ends; dropping it frees the slot.
pub struct Permit {
    pub(crate) state: Rc<RefCell<WorkerPolicyState>>,
    pub(crate) id: u64,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({:x})", self.id)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.limits.release(self.id);
        }
    }
}
