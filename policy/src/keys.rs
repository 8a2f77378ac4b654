//! Signing keys for `jwt_auth`: the key sets (JWKS) of issuers, fetched off the workers by the
//! engine and shared with every worker through one [`KeyStore`] (read without a lock, replaced
//! whole), and the keys consumers hold themselves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// One verification key.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: Option<String>,
    /// The algorithm the key is for, when its set says.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl SigningKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, {:?})", self.kid, self.alg)
    }
}

/// An issuer's key set as last fetched.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Whether a fetch ever succeeded (without one, tokens get a 503, not a 401).
    pub fetched: bool,
    pub keys: Vec<SigningKey>,
    /// A digest of the document it was read from: a fetch of the same set changes nothing.
    pub digest: u64,
}

impl KeySet {
    /// Parses a JWKS document; keys of unknown types or algorithms are skipped.
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys = set
            .keys
            .iter()
            .filter(|k| k.is_supported())
            .filter_map(|k| {
                let alg = k.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
                DecodingKey::from_jwk(k).ok().map(|key| SigningKey { kid: k.common.key_id.clone(), alg, key })
            })
            .collect();
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            h.finish()
        };
        Ok(KeySet { fetched: true, keys, digest })
    }
}

/// Every issuer's key set, by `jwks_uri`. One per node, shared by the workers and the thread
/// that fetches; readers take no lock.
#[derive(Default)]
pub struct KeyStore {
    sets: ArcSwap<HashMap<Arc<str>, Arc<KeySet>>>,
    /// Moves whenever a set changes: a worker's verified tokens hold only while it stands.
    generation: AtomicU64,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyStore({} sets)", self.sets.load().len())
    }
}

impl KeyStore {
    pub fn get(&self, uri: &str) -> Option<Arc<KeySet>> {
        self.sets.load().get(uri).cloned()
    }

    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the set of `uri` (one writer: the fetching thread). The same set fetched again
    /// changes nothing, so workers keep the tokens they verified.
    pub fn put(&self, uri: &str, set: KeySet) {
        if self.get(uri).is_some_and(|old| old.fetched == set.fetched && old.digest == set.digest) {
            return;
        }
        let set = Arc::new(set);
        self.sets.rcu(|old| {
            let mut next = HashMap::clone(old);
            next.insert(uri.into(), set.clone());
            next
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Parses an algorithm's name as JWT headers write it (`none` is not one).
pub fn algorithm(name: &str) -> Option<Algorithm> {
    name.parse::<Algorithm>().ok()
}

/// A key a consumer holds for tokens it signs itself: `secret` for HS*, a PEM `public_key`
/// otherwise.
pub fn consumer_key(alg: Algorithm, secret: Option<&[u8]>, public_key: Option<&str>) -> Result<DecodingKey, String> {
    match (alg.family(), secret, public_key) {
        (AlgorithmFamily::Hmac, Some(s), None) if s.len() >= 32 => {
            Ok(DecodingKey::from_secret(s).map_err(|e| e.to_string())?)
        }
        (AlgorithmFamily::Hmac, Some(_), None) => Err("an HMAC secret is at least 32 bytes".into()),
        (AlgorithmFamily::Hmac, _, _) => Err("an HS algorithm takes a secret (and no public key)".into()),
        (f, None, Some(pem)) => {
            let pem = pem.as_bytes();
            match f {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
                AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
                AlgorithmFamily::Hmac => unreachable!("matched above"),
            }
            .map_err(|e| format!("not a PEM public key for {alg:?}: {e}"))
        }
        _ => Err("an RS, PS, ES or EdDSA algorithm takes a PEM public_key (and no secret)".into()),
    }
}
