//! The two limits on the request path: the key a request counts under, their `Policy` impls,
//! and the concurrency limit's `compile` (it takes the limit's slots from the bank). The permit
//! a request holds until it ends is the context's (`crate::context::Permit`), since the context
//! keeps it.

use std::net::{IpAddr, Ipv6Addr};

use crate::context::{Context, Permit};
use crate::error::ConfigErrors;
use crate::headers::HeaderList;

use crate::limits::spec::{keyed_hash, ConcurrencyLimit, ConcurrencyLimitSpec, KeyKind, RateLimit};
use crate::seam::{Policy, Reply, RequestInfo, Verdict};

/// The address a `key: ip` limit counts a client under: an IPv4 address (also written as
/// IPv4-mapped IPv6) on its own, an IPv6 address by its /64 prefix, since one host or customer
/// is usually handed a whole /64 and could otherwise count as 2^64 clients.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        v4 => v4,
    }
}

impl RateLimit {
    fn key_hash(&self, req: &RequestInfo<'_>, cx: &Context) -> u64 {
        match &self.key {
            KeyKind::Consumer => match cx.identity.and_then(|i| i.consumer).and_then(|s| req.consumers.get(s)) {
                Some(c) => c.limit_key,
                None => keyed_hash(ip_key(req.client_ip)),
            },
            KeyKind::Route => 0,
            KeyKind::Ip => keyed_hash(ip_key(req.client_ip)),
            // The client's own header: on a cached route the upstream list holds fewer.
            KeyKind::Header(name) => match req.head.header(name) {
                Some(v) => keyed_hash(v),
                None => keyed_hash(ip_key(req.client_ip)),
            },
        }
    }
}

impl Policy for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn priority(&self) -> u32 {
        2000
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, _headers: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        let key = self.key_hash(req, cx);
        let now = cx.now_ms();
        let decision = cx.state().borrow_mut().limits.rate(self, key, now);
        cx.extras.push("ratelimit-limit", self.limit);
        cx.extras.push("x-ratelimit-limit", self.limit);
        cx.extras.push("ratelimit-remaining", decision.remaining);
        cx.extras.push("x-ratelimit-remaining", decision.remaining);
        cx.extras.push("ratelimit-reset", decision.reset_s);
        cx.extras.push("x-ratelimit-reset", decision.reset_s);
        match decision.retry_after_s {
            None => Verdict::Continue,
            Some(s) => {
                let mut r =
                    Reply::json_error(429, "rate_limited", "too many requests: the route's rate limit is reached");
                r.headers.push(("retry-after".into(), s.to_string()));
                Verdict::Respond(r)
            }
        }
    }
}

impl ConcurrencyLimit {
    pub fn compile(spec: &ConcurrencyLimitSpec, path: &str, errors: &mut ConfigErrors) -> Option<ConcurrencyLimit> {
        if spec.max_in_flight == 0 || spec.max_in_flight > 10_000_000 {
            errors.push(format!("{path}.max_in_flight"), "must be between 1 and 10000000");
            return None;
        }
        // Its free slots live in the node's bank, made on first use by a worker: compiling
        // changes nothing shared.
        let id = keyed_hash((path, spec.max_in_flight, "concurrency"));
        Some(ConcurrencyLimit { id, max: spec.max_in_flight })
    }
}

impl Policy for ConcurrencyLimit {
    fn name(&self) -> &'static str {
        "concurrency_limit"
    }

    fn priority(&self) -> u32 {
        1990
    }

    fn on_request<'a>(&'a self, _: &RequestInfo<'_>, _: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        let state = cx.state().clone();
        let ok = state.borrow_mut().limits.acquire(self);
        if ok {
            cx.hold(Permit { state, id: self.id });
            Verdict::Continue
        } else {
            Verdict::Respond(Reply::json_error(
                503,
                "concurrency_limited",
                "too many requests in flight on this route; try again shortly",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::RateLimitSpec;

    fn ip_hash(l: &RateLimit, ip: &str) -> u64 {
        let consumers = crate::consumer::Consumers::default();
        let req = RequestInfo {
            head: &crate::http::EXAMPLE,
            client_ip: ip.parse().unwrap(),
            route_id: "r",
            consumers: &consumers,
            client_cert: None,
        };
        let state = std::rc::Rc::new(std::cell::RefCell::new(crate::context::WorkerPolicyState::new(
            1,
            16,
            std::sync::Arc::new(crate::limits::LimitBank::new(64)),
        )));
        l.key_hash(&req, &Context::new(state))
    }

    #[test]
    fn ip_keys_group_ipv6_by_64_and_keep_ipv4_addresses_apart() {
        let spec =
            RateLimitSpec { limit: 5, window: "1m".into(), key: Some("ip".into()), algorithm: None, burst: None };
        let l = RateLimit::compile(&spec, "t.ip", &mut ConfigErrors::default()).unwrap();
        let h = |ip: &str| ip_hash(&l, ip);
        assert_eq!(h("2001:db8:1:2::1"), h("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(h("2001:db8:1:2::1"), h("2001:db8:1:2:abcd::7"));
        assert_ne!(h("2001:db8:1:2::1"), h("2001:db8:1:3::1"));
        assert_ne!(h("192.0.2.1"), h("192.0.2.2"));
        assert_eq!(h("::ffff:192.0.2.1"), h("192.0.2.1"), "IPv4-mapped addresses count as IPv4");
        assert_ne!(h("::ffff:192.0.2.1"), h("::ffff:192.0.2.2"));
        assert_eq!(ip_key("2001:db8::5".parse().unwrap()), "2001:db8::".parse::<IpAddr>().unwrap());
        // Requests without the header of a header key count by address, grouped the same way.
        let spec = RateLimitSpec { key: Some("header:x-key".into()), ..spec };
        let l = RateLimit::compile(&spec, "t.ip_header", &mut ConfigErrors::default()).unwrap();
        assert_eq!(ip_hash(&l, "2001:db8:9::1"), ip_hash(&l, "2001:db8:9::2"));
    }
}
