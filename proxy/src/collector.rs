//! The connection to a collector (log shipping, trace export): plain TCP, or TLS on rustls
//! for `https://` endpoints, with the server verified against the system's roots or a CA the
//! configuration gives, and an optional client certificate. Blocking: used only on the
//! shipper and exporter threads, never on a worker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use ringway_policy::ConfigErrors;

/// `tls` beside a collector's endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM certificates the collector's chain must lead to (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The name the collector's certificate must carry (default: the endpoint's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A PEM certificate chain and its key, for collectors that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// A checked TLS client setting.
#[derive(Clone)]
pub struct TlsClient {
    spec: TlsSpec,
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.name == other.name
    }
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("name", &self.name).field("ca", &self.spec.ca.is_some()).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsClient {
    /// Checks `spec` for an endpoint whose host is `host` (problems under `path`).
    pub fn compile(spec: &TlsSpec, host: &str, path: &str, errors: &mut ConfigErrors) -> Option<TlsClient> {
        let before = errors.0.len();
        let mut roots = rustls::RootCertStore::empty();
        match &spec.ca {
            Some(pem) => {
                let certs: Result<Vec<CertificateDer<'static>>, _> =
                    CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
                let certs = certs.unwrap_or_else(|e| {
                    errors.push(format!("{path}.ca"), format!("malformed PEM: {e}"));
                    Vec::new()
                });
                if certs.is_empty() {
                    errors.push(format!("{path}.ca"), "no PEM certificate found");
                }
                for c in certs {
                    if let Err(e) = roots.add(c) {
                        errors.push(format!("{path}.ca"), format!("not a usable CA certificate: {e}"));
                    }
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    errors.push(format!("{path}.ca"), "this system has no CA certificates: give the collector's CA");
                }
            }
        }
        let name_text = spec.server_name.clone().unwrap_or_else(|| host.to_string());
        let name = ServerName::try_from(name_text.clone())
            .map_err(|_| {
                errors.push(format!("{path}.server_name"), format!("{name_text:?} is not a DNS name or IP address"))
            })
            .ok();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .with_root_certificates(roots);
        let config = match (&spec.client_cert, &spec.client_key) {
            (None, None) => Some(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    match CertificateDer::pem_slice_iter(cert.as_bytes()).collect() {
                        Ok(c) => c,
                        Err(e) => {
                            errors.push(format!("{path}.client_cert"), format!("malformed PEM: {e}"));
                            Vec::new()
                        }
                    };
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes());
                match (chain.is_empty(), key) {
                    (false, Ok(key)) => builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| {
                            errors.push(format!("{path}.client_key"), format!("does not fit the certificate: {e}"))
                        })
                        .ok(),
                    (true, _) => {
                        errors.push(format!("{path}.client_cert"), "no PEM certificate found");
                        None
                    }
                    (_, Err(_)) => {
                        errors.push(format!("{path}.client_key"), "no PEM private key found");
                        None
                    }
                }
            }
            _ => {
                errors.push(path.to_string(), "client_cert and client_key go together");
                None
            }
        };
        if errors.0.len() != before {
            return None;
        }
        Some(TlsClient { spec: spec.clone(), config: Arc::new(config?), name: name? })
    }
}

/// A connection to a collector.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    /// Wraps a connected socket: as it is, or in TLS (the handshake happens on first use).
    pub fn new(sock: TcpStream, tls: Option<&TlsClient>) -> std::io::Result<Conn> {
        Ok(match tls {
            None => Conn::Plain(sock),
            Some(t) => {
                let c =
                    rustls::ClientConnection::new(t.config.clone(), t.name.clone()).map_err(std::io::Error::other)?;
                Conn::Tls(Box::new(rustls::StreamOwned::new(c, sock)))
            }
        })
    }

    /// The socket under the connection (for its timeouts).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}
