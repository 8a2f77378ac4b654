//! The server side of a TLS handshake: read the ClientHello, choose the certificate (and with
//! it the client-certificate rule) by the server name it asks for, then finish the handshake.
//! Whatever is refused is answered with an alert where TLS allows one, or a plain HTTP 400 for
//! a plaintext request sent to the TLS port, and named for the counters and the debug log.

use std::io;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::server::Acceptor;
use rustls::Connection;

use super::sites::TlsSites;
use super::stream::TlsStream;

/// Why a handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The bytes are not TLS (a plaintext request among them).
    NotTls,
    /// The client closed before the handshake finished.
    Truncated,
    /// The handshake did not finish in time.
    Timeout,
    /// No certificate for the name asked (or none asked, with `sni_required`).
    UnknownName,
    /// The client's certificate is missing or not signed by the configured authority.
    ClientCertificate,
    /// Any other protocol failure (no shared version or cipher, a bad record).
    Protocol,
    /// The socket failed.
    Io,
}

impl Refused {
    /// The label of the handshake-failure counter.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::NotTls => "not_tls",
            Refused::Truncated => "truncated",
            Refused::Timeout => "timeout",
            Refused::UnknownName => "unknown_sni",
            Refused::ClientCertificate => "client_certificate",
            Refused::Protocol => "protocol",
            Refused::Io => "io",
        }
    }

    pub const ALL: [Refused; 7] = [
        Refused::NotTls,
        Refused::Truncated,
        Refused::Timeout,
        Refused::UnknownName,
        Refused::ClientCertificate,
        Refused::Protocol,
        Refused::Io,
    ];
}

/// What the handshake established, for the identity policies and the log.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The server name the client asked for.
    pub sni: Option<Box<str>>,
    /// The certificate served.
    pub certificate: Box<str>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// Whether the session was resumed from a ticket.
    pub resumed: bool,
    /// The client chose HTTP/2 (ALPN `h2`).
    pub h2: bool,
    /// The verified client certificate's subject (`CN=..., O=...`), under mutual TLS.
    pub client_subject: Option<Box<str>>,
    /// Its DNS, email and URI alternative names.
    pub client_names: Vec<Box<str>>,
}

/// A `unrecognized_name` fatal alert record.
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

fn classify(e: &io::Error) -> Refused {
    match rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            Refused::ClientCertificate
        }
        Some(_) => Refused::Protocol,
        None if e.kind() == io::ErrorKind::UnexpectedEof => Refused::Truncated,
        None => Refused::Io,
    }
}

/// Whether `b` starts like an HTTP/1 request line (a method token, then a space).
fn looks_like_http(b: &[u8]) -> bool {
    let method = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    (3..=7).contains(&method) && b.get(method) == Some(&b' ')
}

async fn send(tcp: &mut TcpStream, bytes: Vec<u8>) {
    let _ = tcp.write_all(bytes).await;
}

/// Runs the server side of a handshake on `tcp` (the caller bounds it in time).
pub async fn accept(mut tcp: TcpStream, sites: &TlsSites) -> Result<(TlsStream, TlsInfo), Refused> {
    let mut acceptor = Acceptor::default();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut first = true;
    let accepted = loop {
        buf.clear();
        let len = buf.len();
        let cap = buf.capacity();
        let (r, slice) = tcp.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match r {
            Ok(0) => return Err(if first { Refused::Io } else { Refused::Truncated }),
            Ok(_) => {}
            Err(_) => return Err(Refused::Io),
        }
        if first && buf[0] != 0x16 {
            if looks_like_http(&buf) {
                let body = r#"{"error":"plain_http_on_tls_port","message":"this port speaks TLS: use https"}"#;
                let reply = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                send(&mut tcp, reply.into_bytes()).await;
            }
            return Err(Refused::NotTls);
        }
        first = false;
        let mut rd = &buf[..];
        while !rd.is_empty() {
            if acceptor.read_tls(&mut rd).is_err() {
                return Err(Refused::Protocol);
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(a)) => break a,
            Err((_, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                send(&mut tcp, out).await;
                return Err(Refused::Protocol);
            }
        }
    };
    let hello = accepted.client_hello();
    let sni: Option<Box<str>> = hello.server_name().map(Into::into);
    let Some(site) = sites.choose(sni.as_deref()) else {
        send(&mut tcp, UNRECOGNIZED_NAME.to_vec()).await;
        return Err(Refused::UnknownName);
    };
    let conn = match accepted.into_connection(site.config.clone()) {
        Ok(c) => c,
        Err((_, mut alert)) => {
            let mut out = Vec::new();
            let _ = alert.write_all(&mut out);
            send(&mut tcp, out).await;
            return Err(Refused::Protocol);
        }
    };
    let mut stream = TlsStream::new(tcp, Connection::Server(conn), Vec::new());
    if let Err(e) = stream.handshake().await {
        return Err(classify(&e));
    }
    let c = stream.connection();
    let mut info = TlsInfo {
        sni,
        certificate: site.id.as_str().into(),
        version: match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            _ => "TLSv1.2",
        },
        resumed: c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        h2: c.alpn_protocol() == Some(b"h2"),
        ..TlsInfo::default()
    };
    if let Some(leaf) = c.peer_certificates().and_then(|p| p.first()) {
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) {
            // A subject that cannot be written unambiguously names no one.
            info.client_subject = subject_string(cert.subject()).map(Into::into);
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                use x509_parser::extensions::GeneralName;
                for n in &san.value.general_names {
                    if let GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) = n {
                        info.client_names.push((*s).into());
                    }
                }
            }
        }
    }
    Ok((stream, info))
}

/// A subject as `CN=alice, O=Example`: attributes in the certificate's order, multi-valued
/// ones joined by ` + `, values escaped as RFC 4514 says (so `CN=a\, O=b` is one attribute).
/// `None` when an attribute is not a string.
pub fn subject_string(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    let mut out = String::new();
    for rdn in name.iter() {
        for (i, attr) in rdn.iter().enumerate() {
            if !out.is_empty() {
                out.push_str(if i == 0 { ", " } else { " + " });
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), x509_parser::objects::oid_registry()) {
                Ok(k) => out.push_str(k),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            escape_value(attr.as_str().ok()?, &mut out);
        }
    }
    Some(out)
}

fn escape_value(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            ' ' | '#' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_control() => {
                for b in c.to_string().bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_values_are_escaped_so_one_attribute_never_reads_as_two() {
        let mut out = String::new();
        escape_value("alice, O=Example", &mut out);
        assert_eq!(out, "alice\\, O\\=Example");
        let mut out = String::new();
        escape_value(" #x ", &mut out);
        assert_eq!(out, "\\ #x\\ ");
    }

    #[test]
    fn a_plaintext_request_is_told_apart_from_tls() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(!looks_like_http(b"\x16\x03\x01\x02\x00"));
        assert!(!looks_like_http(b"G / HTTP/1.1"));
    }
}
