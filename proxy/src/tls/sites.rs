//! Certificates compiled for the TLS listener: each into a rustls `ServerConfig` of its own
//! (its chain and key, its client-certificate rule, the node's ticket keys), and the index by
//! server name that a handshake chooses from once it has read the ClientHello.
//!
//! Built on the admin thread when a certificate changes; workers only look names up.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use ringway_policy::ConfigErrors;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::spec::{CertificateSpec, ClientAuthSpec};

/// The crypto provider every TLS connection of the node uses.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// One certificate ready to serve.
#[derive(Debug)]
pub struct Site {
    pub id: String,
    pub config: Arc<ServerConfig>,
    /// The names it serves (lowercase).
    pub snis: Vec<String>,
    /// When the certificate expires (Unix seconds).
    pub not_after: i64,
    pub default: bool,
}

/// Serves the one certificate of a site, whatever the client asked.
#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl ResolvesServerCert for Single {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What a certificate says of itself.
struct Facts {
    names: Vec<String>,
    not_after: i64,
    expiry: String,
}

fn facts(der: &[u8]) -> Result<Facts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("unreadable subjectAltName: {e}")),
    };
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|c| c.as_str().ok()).map(str::to_ascii_lowercase));
    }
    let v = cert.validity();
    Ok(Facts { names, not_after: v.not_after.timestamp(), expiry: v.not_after.to_string() })
}

/// Whether certificate name `have` (maybe `*.x`) covers server name `want` (maybe `*.x`).
fn covers(have: &str, want: &str) -> bool {
    if have == want {
        return true;
    }
    match (have.strip_prefix("*."), want.split_once('.')) {
        (Some(suffix), Some((label, rest))) => label != "*" && !label.is_empty() && rest == suffix,
        _ => false,
    }
}

/// A server name as written in `snis`: DNS labels, the first of which may be `*`.
fn valid_sni(s: &str) -> bool {
    let body = s.strip_prefix("*.").unwrap_or(s);
    !body.is_empty()
        && s.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The client-certificate rule of a site.
fn client_verifier(
    at: &str,
    c: &ClientAuthSpec,
    errors: &mut ConfigErrors,
) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in CertificateDer::pem_slice_iter(c.ca.as_bytes()).enumerate() {
        match der {
            Ok(d) => {
                if let Err(e) = roots.add(d) {
                    errors.push(format!("{at}.ca"), format!("certificate {i}: {e}"));
                }
            }
            Err(e) => errors.push(format!("{at}.ca"), format!("certificate {i} is not PEM: {e}")),
        }
    }
    if roots.is_empty() {
        errors.push(format!("{at}.ca"), "no CA certificate in PEM");
        return None;
    }
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let b = if c.required { b } else { b.allow_unauthenticated() };
    match b.build() {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(format!("{at}.ca"), e.to_string());
            None
        }
    }
}

/// When the first certificate of a PEM chain expires: Unix seconds and as text.
pub fn expiry(pem: &str) -> Option<(i64, String)> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
    facts(&der).ok().map(|f| (f.not_after, f.expiry))
}

/// Compiles certificate `id`, checking everything a handshake would trip on: the chain parses,
/// the key is this certificate's, the server names are the certificate's. (Expiry is checked
/// where certificates are written, so a stored one that expires does not stop a restart.)
pub fn compile(id: &str, spec: &CertificateSpec) -> Result<Site, ConfigErrors> {
    let at = format!("certificates.{id}");
    let mut errors = ConfigErrors::default();
    let mut chain = Vec::new();
    for (i, der) in CertificateDer::pem_slice_iter(spec.cert.as_bytes()).enumerate() {
        match der {
            Ok(d) => chain.push(d),
            Err(e) => errors.push(format!("{at}.cert"), format!("certificate {i} of the chain is not PEM: {e}")),
        }
    }
    if chain.is_empty() && errors.is_empty() {
        errors.push(format!("{at}.cert"), "no certificate in PEM (-----BEGIN CERTIFICATE-----)");
    }
    let mut leaf = None;
    for (i, d) in chain.iter().enumerate() {
        match facts(d) {
            Ok(f) if i == 0 => leaf = Some(f),
            Ok(_) => {}
            Err(e) => errors.push(format!("{at}.cert"), format!("certificate {i} of the chain: {e}")),
        }
    }
    let key = match spec.key.as_deref() {
        None => {
            errors.push(format!("{at}.key"), "the private key (PEM) is required");
            None
        }
        Some(k) => match PrivateKeyDer::from_pem_slice(k.as_bytes()) {
            Ok(k) => match provider().key_provider.load_private_key(k) {
                Ok(k) => Some(k),
                Err(e) => {
                    errors.push(format!("{at}.key"), format!("unusable private key: {e}"));
                    None
                }
            },
            Err(e) => {
                errors.push(format!("{at}.key"), format!("no private key in PEM: {e}"));
                None
            }
        },
    };
    let mut snis: Vec<String> = spec.snis.iter().map(|s| s.to_ascii_lowercase()).collect();
    if let Some(f) = &leaf {
        if snis.is_empty() {
            snis.clone_from(&f.names);
        }
        for (i, s) in snis.iter().enumerate() {
            if !valid_sni(s) {
                errors.push(format!("{at}.snis[{i}]"), format!("{s:?} is not a server name"));
            } else if !f.names.iter().any(|n| covers(n, s)) {
                errors.push(
                    format!("{at}.snis[{i}]"),
                    format!("{s:?} is not among the certificate's names ({})", f.names.join(", ")),
                );
            }
        }
        if snis.is_empty() && !spec.default {
            errors.push(format!("{at}.snis"), "no server name: list snis, or mark the certificate default");
        }
    }
    let verifier = match &spec.client_auth {
        Some(c) => client_verifier(&format!("{at}.client_auth"), c, &mut errors),
        None => None,
    };
    let (Some(leaf), Some(key), true) = (leaf, key, errors.is_empty()) else { return Err(errors) };
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            errors.push(format!("{at}.key"), "the private key does not match the certificate");
            return Err(errors);
        }
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3");
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Single(Arc::new(certified))));
    config.alpn_protocols = super::ALPN.iter().map(|p| p.to_vec()).collect();
    // Resumption by ticket only, so no session state is kept. Each certificate has its own
    // rotating ticket keys (a new key every 6 hours, the previous one still accepted), shared by
    // every worker, so a client resumes on any core but never with another site's session. A
    // site that checks client certificates issues none: a resumed session would skip the check
    // against its authority as it stands now.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    if spec.client_auth.is_some() {
        config.send_tls13_tickets = 0;
    } else {
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
            let mut errors = ConfigErrors::default();
            errors.push(at.clone(), format!("cannot make session-ticket keys: {e}"));
            errors
        })?;
        config.send_tls13_tickets = 1;
    }
    Ok(Site { id: id.to_string(), config: Arc::new(config), snis, not_after: leaf.not_after, default: spec.default })
}

/// Every site, indexed by server name.
#[derive(Debug, Default)]
pub struct TlsSites {
    pub sites: Vec<Arc<Site>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` by `example.com`.
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
    pub sni_required: bool,
}

impl TlsSites {
    /// The index of `sites`; two certificates claiming one name, or two defaults, are refused.
    pub fn build(sites: Vec<Arc<Site>>, sni_required: bool) -> Result<TlsSites, ConfigErrors> {
        let mut t = TlsSites { sni_required, ..TlsSites::default() };
        let mut errors = ConfigErrors::default();
        for (i, s) in sites.iter().enumerate() {
            if s.default {
                if let Some(d) = t.default.replace(i) {
                    let other = &sites[d].id;
                    errors.push(
                        format!("certificates.{}.default", s.id),
                        format!("certificate {other:?} is the default already"),
                    );
                }
            }
            for name in &s.snis {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut t.wildcard, suffix),
                    None => (&mut t.exact, name.as_str()),
                };
                if let Some(&d) = map.get(key).filter(|&&d| d != i) {
                    let other = &sites[d].id;
                    errors.push(
                        format!("certificates.{}.snis", s.id),
                        format!("{name:?} is served by certificate {other:?} already"),
                    );
                }
                map.insert(key.to_string(), i);
            }
        }
        t.sites = sites;
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    /// The site a handshake naming `sni` gets: by exact name, then by wildcard, then the
    /// default (unless a name is required); `None`: refused.
    pub fn choose(&self, sni: Option<&str>) -> Option<&Arc<Site>> {
        let found = sni.and_then(|name| {
            let mut lower = [0u8; 253];
            let b = name.as_bytes();
            if b.len() > lower.len() {
                return None;
            }
            for (d, s) in lower.iter_mut().zip(b) {
                *d = s.to_ascii_lowercase();
            }
            let name = std::str::from_utf8(&lower[..b.len()]).ok()?;
            self.exact.get(name).or_else(|| name.split_once('.').and_then(|(_, rest)| self.wildcard.get(rest))).copied()
        });
        match found {
            Some(i) => self.sites.get(i),
            None if self.sni_required => None,
            None => self.default.and_then(|i| self.sites.get(i)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_as_certificates_do() {
        assert!(covers("api.example.com", "api.example.com"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"), "a wildcard covers one label");
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("api.example.com", "*.example.com"));
        assert!(valid_sni("*.example.com") && valid_sni("a-b.example"));
        assert!(!valid_sni("a..b") && !valid_sni("-a.b") && !valid_sni("a.*.b") && !valid_sni(""));
    }
}
