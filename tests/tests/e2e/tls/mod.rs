//! TLS termination: certificates through the admin API, chosen by server name, resumption,
//! mutual TLS, and refusals of bad handshakes, tested with a rustls client, curl and openssl.
//!
//! Certificates are made here for each test (rcgen); no key is ever committed.

mod certificates;
mod handshakes;
mod upstream;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// A test certificate authority.
pub struct Pki {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, in PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Pki { cert: p.self_signed(&key).unwrap(), key }
    }

    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `names`, valid now.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        self.sign(p)
    }

    /// A client certificate with subject `CN=cn`.
    pub fn client(&self, cn: &str) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    pub fn sign(&self, p: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().clone() }
    }
}

/// The JSON body of a certificate upload.
pub fn cert_body(leaf: &Leaf, snis: &[&str], extra: &str) -> String {
    let snis: Vec<String> = snis.iter().map(|s| format!("{s:?}")).collect();
    let extra = if extra.is_empty() { String::new() } else { format!(", {extra}") };
    format!(
        r#"{{"snis": [{}], "cert": {}, "key": {}{extra}}}"#,
        snis.join(", "),
        serde_json::to_string(&leaf.cert).unwrap(),
        serde_json::to_string(&leaf.key).unwrap()
    )
}

/// Accepts any server certificate and keeps the one it saw (the tests check which was
/// served; verification against a CA is tested with [`verified`]).
#[derive(Debug, Default)]
pub struct Seen(Mutex<Option<CertificateDer<'static>>>);

impl rustls::client::danger::ServerCertVerifier for Seen {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client that accepts any certificate (and records it), optionally with a client
/// certificate and limited to some protocol versions.
pub fn trusting(
    seen: Arc<Seen>,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(seen);
    let mut c = match client {
        Some(l) => b
            .with_client_auth_cert(
                vec![l.der.clone()],
                rustls::pki_types::PrivateKeyDer::try_from(pem_key_der(&l.key)).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    // These clients speak HTTP/1.1 (HTTP/2 is tested with curl, h2load and raw frames).
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A client that verifies the server against `ca`.
pub fn verified(ca: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(c)
}

fn pem_key_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap().secret_der().to_vec()
}

/// A TLS connection to the gateway.
pub struct Tls(pub rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Tls {
    /// Connects and finishes the handshake; `sni`: the name asked for (`None`: none sent).
    pub fn connect(addr: SocketAddr, sni: Option<&str>, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_string()).unwrap(),
            // Clients send no server name for an address.
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Tls(s))
    }

    pub fn resumed(&self) -> bool {
        self.0.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Sends a GET and reads the answer (a sized body): status, head, body.
    pub fn get(&mut self, path: &str, host: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.0.write_all(req.as_bytes())?;
        self.0.flush()?;
        read_answer(&mut self.0)
    }
}

/// Reads one HTTP/1.1 answer with a `Content-Length` body.
pub fn read_answer(r: &mut impl Read) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((status, head, body))
}

/// The DNS names of a certificate.
pub fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A gateway with a TLS listener and an echo upstream behind one catch-all route.
pub fn gateway(extra: &[&str]) -> (ringway_tests::Gateway, ringway_tests::Upstream) {
    let up = ringway_tests::Upstream::echo("o");
    let mut args = vec!["--tls-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let gw = ringway_tests::Gateway::start_with(&crate::single(&[up.addr], "", ""), &crate::default_driver(), &args);
    (gw, up)
}
