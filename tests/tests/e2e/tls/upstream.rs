//! TLS to upstreams: verified against the given authority (or not, when told), with the server
//! name asked for, a client certificate for origins that require one (its key never shown),
//! and pooled connections reused across requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ringway_tests::{Client, Gateway};

use super::{Leaf, Pki};

/// An HTTPS origin answering every request with `200` and the server name it was asked for;
/// with `clients`, it requires a client certificate that authority signed.
fn origin(leaf: &Leaf, clients: Option<&Pki>) -> (SocketAddr, Arc<AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let b = match clients {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der()).unwrap();
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    let config = Arc::new(b.with_single_cert(vec![leaf.der.clone()], key).unwrap());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for sock in l.incoming().flatten() {
            count.fetch_add(1, Ordering::Relaxed);
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut s = rustls::StreamOwned::new(conn, sock);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let sni = s.conn.server_name().unwrap_or("-").to_string();
                        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{sni}", sni.len());
                        if s.write_all(reply.as_bytes()).and_then(|_| s.flush()).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn config(origin: SocketAddr, tls: &str) -> String {
    format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{origin}\"\n    tls: {tls}\nroutes:\n  all:\n    paths: [\"/*\"]\n    upstream: u\n"
    )
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn upstream_tls_verifies_names_the_server_and_pools_its_connections() {
    let pki = Pki::new("origin ca");
    let (addr, accepted) = origin(&pki.leaf(&["origin.internal"]), None);
    let tls = format!(r#"{{"sni": "origin.internal", "ca": {}}}"#, json(&pki.ca_pem()));
    let gw = Gateway::start(&config(addr, &tls));
    let mut c = Client::connect(gw.addr);
    for _ in 0..5 {
        let r = c.get("/x");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "origin.internal", "the server name asked for");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "one TLS connection, reused from the pool");

    // An authority that did not sign the origin's certificate: refused, named.
    let other = Pki::new("other ca");
    let tls = format!(r#"{{"sni": "origin.internal", "ca": {}}}"#, json(&other.ca_pem()));
    let r = gw.admin(
        "PUT",
        "/admin/v1/upstreams/u",
        Some(&format!(r#"{{"targets": [{{"addr": "{addr}"}}], "tls": {tls}}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = Client::connect(gw.addr).get("/y");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_tls_failed");

    // The wrong name is refused too; with verification off, anything goes.
    let tls = format!(r#"{{"sni": "elsewhere.internal", "ca": {}}}"#, json(&pki.ca_pem()));
    let r = gw.admin(
        "PUT",
        "/admin/v1/upstreams/u",
        Some(&format!(r#"{{"targets": [{{"addr": "{addr}"}}], "tls": {tls}}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Client::connect(gw.addr).get("/z").status, 502);
    let r = gw.admin(
        "PUT",
        "/admin/v1/upstreams/u",
        Some(&format!(r#"{{"targets": [{{"addr": "{addr}"}}], "tls": {{"sni": "any.internal", "verify": false}}}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = Client::connect(gw.addr).get("/w");
    assert_eq!((r.status, r.text().as_str()), (200, "any.internal"));

    // A CA that is not PEM, an offer of h2: refused at write.
    let r = gw.admin(
        "PUT",
        "/admin/v1/upstreams/u",
        Some(&format!(r#"{{"targets": [{{"addr": "{addr}"}}], "tls": {{"ca": "x", "alpn": ["h2"]}}}}"#)),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("upstreams.u.tls.ca") && r.text().contains("upstreams.u.tls.alpn[0]"), "{}", r.text());
}

#[test]
fn a_client_certificate_reaches_origins_that_require_one_and_its_key_is_never_shown() {
    let pki = Pki::new("origin ca");
    let clients = Pki::new("client ca");
    let (addr, _) = origin(&pki.leaf(&["origin.internal"]), Some(&clients));
    let plain = format!(r#"{{"sni": "origin.internal", "ca": {}}}"#, json(&pki.ca_pem()));
    let gw = Gateway::start(&config(addr, &plain));
    assert_eq!(Client::connect(gw.addr).get("/a").status, 502, "no client certificate");

    let me = clients.client("gateway");
    let body = format!(
        r#"{{"targets": [{{"addr": "{addr}"}}], "tls": {{"sni": "origin.internal", "ca": {}, "client_cert": {}, "client_key": {}}}}}"#,
        json(&pki.ca_pem()),
        json(&me.cert),
        json(&me.key)
    );
    let r = gw.admin("PUT", "/admin/v1/upstreams/u", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Client::connect(gw.addr).get("/b").status, 200);
    let key_line = me.key.lines().nth(1).unwrap();
    for path in ["/admin/v1/upstreams/u", "/admin/v1/upstreams", "/admin/v1/config"] {
        let t = gw.admin("GET", path, None).text();
        assert!(!t.contains(key_line) && !t.contains("client_key"), "{path}: {t}");
    }
    assert!(!gw.store_holds(key_line.as_bytes()));
    // The export goes back as it is, the key kept.
    let export = gw.admin("GET", "/admin/v1/config", None).text();
    let r = gw.admin("PUT", "/admin/v1/config", Some(&export));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Client::connect(gw.addr).get("/c").status, 200);
}
