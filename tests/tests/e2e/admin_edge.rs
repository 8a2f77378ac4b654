//! The admin API at its edge: guarded body parsing, Host/Origin/content-type checks, slow and
//! idle connections, the token file, refusing a missing store, and strict request heads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringway_tests::gateway::{binary, default_driver, scratch_dir};
use ringway_tests::{Client, Gateway, Response, Upstream};
use serde_json::{json, Value};

fn empty(extra: &[&str]) -> Gateway {
    Gateway::start_in(scratch_dir(), None, &default_driver(), extra).unwrap_or_else(|(s, log)| panic!("{s:?}\n{log}"))
}

/// Asserts `status` and the error body's shape; answers the body.
pub(crate) fn refused(r: &Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

/// One request on a fresh connection with the given headers (`Host` is the admin address
/// unless given).
fn call(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let host = gw.admin.to_string();
    let mut h: Vec<(&str, &str)> = Vec::new();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        h.push(("Host", &host));
    }
    h.extend_from_slice(headers);
    Client::connect(gw.admin).request(method, path, &h, body)
}

/// Sends raw bytes on a fresh connection and reads one response.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send(bytes);
    c.try_read_response(false).expect("an answer before the timeout")
}

fn with_route(gw: &Gateway, up: &Upstream) {
    let ups = json!({"targets": [{"addr": up.addr.to_string()}]}).to_string();
    assert_eq!(gw.admin("PUT", "/admin/v1/upstreams/u", Some(&ups)).status, 201);
    assert_eq!(gw.admin("PUT", "/admin/v1/routes/r", Some(r#"{"paths": ["/*"], "upstream": "u"}"#)).status, 201);
}

fn revision(gw: &Gateway) -> u64 {
    gw.admin("GET", "/admin/v1/status", None).json()["revision"].as_u64().unwrap()
}

#[test]
fn admin_bodies_refuse_yaml_aliases_and_deep_nesting_fast() {
    let up = Upstream::echo("a");
    let gw = empty(&[]);
    with_route(&gw, &up);
    let yaml = [("Content-Type", "application/yaml")];
    let json_ct = [("Content-Type", "application/json")];

    // Anchors and aliases: refused before anything is expanded.
    let mut laughs = String::from("a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
    for (prev, name) in ["a", "b", "c", "d"].iter().zip(["b", "c", "d", "e"]) {
        laughs.push_str(&format!("{name}: &{name} [{}]\n", vec![format!("*{prev}"); 8].join(", ")));
    }
    let t = Instant::now();
    let v = refused(&call(&gw, "PUT", "/admin/v1/config", &yaml, laughs.as_bytes()), 400, "bad_body");
    assert!(v["message"].as_str().unwrap().contains("anchors"), "{v}");
    let aliased = b"routes:\n  r:\n    paths: [\"/*\"]\n    upstream: *u\n";
    let v = refused(&call(&gw, "PUT", "/admin/v1/config", &yaml, aliased), 400, "bad_body");
    assert!(v["message"].as_str().unwrap().contains("aliases"), "{v}");

    // 20,000 levels of nesting, as YAML and as JSON: refused by the pre-scan, fast.
    let deep = format!("{}1{}", "[".repeat(20_000), "]".repeat(20_000));
    let v = refused(&call(&gw, "PUT", "/admin/v1/config", &yaml, deep.as_bytes()), 400, "bad_body");
    assert!(v["message"].as_str().unwrap().contains("deeper than"), "{v}");
    let v = refused(&call(&gw, "PUT", "/admin/v1/config", &json_ct, deep.as_bytes()), 400, "bad_body");
    assert!(v["message"].as_str().unwrap().contains("deeper than"), "{v}");
    let deep_block: String = (0..20_000).map(|_| "- ").collect::<String>() + "x\n";
    refused(&call(&gw, "PUT", "/admin/v1/config", &yaml, deep_block.as_bytes()), 400, "bad_body");
    assert!(t.elapsed() < Duration::from_secs(3), "refusals took {:?}", t.elapsed());

    // JSON bodies go to a JSON parser: YAML-only syntax in them is an error.
    let v = refused(
        &call(&gw, "PUT", "/admin/v1/routes/r2", &json_ct, b"{\"paths\": [\"/b\"], \"upstream\": u} # yaml"),
        400,
        "invalid_config",
    );
    assert!(v["problems"][0]["path"].as_str().unwrap().starts_with("routes.r2"), "{v}");

    // The default body limit is 1 MiB: refused from the head alone.
    let mut c = Client::connect(gw.admin);
    c.stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.send(
        format!(
            "PUT /admin/v1/config HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            gw.admin,
            (1 << 20) + 1
        )
        .as_bytes(),
    );
    refused(&c.try_read_response(false).expect("413 before the body"), 413, "body_too_large");

    // Nothing accepted was lost; the admin thread and the data plane still answer.
    assert_eq!(revision(&gw), 2);
    assert_eq!(Client::connect(gw.addr).get("/ok").text(), "a GET /ok");
    let r = call(&gw, "PUT", "/admin/v1/routes/r2", &json_ct, br#"{"paths": ["/b/*"], "upstream": "u"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn admin_yaml_bodies_with_line_breaks_the_guard_cannot_see_are_refused_fast() {
    let gw = empty(&[]);
    let yaml = [("Content-Type", "application/yaml")];
    // Lines the YAML parser breaks where a scan for anchors splitting on \n would not.
    let laughs = |br: &str| {
        let mut doc =
            format!("a:{br}  &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]{br}");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g"].iter().zip(["b", "c", "d", "e", "f", "g", "h"]) {
            doc.push_str(&format!("{name}:{br}  &{name} [{}]{br}", vec![format!("*{prev}"); 8].join(",")));
        }
        doc
    };
    let t = Instant::now();
    for (br, named) in [("\r", "carriage return"), ("\u{85}", "U+0085"), ("\u{2028}", "U+2028"), ("\u{2029}", "U+2029")]
    {
        let v = refused(&call(&gw, "PUT", "/admin/v1/config", &yaml, laughs(br).as_bytes()), 400, "bad_body");
        assert!(v["message"].as_str().unwrap().contains(named), "{v}");
    }
    // A byte order mark hides a line's first token from such a scan: anchors, and nesting.
    let flow_laughs = "\u{FEFF}[&a [x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b]]\n";
    let deep = format!("\u{FEFF}{}", "[".repeat(1_000_000));
    for doc in [flow_laughs, deep.as_str()] {
        let v = refused(&call(&gw, "PUT", "/admin/v1/config", &yaml, doc.as_bytes()), 400, "bad_body");
        assert!(v["message"].as_str().unwrap().contains("U+FEFF"), "{v}");
    }
    assert!(t.elapsed() < Duration::from_secs(3), "refusals took {:?}", t.elapsed());
    assert_eq!(revision(&gw), 0, "a refused body changed the configuration");
    // CRLF line breaks are fine.
    let r = call(&gw, "PUT", "/admin/v1/config", &yaml, b"upstreams: {}\r\nroutes: {}\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn config_file_with_anchors_or_deep_nesting_is_refused() {
    let up = Upstream::echo("a");
    let file = format!(
        "upstreams:\n  u: &up\n    targets: [{{addr: \"{}\"}}]\n  v: *up\nroutes:\n  r: {{paths: [\"/*\"], upstream: u}}\n",
        up.addr
    );
    let (status, log) = Gateway::try_start(&file, &default_driver(), &[]).err().expect("started with aliases");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("anchors"), "{log}");
    let deep = format!("upstreams: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let (status, log) = Gateway::try_start(&deep, &default_driver(), &[]).err().expect("started with deep nesting");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("deeper than"), "{log}");
}

#[test]
fn admin_refuses_foreign_host_origin_and_content_types() {
    let up = Upstream::echo("a");
    let gw = empty(&["--admin-host", "gw-admin.internal"]);
    with_route(&gw, &up);
    let port = gw.admin.port().to_string();

    // The cross-site rollback: foreign Host, foreign Origin, text/plain.
    let evil = [("Host", "evil.example"), ("Origin", "http://evil.example"), ("Content-Type", "text/plain")];
    refused(&call(&gw, "POST", "/admin/v1/revisions/0/rollback", &evil, b"x"), 403, "forbidden_host");
    // DNS rebinding: a foreign name that resolves to loopback.
    refused(
        &call(&gw, "GET", "/admin/v1/config", &[("Host", &format!("evil.example:{port}"))], b""),
        403,
        "forbidden_host",
    );
    // The right Host, but sent by a page elsewhere: another site, or another port of this host
    // (the data plane's, serving whatever its upstreams send).
    let data_plane = format!("http://127.0.0.1:{}", gw.addr.port());
    for origin in ["http://evil.example", "null", "http://localhost:3000", data_plane.as_str()] {
        let page = [("Origin", origin), ("Content-Type", "application/json")];
        refused(&call(&gw, "POST", "/admin/v1/revisions/0/rollback", &page, b""), 403, "forbidden_origin");
    }
    let https_self = format!("https://localhost:{port}");
    for origin in ["https://127.0.0.1", https_self.as_str(), "https://gw-admin.internal"] {
        let r = call(&gw, "GET", "/admin/v1/status", &[("Origin", origin)], b"");
        refused(&r, 403, "forbidden_origin");
    }
    for site in ["cross-site", "same-site"] {
        let r = call(&gw, "GET", "/admin/v1/status", &[("Sec-Fetch-Site", site)], b"");
        refused(&r, 403, "forbidden_origin");
    }
    // What a page may send without asking first (fetch with mode "no-cors"): a POST with no
    // body and no Content-Type, or a text/plain one, with no Origin checked here.
    let none: &[(&str, &str)] = &[];
    for headers in [none, &[("Content-Type", "text/plain")]] {
        let r = call(&gw, "POST", "/admin/v1/revisions/0/rollback", headers, b"");
        let v = refused(&r, 415, "unsupported_media_type");
        assert!(v["message"].as_str().unwrap().contains("Content-Type: application/json"), "{v}");
    }
    refused(&call(&gw, "DELETE", "/admin/v1/routes/r", &[], b""), 415, "unsupported_media_type");
    // Bodies must say JSON or YAML.
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let r = call(&gw, "POST", "/admin/v1/revisions/0/rollback", &[("Content-Type", ct)], b"{}");
        refused(&r, 415, "unsupported_media_type");
    }
    let r = call(&gw, "PUT", "/admin/v1/routes/r2", &[], br#"{"paths": ["/b"], "upstream": "u"}"#);
    refused(&r, 415, "unsupported_media_type");
    let r = call(&gw, "GET", "/x", &[("Host", "test.local")], b"");
    refused(&r, 403, "forbidden_host");
    assert_eq!(revision(&gw), 2, "a refused request changed the configuration");
    assert_eq!(Client::connect(gw.addr).get("/").text(), "a GET /");

    // Loopback names and addresses with any port, the listen address, --admin-host names.
    for host in
        ["localhost", "LOCALHOST:1", "127.0.0.1", "127.0.0.1:9180", "[::1]", "[::1]:80", "gw-admin.internal:443"]
    {
        let r = call(&gw, "GET", "/admin/v1/status", &[("Host", host)], b"");
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    // Its own origin: http, an allowed host, the admin port.
    for host in ["localhost", "127.0.0.1", "[::1]", "gw-admin.internal"] {
        let origin = format!("http://{host}:{port}");
        let r = call(&gw, "GET", "/admin/v1/status", &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")], b"");
        assert_eq!(r.status, 200, "{origin}: {}", r.text());
    }
    let r = call(&gw, "GET", "/admin/v1/status", &[("Sec-Fetch-Site", "none")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&gw, "PATCH", "/admin/v1/routes/r", &[("Content-Type", "application/merge-patch+json")], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&gw, "POST", "/admin/v1/revisions/0/rollback", &[("Content-Type", "application/json")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Client::connect(gw.addr).get("/").status, 404);
}

/// A connection that has sent part of a request head and stalls.
fn stalled(admin: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(admin).expect("connect");
    s.write_all(format!("PUT /admin/v1/config HTTP/1.1\r\nHost: {admin}\r\nContent-Ty").as_bytes()).unwrap();
    s
}

#[test]
fn slow_and_idle_connections_do_not_lock_out_the_operator() {
    let gw = empty(&[]);
    let admin = gw.admin;
    // Idle connections first, some after a request of their own, then stalled requests, far
    // more of each than there are slots.
    let mut idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(admin).expect("connect")).collect();
    let kept: Vec<Client> = (0..10)
        .map(|_| {
            let mut c = Client::connect(admin);
            let host = admin.to_string();
            assert_eq!(c.request("GET", "/admin/v1/status", &[("Host", &host)], b"").status, 200);
            c
        })
        .collect();
    let slow: Vec<TcpStream> = (0..100).map(|_| stalled(admin)).collect();
    idle.extend((0..100).map(|_| TcpStream::connect(admin).expect("connect")));

    // Stalled requests beyond the per-address cap are closed, not queued. The gateway takes
    // the connections in as fast as it is scheduled (more of them than the listen backlog):
    // wait for it, up to a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let open = loop {
        let open = slow.iter().filter(|s| still_open(s)).count();
        if open <= 8 || Instant::now() > deadline {
            break open;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(open <= 8, "{open} stalled requests still hold a slot");
    for _ in 0..3 {
        let t = Instant::now();
        let r = gw.admin("GET", "/admin/v1/status", None);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(2), "the operator waited {:?}", t.elapsed());
    }
    drop((idle, kept, slow));
}

/// Whether the gateway has neither answered nor closed `s`.
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 256];
    matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn admin_requests_must_arrive_whole_within_the_deadline() {
    let gw = empty(&["--admin-request-timeout", "1s"]);
    let t = Instant::now();
    let mut s = stalled(gw.admin);
    s.set_read_timeout(Some(Duration::from_millis(150))).unwrap();
    // Trickle a byte at a time: every read is prompt, the request never completes.
    let mut got = Vec::new();
    for b in b"pe: application/json\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") || t.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "after {:?}: {text:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A body that stalls is cut off the same way.
    let mut s = TcpStream::connect(gw.admin).unwrap();
    s.write_all(
        format!(
            "PUT /admin/v1/config HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{{",
            gw.admin
        )
        .as_bytes(),
    )
    .unwrap();
    let t = Instant::now();
    let r = Client::from_stream(s).try_read_response(false).expect("an answer");
    refused(&r, 408, "request_timeout");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn admin_token_file_is_read_and_compared() {
    let dir = scratch_dir();
    let file = dir.join("token");
    std::fs::write(&file, "  file-s3cret-0123456789\n").unwrap();
    let path = file.display().to_string();
    let gw = empty(&["--admin-token-file", &path]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", gw.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"), "the token is in the process list");
    let status = |auth: &str| call(&gw, "GET", "/admin/v1/status", &[("Authorization", auth)], b"").status;
    assert_eq!(status("Bearer file-s3cret-0123456789"), 200);
    for wrong in ["Bearer file-s3cret-012345678", "Bearer file-s3cret-01234567890", "Bearer ", "Bearer x", "s3cret"] {
        assert_eq!(status(wrong), 401, "{wrong}");
    }
    assert_eq!(call(&gw, "GET", "/admin/v1/status", &[], b"").status, 401);
    // An empty token file, or both ways of giving a token, refuse to start.
    std::fs::write(&file, "\n").unwrap();
    let (code, log) = Gateway::start_in(scratch_dir(), None, &default_driver(), &["--admin-token-file", &path])
        .err()
        .expect("started with an empty token file");
    assert_eq!(code.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("is empty"), "{log}");
    let (code, log) =
        Gateway::start_in(scratch_dir(), None, &default_driver(), &["--admin-token-file", &path, "--admin-token", "t"])
            .err()
            .expect("started with two tokens");
    assert_ne!(code.and_then(|s| s.code()), Some(0), "{log}");
}

/// Runs the binary with `args` (and a free listen and admin port), expecting it to exit.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary())
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--workers", "1", "--no-pin"])
        .args(["--driver", &default_driver()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status.and_then(|s| s.code()), err)
}

#[test]
fn a_missing_or_empty_store_is_refused_unless_asked_for() {
    let dir = scratch_dir();
    let data = dir.join("mistyped-data");
    let data_s = data.display().to_string();
    let (code, err) = run_to_exit(&["--data-dir", &data_s]);
    assert_eq!(code, Some(2), "a gateway started on a missing store: {err}");
    assert!(err.contains("--init") && err.contains(&data_s), "{err}");
    assert!(!data.exists(), "the refused start created {data_s}");
    // --init asks for a new one; a later start on it (still empty) is refused again.
    let mut gw = Gateway::start_in(dir.clone(), None, &default_driver(), &["--init"]).unwrap();
    gw.keep_dir = true;
    assert_eq!(revision(&gw), 0);
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    drop(gw);
    let (code, err) = run_to_exit(&["--data-dir", &dir.join("data").display().to_string()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("empty"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_request_heads_are_parsed_strictly() {
    let gw = empty(&[]);
    let a = gw.admin;
    let put = |extra: &str, body: &str| {
        format!("PUT /admin/v1/global_policies HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\n{extra}\r\n{body}")
    };
    for (head, status, what) in [
        (put("Content-Length: +2\r\n", "{}"), 400, "Content-Length"),
        (put("Content-Length: 2\r\nContent-Length: 2\r\n", "{}"), 400, "Content-Length"),
        (put("Content-Length: 2, 2\r\n", "{}"), 400, "Content-Length"),
        (put("Content-Length: 0x2\r\n", "{}"), 400, "Content-Length"),
        (put("Transfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\n\r\n"), 411, "Content-Length"),
        (put("Transfer-Encoding: chunked\r\nContent-Length: 2\r\n", "{}"), 400, "Transfer-Encoding"),
        (put("Content_Length: 2\r\n", "{}"), 400, "'_'"),
        (put("Expect: something\r\nContent-Length: 2\r\n", "{}"), 417, "expect"),
        (format!("GET /admin/v1/status HTTP/1.1\nHost: {a}\n\n"), 400, "LF"),
        (format!("GET /admin/v1/status HTTP/1.1\r\nHost: {a}\r\nHost: {a}\r\n\r\n"), 400, "Host"),
        ("GET /admin/v1/status HTTP/1.1\r\n\r\n".to_string(), 400, "Host"),
    ] {
        let r = raw(a, head.as_bytes());
        assert_eq!(r.status, status, "{head:?}: {}", r.text());
        let v = r.json();
        assert!(v["message"].as_str().unwrap().to_ascii_lowercase().contains(&what.to_ascii_lowercase()), "{v}");
        assert_eq!(r.header("connection"), Some("close"), "{head:?}");
    }
    assert_eq!(revision(&gw), 0, "a refused head changed the configuration");
    // Expect: 100-continue gets its interim answer, then the final one.
    let mut c = Client::connect(a);
    c.send(put("Expect: 100-continue\r\nContent-Length: 2\r\n", "").as_bytes());
    assert_eq!(c.read_head().expect("interim answer").status, 100);
    c.send(b"{}");
    let r = c.read_response(false);
    assert_eq!(r.status, 200, "{}", r.text());
}
