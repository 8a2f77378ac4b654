//! The TLS listener's handshakes: the certificate chosen by server name (exact, wildcard,
//! default, or a refusal with `sni_required`), TLS 1.2 and 1.3 only, ALPN, resumption on any
//! worker, mutual TLS per certificate, and every bad handshake refused, counted and harmless
//! to other clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::version::{TLS12, TLS13};

use super::{cert_body, gateway, names_of, trusting, verified, Pki, Seen, Tls};

fn served(gw: &ringway_tests::Gateway, sni: Option<&str>) -> Option<Vec<String>> {
    let seen = Arc::new(Seen::default());
    let mut c = Tls::connect(gw.tls.unwrap(), sni, trusting(seen.clone(), None, &[&TLS13])).ok()?;
    let (status, _, body) = c.get("/who", sni.unwrap_or("none")).ok()?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let der = seen.0.lock().unwrap().clone().unwrap();
    Some(names_of(&der))
}

fn metric(gw: &ringway_tests::Gateway, line: &str) -> u64 {
    let text = gw.admin("GET", "/metrics", None).text();
    text.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn the_certificate_is_chosen_by_server_name_with_a_default_unless_names_are_required() {
    let up = ringway_tests::Upstream::start("s", |_| ringway_tests::Reply::Full(200, vec![], b"ok".to_vec()));
    let gw = ringway_tests::Gateway::start_with(
        &crate::single(&[up.addr], "", ""),
        &crate::default_driver(),
        &["--tls-listen", "127.0.0.1:0"],
    );
    let pki = Pki::new("ca");
    let api = pki.leaf(&["api.example.test"]);
    let wild = pki.leaf(&["*.apps.example.test"]);
    let fallback = pki.leaf(&["fallback.example.test"]);
    for (id, leaf, extra) in [("api", &api, ""), ("wild", &wild, ""), ("fallback", &fallback, r#""default": true"#)] {
        let r = gw.admin("PUT", &format!("/admin/v1/certificates/{id}"), Some(&cert_body(leaf, &[], extra)));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    assert_eq!(served(&gw, Some("api.example.test")).unwrap(), ["api.example.test"]);
    assert_eq!(served(&gw, Some("API.Example.Test")).unwrap(), ["api.example.test"], "names match in any case");
    assert_eq!(served(&gw, Some("shop.apps.example.test")).unwrap(), ["*.apps.example.test"]);
    assert_eq!(served(&gw, Some("a.b.apps.example.test")).unwrap(), ["fallback.example.test"], "one label only");
    assert_eq!(served(&gw, Some("unknown.test")).unwrap(), ["fallback.example.test"]);
    assert_eq!(served(&gw, None).unwrap(), ["fallback.example.test"], "no server name: the default");

    // A request must name a host of the certificate its connection chose (else another site's
    // client-certificate rule could be sidestepped).
    let mut c =
        Tls::connect(gw.tls.unwrap(), Some("api.example.test"), trusting(Arc::default(), None, &[&TLS13])).unwrap();
    let (status, _, body) = c.get("/other", "shop.apps.example.test").unwrap();
    assert_eq!(status, 421, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("misdirected_request"));
    let mut c =
        Tls::connect(gw.tls.unwrap(), Some("api.example.test"), trusting(Arc::default(), None, &[&TLS13])).unwrap();
    assert_eq!(c.get("/same", "api.example.test").unwrap().0, 200, "its own host");

    // The origin hears the scheme the client used.
    assert_eq!(up.requests().last().unwrap().header("x-forwarded-proto"), Some("https"));
    let mut plain = ringway_tests::Client::connect(gw.addr);
    assert_eq!(plain.get("/plain").status, 200);
    assert_eq!(up.requests().last().unwrap().header("x-forwarded-proto"), Some("http"));

    // With names required, none or an unknown one is refused.
    let mut cfg: serde_json::Value = gw.admin("GET", "/admin/v1/config", None).json();
    let old_leaf_line = fallback.key.lines().nth(1).unwrap();
    assert!(!cfg.to_string().contains(old_leaf_line));
    cfg["tls"] = serde_json::json!({"sni_required": true});
    let r = gw.admin("PUT", "/admin/v1/config", Some(&cfg.to_string()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(served(&gw, None).is_none());
    assert!(served(&gw, Some("unknown.test")).is_none());
    assert_eq!(served(&gw, Some("api.example.test")).unwrap(), ["api.example.test"]);
    assert_eq!(metric(&gw, "ringway_tls_handshake_failures_total{reason=\"unknown_sni\"}"), 2);
}

fn gateway_with_cert(extra: &[&str], cert_extra: &str) -> (ringway_tests::Gateway, ringway_tests::Upstream, Pki) {
    let (gw, up) = gateway(extra);
    let pki = Pki::new("ca");
    let leaf = pki.leaf(&["gw.example.test"]);
    let r = gw.admin("PUT", "/admin/v1/certificates/gw", Some(&cert_body(&leaf, &[], cert_extra)));
    assert_eq!(r.status, 201, "{}", r.text());
    (gw, up, pki)
}

#[test]
fn sessions_resume_from_tickets_on_any_worker_in_tls_1_3_and_1_2() {
    let (gw, _up, pki) = gateway_with_cert(&[], "");
    let tls = gw.tls.unwrap();
    for versions in [&[&TLS13][..], &[&TLS12][..]] {
        // One client config: its session store carries the tickets from one connection to the
        // next, whichever worker takes it.
        let config = trusting(Arc::default(), None, versions);
        let mut first = Tls::connect(tls, Some("gw.example.test"), config.clone()).unwrap();
        assert!(!first.resumed());
        assert_eq!(first.get("/a", "gw.example.test").unwrap().0, 200);
        for i in 0..6 {
            let mut c = Tls::connect(tls, Some("gw.example.test"), config.clone()).unwrap();
            assert_eq!(c.get("/b", "gw.example.test").unwrap().0, 200);
            assert!(c.resumed(), "{versions:?}: connection {i} resumed");
        }
    }
    assert!(metric(&gw, "ringway_tls_handshakes_total{kind=\"resumed\"}") >= 12);
    assert!(metric(&gw, "ringway_tls_handshakes_total{kind=\"full\"}") >= 2);

    // A client verifying the chain against the CA accepts the gateway.
    let mut v = Tls::connect(tls, Some("gw.example.test"), verified(&pki)).unwrap();
    assert_eq!(v.get("/v", "gw.example.test").unwrap().0, 200);
}

#[test]
fn curl_and_openssl_see_tls_1_2_and_1_3_only_and_h2_or_http_1_1_by_alpn() {
    let (gw, _up, pki) = gateway_with_cert(&[], "");
    let tls = gw.tls.unwrap();
    let ca = gw.dir.join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let resolve = format!("gw.example.test:{}:127.0.0.1", tls.port());
    let url = format!("https://gw.example.test:{}/curl", tls.port());
    for version in ["--tlsv1.2", "--tlsv1.3"] {
        let out = Command::new("curl")
            .args(["-sS", "--http1.1", version, "--cacert", ca.to_str().unwrap(), "--resolve", &resolve, &url])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "o GET /curl");
    }
    let s_client = |args: &[&str]| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &tls.to_string(), "-servername", "gw.example.test"]).args(args);
        let out = cmd.stdin(std::process::Stdio::null()).output().expect("openssl runs");
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let alpn = s_client(&["-alpn", "h2,http/1.1"]);
    assert!(alpn.contains("ALPN protocol: h2") && alpn.contains("New, TLSv1.3, Cipher is"), "{alpn}");
    let alpn = s_client(&["-alpn", "http/1.1"]);
    assert!(alpn.contains("ALPN protocol: http/1.1"), "{alpn}");
    let tls12 = s_client(&["-tls1_2"]);
    assert!(tls12.contains("New, TLSv1.2, Cipher is ECDHE"), "{tls12}");
    for old in ["-tls1_1", "-tls1"] {
        let out = s_client(&[old]);
        assert!(out.contains("Cipher is (NONE)"), "{old} refused: {out}");
    }
}

#[test]
fn bad_handshakes_are_refused_counted_and_harm_no_other_client() {
    let (gw, _up, _pki) = gateway_with_cert(&["--head-timeout", "1s"], r#""default": true"#);
    let tls = gw.tls.unwrap();

    // A plaintext request: a clear answer in plaintext.
    let mut s = TcpStream::connect(tls).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 400") && got.contains("plain_http_on_tls_port"), "{got}");

    // Bytes that are not TLS at all: closed.
    let mut s = TcpStream::connect(tls).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x01, 0x02, 0x03, 0x04, 0xff, 0xfe]).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    assert!(sink.is_empty());

    // Half a ClientHello, then the client goes away.
    let hello = client_hello();
    let mut s = TcpStream::connect(tls).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    drop(s);

    // Half a ClientHello, then silence: closed at the deadline, while others are served.
    let mut stalled = TcpStream::connect(tls).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    let start = Instant::now();
    let mut c = Tls::connect(tls, Some("gw.example.test"), trusting(Arc::default(), None, &[&TLS13])).unwrap();
    assert_eq!(c.get("/meanwhile", "gw.example.test").unwrap().0, 200);
    let mut sink = Vec::new();
    let _ = stalled.read_to_end(&mut sink);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(4), "{waited:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    let reasons = ["not_tls", "truncated", "timeout"];
    loop {
        let counts: Vec<u64> = reasons
            .iter()
            .map(|r| metric(&gw, &format!("ringway_tls_handshake_failures_total{{reason=\"{r}\"}}")))
            .collect();
        if counts.iter().all(|n| *n >= 1) {
            assert_eq!(counts[0], 2, "both plaintext connections: {counts:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{counts:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first flight of a real client.
fn client_hello() -> Vec<u8> {
    let config = trusting(Arc::default(), None, &[&TLS13]);
    let mut c = rustls::ClientConnection::new(config, "gw.example.test".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    assert!(out.len() > 100);
    out
}

#[test]
fn mutual_tls_is_chosen_per_certificate_and_refuses_unknown_authorities() {
    let (gw, _up) = gateway(&[]);
    let tls = gw.tls.unwrap();
    let server = Pki::new("server ca");
    let clients = Pki::new("client ca");
    let strangers = Pki::new("other ca");
    let ca = serde_json::to_string(&clients.ca_pem()).unwrap();
    let strict = server.leaf(&["strict.example.test"]);
    let lenient = server.leaf(&["lenient.example.test"]);
    let r = gw.admin(
        "PUT",
        "/admin/v1/certificates/strict",
        Some(&cert_body(&strict, &[], &format!(r#""client_auth": {{"ca": {ca}}}"#))),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = gw.admin(
        "PUT",
        "/admin/v1/certificates/lenient",
        Some(&cert_body(&lenient, &[], &format!(r#""client_auth": {{"ca": {ca}, "required": false}}"#))),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let alice = clients.client("alice");
    let mallory = strangers.client("mallory");
    let get = |sni: &str, cert: Option<&super::Leaf>| {
        Tls::connect(tls, Some(sni), trusting(Arc::default(), cert, &[&TLS13]))
            .and_then(|mut c| c.get("/m", sni))
            .map(|r| r.0)
    };
    assert_eq!(get("strict.example.test", Some(&alice)).unwrap(), 200);
    assert!(get("strict.example.test", None).is_err(), "a certificate is required");
    assert!(get("strict.example.test", Some(&mallory)).is_err(), "signed by another authority");
    assert_eq!(get("lenient.example.test", None).unwrap(), 200, "optional");
    assert!(get("lenient.example.test", Some(&mallory)).is_err(), "optional, but checked when sent");
    assert!(metric(&gw, "ringway_tls_handshake_failures_total{reason=\"client_certificate\"}") >= 2);

    // A CA that is not PEM is refused at write.
    let r = gw.admin(
        "PUT",
        "/admin/v1/certificates/bad",
        Some(&cert_body(&server.leaf(&["bad.example.test"]), &[], r#""client_auth": {"ca": "nope"}"#)),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("certificates.bad.client_auth.ca"), "{}", r.text());
}

#[test]
fn a_verified_client_certificate_names_its_consumer() {
    let up = ringway_tests::Upstream::start("s", |_| ringway_tests::Reply::Full(200, vec![], b"ok".to_vec()));
    let cfg = crate::single(&[up.addr], "", "    policies:\n      mtls_auth: {}\n");
    let gw = ringway_tests::Gateway::start_with(&cfg, &crate::default_driver(), &["--tls-listen", "127.0.0.1:0"]);
    let tls = gw.tls.unwrap();
    let server = Pki::new("server ca");
    let clients = Pki::new("client ca");
    let ca = serde_json::to_string(&clients.ca_pem()).unwrap();
    let leaf = server.leaf(&["m.example.test"]);
    let body = cert_body(&leaf, &[], &format!(r#""client_auth": {{"ca": {ca}, "required": false}}"#));
    assert_eq!(gw.admin("PUT", "/admin/v1/certificates/m", Some(&body)).status, 201);
    let r = gw.admin("PUT", "/admin/v1/consumers/alice", Some(r#"{"credentials": {"mtls": {"subject": "CN=alice"}}}"#));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = gw.admin("PUT", "/admin/v1/consumers/eve", Some(r#"{"credentials": {"mtls": {"subject": "CN=alice"}}}"#));
    assert_eq!(r.status, 409, "one subject, one consumer: {}", r.text());

    let get = |cert: Option<&super::Leaf>| {
        let mut c = Tls::connect(tls, Some("m.example.test"), trusting(Arc::default(), cert, &[&TLS13])).unwrap();
        c.get("/who", "m.example.test").unwrap()
    };
    let (status, _, _) = get(Some(&clients.client("alice")));
    assert_eq!(status, 200);
    let seen = up.requests().last().cloned().unwrap();
    assert_eq!(seen.header("x-consumer-id"), Some("alice"));
    assert_eq!(seen.header("x-credential-id"), Some("CN=alice"));
    let (status, head, _) = get(Some(&clients.client("bob")));
    assert_eq!(status, 401, "a verified certificate no consumer has");
    assert!(head.to_ascii_lowercase().contains("www-authenticate"), "{head}");
    assert_eq!(get(None).0, 401, "no certificate");
    let mut plain = ringway_tests::Client::connect(gw.addr);
    assert_eq!(plain.get("/who").status, 401, "plaintext carries no certificate");
}
