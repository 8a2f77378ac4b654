//! The `Policy` seam and the compiled chain.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cache::CacheRule;
use crate::context::Context;
use crate::error::ConfigErrors;
use crate::headers::HeaderList;
use crate::headers_policy::HeadersPolicy;
use crate::limits::{ConcurrencyLimit, RateLimit};
use crate::spec::PoliciesSpec;

/// What a policy sees of a request (after routing, before the upstream is chosen).
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'r> {
    pub method: &'r str,
    /// Lower-case host without port.
    pub host: &'r str,
    /// The canonical path, before `strip_prefix`.
    pub path: &'r str,
    pub query: Option<&'r str>,
    pub client_ip: IpAddr,
    /// The id of the route that matched.
    pub route_id: &'r str,
    /// The request's own header fields, as the client sent them (the list a policy edits is
    /// what goes upstream, which may hold fewer).
    pub client_headers: ClientHeaders<'r>,
}

/// Looks up a header field of the client's request by name (case-insensitive), first value.
#[derive(Clone, Copy)]
pub struct ClientHeaders<'r>(pub &'r dyn Fn(&str) -> Option<&'r [u8]>);

impl<'r> ClientHeaders<'r> {
    pub fn get(&self, name: &str) -> Option<&'r [u8]> {
        (self.0)(name)
    }
}

impl std::fmt::Debug for ClientHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHeaders")
    }
}

/// What a policy sees of a response.
#[derive(Debug, Clone, Copy)]
pub struct ResponseInfo {
    pub status: u16,
}

/// A response produced by a policy (or by the engine for an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON error body `{"error": code, "message": message}`.
    pub fn json_error(status: u16, code: &str, message: &str) -> Self {
        let body =
            format!("{{\"error\":{},\"message\":{},\"status\":{status}}}", json_string(code), json_string(message));
        Reply { status, headers: vec![("content-type".into(), "application/json".into())], body: body.into_bytes() }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A policy's answer on the request side.
#[derive(Debug)]
pub enum Verdict {
    /// Go on to the next policy, then the upstream.
    Continue,
    /// Answer the client now; later policies and the upstream are skipped.
    Respond(Reply),
}

/// One step of the per-request chain. Every hook has a default that does nothing.
pub trait Policy: Send + Sync + Debug {
    /// The name used in configuration.
    fn name(&self) -> &'static str;

    /// Higher runs earlier on the request side and later on the response side. Bands:
    /// identity 3000, authorization 2500, limits 2000, cache 1500, transforms 1000.
    fn priority(&self) -> u32;

    /// Runs after routing, before the upstream request is written. `headers` are the
    /// request headers that will be sent upstream (hop-by-hop fields already removed);
    /// edits borrow from `self` or from the request. Returns whether to go on.
    fn on_request<'a>(&'a self, _req: &RequestInfo<'_>, _headers: &mut HeaderList<'a>, _cx: &mut Context) -> Verdict {
        Verdict::Continue
    }

    /// Runs once the upstream response head is read (or a reply was produced), before it is
    /// written to the client. `headers` are the response headers that will be sent.
    fn on_response<'a>(&'a self, _resp: &ResponseInfo, _headers: &mut HeaderList<'a>) {}
}

/// The compiled policies of one route, ordered by priority.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    policies: Vec<Arc<dyn Policy>>,
    /// The route's cache rules; the engine does the caching.
    cache: Option<Arc<CacheRule>>,
}

impl Chain {
    pub fn new(mut policies: Vec<Arc<dyn Policy>>) -> Self {
        // Stable: equal priorities keep the order of the built-in list, never config order.
        policies.sort_by_key(|p| std::cmp::Reverse(p.priority()));
        Self { policies, cache: None }
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
            if let Verdict::Respond(r) = p.on_request(req, headers, cx) {
                cx.answered_by = Some(p.name());
                return Verdict::Respond(r);
            }
        }
        Verdict::Continue
    }

    /// Runs the response side, in reverse priority order.
    pub fn on_response<'a>(&'a self, resp: &ResponseInfo, headers: &mut HeaderList<'a>) {
        for p in self.policies.iter().rev() {
            p.on_response(resp, headers);
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.policies.iter().map(|p| p.name())
    }
}

/// A route's chain over the global one: both run, in one priority order; a policy the route
/// sets itself replaces the global policy of the same name.
#[derive(Debug, Clone, Copy)]
pub struct Layered<'a> {
    pub own: &'a Chain,
    pub global: &'a Chain,
}

impl<'a> Layered<'a> {
    pub fn new(own: &'a Chain, global: &'a Chain) -> Self {
        Layered { own, global }
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

    /// Runs the request side; the first `Respond` wins.
    pub fn on_request<'h>(&self, req: &RequestInfo<'_>, headers: &mut HeaderList<'h>, cx: &mut Context) -> Verdict
    where
        'a: 'h,
    {
        for p in self.policies() {
            if let Verdict::Respond(r) = p.on_request(req, headers, cx) {
                cx.answered_by = Some(p.name());
                return Verdict::Respond(r);
            }
        }
        Verdict::Continue
    }

    /// Runs the response side, in reverse priority order.
    pub fn on_response<'h>(&self, resp: &ResponseInfo, headers: &mut HeaderList<'h>)
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
            p.on_response(resp, headers);
        }
    }
}

/// Compiles a route's policies; `path` is the JSON path of the `policies` object.
pub fn compile(spec: &PoliciesSpec, path: &str, errors: &mut ConfigErrors) -> Chain {
    let mut policies: Vec<Arc<dyn Policy>> = Vec::new();
    if let Some(h) = &spec.headers {
        if let Some(p) = HeadersPolicy::compile(h, &format!("{path}.headers"), errors) {
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

    fn info() -> RequestInfo<'static> {
        RequestInfo {
            method: "GET",
            host: "h",
            path: "/",
            query: None,
            client_ip: [127, 0, 0, 1].into(),
            route_id: "r",
            client_headers: ClientHeaders(&|_| None),
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
        let state = std::rc::Rc::new(std::cell::RefCell::new(crate::context::WorkerPolicyState::new(1, 16)));
        let v = chain.on_request(&info(), &mut h, &mut Context::new(state));
        let seen: Vec<_> = h.iter().map(|x| String::from_utf8_lossy(&x.value).into_owned()).collect();
        assert_eq!(seen, ["identity", "limit"]);
        match v {
            Verdict::Respond(r) => {
                assert_eq!(r.status, 403);
                assert_eq!(r.body, br#"{"error":"denied","message":"limit","status":403}"#);
            }
            Verdict::Continue => panic!("expected a reply"),
        }
    }

    #[test]
    fn layered_runs_both_in_priority_order_and_the_route_overrides_by_name() {
        let global = Chain::new(vec![Arc::new(Fixed(2000, "limit", false)), Arc::new(Fixed(500, "late", false))]);
        let own = Chain::new(vec![Arc::new(Fixed(1000, "transform", false)), Arc::new(Fixed(3000, "identity", false))]);
        let state = std::rc::Rc::new(std::cell::RefCell::new(crate::context::WorkerPolicyState::new(1, 16)));
        let mut h = HeaderList::default();
        let l = Layered::new(&own, &global);
        assert!(matches!(l.on_request(&info(), &mut h, &mut Context::new(state.clone())), Verdict::Continue));
        let seen: Vec<_> = h.iter().map(|x| String::from_utf8_lossy(&x.value).into_owned()).collect();
        assert_eq!(seen, ["identity", "limit", "transform", "late"]);
        // A route policy with the global one's name replaces it.
        let own = Chain::new(vec![Arc::new(Fixed(2000, "limit", true))]);
        let mut h = HeaderList::default();
        let v = Layered::new(&own, &global).on_request(&info(), &mut h, &mut Context::new(state));
        assert!(matches!(v, Verdict::Respond(_)));
        assert_eq!(h.len(), 1);
    }
}
