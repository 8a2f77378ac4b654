//! `oauth2_introspection`: opaque bearer tokens checked with the authorisation server (RFC
//! 7662) through a call the engine makes off the workers. A worker keeps the answers: an
//! active token until the smaller of `cache_ttl` and its `exp`, an inactive one for
//! `negative_ttl`; concurrent requests with one token on a worker share one call (the engine
//! coalesces them). An endpoint that cannot be reached answers 503: nothing passes unchecked.

use std::sync::Arc;

use serde_json::Value;

use crate::auth::{bearer, policy_id, IDENTITY_PRIORITY};
use crate::calls::Outbound;
use crate::context::{Context, Credential, Identity};
use crate::error::ConfigErrors;
use crate::headers::HeaderList;
use crate::identity_spec::IntrospectionSpec;
use crate::kept::{Expires, Kept};
use crate::seam::{Policy, Reply, RequestInfo, Verdict};

/// The compiled `oauth2_introspection`.
#[derive(Debug)]
pub struct Introspection {
    /// Names this policy's answers in a worker's cache (see `auth::policy_id`).
    id: u64,
    endpoint: Arc<str>,
    /// `Authorization: Basic ...` for the endpoint.
    client_auth: Arc<str>,
    timeout_ms: u64,
    cache_ttl_ms: u64,
    negative_ttl_ms: u64,
    required_scopes: Vec<String>,
    consumer_claim: String,
    hide: bool,
    missing: Arc<str>,
    invalid: Arc<str>,
}

impl Introspection {
    pub fn compile(spec: &IntrospectionSpec, path: &str, errors: &mut ConfigErrors) -> Option<Introspection> {
        use base64::Engine as _;
        let before = errors.0.len();
        if !(spec.endpoint.starts_with("http://") || spec.endpoint.starts_with("https://")) {
            errors.push(format!("{path}.endpoint"), "an http:// or https:// URL");
        }
        if spec.client_id.is_empty() || spec.client_id.contains(':') {
            errors.push(format!("{path}.client_id"), "a client id, without ':'");
        }
        let mut dur = |v: &Option<String>, name: &str, default: u64| {
            crate::duration::millis_or(v.as_deref(), &format!("{path}.{name}"), default, errors)
        };
        let timeout_ms = dur(&spec.timeout, "timeout", 1000);
        let cache_ttl_ms = dur(&spec.cache_ttl, "cache_ttl", 60_000);
        let negative_ttl_ms = dur(&spec.negative_ttl, "negative_ttl", 5000);
        let secret = match (&spec.client_secret, &spec.client_secret_sealed) {
            (Some(s), Some(_)) => s.as_str(),
            (Some(_), None) => {
                errors.push(format!("{path}.client_secret"), "a secret must be sealed before it is compiled");
                ""
            }
            (None, _) => {
                errors.push(format!("{path}.client_secret"), "give the client secret");
                ""
            }
        };
        let credentials = format!("{}:{secret}", spec.client_id);
        let client_auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
        (errors.0.len() == before).then(|| Introspection {
            id: policy_id(spec),
            endpoint: spec.endpoint.as_str().into(),
            client_auth: client_auth.into(),
            timeout_ms: timeout_ms.clamp(10, 30_000),
            cache_ttl_ms,
            negative_ttl_ms,
            required_scopes: spec.required_scopes.clone(),
            consumer_claim: spec.consumer_claim.clone().unwrap_or_else(|| "client_id".into()),
            hide: spec.hide_credentials,
            missing: "Bearer realm=\"ringway\"".into(),
            invalid: "Bearer realm=\"ringway\", error=\"invalid_token\"".into(),
        })
    }
}

/// A worker's introspected tokens: active ones at most this many, inactive ones (which anyone
/// can make) in a smaller table of their own, so they never push out the active ones.
const KEPT_MAX: usize = 10_000;
const REFUSED_MAX: usize = 2048;

#[derive(Debug, Clone, Copy)]
struct Known {
    until_ms: u64,
    /// Active, with the required scopes; the consumer (slot, limit key) it names.
    pass: bool,
    consumer: Option<(u32, u64)>,
}

impl Expires for Known {
    fn until_ms(&self) -> u64 {
        self.until_ms
    }
}

/// A worker's answers from introspection endpoints, by policy (its endpoint, client, scopes
/// and consumer claim), then token.
#[derive(Debug)]
pub struct IntrospectedTokens {
    active: Kept<Known>,
    refused: Kept<Known>,
}

impl Default for IntrospectedTokens {
    fn default() -> Self {
        IntrospectedTokens { active: Kept::new(KEPT_MAX), refused: Kept::new(REFUSED_MAX) }
    }
}

impl IntrospectedTokens {
    fn get(&self, policy: u64, token: &[u8], now: u64) -> Option<Known> {
        self.active.get(policy, token, now).or_else(|| self.refused.get(policy, token, now)).copied()
    }

    fn put(&mut self, policy: u64, token: &[u8], k: Known, now: u64) {
        // One answer per token: the newest, in the table it belongs to.
        let (table, other) =
            if k.pass { (&mut self.active, &mut self.refused) } else { (&mut self.refused, &mut self.active) };
        other.remove(policy, token);
        table.put(policy, token, k, now);
    }
}

impl Policy for Introspection {
    fn name(&self) -> &'static str {
        "oauth2_introspection"
    }

    fn priority(&self) -> u32 {
        IDENTITY_PRIORITY
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, headers: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        if cx.identity.is_some() {
            return Verdict::Continue;
        }
        let Some(token) = bearer(req).filter(|t| t.len() <= 8192) else {
            cx.challenge(&self.missing);
            return Verdict::Continue;
        };
        let now = cx.now_ms();
        let state = cx.state().clone();
        let known = state.borrow_mut().typed::<IntrospectedTokens>().get(self.id, token, now);
        let known = match known {
            Some(k) => k,
            None => match cx.answers.as_mut().and_then(|a| a.introspected.take()) {
                Some(Some(body)) => {
                    let k = self.read(&body, req, now);
                    state.borrow_mut().typed::<IntrospectedTokens>().put(self.id, token, k, now);
                    k
                }
                Some(None) => {
                    return Verdict::Respond(Reply::json_error(
                        503,
                        "introspection_unavailable",
                        "the token cannot be checked right now; try again shortly",
                    ))
                }
                None => {
                    return Verdict::Call(Outbound::Introspect {
                        endpoint: self.endpoint.clone(),
                        client_auth: self.client_auth.clone(),
                        token: token.into(),
                        timeout_ms: self.timeout_ms,
                    });
                }
            },
        };
        // A consumer removed since: its tokens name no one.
        let consumer = known.consumer.filter(|(slot, k)| req.consumers.get(*slot).is_some_and(|c| c.limit_key == *k));
        if !known.pass {
            cx.challenge(&self.invalid);
            return Verdict::Continue;
        }
        cx.identity = Some(Identity { consumer: consumer.map(|c| c.0), credential: Credential::Token });
        cx.authenticating = true;
        if self.hide {
            headers.remove("authorization");
        }
        Verdict::Continue
    }
}

impl Introspection {
    /// What an endpoint's answer says of the token, and until when to believe it.
    fn read(&self, body: &[u8], req: &RequestInfo<'_>, now: u64) -> Known {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let active = v.get("active").and_then(Value::as_bool).unwrap_or(false);
        let exp_ms = v.get("exp").and_then(Value::as_u64).map(|e| e.saturating_mul(1000));
        let scopes: Vec<&str> = v.get("scope").and_then(Value::as_str).map_or(Vec::new(), |s| s.split(' ').collect());
        let scoped = self.required_scopes.iter().all(|r| scopes.contains(&r.as_str()));
        let live = exp_ms.is_none_or(|e| e > now);
        let pass = active && scoped && live;
        let consumer = v
            .get(&self.consumer_claim)
            .and_then(Value::as_str)
            .and_then(|id| req.consumers.by_id(id))
            .map(|c| (c.slot, c.limit_key));
        let until_ms = if active && live {
            (now + self.cache_ttl_ms).min(exp_ms.unwrap_or(u64::MAX))
        } else {
            now + self.negative_ttl_ms
        };
        Known { until_ms, pass, consumer }
    }
}
