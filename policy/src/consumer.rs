//! Consumers: who calls the APIs, with their groups, credentials and own policies. The specs
//! as stored (secrets sealed: API keys as SHA-256 digests, passwords as argon2id hashes), the
//! compiled [`Consumer`], and [`Consumers`], the persistent index a snapshot serves lookups
//! from: by key digest and by username in O(1) whatever the number of consumers, edited in
//! O(change).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use imbl::shared_ptr::DefaultSharedPtr;
use imbl::{GenericHashMap, OrdMap, Vector};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::ConfigErrors;
use crate::spec::PoliciesSpec;

/// `consumers.{id}` as stored: secrets only in sealed form (see the admin API, which seals
/// what users send).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "CredentialsSpec::is_empty")]
    pub credentials: CredentialsSpec,
    /// The consumer's own policies, applied to its requests over the route's and the global
    /// ones (limits, IP rules, header transforms).
    #[serde(default, skip_serializing_if = "PoliciesSpec::is_empty")]
    pub policies: PoliciesSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_auth: Vec<KeyCredentialSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicCredentialSpec>,
    /// Keys for tokens the consumer signs itself (`kid` names the key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtCredentialSpec>,
    /// The subject of the client certificate that names this consumer (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsCredentialSpec>,
}

/// `{subject: "CN=alice, O=Example"}`: the subject as the gateway reads it from a verified
/// client certificate (attributes in the certificate's order, joined by ", ").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsCredentialSpec {
    pub subject: String,
}

impl CredentialsSpec {
    pub fn is_empty(&self) -> bool {
        self.key_auth.is_empty() && self.basic_auth.is_none() && self.jwt.is_empty() && self.mtls.is_none()
    }
}

/// `{key_id, algorithm, public_key | secret}`. A public key is no secret: stored and shown as
/// given. An HMAC secret must verify, so it cannot be hashed: the admin API encrypts it with the
/// node's key (`secret_sealed`, stored) and keeps it open in memory only (`secret`, never
/// serialized).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtCredentialSpec {
    pub key_id: String,
    pub algorithm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sealed: Option<String>,
}

/// An API key: `key` as users send it; `digest` and `fingerprint` once sealed (the key itself
/// is never kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCredentialSpec {
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
    /// Hex SHA-256 of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A short name of the key, safe to show (see [`fingerprint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// A username and password: `password` as users send it; `password_hash` (argon2id, PHC
/// string) once sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentialSpec {
    pub username: String,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

/// The SHA-256 of an API key: what a key is stored and looked up as.
#[derive(Clone, Copy)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn of(key: &[u8]) -> KeyDigest {
        KeyDigest(Sha256::digest(key).into())
    }

    pub fn parse_hex(s: &str) -> Option<KeyDigest> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            out[i] = hex(pair[0])? << 4 | hex(pair[1])?;
        }
        Some(KeyDigest(out))
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Equality in constant time: how long a lookup takes says nothing of how much of a digest
/// matched (every word is compared, with no branch on any of them).
impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        let word = |d: &[u8; 32], i: usize| u64::from_ne_bytes(d[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let diff = (0..4).fold(0u64, |acc, i| acc | (word(&self.0, i) ^ word(&other.0, i)));
        std::hint::black_box(diff) == 0
    }
}

impl Eq for KeyDigest {}

impl std::hash::Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes(self.0[..8].try_into().unwrap_or_default()));
    }
}

impl std::fmt::Debug for JwtKeysDebug<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, a, _)| (k, a))).finish()
    }
}

struct JwtKeysDebug<'a>(&'a [(String, jsonwebtoken::Algorithm, jsonwebtoken::DecodingKey)]);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// The short name of a key shown by the API and sent upstream as `X-Credential-Id`: 12 hex
/// digits of a hash of the key kept apart from its digest (knowing it does not help to find
/// the key or its digest).
pub fn fingerprint(key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"ringway key fingerprint\0");
    h.update(key);
    h.finalize()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// An argon2id hash of `password` (PHC string), with the recommended cost (19 MiB, 2 passes).
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default().hash_password(password, &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash` (argon2id; compared in constant time).
/// Costs tens of milliseconds: never on a worker.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password, &h).is_ok())
}

/// A well-formed argon2id hash of nothing anyone knows: unknown usernames are checked against
/// it, so they take as long as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut pw = [0u8; 32];
        random_bytes(&mut pw);
        hash_password(&pw).unwrap_or_default()
    })
}

fn random_bytes(out: &mut [u8]) {
    use std::io::Read;
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(out)).is_ok();
    assert!(filled, "/dev/urandom is unreadable");
}

/// Whether `hash` is an argon2id PHC string.
pub fn is_argon2id(hash: &str) -> bool {
    argon2::password_hash::PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str() == "argon2id")
}

/// A compiled consumer.
pub struct Consumer {
    pub id: String,
    pub slot: u32,
    pub groups: Vec<String>,
    /// `X-Consumer-Groups` as sent upstream (the groups joined with ", ").
    pub groups_header: String,
    /// The fingerprints of its keys, by index.
    pub key_fingerprints: Vec<String>,
    key_digests: Vec<KeyDigest>,
    pub basic: Option<BasicCredential>,
    /// Keys of the tokens it signs itself, by `kid`.
    pub jwt_keys: Vec<(String, jsonwebtoken::Algorithm, jsonwebtoken::DecodingKey)>,
    /// Names its keys as they stand: a worker's verified tokens hold for them only.
    pub jwt_tag: u64,
    /// What a `key: consumer` rate limit counts it under (a hash of its id).
    pub limit_key: u64,
    /// The client-certificate subject that names it.
    pub subject: Option<Arc<str>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("id", &self.id)
            .field("slot", &self.slot)
            .field("groups", &self.groups)
            .field("keys", &self.key_fingerprints)
            .field("jwt_keys", &JwtKeysDebug(&self.jwt_keys))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct BasicCredential {
    pub username: String,
    /// The argon2id PHC string.
    pub hash: Arc<str>,
    /// Names this hash (salt included): a worker's checked passwords hold for it only.
    pub tag: u64,
}

/// Hashes a key digest by its first eight bytes (a digest is already uniform).
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHasher;

impl BuildHasher for DigestHasher {
    type Hasher = DigestHash;
    fn build_hasher(&self) -> DigestHash {
        DigestHash(0)
    }
}

#[derive(Debug, Default)]
pub struct DigestHash(u64);

impl Hasher for DigestHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// Keys of each kind one consumer may hold.
pub const MAX_KEYS: usize = 64;

/// Where a credential belongs: the consumer's slot and the key's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    pub slot: u32,
    pub index: u16,
}

type ByDigest = GenericHashMap<KeyDigest, KeyOwner, DigestHasher, DefaultSharedPtr>;
type ByName = GenericHashMap<Arc<str>, u32, rustc_hash::FxBuildHasher, DefaultSharedPtr>;

/// Every consumer of the node, indexed for the request path. Persistent: a clone shares all
/// of it, and an edit costs O(log n) per changed consumer.
#[derive(Debug, Clone, Default)]
pub struct Consumers {
    by_id: OrdMap<String, Arc<Consumer>>,
    slots: Vector<Option<Arc<Consumer>>>,
    free: Vector<u32>,
    keys: ByDigest,
    users: ByName,
    /// Consumers' own token keys, by `kid`.
    kids: ByName,
    /// Client-certificate subjects.
    subjects: ByName,
}

impl Consumers {
    /// The consumer in `slot`.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&Consumer> {
        self.slots.get(slot as usize).and_then(|c| c.as_deref())
    }

    pub fn by_id(&self, id: &str) -> Option<&Consumer> {
        self.by_id.get(id).map(|c| &**c)
    }

    /// Who holds the key with this digest.
    #[inline]
    pub fn key(&self, digest: &KeyDigest) -> Option<KeyOwner> {
        self.keys.get(digest).copied()
    }

    /// Who holds the token key `kid`.
    #[inline]
    pub fn kid(&self, kid: &str) -> Option<u32> {
        self.kids.get(kid).copied()
    }

    /// Who has this basic-auth username.
    #[inline]
    pub fn user(&self, name: &str) -> Option<u32> {
        self.users.get(name).copied()
    }

    /// Who is named by this client-certificate subject.
    #[inline]
    pub fn subject(&self, subject: &str) -> Option<u32> {
        self.subjects.get(subject).copied()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Puts (`Some`) or deletes (`None`) consumer `id`, reporting problems into `errors`; a
    /// consumer with problems is left as it was. Callers edit a clone and drop it when anything
    /// failed.
    pub fn edit(&mut self, id: &str, spec: Option<&ConsumerSpec>, errors: &mut ConfigErrors) {
        let old = self.by_id.remove(id);
        let slot = match &old {
            Some(old) => {
                self.unindex(old);
                old.slot
            }
            None => match self.free.pop_back() {
                Some(s) => s,
                None => {
                    self.slots.push_back(None);
                    (self.slots.len() - 1) as u32
                }
            },
        };
        let Some(spec) = spec else {
            self.slots.set(slot as usize, None);
            self.free.push_back(slot);
            return;
        };
        let before = errors.0.len();
        let path = format!("consumers.{id}");
        let mut digests = Vec::new();
        if spec.credentials.key_auth.len() > MAX_KEYS || spec.credentials.jwt.len() > MAX_KEYS {
            errors.push(format!("{path}.credentials"), format!("at most {MAX_KEYS} keys of each kind"));
        }
        for (i, k) in spec.credentials.key_auth.iter().enumerate() {
            let at = format!("{path}.credentials.key_auth[{i}]");
            if k.key.is_some() {
                errors.push(at, "a key must be sealed (stored as its digest) before it is compiled");
                continue;
            }
            match k.digest.as_deref().and_then(KeyDigest::parse_hex) {
                Some(d) => match self.keys.get(&d) {
                    Some(_) => errors.push(at, "this key belongs to another consumer"),
                    None if digests.iter().any(|(x, _)| *x == d) => errors.push(at, "the same key twice"),
                    None => digests.push((d, k.fingerprint.clone().unwrap_or_default())),
                },
                None => errors.push(at, "give the key"),
            }
        }
        let basic = match &spec.credentials.basic_auth {
            None => None,
            Some(b) => {
                let at = format!("{path}.credentials.basic_auth");
                if b.username.is_empty() || b.username.contains(':') || b.username.chars().any(char::is_control) {
                    errors.push(format!("{at}.username"), "a username is not empty and has no ':'");
                } else if self.users.contains_key(b.username.as_str()) {
                    errors.push(format!("{at}.username"), "this username belongs to another consumer");
                }
                match b.password_hash.as_deref().filter(|h| is_argon2id(h) && b.password.is_none()) {
                    Some(h) => {
                        let tag = u64::from_le_bytes(KeyDigest::of(h.as_bytes()).0[..8].try_into().unwrap_or_default());
                        Some(BasicCredential { username: b.username.clone(), hash: h.into(), tag })
                    }
                    None => {
                        errors.push(format!("{at}.password"), "give the password");
                        None
                    }
                }
            }
        };
        let mut jwt_keys = Vec::new();
        for (i, j) in spec.credentials.jwt.iter().enumerate() {
            let at = format!("{path}.credentials.jwt[{i}]");
            if j.key_id.is_empty() || j.key_id.len() > 256 {
                errors.push(format!("{at}.key_id"), "a key id is 1 to 256 characters");
            } else if self.kids.contains_key(j.key_id.as_str()) || jwt_keys.iter().any(|(k, _, _)| *k == j.key_id) {
                errors.push(format!("{at}.key_id"), "this key id belongs to another key");
            }
            let Some(alg) = crate::keys::algorithm(&j.algorithm) else {
                errors.push(
                    format!("{at}.algorithm"),
                    "one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA",
                );
                continue;
            };
            if j.secret.is_some() && j.secret_sealed.is_none() {
                errors.push(format!("{at}.secret"), "a secret must be sealed before it is compiled");
                continue;
            }
            let field = if j.secret.is_some() { "secret" } else { "public_key" };
            match crate::keys::consumer_key(alg, j.secret.as_deref().map(str::as_bytes), j.public_key.as_deref()) {
                Ok(k) => jwt_keys.push((j.key_id.clone(), alg, k)),
                Err(e) => errors.push(format!("{at}.{field}"), e),
            }
        }
        let subject = spec.credentials.mtls.as_ref().map(|m| m.subject.trim());
        if let Some(s) = subject {
            let at = format!("{path}.credentials.mtls.subject");
            if s.is_empty() || s.len() > 1024 || !s.contains('=') {
                errors.push(at, "a subject such as \"CN=alice, O=Example\"");
            } else if self.subjects.contains_key(s) {
                errors.push(at, "this subject belongs to another consumer");
            }
        }
        for (i, g) in spec.groups.iter().enumerate() {
            if g.is_empty() || g.contains(',') || !crate::headers::is_valid_header_value(g.as_bytes()) {
                errors.push(format!("{path}.groups[{i}]"), "a group is a non-empty name without ','");
            }
        }
        if id.is_empty()
            || id.len() > 128
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
        {
            errors.push(path.clone(), "an id is 1 to 128 letters, digits, '-', '_', '.' or '@'");
        }
        if errors.0.len() != before {
            // Put back what was there: the caller throws the whole edit away anyway, but the
            // index stays whole for the errors that follow.
            match old {
                Some(old) => self.index(old),
                None => {
                    self.slots.set(slot as usize, None);
                    self.free.push_back(slot);
                }
            }
            return;
        }
        let consumer = Arc::new(Consumer {
            id: id.to_string(),
            slot,
            groups: spec.groups.clone(),
            groups_header: spec.groups.join(", "),
            key_fingerprints: digests.iter().map(|(_, f)| f.clone()).collect(),
            key_digests: digests.iter().map(|(d, _)| *d).collect(),
            basic,
            jwt_tag: {
                let mut h = Sha256::new();
                for j in &spec.credentials.jwt {
                    h.update(j.key_id.as_bytes());
                    h.update([0]);
                    h.update(j.public_key.as_deref().unwrap_or("").as_bytes());
                    h.update([0]);
                    h.update(j.secret_sealed.as_deref().unwrap_or("").as_bytes());
                }
                u64::from_le_bytes(h.finalize()[..8].try_into().unwrap_or_default())
            },
            jwt_keys,
            limit_key: crate::limits::consumer_key(id),
            subject: subject.map(Into::into),
        });
        self.index(consumer);
    }

    fn index(&mut self, c: Arc<Consumer>) {
        for (i, d) in c.key_digests.iter().enumerate() {
            self.keys.insert(*d, KeyOwner { slot: c.slot, index: i as u16 });
        }
        if let Some(b) = &c.basic {
            self.users.insert(b.username.as_str().into(), c.slot);
        }
        for (kid, _, _) in &c.jwt_keys {
            self.kids.insert(kid.as_str().into(), c.slot);
        }
        if let Some(s) = &c.subject {
            self.subjects.insert(s.clone(), c.slot);
        }
        self.slots.set(c.slot as usize, Some(c.clone()));
        self.by_id.insert(c.id.clone(), c);
    }

    /// Takes consumer `id`'s credentials out of the index, keeping its slot (and its entry by
    /// id), so that a change of several consumers at once can move a key or a username from one
    /// to another and every updated consumer keeps its slot. The `edit` that follows puts it
    /// back.
    pub fn detach(&mut self, id: &str) {
        if let Some(c) = self.by_id.get(id).cloned() {
            self.unindex(&c);
        }
    }

    /// Removes `c`'s credentials from the index: only entries that still name its slot (after
    /// a `detach`, another consumer may hold them already).
    fn unindex(&mut self, c: &Consumer) {
        for d in &c.key_digests {
            if self.keys.get(d).is_some_and(|o| o.slot == c.slot) {
                self.keys.remove(d);
            }
        }
        if let Some(b) = &c.basic {
            if self.users.get(b.username.as_str()) == Some(&c.slot) {
                self.users.remove(b.username.as_str());
            }
        }
        for (kid, _, _) in &c.jwt_keys {
            if self.kids.get(kid.as_str()) == Some(&c.slot) {
                self.kids.remove(kid.as_str());
            }
        }
        if let Some(s) = &c.subject {
            if self.subjects.get(&**s) == Some(&c.slot) {
                self.subjects.remove(&**s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(key: &str, user: Option<&str>) -> ConsumerSpec {
        let mut c = ConsumerSpec { groups: vec!["g".into()], ..Default::default() };
        c.credentials.key_auth.push(KeyCredentialSpec {
            key: None,
            digest: Some(KeyDigest::of(key.as_bytes()).hex()),
            fingerprint: Some(fingerprint(key.as_bytes())),
        });
        if let Some(u) = user {
            c.credentials.basic_auth = Some(BasicCredentialSpec {
                username: u.into(),
                password: None,
                // A well-formed argon2id string (the test checks indexing, not passwords).
                password_hash: Some(
                    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$8m6hm9F8jOZ1lC9O4dBv6bKQxJ3tF3A7x6hY3h3y7xM"
                        .into(),
                ),
            });
        }
        c
    }

    #[test]
    fn keys_and_usernames_index_one_consumer_and_follow_edits() {
        let mut c = Consumers::default();
        let mut errors = ConfigErrors::default();
        c.edit("alice", Some(&with_key("alice-key-0123456789", Some("alice"))), &mut errors);
        c.edit("bob", Some(&with_key("bob-key-0123456789ab", None)), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let alice = c.key(&KeyDigest::of(b"alice-key-0123456789")).unwrap();
        assert_eq!(c.get(alice.slot).unwrap().id, "alice");
        assert_eq!(c.user("alice"), Some(alice.slot));
        assert!(c.key(&KeyDigest::of(b"alice-key-012345678")).is_none(), "one byte short is no key");

        // A key held by another consumer is refused, and the index is left as it was.
        let before = c.clone();
        c.edit("carol", Some(&with_key("bob-key-0123456789ab", None)), &mut errors);
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "consumers.carol.credentials.key_auth[0]");
        assert!(c.by_id("carol").is_none());
        assert_eq!(c.len(), before.len());
        // A refused change to an existing consumer keeps its old credentials indexed.
        let mut errors = ConfigErrors::default();
        c.edit("alice", Some(&with_key("bob-key-0123456789ab", None)), &mut errors);
        assert!(!errors.is_empty());
        assert_eq!(c.key(&KeyDigest::of(b"alice-key-0123456789")).map(|o| o.slot), Some(alice.slot));
        assert_eq!(c.user("alice"), Some(alice.slot));

        // Replaced: the old key and username no longer name anyone; deleted: the slot is reused.
        let mut errors = ConfigErrors::default();
        c.edit("alice", Some(&with_key("alice-key-new-0123456", None)), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(c.key(&KeyDigest::of(b"alice-key-0123456789")).is_none());
        assert!(c.user("alice").is_none());
        c.edit("alice", None, &mut errors);
        assert!(c.key(&KeyDigest::of(b"alice-key-new-0123456")).is_none());
        c.edit("dave", Some(&with_key("dave-key-0123456789a", None)), &mut errors);
        assert_eq!(c.by_id("dave").unwrap().slot, alice.slot, "the freed slot is reused");
        assert!(errors.is_empty(), "{errors:?}");
        // The snapshot taken before is untouched.
        assert_eq!(before.by_id("alice").unwrap().slot, alice.slot);
        assert!(before.key(&KeyDigest::of(b"alice-key-0123456789")).is_some());
    }

    #[test]
    fn digests_compare_whole() {
        let a = KeyDigest::of(b"x");
        let mut b = a;
        assert_eq!(a, b);
        b.0[31] ^= 1;
        assert_ne!(a, b);
        b = a;
        b.0[0] ^= 0x80;
        assert_ne!(a, b);
        assert_eq!(KeyDigest::parse_hex(&a.hex()), Some(a));
        assert!(KeyDigest::parse_hex("zz").is_none());
    }
}
