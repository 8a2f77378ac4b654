//! The node's key for secrets that must be opened again (consumers' HMAC secrets,
//! introspection client secrets, certificates' and upstreams' private keys): AES-256-GCM, the
//! key in a file beside the store's directory.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;

/// The node's key for secrets that must be opened again (consumers' HMAC secrets).
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// The key in `path`, made (32 random bytes, mode 0600) when there is none.
    pub fn open_or_create(path: &Path) -> std::io::Result<SecretBox> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut key = [0u8; 32];
                random(&mut key)?;
                let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
                f.write_all(&key)?;
                f.sync_all()?;
                key.to_vec()
            }
            Err(e) => return Err(e),
        };
        Self::from_bytes(&bytes)
            .ok_or_else(|| std::io::Error::other(format!("{} is not a 32-byte key", path.display())))
    }

    /// A key of this process only (tests, and gateways that keep no store).
    pub fn ephemeral() -> SecretBox {
        let mut key = [0u8; 32];
        random(&mut key).expect("/dev/urandom is readable");
        Self::from_bytes(&key).expect("a 32-byte key")
    }

    fn from_bytes(b: &[u8]) -> Option<SecretBox> {
        let key = UnboundKey::new(&AES_256_GCM, b).ok()?;
        (b.len() == 32).then(|| SecretBox { key: LessSafeKey::new(key) })
    }

    /// `v1.` and the base64url of nonce, ciphertext and tag.
    pub fn seal(&self, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce).expect("/dev/urandom is readable");
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .expect("AES-GCM seals any length");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("v1.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Option<Vec<u8>> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sealed.strip_prefix("v1.")?).ok()?;
        if raw.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::empty(), &mut data).ok()?;
        Some(plain.to_vec())
    }
}

fn random(out: &mut [u8]) -> std::io::Result<()> {
    aws_lc_rs::rand::fill(out).map_err(|_| std::io::Error::other("no random bytes"))
}
