//! TLS to upstreams: each upstream's `tls` compiled into a rustls `ClientConfig` (verification
//! on by default, against the system's roots or the given authorities; a client certificate
//! when the upstream asks for one), and the client handshake over a new connection.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use monoio::net::TcpStream;
use ringway_policy::ConfigErrors;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::sites::provider;
use super::spec::UpstreamTlsSpec;
use super::stream::TlsStream;

/// An upstream's TLS settings, ready for handshakes.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// The name sent and verified.
    pub name: Option<ServerName<'static>>,
    /// Tells these settings apart in the pool (never 0).
    pub id: u64,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// The system's trusted roots, read once.
fn system_roots() -> Arc<RootCertStore> {
    static R: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    R.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        Arc::new(roots)
    })
    .clone()
}

/// Accepts any certificate: for upstreams configured with `verify: false`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn certs(pem: &str, at: &str, errors: &mut ConfigErrors) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    for (i, c) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        match c {
            Ok(c) => out.push(c),
            Err(e) => errors.push(at, format!("certificate {i} is not PEM: {e}")),
        }
    }
    if out.is_empty() {
        errors.push(at, "no certificate in PEM");
    }
    out
}

/// Compiles an upstream's `tls` at `path` (`None` when off or refused).
/// With `h2`, ALPN offers `h2` only (the upstream's `protocol`).
pub fn compile(spec: &UpstreamTlsSpec, h2: bool, path: &str, errors: &mut ConfigErrors) -> Option<Arc<UpstreamTls>> {
    if !spec.enabled {
        return None;
    }
    let before = errors.0.len();
    let name = match spec.sni.as_deref() {
        Some(s) => match ServerName::try_from(s.to_string()) {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(format!("{path}.sni"), format!("{s:?} is not a server name"));
                None
            }
        },
        None => None,
    };
    let roots = match &spec.ca {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for c in certs(pem, &format!("{path}.ca"), errors) {
                if let Err(e) = roots.add(c) {
                    errors.push(format!("{path}.ca"), e.to_string());
                }
            }
            Arc::new(roots)
        }
        None => system_roots(),
    };
    let mut alpn = Vec::new();
    for (i, p) in spec.alpn.clone().unwrap_or_else(|| vec!["http/1.1".into()]).iter().enumerate() {
        match p.as_str() {
            "http/1.1" => alpn.push(p.as_bytes().to_vec()),
            other => {
                errors.push(format!("{path}.alpn[{i}]"), format!("{other:?}: only http/1.1 is spoken to upstreams"))
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3");
    let builder = if spec.verify {
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    };
    let config = match (&spec.client_cert, &spec.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert, &format!("{path}.client_cert"), errors);
            match PrivateKeyDer::from_pem_slice(key.as_bytes()) {
                Ok(k) if errors.0.len() == before => match builder.with_client_auth_cert(chain, k) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.push(format!("{path}.client_key"), format!("unusable with the certificate: {e}"));
                        None
                    }
                },
                Ok(_) => None,
                Err(e) => {
                    errors.push(format!("{path}.client_key"), format!("no private key in PEM: {e}"));
                    None
                }
            }
        }
        (None, None) => Some(builder.with_no_client_auth()),
        _ => {
            errors.push(format!("{path}.client_cert"), "give both client_cert and client_key, or neither");
            None
        }
    };
    let mut config = config?;
    if errors.0.len() != before {
        return None;
    }
    config.alpn_protocols = if h2 { vec![b"h2".to_vec()] } else { alpn };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&spec.sni, spec.verify, &spec.ca, &spec.client_cert, &spec.client_key, &spec.alpn, h2).hash(&mut h);
    Some(Arc::new(UpstreamTls { config: Arc::new(config), name, id: h.finish() | 1 }))
}

/// Runs the client side of a handshake on `tcp` to `addr` (the caller bounds it in time).
pub async fn connect(tcp: TcpStream, tls: &UpstreamTls, addr: std::net::SocketAddr) -> std::io::Result<TlsStream> {
    let name = tls.name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let conn = rustls::ClientConnection::new(tls.config.clone(), name).map_err(std::io::Error::other)?;
    let mut s = TlsStream::new(tcp, rustls::Connection::Client(conn), Vec::new());
    s.handshake().await?;
    Ok(s)
}
