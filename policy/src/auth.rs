//! Authentication (`key_auth`, `basic_auth`) and authorisation by group (`acl`).
//!
//! An authentication policy resolves the request to a consumer and sets
//! [`Context::identity`]; one that cannot leaves its challenge and lets the next try. Once the
//! identity band has run, a request that needed an identity and has none gets one 401 naming
//! every scheme (see [`crate::Layered`]), with a body that does not say which check failed.
//!
//! Timing: a key is looked up by its digest, in constant time per comparison, so an unknown
//! key and a wrong one take the same path; an unknown username is checked against a decoy
//! hash, so it costs what a wrong password does.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::calls::Outbound;
use crate::consumer::KeyDigest;
use crate::context::{Context, Credential, Identity};
use crate::error::ConfigErrors;
use crate::headers::{is_valid_header_name, HeaderList};
use crate::identity_spec::{AclSpec, BasicAuthSpec, KeyAuthSpec};
use crate::seam::{Policy, Reply, RequestInfo, Verdict};

/// The identity band: authentication runs before everything but the address rules.
pub const IDENTITY_PRIORITY: u32 = 3000;

/// Names a policy that keeps what it verified by what it is configured with: a token judged
/// under one set of rules says nothing under another's, and an edit elsewhere in a route (or
/// of another route) leaves the caches of its unchanged policies as they were. Keyed per
/// process, so no one can aim at a collision.
pub(crate) fn policy_id(spec: &impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    KEY.get_or_init(std::collections::hash_map::RandomState::new).hash_one(spec)
}

/// The bearer token of a request.
pub(crate) fn bearer<'h>(req: &RequestInfo<'h>) -> Option<&'h [u8]> {
    let v = req.head.header("authorization")?.trim_ascii();
    (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii()).filter(|t| !t.is_empty())
}

fn realm_ok(realm: &str) -> bool {
    !realm.is_empty()
        && realm.len() <= 128
        && realm.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// The compiled `key_auth`.
#[derive(Debug)]
pub struct KeyAuth {
    header: Option<String>,
    query: Option<Arc<str>>,
    hide: bool,
    challenge: Arc<str>,
}

impl KeyAuth {
    pub fn compile(spec: &KeyAuthSpec, path: &str, errors: &mut ConfigErrors) -> Option<KeyAuth> {
        let before = errors.0.len();
        let header = spec.header.clone().unwrap_or_else(|| "apikey".into());
        if !header.is_empty() && !is_valid_header_name(&header) {
            errors.push(format!("{path}.header"), "not a valid header name");
        }
        let query = spec.query.clone().unwrap_or_else(|| "apikey".into());
        if query.bytes().any(|b| matches!(b, b'&' | b'=' | b'#' | b'%' | b'+') || !b.is_ascii_graphic()) {
            errors.push(format!("{path}.query"), "a query parameter name without '&', '=', '#', '%', '+' or spaces");
        }
        if header.is_empty() && query.is_empty() {
            errors.push(path.to_string(), "give a header, a query parameter or both");
        }
        (errors.0.len() == before).then(|| KeyAuth {
            header: (!header.is_empty()).then(|| header.to_ascii_lowercase()),
            query: (!query.is_empty()).then(|| query.into()),
            hide: spec.hide_credentials,
            challenge: "Key realm=\"ringway\"".into(),
        })
    }
}

/// `mtls_auth`: the consumer named by the subject of the client certificate the TLS
/// handshake verified. Without one, or with a subject no consumer has, it lets the next
/// authentication policy try (then the route answers 401).
#[derive(Debug)]
pub struct MtlsAuth {
    challenge: Arc<str>,
}

impl MtlsAuth {
    pub fn new() -> MtlsAuth {
        MtlsAuth { challenge: "Certificate realm=\"ringway\"".into() }
    }
}

impl Default for MtlsAuth {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for MtlsAuth {
    fn name(&self) -> &'static str {
        "mtls_auth"
    }

    fn priority(&self) -> u32 {
        IDENTITY_PRIORITY
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, _: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        if cx.identity.is_some() {
            return Verdict::Continue;
        }
        match req.client_cert.and_then(|s| req.consumers.subject(s)) {
            Some(slot) => {
                cx.identity = Some(Identity { consumer: Some(slot), credential: Credential::Certificate });
                cx.authenticating = true;
            }
            None => cx.challenge(&self.challenge),
        }
        Verdict::Continue
    }
}

/// The value of query parameter `name`, percent-decoded.
fn query_param<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, [u8]>> {
    let value = query.split('&').find_map(|p| p.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))?;
    if !value.contains(['%', '+']) {
        return Some(value.as_bytes().into());
    }
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Some(out.into())
}

impl Policy for KeyAuth {
    fn name(&self) -> &'static str {
        "key_auth"
    }

    fn priority(&self) -> u32 {
        IDENTITY_PRIORITY
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, headers: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        if cx.identity.is_some() {
            return Verdict::Continue;
        }
        let mut from_query = false;
        let presented = match self.header.as_deref().and_then(|h| req.head.header(h)) {
            Some(v) => Some(std::borrow::Cow::Borrowed(v)),
            None => match (&self.query, req.head.query) {
                (Some(name), Some(q)) => {
                    from_query = true;
                    query_param(q, name)
                }
                _ => None,
            },
        };
        // Whatever it holds, a key in the query stays out of the log.
        if let (true, Some(name)) = (from_query && presented.is_some(), &self.query) {
            cx.query_credential = Some((name.clone(), false));
        }
        let owner = presented.as_deref().filter(|k| !k.is_empty()).and_then(|k| req.consumers.key(&KeyDigest::of(k)));
        match owner {
            Some(o) => {
                cx.identity = Some(Identity { consumer: Some(o.slot), credential: Credential::Key(o.index) });
                cx.authenticating = true;
                if self.hide {
                    match (&self.header, &mut cx.query_credential) {
                        (_, Some((_, hide))) if from_query => *hide = true,
                        (Some(h), _) => headers.remove(h),
                        _ => {}
                    }
                }
            }
            None => cx.challenge(&self.challenge),
        }
        Verdict::Continue
    }
}

/// The compiled `basic_auth`.
#[derive(Debug)]
pub struct BasicAuth {
    hide: bool,
    challenge: Arc<str>,
}

impl BasicAuth {
    pub fn compile(spec: &BasicAuthSpec, path: &str, errors: &mut ConfigErrors) -> Option<BasicAuth> {
        let realm = spec.realm.as_deref().unwrap_or("ringway");
        if !realm_ok(realm) {
            errors.push(format!("{path}.realm"), "1 to 128 printable characters without '\"' or '\\'");
            return None;
        }
        Some(BasicAuth { hide: spec.hide_credentials, challenge: format!("Basic realm=\"{realm}\"").into() })
    }
}

/// How long a worker believes a checked password: a right one, and a wrong one (so a client
/// retrying a wrong password does not cost a hash each time).
const VERIFIED_TTL_MS: u64 = 300_000;
const REFUSED_TTL_MS: u64 = 5_000;
const VERIFIED_MAX: usize = 4096;

/// A worker's checked passwords, by a digest of username and password under a secret of the
/// worker's (so the table holds no password). Refused ones, which anyone can make, are kept
/// in a smaller table of their own and never push out the verified ones.
pub struct VerifiedPasswords {
    secret: [u8; 16],
    entries: HashMap<[u8; 32], Checked>,
    refused: HashMap<[u8; 32], Checked>,
}

const REFUSED_MAX: usize = 1024;

impl Default for VerifiedPasswords {
    fn default() -> Self {
        // A secret from the standard library's per-process random keys: no file read here.
        use std::hash::{BuildHasher, Hasher};
        let mut secret = [0u8; 16];
        for (i, half) in secret.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        VerifiedPasswords { secret, entries: HashMap::new(), refused: HashMap::new() }
    }
}

impl std::fmt::Debug for VerifiedPasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifiedPasswords({})", self.entries.len())
    }
}

#[derive(Debug, Clone, Copy)]
struct Checked {
    /// The consumer and the hash checked against (`None`: an unknown username).
    against: Option<(u32, u64)>,
    ok: bool,
    until_ms: u64,
}

impl VerifiedPasswords {
    fn key(&self, user: &[u8], password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update((user.len() as u32).to_le_bytes());
        h.update(user);
        h.update(password);
        h.finalize().into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<&Checked> {
        self.entries.get(key).or_else(|| self.refused.get(key))
    }

    fn put(&mut self, key: [u8; 32], c: Checked, now: u64) {
        let (table, max) = if c.ok { (&mut self.entries, VERIFIED_MAX) } else { (&mut self.refused, REFUSED_MAX) };
        if table.len() >= max {
            table.retain(|_, e| e.until_ms > now);
            if table.len() >= max {
                table.clear();
            }
        }
        if c.ok {
            self.refused.remove(&key);
        } else {
            self.entries.remove(&key);
        }
        let table = if c.ok { &mut self.entries } else { &mut self.refused };
        table.insert(key, c);
    }
}

impl Policy for BasicAuth {
    fn name(&self) -> &'static str {
        "basic_auth"
    }

    fn priority(&self) -> u32 {
        IDENTITY_PRIORITY
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, headers: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        if cx.identity.is_some() {
            return Verdict::Continue;
        }
        let mut decoded = [0u8; BASIC_MAX];
        let Some((user, password)) = req.head.header("authorization").and_then(|v| parse_basic(v, &mut decoded)) else {
            cx.challenge(&self.challenge);
            return Verdict::Continue;
        };
        let slot = std::str::from_utf8(user).ok().and_then(|u| req.consumers.user(u));
        let basic = slot.and_then(|s| req.consumers.get(s)).and_then(|c| c.basic.as_ref());
        let against = slot.zip(basic.map(|b| b.tag));
        let now = cx.now_ms();
        let state = cx.state().clone();
        let mut state = state.borrow_mut();
        let cache = state.typed::<VerifiedPasswords>();
        let key = cache.key(user, password);
        let known = cache.get(&key).filter(|c| c.until_ms > now && c.against == against).map(|c| c.ok);
        let ok = match known {
            Some(ok) => ok,
            None => match cx.answers.as_mut().and_then(|a| a.password.take()) {
                Some(Some(ok)) => {
                    let ok = ok && against.is_some();
                    let ttl = if ok { VERIFIED_TTL_MS } else { REFUSED_TTL_MS };
                    cache.put(key, Checked { against, ok, until_ms: now + ttl }, now);
                    ok
                }
                Some(None) => {
                    return Verdict::Respond(Reply::json_error(
                        503,
                        "unavailable",
                        "credentials cannot be checked right now; try again shortly",
                    ));
                }
                None => {
                    let hash = basic.map(|b| b.hash.clone());
                    return Verdict::Call(Outbound::VerifyPassword { hash, password: password.into() });
                }
            },
        };
        drop(state);
        match slot.filter(|_| ok) {
            Some(slot) => {
                cx.identity = Some(Identity { consumer: Some(slot), credential: Credential::Basic });
                cx.authenticating = true;
                if self.hide {
                    headers.remove("authorization");
                }
            }
            None => cx.challenge(&self.challenge),
        }
        Verdict::Continue
    }
}

/// The longest decoded basic credential accepted.
const BASIC_MAX: usize = 1024;

/// `Authorization: Basic base64(user:password)`, decoded into `out`.
fn parse_basic<'o>(value: &[u8], out: &'o mut [u8; BASIC_MAX]) -> Option<(&'o [u8], &'o [u8])> {
    let value = value.trim_ascii();
    if value.len() < 6 || !value[..6].eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let n = base64::engine::general_purpose::STANDARD.decode_slice(value[6..].trim_ascii(), out).ok()?;
    let decoded = &out[..n];
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some((&decoded[..colon], &decoded[colon + 1..]))
}

/// The compiled `acl`.
#[derive(Debug)]
pub struct Acl {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Acl {
    pub fn compile(spec: &AclSpec, path: &str, errors: &mut ConfigErrors) -> Option<Acl> {
        if spec.allow_groups.is_empty() && spec.deny_groups.is_empty() {
            errors.push(path.to_string(), "give allow_groups, deny_groups or both");
            return None;
        }
        Some(Acl { allow: spec.allow_groups.clone(), deny: spec.deny_groups.clone() })
    }
}

impl Policy for Acl {
    fn name(&self) -> &'static str {
        "acl"
    }

    /// Authorisation band, after the identity is known.
    fn priority(&self) -> u32 {
        2600
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, _: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        let consumer = cx.identity.and_then(|i| i.consumer).and_then(|s| req.consumers.get(s));
        let groups: &[String] = consumer.map_or(&[], |c| &c.groups);
        let denied = groups.iter().any(|g| self.deny.contains(g));
        let allowed = self.allow.is_empty() || groups.iter().any(|g| self.allow.contains(g));
        if consumer.is_some() && allowed && !denied {
            return Verdict::Continue;
        }
        Verdict::Respond(Reply::json_error(403, "forbidden", "the caller is not allowed on this route"))
    }
}

/// The 401 for a request the identity band could not authenticate: one `WWW-Authenticate`
/// per scheme tried, and a body that says nothing of why.
pub(crate) fn unauthorized(cx: &Context) -> Reply {
    let mut r = Reply::json_error(401, "unauthorized", "valid credentials are required");
    for c in &cx.challenges {
        r.headers.push(("www-authenticate".into(), c.to_string()));
    }
    r
}
