//! HTTP/2 from clients (ALPN `h2` over TLS, prior knowledge on the plaintext port) through the
//! same routing, policies and upstreams as HTTP/1.1, tested with curl and h2load; and the
//! floods of the known HTTP/2 attacks, each of which closes the offender's connection with
//! GOAWAY while other clients go on.

use std::path::PathBuf;
use std::process::Command;

use ringway_tests::{Gateway, Reply, Upstream};

use crate::tls::{cert_body, Pki};

fn recording() -> Upstream {
    Upstream::start("o", |r| {
        let body = format!("{} {} {} bytes", r.method, r.target, r.body.len());
        Reply::Full(200, vec![("x-origin".into(), "yes".into())], body.into_bytes())
    })
}

fn config(up: std::net::SocketAddr) -> String {
    format!(
        "upstreams:\n  o:\n    targets:\n      - addr: \"{up}\"\nroutes:\n  all:\n    paths: [\"/*\"]\n    upstream: o\n  closed:\n    paths: [\"/closed/*\"]\n    upstream: o\n    policies:\n      ip_restriction: {{deny: [\"127.0.0.0/8\"]}}\n"
    )
}

/// curl's answer: (HTTP version, status, body).
fn curl(args: &[&str]) -> (String, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (version, code) = tail.split_once(' ').unwrap();
    (version.to_string(), code.parse().unwrap(), body.to_string())
}

fn with_certificate(gw: &Gateway) -> PathBuf {
    let pki = Pki::new("ca");
    let r = gw.admin(
        "PUT",
        "/admin/v1/certificates/h2",
        Some(&cert_body(&pki.leaf(&["h2.example.test"]), &[], r#""default": true"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let ca = gw.dir.join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    ca
}

fn http2_requests_take_the_same_path_as_http11(driver: &str) {
    let up = recording();
    let gw = Gateway::start_with(&config(up.addr), driver, &["--tls-listen", "127.0.0.1:0"]);
    let ca = with_certificate(&gw);
    let tls = gw.tls.unwrap();
    let resolve = format!("h2.example.test:{}:127.0.0.1", tls.port());
    let https = |path: &str| format!("https://h2.example.test:{}{path}", tls.port());
    let ca = ca.to_str().unwrap();

    let (v, status, body) = curl(&["--http2", "--cacert", ca, "--resolve", &resolve, &https("/a?x=1")]);
    assert_eq!((v.as_str(), status, body.as_str()), ("2", 200, "GET /a?x=1 0 bytes"));
    let seen = up.requests().last().cloned().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("host"), Some(format!("h2.example.test:{}", tls.port()).as_str()));

    // A body (its length given, then not), and the answer's fields.
    let (v, status, body) =
        curl(&["--http2", "--cacert", ca, "--resolve", &resolve, "-d", "hello h2", &https("/post")]);
    assert_eq!((v.as_str(), status, body.as_str()), ("2", 200, "POST /post 8 bytes"));
    let big = "z".repeat(300_000);
    let file = gw.dir.join("body");
    std::fs::write(&file, &big).unwrap();
    let data = format!("@{}", file.display());
    let (_, status, body) = curl(&[
        "--http2",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "-H",
        "content-length:",
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        &data,
        &https("/stream"),
    ]);
    assert_eq!((status, body.as_str()), (200, "POST /stream 300000 bytes"), "a body of unknown length, in DATA frames");
    assert!(up.requests().last().unwrap().chunked, "forwarded chunked: its length was not known");
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--http2", "--cacert", ca, "--resolve", &resolve, &https("/h")])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/2 200") && head.contains("x-origin: yes") && head.contains("x-request-id: "),
        "{head}"
    );

    // The route's policies answer HTTP/2 requests too.
    let (_, status, body) = curl(&["--http2", "--cacert", ca, "--resolve", &resolve, &https("/closed/x")]);
    assert_eq!(status, 403, "{body}");

    // Prior knowledge on the plaintext port; HTTP/1.1 still on both.
    let (v, status, _) = curl(&["--http2-prior-knowledge", &format!("http://{}/pk", gw.addr)]);
    assert_eq!((v.as_str(), status), ("2", 200));
    assert_eq!(up.requests().last().unwrap().header("x-forwarded-proto"), Some("http"));
    let (v, status, _) = curl(&["--http1.1", "--cacert", ca, "--resolve", &resolve, &https("/one")]);
    assert_eq!((v.as_str(), status), ("1.1", 200));
    let (v, status, _) = curl(&[&format!("http://{}/plain", gw.addr)]);
    assert_eq!((v.as_str(), status), ("1.1", 200));
}

crate::both_drivers!(http2_requests_take_the_same_path_as_http11);

#[test]
fn h2load_runs_many_streams_over_few_connections() {
    let up = recording();
    let gw = Gateway::start_with(&config(up.addr), &crate::default_driver(), &["--tls-listen", "127.0.0.1:0"]);
    with_certificate(&gw);
    for url in [format!("https://127.0.0.1:{}/load", gw.tls.unwrap().port()), format!("http://{}/load", gw.addr)] {
        let out =
            Command::new("h2load").args(["-n", "3000", "-c", "4", "-m", "10", &url]).output().expect("h2load runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("3000 succeeded, 0 failed") && text.contains("3000 2xx"), "{url}: {text}");
        assert!(text.contains("Application protocol: h2"), "{url}: {text}");
    }
}

fn attack(mode: &str, port: u16) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/h2/attack.py");
    let out = Command::new("python3").args([script, mode, &port.to_string()]).output().expect("python3 runs");
    assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn floods_close_the_offenders_connection_and_spare_the_others() {
    let up = recording();
    let gw = Gateway::start_with(&config(up.addr), &crate::default_driver(), &["--write-timeout", "1s"]);
    let port = gw.addr.port();
    let bystander = || curl(&["--http2-prior-knowledge", &format!("http://{}/fine", gw.addr)]).1;
    for (mode, want) in [
        ("ping", "ENHANCE_YOUR_CALM"),
        ("settings", "ENHANCE_YOUR_CALM"),
        ("rapid_reset", "ENHANCE_YOUR_CALM"),
        ("continuation", "ENHANCE_YOUR_CALM"),
        ("made_you_reset", "ENHANCE_YOUR_CALM"),
        ("zero_window", "ENHANCE_YOUR_CALM"),
    ] {
        assert_eq!(attack(mode, port), want, "{mode}");
        assert_eq!(bystander(), 200, "after {mode}, others are served");
    }
    // Too many streams at once: the ones over the limit are refused.
    let out = attack("concurrency", port);
    let refused: u32 = out.rsplit_once("refused=").unwrap().1.parse().unwrap();
    assert!(refused >= 100, "{out}");
    // WebSocket over HTTP/2 (RFC 8441) is not offered: an extended CONNECT is refused on its
    // stream, and the connection goes on.
    assert_eq!(attack("extended_connect", port), "refused PROTOCOL_ERROR, open");
    // A header list over the limit is answered 431 on its stream.
    assert_eq!(attack("header_size", port), "431");
    assert_eq!(bystander(), 200);
    let metrics = gw.admin("GET", "/metrics", None).text();
    let floods: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringway_http2_floods_total "))
        .map(|v| v.parse().unwrap())
        .unwrap();
    assert!(floods >= 3, "ping, settings and window floods are counted: {floods}");
}
