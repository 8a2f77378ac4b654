//! Consumers' secrets: sealed at write (API keys to SHA-256 digests with a short fingerprint,
//! passwords to argon2id hashes), never stored or shown in plaintext, and kept out of every
//! answer (a GET, a list, an export show fingerprints and usernames only).
//!
//! What a client may send for a credential it does not change: a key's `fingerprint` alone
//! (or the stored form a PATCH merges over), a `basic_auth` with its `username` and no
//! password, a `jwt` key with its `key_id` and algorithm and no secret. Each keeps the stored
//! secret of the same consumer.
//!
//! HMAC secrets of consumers' JWT keys must verify, so they cannot be hashed: they are
//! encrypted (AES-256-GCM) with the node's key, a file beside the store's directory
//! ([`SecretBox`]), and opened in memory when the store is read.

use std::collections::HashMap;

use ringway_policy::consumer::{fingerprint, hash_password, KeyDigest};
use ringway_policy::{ConfigError, ConfigErrors, ConsumerSpec};
use ringway_proxy::ConfigSpec;
use serde_json::Value;

use crate::error::ApiError;
pub use crate::secret_box::SecretBox;

/// Longest key and password accepted.
const MAX_SECRET: usize = 1024;
/// Shortest key accepted: a digest of a shorter one is too easy to reverse.
const MIN_KEY: usize = 16;

/// Seals the introspection client secret of `policies` at `path`; `old`: the policies as stored
/// now (a secret left out is kept when the endpoint and client are the same).
pub fn seal_policies(
    path: &str,
    policies: &mut ringway_policy::PoliciesSpec,
    old: Option<&ringway_policy::PoliciesSpec>,
    secrets: &SecretBox,
) -> Result<(), ConfigErrors> {
    let Some(i) = &mut policies.oauth2_introspection else { return Ok(()) };
    let mut errors = ConfigErrors::default();
    let at = format!("{path}.oauth2_introspection");
    match i.client_secret.clone() {
        Some(s) if s.is_empty() || s.len() > MAX_SECRET => {
            errors.push(format!("{at}.client_secret"), format!("a secret is 1 to {MAX_SECRET} bytes"));
        }
        Some(s) => {
            // The same secret for the same endpoint and client keeps its sealed form.
            let same = old.and_then(|o| o.oauth2_introspection.as_ref()).filter(|o| {
                o.endpoint == i.endpoint && o.client_id == i.client_id && o.client_secret.as_deref() == Some(s.as_str())
            });
            i.client_secret_sealed = match same {
                Some(o) => o.client_secret_sealed.clone(),
                None => Some(secrets.seal(s.as_bytes())),
            };
        }
        None => {
            let kept = old.and_then(|o| o.oauth2_introspection.as_ref()).filter(|o| {
                o.endpoint == i.endpoint
                    && o.client_id == i.client_id
                    && (i.client_secret_sealed.is_none() || i.client_secret_sealed == o.client_secret_sealed)
            });
            match kept {
                Some(o) => {
                    i.client_secret.clone_from(&o.client_secret);
                    i.client_secret_sealed.clone_from(&o.client_secret_sealed);
                }
                None => errors.push(format!("{at}.client_secret"), "give the client secret"),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn open_policies(path: &str, p: &mut ringway_policy::PoliciesSpec, secrets: &SecretBox) -> Result<(), String> {
    if let Some(i) = &mut p.oauth2_introspection {
        if let Some(sealed) = &i.client_secret_sealed {
            let plain = secrets
                .open(sealed)
                .ok_or_else(|| format!("{path}: the client secret cannot be opened with this node's key"))?;
            i.client_secret = Some(String::from_utf8(plain).map_err(|_| format!("{path}: a secret is not text"))?);
        }
    }
    Ok(())
}

/// Opens the sealed secrets of `spec` (a document read from the store): certificates' keys,
/// consumers' HMAC secrets, introspection client secrets.
pub fn open_document(spec: &mut ConfigSpec, secrets: &SecretBox) -> Result<(), String> {
    crate::certs::open(&mut spec.certificates, secrets)?;
    crate::certs::open_upstreams(&mut spec.upstreams, secrets)?;
    for (id, r) in spec.routes.iter_mut() {
        open_policies(&format!("routes.{id}.policies"), &mut r.policies, secrets)?;
    }
    open_policies("global_policies", &mut spec.global_policies, secrets)?;
    for (id, c) in spec.consumers.iter_mut() {
        for (i, j) in c.credentials.jwt.iter_mut().enumerate() {
            if let Some(sealed) = &j.secret_sealed {
                let plain = secrets.open(sealed).ok_or_else(|| {
                    format!("consumers.{id}.credentials.jwt[{i}]: the secret cannot be opened with this node's key")
                })?;
                j.secret = Some(String::from_utf8(plain).map_err(|_| format!("consumers.{id}: a secret is not text"))?);
            }
        }
    }
    Ok(())
}

/// Seals the credentials of consumer `id` in place; `old` is the consumer as stored now.
pub fn seal(
    id: &str,
    c: &mut ConsumerSpec,
    old: Option<&ConsumerSpec>,
    secrets: &SecretBox,
) -> Result<(), ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let path = format!("consumers.{id}.credentials");
    let old_keys = old.map_or(&[][..], |o| &o.credentials.key_auth[..]);
    for (i, k) in c.credentials.key_auth.iter_mut().enumerate() {
        let at = format!("{path}.key_auth[{i}]");
        match k.key.take() {
            Some(key) => {
                if k.digest.is_some() {
                    errors.push(at, "give the key or nothing else");
                } else if key.len() < MIN_KEY || key.len() > MAX_SECRET {
                    errors.push(format!("{at}.key"), format!("a key is {MIN_KEY} to {MAX_SECRET} characters"));
                } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
                    errors.push(format!("{at}.key"), "a key is printable ASCII without spaces");
                } else {
                    k.digest = Some(KeyDigest::of(key.as_bytes()).hex());
                    k.fingerprint = Some(fingerprint(key.as_bytes()));
                }
            }
            None => {
                // A credential kept as it is: named by its fingerprint (and, from a merge, its
                // digest), which must be one this consumer holds.
                let same = old_keys.iter().find(|o| {
                    o.fingerprint.is_some()
                        && o.fingerprint == k.fingerprint
                        && (k.digest.is_none() || k.digest == o.digest)
                });
                match same {
                    Some(o) => k.digest.clone_from(&o.digest),
                    None => errors.push(at, "give the key (a fingerprint names only a key this consumer already has)"),
                }
            }
        }
    }
    if let Some(b) = &mut c.credentials.basic_auth {
        let at = format!("{path}.basic_auth");
        let kept = old.and_then(|o| o.credentials.basic_auth.as_ref()).filter(|o| o.username == b.username);
        match b.password.take() {
            Some(p) if p.is_empty() || p.len() > MAX_SECRET => {
                errors.push(format!("{at}.password"), format!("a password is 1 to {MAX_SECRET} bytes"));
            }
            Some(p) => match hash_password(p.as_bytes()) {
                Ok(h) => b.password_hash = Some(h),
                Err(e) => errors.push(format!("{at}.password"), format!("cannot hash the password: {e}")),
            },
            None => match kept {
                Some(o) if b.password_hash.is_none() || b.password_hash == o.password_hash => {
                    b.password_hash.clone_from(&o.password_hash);
                }
                _ => errors.push(format!("{at}.password"), "give the password"),
            },
        }
    }
    let old_jwt = old.map_or(&[][..], |o| &o.credentials.jwt[..]);
    for (i, j) in c.credentials.jwt.iter_mut().enumerate() {
        let at = format!("{path}.jwt[{i}]");
        let hmac = j.algorithm.starts_with("HS");
        match j.secret.take() {
            Some(_) if !hmac => errors.push(format!("{at}.secret"), "only HS algorithms take a secret"),
            Some(s) if s.len() < 32 || s.len() > MAX_SECRET => {
                errors.push(format!("{at}.secret"), format!("a secret is 32 to {MAX_SECRET} bytes"));
            }
            Some(s) => {
                // The same secret for the same key keeps its sealed form: nothing changed.
                let same = old_jwt.iter().find(|o| {
                    o.key_id == j.key_id && o.algorithm == j.algorithm && o.secret.as_deref() == Some(s.as_str())
                });
                j.secret_sealed = match same {
                    Some(o) => o.secret_sealed.clone(),
                    None => Some(secrets.seal(s.as_bytes())),
                };
                j.secret = Some(s);
            }
            None if hmac => {
                // Kept: the same key id and algorithm as a key this consumer has.
                let same = old_jwt.iter().find(|o| {
                    o.key_id == j.key_id
                        && o.algorithm == j.algorithm
                        && o.secret.is_some()
                        && (j.secret_sealed.is_none() || j.secret_sealed == o.secret_sealed)
                });
                match same {
                    Some(o) => {
                        j.secret.clone_from(&o.secret);
                        j.secret_sealed.clone_from(&o.secret_sealed);
                    }
                    None => errors.push(format!("{at}.secret"), "give the secret"),
                }
            }
            None => {
                if j.secret_sealed.is_some() {
                    errors.push(format!("{at}.secret_sealed"), "set by the gateway");
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Seals every secret of `new` against `old`, the document as stored now.
pub fn seal_document(new: &mut ConfigSpec, old: &ConfigSpec, secrets: &SecretBox) -> Result<(), ApiError> {
    let mut errors = ConfigErrors::default();
    for (id, r) in new.routes.iter_mut() {
        let old = old.routes.get(id).map(|o| &o.policies);
        if let Err(e) = seal_policies(&format!("routes.{id}.policies"), &mut r.policies, old, secrets) {
            errors.0.extend(e.0);
        }
    }
    if let Err(e) = seal_policies("global_policies", &mut new.global_policies, Some(&old.global_policies), secrets) {
        errors.0.extend(e.0);
    }
    for (id, c) in new.consumers.iter_mut() {
        if let Err(e) = seal(id, c, old.consumers.get(id), secrets) {
            errors.0.extend(e.0);
        }
    }
    for (id, u) in new.upstreams.iter_mut() {
        if let Err(e) = crate::certs::seal_upstream(id, u, old.upstreams.get(id), secrets) {
            errors.0.extend(e.0);
        }
    }
    for (id, c) in new.certificates.iter_mut() {
        if let Err(e) = crate::certs::seal(id, c, old.certificates.get(id), secrets) {
            errors.0.extend(e.0);
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    // Two consumers of one document never share a key or a username.
    let mut keys: HashMap<&str, &str> = HashMap::new();
    let mut users: HashMap<&str, &str> = HashMap::new();
    let mut clashes = Vec::new();
    for (id, c) in &new.consumers {
        for (i, k) in c.credentials.key_auth.iter().enumerate() {
            if let Some(other) = k.digest.as_deref().and_then(|d| keys.insert(d, id)).filter(|o| *o != id) {
                clashes.push(ConfigError::new(
                    format!("consumers.{id}.credentials.key_auth[{i}]"),
                    format!("consumer {other:?} holds the same key"),
                ));
            }
        }
        if let Some(b) = &c.credentials.basic_auth {
            if let Some(other) = users.insert(&b.username, id) {
                clashes.push(ConfigError::new(
                    format!("consumers.{id}.credentials.basic_auth.username"),
                    format!("consumer {other:?} has the same username"),
                ));
            }
        }
    }
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(conflict(clashes))
    }
}

/// Consumer `id`, about to be stored as `c`, against the consumers the node has: a key or a
/// username held by another consumer is a conflict.
pub fn check_owners(id: &str, c: &ConsumerSpec, now: &ringway_policy::Consumers) -> Result<(), ApiError> {
    let mut clashes = Vec::new();
    for (i, k) in c.credentials.key_auth.iter().enumerate() {
        let owner = k.digest.as_deref().and_then(KeyDigest::parse_hex).and_then(|d| now.key(&d));
        if let Some(other) = owner.and_then(|o| now.get(o.slot)).filter(|o| o.id != id) {
            clashes.push(ConfigError::new(
                format!("consumers.{id}.credentials.key_auth[{i}]"),
                format!("consumer {:?} holds the same key", other.id),
            ));
        }
    }
    if let Some(m) = &c.credentials.mtls {
        if let Some(other) = now.subject(m.subject.trim()).and_then(|s| now.get(s)).filter(|o| o.id != id) {
            clashes.push(ConfigError::new(
                format!("consumers.{id}.credentials.mtls.subject"),
                format!("consumer {:?} has the same subject", other.id),
            ));
        }
    }
    if let Some(b) = &c.credentials.basic_auth {
        if let Some(other) = now.user(&b.username).and_then(|s| now.get(s)).filter(|o| o.id != id) {
            clashes.push(ConfigError::new(
                format!("consumers.{id}.credentials.basic_auth.username"),
                format!("consumer {:?} has the same username", other.id),
            ));
        }
    }
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(conflict(clashes))
    }
}

fn conflict(problems: Vec<ConfigError>) -> ApiError {
    ApiError {
        status: 409,
        code: "credential_conflict",
        message: "a credential belongs to another consumer".into(),
        problems,
    }
}

/// A consumer as shown: no digest, no hash.
pub fn public_consumer(c: &ConsumerSpec) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    strip(&mut v);
    v
}

/// Strips the sealed secrets from a consumer's JSON.
fn strip(v: &mut Value) {
    let Some(creds) = v.get_mut("credentials") else { return };
    if let Some(Value::Array(keys)) = creds.get_mut("key_auth") {
        for k in keys.iter_mut().filter_map(Value::as_object_mut) {
            k.remove("digest");
        }
    }
    if let Some(Value::Object(b)) = creds.get_mut("basic_auth") {
        b.remove("password_hash");
    }
    if let Some(Value::Array(keys)) = creds.get_mut("jwt") {
        for k in keys.iter_mut().filter_map(Value::as_object_mut) {
            k.remove("secret_sealed");
        }
    }
}

/// Route or global policies as shown: no sealed client secret.
pub fn strip_policies(policies: &mut Value) {
    if let Some(Value::Object(i)) = policies.get_mut("oauth2_introspection") {
        i.remove("client_secret_sealed");
    }
}

/// A route as shown.
pub fn public_route(r: &ringway_proxy::config::RouteSpec) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(p) = v.get_mut("policies") {
        strip_policies(p);
    }
    v
}

/// A whole document as shown (exported): every consumer, route and the global policies
/// stripped of sealed secrets.
pub fn public_document(spec: &ConfigSpec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(Value::Object(consumers)) = v.get_mut("consumers") {
        for c in consumers.values_mut() {
            strip(c);
        }
    }
    if let Some(Value::Object(routes)) = v.get_mut("routes") {
        for r in routes.values_mut() {
            if let Some(p) = r.get_mut("policies") {
                strip_policies(p);
            }
        }
    }
    if let Some(g) = v.get_mut("global_policies") {
        strip_policies(g);
    }
    if let Some(Value::Object(ups)) = v.get_mut("upstreams") {
        ups.values_mut().for_each(crate::certs::strip_upstream);
    }
    if let Some(Value::Object(certs)) = v.get_mut("certificates") {
        certs.values_mut().for_each(crate::certs::strip);
    }
    v
}
