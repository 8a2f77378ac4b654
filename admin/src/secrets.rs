//! Consumers' secrets: sealed at write (API keys to SHA-256 digests with a short fingerprint,
//! passwords to argon2id hashes), never stored or shown in plaintext, and kept out of every
//! answer (a GET, a list, an export show fingerprints and usernames only).
//!
//! What a client may send for a credential it does not change: a key's `fingerprint` alone
//! (or the stored form a PATCH merges over), a `basic_auth` with its `username` and no
//! password. Both keep the stored secret of the same consumer.

use std::collections::HashMap;

use ringway_policy::consumer::{fingerprint, hash_password, KeyDigest};
use ringway_policy::{ConfigError, ConfigErrors, ConsumerSpec};
use ringway_proxy::ConfigSpec;
use serde_json::Value;

use crate::state::ApiError;

/// Longest key and password accepted.
const MAX_SECRET: usize = 1024;
/// Shortest key accepted: a digest of a shorter one is too easy to reverse.
const MIN_KEY: usize = 16;

/// Seals the credentials of consumer `id` in place; `old` is the consumer as stored now.
pub fn seal(id: &str, c: &mut ConsumerSpec, old: Option<&ConsumerSpec>) -> Result<(), ConfigErrors> {
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
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Seals every consumer of `new` against `old`, the document as stored now.
pub fn seal_document(new: &mut ConfigSpec, old: &ConfigSpec) -> Result<(), ApiError> {
    let mut errors = ConfigErrors::default();
    for (id, c) in new.consumers.iter_mut() {
        if let Err(e) = seal(id, c, old.consumers.get(id)) {
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
}

/// A whole document as shown (exported): every consumer stripped.
pub fn public_document(spec: &ConfigSpec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(Value::Object(consumers)) = v.get_mut("consumers") {
        for c in consumers.values_mut() {
            strip(c);
        }
    }
    v
}
