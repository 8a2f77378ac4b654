//! `jwt_auth`: bearer tokens signed by a configured issuer (keys from its JWKS, fetched off the
//! workers) or by a consumer's own key (`kid` names it).
//!
//! Checked: the signature with a key of the token's algorithm family only (an HS token is never
//! verified with an RSA key as the secret), the algorithm against the issuer's list (`none` is
//! no algorithm), `exp` and `nbf` with leeway on the gateway's clock, `iss` and `aud` where the
//! issuer says. A worker keeps verified tokens (bounded, each until its `exp` at the latest,
//! and only while the keys that verified it stand), so a repeat costs a hash lookup.

use std::rc::Rc;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::auth::{bearer, policy_id, IDENTITY_PRIORITY};
use crate::calls::Outbound;
use crate::context::{Context, Credential, Identity};
use crate::error::ConfigErrors;
use crate::headers::{is_valid_header_name, is_valid_header_value, HeaderList};
use crate::identity_spec::JwtAuthSpec;
use crate::kept::{Expires, Kept};
use crate::seam::{Policy, Reply, RequestInfo, Verdict};

#[derive(Debug)]
struct Issuer {
    issuer: String,
    jwks_uri: Arc<str>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    consumer_claim: String,
    leeway_s: u64,
    refresh_ms: u64,
    require_consumer: bool,
}

/// Header names a claim may not be sent as: the gateway's own identity fields and what frames
/// or routes the request.
fn reserved(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "x-consumer-id",
        "x-consumer-groups",
        "x-credential-id",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "authorization",
        "x-forwarded-for",
        "x-request-id",
        "traceparent",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The compiled `jwt_auth`.
#[derive(Debug)]
pub struct JwtAuth {
    id: u64,
    issuers: Vec<Issuer>,
    claims_to_headers: Vec<(String, Arc<str>)>,
    hide: bool,
    missing: Arc<str>,
    invalid: Arc<str>,
}

impl JwtAuth {
    pub fn compile(spec: &JwtAuthSpec, path: &str, errors: &mut ConfigErrors) -> Option<JwtAuth> {
        let before = errors.0.len();
        let mut issuers = Vec::new();
        for (i, s) in spec.issuers.iter().enumerate() {
            let at = format!("{path}.issuers[{i}]");
            if s.issuer.is_empty() {
                errors.push(format!("{at}.issuer"), "give the issuer (the tokens' iss)");
            }
            if !(s.jwks_uri.starts_with("http://") || s.jwks_uri.starts_with("https://")) {
                errors.push(format!("{at}.jwks_uri"), "an http:// or https:// URL");
            }
            let mut algorithms = Vec::new();
            for (j, a) in s.algorithms.iter().enumerate() {
                match crate::keys::algorithm(a) {
                    Some(alg) if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac => algorithms.push(alg),
                    Some(_) => errors.push(
                        format!("{at}.algorithms[{j}]"),
                        "an issuer's keys are public: HS algorithms are for consumers' own keys",
                    ),
                    None => errors
                        .push(format!("{at}.algorithms[{j}]"), "one of RS256/384/512, PS256/384/512, ES256/384, EdDSA"),
                }
            }
            if algorithms.is_empty() && s.algorithms.is_empty() {
                algorithms = vec![Algorithm::RS256, Algorithm::ES256];
            }
            let mut dur = |v: &Option<String>, name: &str, default: u64| {
                crate::duration::millis_or(v.as_deref(), &format!("{at}.{name}"), default, errors)
            };
            let leeway_ms = dur(&s.leeway, "leeway", 30_000);
            let refresh_ms = dur(&s.refresh, "refresh", 600_000);
            if refresh_ms < 10_000 {
                errors.push(format!("{at}.refresh"), "at least 10s");
            }
            issuers.push(Issuer {
                issuer: s.issuer.clone(),
                jwks_uri: s.jwks_uri.as_str().into(),
                audiences: s.audiences.clone(),
                algorithms,
                consumer_claim: s.consumer_claim.clone().unwrap_or_else(|| "sub".into()),
                leeway_s: leeway_ms / 1000,
                refresh_ms,
                require_consumer: s.require_consumer,
            });
        }
        let mut claims_to_headers = Vec::new();
        for (claim, header) in &spec.claims_to_headers {
            if !is_valid_header_name(header) {
                errors.push(format!("{path}.claims_to_headers.{claim}"), "not a valid header name");
            } else if reserved(header) {
                errors.push(format!("{path}.claims_to_headers.{claim}"), "a header the gateway sets or frames with");
            }
            claims_to_headers.push((claim.clone(), Arc::from(header.to_ascii_lowercase())));
        }
        (errors.0.len() == before).then(|| JwtAuth {
            id: policy_id(spec),
            issuers,
            claims_to_headers,
            hide: spec.hide_credentials,
            missing: "Bearer realm=\"ringway\"".into(),
            invalid: "Bearer realm=\"ringway\", error=\"invalid_token\"".into(),
        })
    }
}

/// A token a worker verified.
#[derive(Debug, Clone)]
struct Verified {
    until_ms: u64,
    /// What verified it: the key store's generation, or the consumer's keys (slot, tag).
    by: By,
    consumer: Option<(u32, u64)>,
    /// Values for `claims_to_headers`: its index, the claim's name and value.
    headers: Vec<(usize, Rc<str>, Rc<[u8]>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Issuer(u64),
    Consumer(u32, u64),
}

/// Verified tokens kept at most per worker (in all).
const VERIFIED_MAX: usize = 10_000;
/// Keys of a set tried for a token that names none.
const KID_LESS_TRIES: usize = 4;

impl Expires for Verified {
    fn until_ms(&self) -> u64 {
        self.until_ms
    }
}

/// A worker's verified tokens, by policy, then token.
#[derive(Debug)]
pub struct VerifiedTokens(Kept<Verified>);

impl Default for VerifiedTokens {
    fn default() -> Self {
        VerifiedTokens(Kept::new(VERIFIED_MAX))
    }
}

/// Why a token did not pass.
enum Refusal {
    /// 401: invalid, expired, unknown key...
    Invalid,
    /// 503: the issuer's keys were never obtained.
    NoKeys,
    /// Fetch the issuer's keys (again), then plan the request again.
    Fetch(Arc<str>, u64),
}

impl JwtAuth {
    /// Verifies `token` now; `fetched`: the keys were fetched for this request already.
    fn verify(
        &self,
        token: &[u8],
        req: &RequestInfo<'_>,
        cx: &mut Context,
        fetched: bool,
    ) -> Result<Verified, Refusal> {
        let text = std::str::from_utf8(token).map_err(|_| Refusal::Invalid)?;
        let header = jsonwebtoken::decode_header(text).map_err(|_| Refusal::Invalid)?;
        let claims: serde_json::Map<String, Value> = text
            .split('.')
            .nth(1)
            .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Refusal::Invalid)?;
        let now_s = cx.now_ms() / 1000;
        // A consumer's own key, named by `kid`.
        if let Some(slot) = header.kid.as_deref().and_then(|k| req.consumers.kid(k)) {
            let c = req.consumers.get(slot).ok_or(Refusal::Invalid)?;
            let (_, alg, key) = c
                .jwt_keys
                .iter()
                .find(|(k, _, _)| Some(k.as_str()) == header.kid.as_deref())
                .ok_or(Refusal::Invalid)?;
            if *alg != header.alg {
                return Err(Refusal::Invalid);
            }
            check(text, key, header.alg, &claims, now_s, 30, None)?;
            // The consumer chose its own claims: none of them become headers.
            let mut v = self.verified(&claims, By::Consumer(slot, c.jwt_tag), Some((slot, c.limit_key)));
            v.headers.clear();
            return Ok(v);
        }
        // An issuer's: the one its `iss` names (the only one, when there is one).
        let iss = claims.get("iss").and_then(Value::as_str);
        let issuer = match (&self.issuers[..], iss) {
            ([only], _) => only,
            (all, Some(iss)) => all.iter().find(|i| i.issuer == iss).ok_or(Refusal::Invalid)?,
            _ => return Err(Refusal::Invalid),
        };
        if !issuer.algorithms.contains(&header.alg) {
            return Err(Refusal::Invalid);
        }
        let store = cx.state().borrow().keys.clone();
        let generation = store.generation();
        let set = match store.get(&issuer.jwks_uri) {
            Some(set) if set.fetched => set,
            _ if fetched => return Err(Refusal::NoKeys),
            _ => return Err(Refusal::Fetch(issuer.jwks_uri.clone(), issuer.refresh_ms)),
        };
        let mut candidates = set
            .keys
            .iter()
            .filter(|k| k.fits(header.alg))
            .filter(|k| match &header.kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            })
            .take(KID_LESS_TRIES);
        let mut verified = false;
        let mut any = false;
        for k in candidates.by_ref() {
            any = true;
            match check(text, &k.key, header.alg, &claims, now_s, issuer.leeway_s, Some(issuer)) {
                Ok(()) => {
                    verified = true;
                    break;
                }
                Err(r) => {
                    if header.kid.is_some() {
                        return Err(r);
                    }
                }
            }
        }
        if !verified {
            // A `kid` the set does not have: perhaps rotated in since the last fetch.
            return Err(if !any && header.kid.is_some() && !fetched {
                Refusal::Fetch(issuer.jwks_uri.clone(), issuer.refresh_ms)
            } else {
                Refusal::Invalid
            });
        }
        let consumer = claims
            .get(&issuer.consumer_claim)
            .and_then(Value::as_str)
            .and_then(|id| req.consumers.by_id(id))
            .map(|c| (c.slot, c.limit_key));
        if consumer.is_none() && issuer.require_consumer {
            return Err(Refusal::Invalid);
        }
        Ok(self.verified(&claims, By::Issuer(generation), consumer))
    }

    fn verified(&self, claims: &serde_json::Map<String, Value>, by: By, consumer: Option<(u32, u64)>) -> Verified {
        // `exp` is required (see `check`): kept no longer than the token lives.
        let until_ms = claims.get("exp").and_then(Value::as_u64).map_or(0, |e| e.saturating_mul(1000));
        let headers = self
            .claims_to_headers
            .iter()
            .enumerate()
            .filter_map(|(i, (claim, _))| {
                let name: Rc<str> = Rc::from(claim.as_str());
                let v = match claims.get(claim)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                is_valid_header_value(v.as_bytes()).then(|| (i, name, Rc::from(v.into_bytes())))
            })
            .collect();
        Verified { until_ms, by, consumer, headers }
    }
}

/// The signature, and the registered claims; `issuer`: its `iss` and `aud` checks.
fn check(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
    claims: &serde_json::Map<String, Value>,
    now_s: u64,
    leeway_s: u64,
    issuer: Option<&Issuer>,
) -> Result<(), Refusal> {
    let mut v = Validation::new(alg);
    // Time is checked below, on the gateway's clock; `exp` is required of every token, `iss`
    // of an issuer's, `aud` where the issuer names audiences.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims.clear();
    v.validate_aud = false;
    if let Some(i) = issuer {
        v.set_issuer(&[&i.issuer]);
        v.required_spec_claims.insert("iss".into());
        if !i.audiences.is_empty() {
            v.validate_aud = true;
            v.set_audience(&i.audiences);
            v.required_spec_claims.insert("aud".into());
        }
    }
    jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &v).map_err(|_| Refusal::Invalid)?;
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(Refusal::Invalid),
    };
    match time("exp")? {
        None => return Err(Refusal::Invalid),
        Some(exp) if now_s > exp.saturating_add(leeway_s) => return Err(Refusal::Invalid),
        Some(_) => {}
    }
    if time("nbf")?.is_some_and(|nbf| now_s.saturating_add(leeway_s) < nbf) {
        return Err(Refusal::Invalid);
    }
    Ok(())
}

impl JwtAuth {
    /// The request is `v`'s caller: its identity, and its claims as headers (the client's own
    /// headers of those names never go).
    fn pass<'a>(&'a self, v: &Verified, headers: &mut HeaderList<'a>, cx: &mut Context) {
        cx.identity = Some(Identity { consumer: v.consumer.map(|c| c.0), credential: Credential::Jwt });
        cx.authenticating = true;
        if self.hide {
            headers.remove("authorization");
        }
        for (i, name, value) in &v.headers {
            headers.push(&*self.claims_to_headers[*i].1, value.to_vec());
            cx.claims.push((name.clone(), value.clone()));
        }
    }
}

impl Policy for JwtAuth {
    fn name(&self) -> &'static str {
        "jwt_auth"
    }

    fn priority(&self) -> u32 {
        IDENTITY_PRIORITY
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, headers: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        // The headers claims become are the gateway's to set, whoever authenticates the request.
        for (_, name) in &self.claims_to_headers {
            headers.remove(name);
        }
        if cx.identity.is_some() {
            return Verdict::Continue;
        }
        let Some(token) = bearer(req).filter(|t| t.len() <= 16 * 1024) else {
            cx.challenge(&self.missing);
            return Verdict::Continue;
        };
        let now = cx.now_ms();
        let state = cx.state().clone();
        let generation = state.borrow().keys.generation();
        let still = |v: &Verified| {
            let by = match v.by {
                By::Issuer(g) => g == generation,
                By::Consumer(slot, tag) => req.consumers.get(slot).is_some_and(|c| c.jwt_tag == tag),
            };
            let consumer =
                v.consumer.is_none_or(|(slot, key)| req.consumers.get(slot).is_some_and(|c| c.limit_key == key));
            by && consumer
        };
        {
            let mut st = state.borrow_mut();
            let cache = st.typed::<VerifiedTokens>();
            if let Some(v) = cache.0.get(self.id, token, now).filter(|v| still(v)) {
                self.pass(v, headers, cx);
                return Verdict::Continue;
            }
        }
        let fetched = cx.answers.as_ref().is_some_and(|a| a.keys.is_some());
        match self.verify(token, req, cx, fetched) {
            Ok(v) => {
                self.pass(&v, headers, cx);
                state.borrow_mut().typed::<VerifiedTokens>().0.put(self.id, token, v, now);
                Verdict::Continue
            }
            Err(Refusal::Invalid) => {
                cx.challenge(&self.invalid);
                Verdict::Continue
            }
            Err(Refusal::NoKeys) => Verdict::Respond(Reply::json_error(
                503,
                "keys_unavailable",
                "the token issuer's keys cannot be obtained right now; try again shortly",
            )),
            Err(Refusal::Fetch(uri, refresh_ms)) => Verdict::Call(Outbound::FetchKeys { uri, refresh_ms }),
        }
    }
}
