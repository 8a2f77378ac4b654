//! Certificates' private keys: sealed at write with the node's key (AES-256-GCM, as consumers'
//! HMAC secrets), opened in memory when the store is read, and never shown: a GET, a list and
//! an export show the chain, the names and the settings only.
//!
//! A certificate sent without `key` keeps the key it has when its chain is unchanged, so an
//! exported document can be PUT back whole. A chain that has expired is refused at write.

use ringway_policy::ConfigErrors;
use ringway_proxy::tls::CertificateSpec;
use serde_json::Value;

use crate::secret_box::SecretBox;

/// Longest key accepted (a 16384-bit RSA key in PEM is about 13 KiB).
const MAX_KEY: usize = 32 * 1024;

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Seals the key of certificate `id` in place; `old` is the certificate as stored now.
pub fn seal(
    id: &str,
    c: &mut CertificateSpec,
    old: Option<&CertificateSpec>,
    secrets: &SecretBox,
) -> Result<(), ConfigErrors> {
    let at = format!("certificates.{id}");
    let mut errors = ConfigErrors::default();
    match c.key.take() {
        Some(k) if k.is_empty() || k.len() > MAX_KEY => {
            errors.push(format!("{at}.key"), format!("a key is 1 to {MAX_KEY} bytes of PEM"));
        }
        Some(k) => {
            // The same key keeps its sealed form: nothing changed.
            c.key_sealed = match old.filter(|o| o.key.as_deref() == Some(k.as_str())) {
                Some(o) => o.key_sealed.clone(),
                None => Some(secrets.seal(k.as_bytes())),
            };
            c.key = Some(k);
        }
        None => match old.filter(|o| o.cert == c.cert && o.key.is_some()) {
            Some(o) if c.key_sealed.is_none() || c.key_sealed == o.key_sealed => {
                c.key.clone_from(&o.key);
                c.key_sealed.clone_from(&o.key_sealed);
            }
            _ if c.key_sealed.is_some() => errors.push(format!("{at}.key_sealed"), "set by the gateway"),
            _ => errors.push(format!("{at}.key"), "the private key (PEM) is required"),
        },
    }
    if old.is_none_or(|o| o.cert != c.cert) {
        if let Some((not_after, text)) = ringway_proxy::tls::sites::expiry(&c.cert) {
            if not_after <= now_unix() {
                errors.push(format!("{at}.cert"), format!("the certificate expired on {text}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Opens the sealed key of each certificate of a document read from the store.
pub fn open(
    certs: &mut std::collections::BTreeMap<String, CertificateSpec>,
    secrets: &SecretBox,
) -> Result<(), String> {
    for (id, c) in certs.iter_mut() {
        if let Some(sealed) = &c.key_sealed {
            let plain = secrets
                .open(sealed)
                .ok_or_else(|| format!("certificates.{id}: the key cannot be opened with this node's key"))?;
            c.key = Some(String::from_utf8(plain).map_err(|_| format!("certificates.{id}: the key is not text"))?);
        }
    }
    Ok(())
}

/// Strips the sealed key from a certificate's JSON.
pub fn strip(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("key_sealed");
        o.remove("key");
    }
}

/// A certificate as shown.
pub fn public(c: &CertificateSpec) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    strip(&mut v);
    v
}

/// Seals the client key of upstream `id`'s TLS in place; `old` is the upstream as stored now
/// (a key left out is kept when the client certificate is the same).
pub fn seal_upstream(
    id: &str,
    u: &mut ringway_proxy::config::UpstreamSpec,
    old: Option<&ringway_proxy::config::UpstreamSpec>,
    secrets: &SecretBox,
) -> Result<(), ConfigErrors> {
    let Some(t) = u.tls.as_mut() else { return Ok(()) };
    let at = format!("upstreams.{id}.tls");
    let old = old.and_then(|o| o.tls.as_ref());
    let mut errors = ConfigErrors::default();
    match t.client_key.take() {
        Some(k) if k.is_empty() || k.len() > MAX_KEY => {
            errors.push(format!("{at}.client_key"), format!("a key is 1 to {MAX_KEY} bytes of PEM"));
        }
        Some(k) => {
            t.client_key_sealed = match old.filter(|o| o.client_key.as_deref() == Some(k.as_str())) {
                Some(o) => o.client_key_sealed.clone(),
                None => Some(secrets.seal(k.as_bytes())),
            };
            t.client_key = Some(k);
        }
        None if t.client_cert.is_none() => {
            if t.client_key_sealed.is_some() {
                errors.push(format!("{at}.client_key_sealed"), "set by the gateway");
            }
        }
        None => match old.filter(|o| o.client_cert == t.client_cert && o.client_key.is_some()) {
            Some(o) if t.client_key_sealed.is_none() || t.client_key_sealed == o.client_key_sealed => {
                t.client_key.clone_from(&o.client_key);
                t.client_key_sealed.clone_from(&o.client_key_sealed);
            }
            _ => errors.push(format!("{at}.client_key"), "give the client certificate's key (PEM)"),
        },
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Opens the sealed client keys of upstreams read from the store.
pub fn open_upstreams(
    ups: &mut std::collections::BTreeMap<String, ringway_proxy::config::UpstreamSpec>,
    secrets: &SecretBox,
) -> Result<(), String> {
    for (id, u) in ups.iter_mut() {
        if let Some(t) = u.tls.as_mut() {
            if let Some(sealed) = &t.client_key_sealed {
                let plain = secrets
                    .open(sealed)
                    .ok_or_else(|| format!("upstreams.{id}.tls: the key cannot be opened with this node's key"))?;
                t.client_key =
                    Some(String::from_utf8(plain).map_err(|_| format!("upstreams.{id}: the key is not text"))?);
            }
        }
    }
    Ok(())
}

/// Strips the sealed client key from an upstream's JSON.
pub fn strip_upstream(v: &mut Value) {
    if let Some(Value::Object(t)) = v.get_mut("tls") {
        t.remove("client_key_sealed");
        t.remove("client_key");
    }
}

/// An upstream as shown.
pub fn public_upstream(u: &ringway_proxy::config::UpstreamSpec) -> Value {
    let mut v = serde_json::to_value(u).unwrap_or(Value::Null);
    strip_upstream(&mut v);
    v
}

/// The TLS listener and its certificates for `/admin/v1/status`: where it listens, each
/// certificate's names and expiry.
pub fn status(state: &crate::state::AdminState) -> Value {
    let snapshot = state.snapshot();
    let certificates: Vec<Value> = snapshot
        .certificates
        .values()
        .map(|c| {
            serde_json::json!({
                "id": c.id,
                "snis": c.snis,
                "default": c.default,
                "not_after": c.not_after,
                "expires_in_days": (c.not_after - now_unix()) / 86_400,
            })
        })
        .collect();
    serde_json::json!({
        "certificates": certificates,
        "sni_required": snapshot.tls_settings.sni_required,
        "listen": state.tls_listen.bound.map(|a| a.to_string()),
    })
}

/// `ringway_certificate_expiry_timestamp_seconds{certificate}`, appended to `out`.
pub fn render_expiry(out: &mut String, snapshot: &ringway_proxy::Snapshot) {
    let certs = &snapshot.certificates;
    if certs.is_empty() {
        return;
    }
    out.push_str(
        "# HELP ringway_certificate_expiry_timestamp_seconds When each TLS certificate expires (Unix time).\n",
    );
    out.push_str("# TYPE ringway_certificate_expiry_timestamp_seconds gauge\n");
    for c in certs.values() {
        // Certificate ids are resource ids: no quote or backslash to escape.
        out.push_str(&format!(
            "ringway_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}} {}\n",
            c.id.replace(['\\', '"', '\n'], "_"),
            c.not_after
        ));
    }
}
