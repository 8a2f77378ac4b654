//! HTTP/2 to upstreams (`protocol: h2c`, and `h2` over TLS by ALPN): requests become streams
//! of a few shared connections per worker; answers (trailers included) come back to HTTP/1.1
//! and HTTP/2 clients alike. The origin is an HTTP/2 server on Python's `h2`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringway_tests::Gateway;

use crate::tls::Pki;

struct Origin {
    child: Child,
    port: u16,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn origin(tls: Option<(&std::path::Path, &std::path::Path)>) -> Origin {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/h2/origin.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    if let Some((cert, key)) = tls {
        cmd.args([cert, key]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(' ').next().unwrap().parse().expect("the origin's port");
    Origin { child, port }
}

fn config(port: u16, upstream_extra: &str) -> String {
    format!(
        "upstreams:\n  o:\n    targets:\n      - addr: \"127.0.0.1:{port}\"\n{upstream_extra}\nroutes:\n  all:\n    paths: [\"/*\"]\n    upstream: o\n"
    )
}

/// An HTTP/1.1 exchange read to the end of its chunked body (trailers included).
fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn requests_become_streams_of_a_few_shared_connections_to_an_h2c_upstream() {
    let o = origin(None);
    let gw = Gateway::start_with(&config(o.port, "    protocol: h2c"), &crate::default_driver(), &["--workers", "1"]);
    let answer = raw_get(gw.addr, "/a?b=1");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("GET /a?b=1 0 bytes via h2"), "{answer}");
    assert!(answer.contains("\r\n0\r\nx-checksum: "), "the origin's trailers reach the client: {answer}");

    let mut c = ringway_tests::Client::connect(gw.addr);
    let r = c.request("POST", "/post", &[("content-type", "text/plain")], b"twelve bytes");
    assert_eq!((r.status, r.text().as_str()), (200, "POST /post 12 bytes via h2"));
    let sum: u32 = r.body.iter().map(|b| u32::from(*b)).sum();
    assert_eq!(r.header("trailer:x-checksum"), Some(sum.to_string().as_str()), "the trailer, as the origin sent it");

    // Many at once, from HTTP/2 clients too: still one connection to the origin.
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "8", "-m", "10", &format!("http://{}/load", gw.addr)])
        .output()
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2000 succeeded, 0 failed"), "{text}");
    let r = c.get("/last");
    assert_eq!(r.header("x-conn"), Some("1"), "every request rode the first connection");
}

#[test]
fn an_h2_upstream_is_reached_over_verified_tls_by_alpn() {
    let pki = Pki::new("origin ca");
    let leaf = pki.leaf(&["origin.internal"]);
    let dir = ringway_tests::gateway::scratch_dir();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &leaf.cert).unwrap();
    std::fs::write(&key, &leaf.key).unwrap();
    let o = origin(Some((&cert, &key)));
    let ca = serde_json::to_string(&pki.ca_pem()).unwrap();
    let extra = format!("    protocol: h2\n    tls: {{sni: origin.internal, ca: {ca}}}");
    let gw = Gateway::start(&config(o.port, &extra));
    let mut c = ringway_tests::Client::connect(gw.addr);
    let r = c.get("/secure");
    assert_eq!((r.status, r.text().as_str()), (200, "GET /secure 0 bytes via h2"));
    assert_eq!(r.header("x-scheme"), Some("https"));

    // What cannot work is refused at write.
    for (body, field) in [
        (format!(r#"{{"targets": [{{"addr": "127.0.0.1:{}"}}], "protocol": "h2"}}"#, o.port), "protocol"),
        (format!(r#"{{"targets": [{{"addr": "127.0.0.1:{}"}}], "protocol": "h3"}}"#, o.port), "protocol"),
    ] {
        let r = gw.admin("PUT", "/admin/v1/upstreams/o", Some(&body));
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(&format!("upstreams.o.{field}")), "{}", r.text());
    }
    let _ = std::fs::remove_dir_all(dir);
}
