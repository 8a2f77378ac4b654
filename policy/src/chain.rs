//! The compiled chain: a route's policies in priority order, layered over the global ones,
//! and `compile`, which builds it from the configuration.

use std::sync::Arc;

use crate::cache::CacheRule;
use crate::context::Context;
use crate::error::ConfigErrors;
use crate::headers::HeaderList;
use crate::headers_policy::HeadersPolicy;
use crate::http::ResponseHead;
use crate::limits::{ConcurrencyLimit, RateLimit};
use crate::seam::{Policy, RequestInfo, Verdict};
use crate::spec::PoliciesSpec;

/// The compiled policies of one route, ordered by priority.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    policies: Vec<Arc<dyn Policy>>,
    /// Whether a policy has a completion hook.
    completes: bool,
    /// The route's cache rules; the engine does the caching.
    cache: Option<Arc<CacheRule>>,
}

impl Chain {
    pub fn new(mut policies: Vec<Arc<dyn Policy>>) -> Self {
        // Stable: equal priorities keep the order of the built-in list, never config order.
        policies.sort_by_key(|p| std::cmp::Reverse(p.priority()));
        let completes = policies.iter().any(|p| p.completes());
        Self { policies, completes, cache: None }
    }

    /// Whether there is nothing to run (no policy and no cache).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.cache.is_none()
    }

    pub fn cache(&self) -> Option<&Arc<CacheRule>> {
        self.cache.as_ref()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Runs the request side; the first `Respond` wins.
    pub fn on_request<'a>(&'a self, req: &RequestInfo<'_>, headers: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        for p in &self.policies {
            if let Step::Stop(v) = run(p, req, headers, cx) {
                return v;
            }
        }
        Verdict::Continue
    }

    /// Runs the response side, in reverse priority order.
    pub fn on_response<'a>(&'a self, head: &mut ResponseHead<'a>) {
        for p in self.policies.iter().rev() {
            p.on_response(head);
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.policies.iter().map(|p| p.name())
    }
}

/// The consumers' own policies, by consumer slot (kept beside the consumer index, which knows
/// nothing of policies). Persistent: a clone shares all of it.
#[derive(Debug, Clone, Default)]
pub struct ConsumerChains(imbl::Vector<Chain>);

impl ConsumerChains {
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&Chain> {
        self.0.get(slot as usize)
    }

    /// Sets the chain of `slot` (an empty one for a consumer without policies).
    pub fn set(&mut self, slot: u32, chain: Chain) {
        let slot = slot as usize;
        while self.0.len() <= slot {
            self.0.push_back(Chain::default());
        }
        self.0.set(slot, chain);
    }
}

/// Compiles a consumer's own policies: they may limit and edit request headers; not
/// authenticate, authorise, restrict by address (address rules run before anyone is
/// identified), cache or read paths otherwise.
pub fn compile_consumer(p: &PoliciesSpec, path: &str, errors: &mut ConfigErrors) -> Chain {
    if p.cache.is_some() || p.path_normalization.is_some() {
        errors.push(path.to_string(), "a consumer's policies cannot cache or normalize paths");
    }
    if p.headers.as_ref().is_some_and(|h| h.response.is_some()) {
        errors.push(format!("{path}.headers.response"), "a consumer's policies edit requests only");
    }
    if p.key_auth.is_some()
        || p.mtls_auth.is_some()
        || p.basic_auth.is_some()
        || p.jwt_auth.is_some()
        || p.oauth2_introspection.is_some()
        || p.acl.is_some()
    {
        errors.push(path.to_string(), "a consumer's policies cannot authenticate or authorize");
    }
    if p.ip_restriction.is_some() {
        errors.push(
            format!("{path}.ip_restriction"),
            "address rules run before the caller is identified: set them on the route or globally",
        );
    }
    compile(p, path, errors)
}

/// A route's chain over the global one, and the consumer's own once the identity band has
/// named one: all run, in one priority order; a policy of the consumer's replaces the route's
/// of the same name, and a policy the route sets itself replaces the global one.
#[derive(Debug, Clone, Copy)]
pub struct Layered<'a> {
    pub own: &'a Chain,
    pub global: &'a Chain,
    pub consumers: &'a ConsumerChains,
}

/// What running one policy came to.
enum Step {
    Next,
    Stop(Verdict),
}

fn run<'h>(p: &'h Arc<dyn Policy>, req: &RequestInfo<'_>, headers: &mut HeaderList<'h>, cx: &mut Context) -> Step {
    match p.on_request(req, headers, cx) {
        Verdict::Continue => Step::Next,
        Verdict::Respond(r) => {
            cx.answered_by = Some(p.name());
            Step::Stop(Verdict::Respond(r))
        }
        call @ Verdict::Call(_) => Step::Stop(call),
    }
}

impl<'a> Layered<'a> {
    pub fn new(own: &'a Chain, global: &'a Chain, consumers: &'a ConsumerChains) -> Self {
        Layered { own, global, consumers }
    }

    /// The policies that run, highest priority first.
    fn policies(&self) -> impl Iterator<Item = &'a Arc<dyn Policy>> + 'a {
        let own = self.own;
        let mut a = own.policies.iter().peekable();
        let mut b =
            self.global.policies.iter().filter(move |g| !own.policies.iter().any(|p| p.name() == g.name())).peekable();
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.priority() > x.priority() => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.own.is_empty() && self.global.is_empty()
    }

    pub fn cache(&self) -> Option<&'a Arc<CacheRule>> {
        self.own.cache().or(self.global.cache())
    }

    /// The end of the identity band: a request an authentication policy tried and none
    /// authenticated gets a 401; one that has a consumer brings its policies in.
    fn identified(&self, cx: &mut Context) -> Result<Option<&'a Chain>, Verdict> {
        match cx.identity {
            None if cx.authenticating => {
                cx.answered_by = Some("authentication");
                Err(Verdict::Respond(crate::auth::unauthorized(cx)))
            }
            None => Ok(None),
            Some(id) => Ok(id.consumer.and_then(|s| self.consumers.get(s)).filter(|c| !c.policies.is_empty())),
        }
    }

    /// Runs the request side; the first `Respond` (or `Call`) wins.
    pub fn on_request<'h>(&self, req: &RequestInfo<'_>, headers: &mut HeaderList<'h>, cx: &mut Context) -> Verdict
    where
        'a: 'h,
    {
        let mut consumer: Option<&'a Chain> = None;
        let mut next = 0;
        let mut identified = false;
        for p in self.policies() {
            let priority = p.priority();
            if !identified && priority < crate::auth::IDENTITY_PRIORITY {
                identified = true;
                match self.identified(cx) {
                    Ok(c) => consumer = c,
                    Err(v) => return v,
                }
            }
            if let Some(c) = consumer {
                while let Some(q) = c.policies.get(next).filter(|q| q.priority() >= priority) {
                    next += 1;
                    if let Step::Stop(v) = run(q, req, headers, cx) {
                        return v;
                    }
                }
                if c.policies.iter().any(|q| q.name() == p.name()) {
                    continue;
                }
            }
            if let Step::Stop(v) = run(p, req, headers, cx) {
                return v;
            }
        }
        if !identified {
            match self.identified(cx) {
                Ok(c) => consumer = c,
                Err(v) => return v,
            }
        }
        for q in consumer.map_or(&[][..], |c| &c.policies[next..]) {
            if let Step::Stop(v) = run(q, req, headers, cx) {
                return v;
            }
        }
        Verdict::Continue
    }

    /// Runs the completion hooks of the policies that have one, once, when the request ends.
    pub fn on_complete(&self, cx: &Context, status: u16) {
        if self.own.completes || self.global.completes {
            for p in self.policies().filter(|p| p.completes()) {
                p.on_complete(cx, status);
            }
        }
        let consumer = cx.identity.and_then(|i| i.consumer).and_then(|s| self.consumers.get(s));
        if let Some(c) = consumer.filter(|c| c.completes) {
            for p in c.policies.iter().filter(|p| p.completes()) {
                p.on_complete(cx, status);
            }
        }
    }

    /// Runs the response side, in reverse priority order.
    pub fn on_response<'h>(&self, head: &mut ResponseHead<'h>)
    where
        'a: 'h,
    {
        let own = self.own;
        let mut a = own.policies.iter().rev().peekable();
        let mut b =
            self.global.policies.iter().rev().filter(|g| !own.policies.iter().any(|p| p.name() == g.name())).peekable();
        // The exact reverse of `policies`: lowest priority first; on a tie the global one,
        // which ran after the route's own.
        let rev = std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.priority() <= x.priority() => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        });
        for p in rev {
            p.on_response(head);
        }
    }
}

/// Compiles a route's policies; `path` is the JSON path of the `policies` object.
pub fn compile(spec: &PoliciesSpec, path: &str, errors: &mut ConfigErrors) -> Chain {
    let mut policies: Vec<Arc<dyn Policy>> = Vec::new();
    if let Some(k) = &spec.key_auth {
        if let Some(p) = crate::auth::KeyAuth::compile(k, &format!("{path}.key_auth"), errors) {
            policies.push(Arc::new(p));
        }
    }
    if spec.mtls_auth.is_some() {
        policies.push(Arc::new(crate::auth::MtlsAuth::new()));
    }
    if let Some(b) = &spec.basic_auth {
        if let Some(p) = crate::auth::BasicAuth::compile(b, &format!("{path}.basic_auth"), errors) {
            policies.push(Arc::new(p));
        }
    }
    if let Some(j) = &spec.jwt_auth {
        if let Some(p) = crate::jwt::JwtAuth::compile(j, &format!("{path}.jwt_auth"), errors) {
            policies.push(Arc::new(p));
        }
    }
    if let Some(i) = &spec.oauth2_introspection {
        let at = format!("{path}.oauth2_introspection");
        if let Some(p) = crate::introspect::Introspection::compile(i, &at, errors) {
            policies.push(Arc::new(p));
        }
    }
    if let Some(a) = &spec.acl {
        if let Some(p) = crate::auth::Acl::compile(a, &format!("{path}.acl"), errors) {
            policies.push(Arc::new(p));
        }
    }
    if let Some(h) = &spec.headers {
        if let Some(p) = HeadersPolicy::compile(h, &format!("{path}.headers"), errors) {
            policies.push(Arc::new(p));
        }
    }
    if let Some(i) = &spec.ip_restriction {
        if let Some(p) = crate::ip::IpRestriction::compile(i, &format!("{path}.ip_restriction"), errors) {
            policies.push(Arc::new(p));
        }
    }
    if let Some(r) = &spec.rate_limit {
        if let Some(p) = RateLimit::compile(r, &format!("{path}.rate_limit"), errors) {
            policies.push(Arc::new(p));
        }
    }
    if let Some(c) = &spec.concurrency_limit {
        if let Some(p) = ConcurrencyLimit::compile(c, &format!("{path}.concurrency_limit"), errors) {
            policies.push(Arc::new(p));
        }
    }
    let mut chain = Chain::new(policies);
    if let Some(c) = &spec.cache {
        chain.cache = CacheRule::compile(c, &format!("{path}.cache"), errors).map(Arc::new);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seam::Reply;

    #[derive(Debug)]
    struct Fixed(u32, &'static str, bool);
    impl Policy for Fixed {
        fn name(&self) -> &'static str {
            self.1
        }
        fn priority(&self) -> u32 {
            self.0
        }
        fn on_request<'a>(&'a self, _: &RequestInfo<'_>, h: &mut HeaderList<'a>, _: &mut Context) -> Verdict {
            h.push("x-seen", self.1.as_bytes());
            if self.2 {
                Verdict::Respond(Reply::json_error(403, "denied", self.1))
            } else {
                Verdict::Continue
            }
        }
    }

    static NONE: std::sync::LazyLock<crate::consumer::Consumers> =
        std::sync::LazyLock::new(crate::consumer::Consumers::default);
    static NO_CHAINS: std::sync::LazyLock<ConsumerChains> = std::sync::LazyLock::new(ConsumerChains::default);

    fn info() -> RequestInfo<'static> {
        RequestInfo {
            head: &crate::http::EXAMPLE,
            client_ip: [127, 0, 0, 1].into(),
            route_id: "r",
            consumers: &NONE,
            client_cert: None,
        }
    }

    #[test]
    fn runs_by_priority_not_config_order_and_stops_on_respond() {
        let chain = Chain::new(vec![
            Arc::new(Fixed(1000, "transform", false)),
            Arc::new(Fixed(3000, "identity", false)),
            Arc::new(Fixed(2000, "limit", true)),
        ]);
        let mut h = HeaderList::default();
        let state = std::rc::Rc::new(std::cell::RefCell::new(crate::context::WorkerPolicyState::new(
            1,
            16,
            std::sync::Arc::new(crate::limits::LimitBank::new(1024)),
        )));
        let v = chain.on_request(&info(), &mut h, &mut Context::new(state));
        let seen: Vec<_> = h.iter().map(|x| String::from_utf8_lossy(&x.value).into_owned()).collect();
        assert_eq!(seen, ["identity", "limit"]);
        match v {
            Verdict::Respond(r) => {
                assert_eq!(r.status, 403);
                assert_eq!(r.body, br#"{"error":"denied","message":"limit","status":403}"#);
            }
            Verdict::Continue | Verdict::Call(_) => panic!("expected a reply"),
        }
    }

    /// Counts its completions.
    #[derive(Debug, Default)]
    struct Completes(std::sync::atomic::AtomicUsize, u32);
    impl Policy for Completes {
        fn name(&self) -> &'static str {
            "completes"
        }
        fn priority(&self) -> u32 {
            self.1
        }
        fn completes(&self) -> bool {
            true
        }
        fn on_complete(&self, _: &Context, status: u16) {
            assert_eq!(status, 204);
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn completion_hooks_run_once_for_the_route_the_global_and_the_consumer_chains() {
        let route = Arc::new(Completes(Default::default(), 1000));
        let global = Arc::new(Completes(Default::default(), 900));
        let consumer = Arc::new(Completes(Default::default(), 800));
        let own = Chain::new(vec![route.clone()]);
        let global_chain = Chain::new(vec![Arc::new(Fixed(2000, "limit", false)), global.clone()]);
        let mut chains = ConsumerChains::default();
        chains.set(3, Chain::new(vec![consumer.clone()]));
        let state = std::rc::Rc::new(std::cell::RefCell::new(crate::context::WorkerPolicyState::new(
            1,
            16,
            std::sync::Arc::new(crate::limits::LimitBank::new(1024)),
        )));
        let mut cx = Context::new(state);
        // The global policy of the same name is replaced by the route's: it does not complete.
        let layered = Layered::new(&own, &global_chain, &chains);
        layered.on_complete(&cx, 204);
        let count = |p: &Completes| p.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((count(&route), count(&global), count(&consumer)), (1, 0, 0));
        cx.identity =
            Some(crate::context::Identity { consumer: Some(3), credential: crate::context::Credential::Basic });
        layered.on_complete(&cx, 204);
        assert_eq!((count(&route), count(&global), count(&consumer)), (2, 0, 1));
    }

    #[test]
    fn layered_runs_both_in_priority_order_and_the_route_overrides_by_name() {
        let global = Chain::new(vec![Arc::new(Fixed(2000, "limit", false)), Arc::new(Fixed(500, "late", false))]);
        let own = Chain::new(vec![Arc::new(Fixed(1000, "transform", false)), Arc::new(Fixed(3000, "identity", false))]);
        let state = std::rc::Rc::new(std::cell::RefCell::new(crate::context::WorkerPolicyState::new(
            1,
            16,
            std::sync::Arc::new(crate::limits::LimitBank::new(1024)),
        )));
        let mut h = HeaderList::default();
        let l = Layered::new(&own, &global, &NO_CHAINS);
        assert!(matches!(l.on_request(&info(), &mut h, &mut Context::new(state.clone())), Verdict::Continue));
        let seen: Vec<_> = h.iter().map(|x| String::from_utf8_lossy(&x.value).into_owned()).collect();
        assert_eq!(seen, ["identity", "limit", "transform", "late"]);
        // A route policy with the global one's name replaces it.
        let own = Chain::new(vec![Arc::new(Fixed(2000, "limit", true))]);
        let mut h = HeaderList::default();
        let v = Layered::new(&own, &global, &NO_CHAINS).on_request(&info(), &mut h, &mut Context::new(state));
        assert!(matches!(v, Verdict::Respond(_)));
        assert_eq!(h.len(), 1);
    }
}
