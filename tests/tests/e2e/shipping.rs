//! Log shipping to a collector the test starts: every record arrives, in order per worker,
//! gzipped when asked; a collector that refuses for a while gets what was queued once it
//! recovers; a full queue drops records and counts them exactly.

use std::io::Read;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringway_tests::upstream::Reply;
use ringway_tests::{Client, Gateway, Upstream};
use serde_json::Value;

use crate::single;

/// The records a collector received, decoded (gzip or not), in arrival order.
fn records(collector: &Upstream) -> Vec<Value> {
    let mut out = Vec::new();
    for r in collector.requests() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        let body = if r.header("content-encoding") == Some("gzip") {
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(&r.body[..]).read_to_end(&mut text).expect("gzip");
            text
        } else {
            r.body.clone()
        };
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).expect("one JSON record per line"));
        }
    }
    out
}

/// Waits until the collector holds at least `n` records accepted (answered 2xx).
fn wait_records(collector: &Upstream, accepted: impl Fn(&Upstream) -> Vec<Value>, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = accepted(collector);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The gateway's shipping figures from `/admin/v1/status`: shipped, dropped, failed batches.
fn shipping_figures(gw: &Gateway) -> (u64, u64, u64) {
    let st = gw.admin("GET", "/admin/v1/status", None).json();
    let get = |k: &str| st["log_shipping"][k].as_u64().unwrap();
    (get("shipped"), get("dropped"), get("failed_batches"))
}

fn shipping_config(origin: std::net::SocketAddr, collector: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{}log_shipping: {{endpoint: \"http://{collector}/ingest\", flush_every: \"50ms\", batch_max: 50{extra}}}\n",
        single(&[origin], "", "")
    )
}

#[test]
fn every_record_reaches_the_collector_in_order_per_worker() {
    let origin = Upstream::echo("o");
    let collector = Upstream::start("c", |_| Reply::Full(204, vec![], vec![]));
    let cfg = shipping_config(origin.addr, collector.addr, ", gzip: true, headers: {x-api-key: secret}");
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "2"]);
    let total = 300;
    for c in 0..3 {
        let mut client = Client::connect(gw.addr);
        for i in 0..total / 3 {
            assert_eq!(client.get(&format!("/c{c}/r{i}")).status, 200);
        }
    }
    let got = wait_records(&collector, records, total);
    assert_eq!(got.len(), total, "every record arrived, once");
    // No batch holds more than batch_max lines.
    for r in collector.requests() {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&r.body[..]).read_to_end(&mut text).expect("gzip");
        assert!(text.iter().filter(|b| **b == b'\n').count() <= 50, "a batch over batch_max");
    }
    let first = &collector.requests()[0];
    assert_eq!(first.target, "/ingest");
    assert_eq!(first.header("x-api-key"), Some("secret"));
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    // A connection's requests are served by one worker, in order: its records arrive in order.
    for c in 0..3 {
        let paths: Vec<String> = got
            .iter()
            .filter(|r| r["path"].as_str().unwrap().starts_with(&format!("/c{c}/")))
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..total / 3).map(|i| format!("/c{c}/r{i}")).collect();
        assert_eq!(paths, want, "records of one connection in order");
    }
    // The collector saw the last batch a moment before the shipper read its answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let st = gw.admin("GET", "/admin/v1/status", None).json();
        if st["log_shipping"]["shipped"] == total as u64 || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status["log_shipping"]["shipped"], total as u64);
    assert_eq!(status["log_shipping"]["dropped"], 0);
}

#[test]
fn a_collector_that_recovers_gets_the_queue_and_a_full_queue_counts_what_it_drops() {
    let origin = Upstream::echo("o");
    // The collector answers 503 until told otherwise.
    let answer = Arc::new(AtomicU16::new(503));
    let a = answer.clone();
    let collector = Upstream::start("c", move |_| Reply::Full(a.load(Ordering::Relaxed), vec![], vec![]));
    let cfg = shipping_config(origin.addr, collector.addr, ", queue_max: 100");
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "1"]);
    let total = 400;
    let mut client = Client::connect(gw.addr);
    for i in 0..total {
        assert_eq!(client.get(&format!("/r{i}")).status, 200);
    }
    // Down: the batch in hand is tried again and again; the queue holds 100; the rest drop.
    let figures = || shipping_figures(&gw);
    let deadline = Instant::now() + Duration::from_secs(10);
    while figures().2 == 0 || figures().1 == 0 {
        assert!(Instant::now() < deadline, "no failed batch or no drop: {:?}", figures());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(figures().0, 0, "nothing shipped while the collector refuses");
    // Up again: what was queued arrives.
    answer.store(200, Ordering::Relaxed);
    let accepted = |c: &Upstream| -> Vec<Value> {
        // Only batches answered 200 count: the last ones, after the switch. Decode all and
        // keep the distinct records (a refused batch was sent again).
        let mut seen = std::collections::BTreeSet::new();
        records(c).into_iter().filter(|r| seen.insert(r["request_id"].as_str().unwrap().to_string())).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let (shipped, dropped) = loop {
        let (s, d, _) = figures();
        if (s + d) as usize >= total || Instant::now() > deadline {
            break (s, d);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(shipped + dropped, total as u64, "every record was either shipped or counted as dropped");
    assert!(dropped > 0 && shipped >= 100, "shipped {shipped}, dropped {dropped}");
    let distinct = accepted(&collector);
    assert_eq!(distinct.len() as u64, shipped, "the collector has exactly the shipped records");
    // In order: what was shipped arrived in the order it was made (the dropped records are
    // gaps, never a reordering).
    let order: Vec<usize> =
        distinct.iter().map(|r| r["path"].as_str().unwrap().trim_start_matches("/r").parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order: {order:?}");
    assert_eq!(order[0], 0, "the oldest record was kept");
    let m = gw.admin("GET", "/metrics", None).text();
    assert!(m.contains(&format!("ringway_log_shipping_dropped_total {dropped}")), "{m}");
}

/// The voluntary context switches of the gateway's `log-shipper` thread so far.
fn shipper_switches(gw: &Gateway) -> u64 {
    let (_, status) = gw.threads().into_iter().find(|(n, _)| n == "log-shipper").expect("a log-shipper thread");
    let v = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")).unwrap();
    v.trim().parse().unwrap()
}

#[test]
fn batches_handed_over_during_a_backoff_wait_without_waking_the_shipper_and_all_arrive() {
    let origin = Upstream::echo("o");
    let answer = Arc::new(AtomicU16::new(503));
    let a = answer.clone();
    let collector = Upstream::start("c", move |_| Reply::Full(a.load(Ordering::Relaxed), vec![], vec![]));
    // One line a batch: every request's record is handed over on its own.
    let cfg = format!(
        "{}log_shipping: {{endpoint: \"http://{}/ingest\", flush_every: \"10ms\", batch_max: 1}}\n",
        single(&[origin.addr], "", ""),
        collector.addr
    );
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "1"]);
    let mut client = Client::connect(gw.addr);
    let figures = || shipping_figures(&gw);
    assert_eq!(client.get("/first").status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while figures().2 == 0 {
        assert!(Instant::now() < deadline, "the first batch never failed: {:?}", figures());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Backing off (100 ms, then 200, 400, 800...): 1000 batches come meanwhile.
    let before = shipper_switches(&gw);
    let total = 1000;
    for i in 0..total {
        assert_eq!(client.get(&format!("/r{i}")).status, 200);
    }
    // The log thread hands them over within its 500 ms sleep.
    std::thread::sleep(Duration::from_millis(1500));
    let woken = shipper_switches(&gw) - before;
    // A few tries, each a sleep or two; one wakeup a batch would be hundreds.
    assert!(woken < 60, "the shipper was woken {woken} times while it backed off");
    // Up again: every batch queued meanwhile is found and sent.
    answer.store(200, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while figures().0 < total + 1 {
        assert!(Instant::now() < deadline, "not all shipped: {:?}", figures());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(figures().1, 0, "nothing dropped");
}

#[test]
fn bad_shipping_settings_are_refused_with_their_paths() {
    let origin = Upstream::echo("o");
    let gw = Gateway::start(&single(&[origin.addr], "", ""));
    let mut doc: Value = gw.admin("GET", "/admin/v1/config", None).json();
    doc["log_shipping"] = serde_json::json!({"endpoint": "ftp://x", "format": "xml", "queue_max": 0});
    let r = gw.admin("PUT", "/admin/v1/config", Some(&doc.to_string()));
    assert_eq!(r.status, 400, "{}", r.text());
    let paths: Vec<String> =
        r.json()["problems"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap().to_string()).collect();
    for want in ["log_shipping.endpoint", "log_shipping.format", "log_shipping.queue_max"] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
}

#[test]
fn otlp_format_ships_log_records_that_decode_with_the_opentelemetry_definitions() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;

    let origin = Upstream::echo("o");
    let collector = Upstream::start("c", |_| Reply::Full(200, vec![], vec![]));
    let cfg = shipping_config(origin.addr, collector.addr, ", format: otlp, service_name: edge-7, gzip: true");
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "1"]);
    let mut client = Client::connect(gw.addr);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for i in 0..40 {
        let r = client.request("GET", &format!("/otlp/{i}"), &[("traceparent", parent)], b"");
        assert_eq!(r.status, 200);
    }
    let decode = |c: &Upstream| {
        let mut out = Vec::new();
        for r in c.requests() {
            assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
            let mut body = Vec::new();
            flate2::read::GzDecoder::new(&r.body[..]).read_to_end(&mut body).expect("gzip");
            let req = ExportLogsServiceRequest::decode(&body[..]).expect("an OTLP logs export");
            for rl in req.resource_logs {
                let res = rl.resource.unwrap();
                assert!(res.attributes.iter().any(|kv| kv.key == "service.name"
                    && matches!(&kv.value.as_ref().unwrap().value, Some(Any::StringValue(s)) if s == "edge-7")));
                for sl in rl.scope_logs {
                    out.extend(sl.log_records);
                }
            }
        }
        out
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = decode(&collector);
    while got.len() < 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        got = decode(&collector);
    }
    assert_eq!(got.len(), 40, "every record, once");
    let attr = |r: &opentelemetry_proto::tonic::logs::v1::LogRecord, k: &str| {
        r.attributes.iter().find(|kv| kv.key == k).and_then(|kv| match &kv.value.as_ref()?.value {
            Some(Any::StringValue(s)) => Some(s.clone()),
            Some(Any::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
    };
    // One worker, one connection: in order.
    for (i, r) in got.iter().enumerate() {
        assert_eq!(attr(r, "url.path"), Some(format!("/otlp/{i}")));
        assert_eq!(attr(r, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(r.severity_number, 9);
        assert_eq!(r.trace_id.len(), 16);
        assert!(r.time_unix_nano > 1_600_000_000_000_000_000, "a real time: {}", r.time_unix_nano);
    }
    assert_eq!(got[0].trace_id[..4], [0x0a, 0xf7, 0x65, 0x19]);
}

/// A collector over TLS (a certificate for 127.0.0.1 from a CA made here): the bodies it got.
fn tls_collector(
    cert: &rcgen::Certificate,
    key: &rcgen::KeyPair,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use std::io::Write;
    let chain = vec![cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let bodies = got.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let (config, bodies) = (config.clone(), bodies.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    // One request: head, then Content-Length bytes.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    bodies.lock().unwrap().push(buf[end + 4..end + 4 + len].to_vec());
                    buf.drain(..end + 4 + len);
                    if tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, got)
}

#[test]
fn records_reach_a_collector_over_verified_tls_and_not_one_with_an_unknown_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let (addr, bodies) = tls_collector(&server, &server_key);
    let indent = |pem: String| pem.lines().map(|l| format!("      {l}\n")).collect::<String>();

    let origin = Upstream::echo("o");
    let cfg = format!(
        "{}log_shipping:\n  endpoint: \"https://{addr}/ingest\"\n  flush_every: 50ms\n  tls:\n    ca: |\n{}",
        crate::single(&[origin.addr], "", ""),
        indent(ca.pem())
    );
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "1"]);
    let mut c = Client::connect(gw.addr);
    for i in 0..20 {
        assert_eq!(c.get(&format!("/tls/{i}")).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = || bodies.lock().unwrap().iter().map(|b| b.iter().filter(|x| **x == b'\n').count()).sum::<usize>();
    while count() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(), 20, "every record arrived over TLS");
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    assert!(status["log_shipping"]["endpoint"].as_str().unwrap().starts_with("https://"));
    drop(gw);

    // A collector whose certificate the configured CA did not sign gets nothing.
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_ca = other_params.self_signed(&other_key).unwrap();
    let cfg = format!(
        "{}log_shipping:\n  endpoint: \"https://{addr}/ingest\"\n  flush_every: 50ms\n  tls:\n    ca: |\n{}",
        crate::single(&[origin.addr], "", ""),
        indent(other_ca.pem())
    );
    let before = count();
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "1"]);
    assert_eq!(Client::connect(gw.addr).get("/x").status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = gw.admin("GET", "/admin/v1/status", None).json();
        if status["log_shipping"]["failed_batches"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no failed batch: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(), before, "nothing was delivered to an unverified collector");
    // TLS settings on a plain endpoint are refused with their path.
    let r = gw.admin(
        "PUT",
        "/admin/v1/config",
        Some(&format!(
            r#"{{"upstreams": {{"u": {{"targets": [{{"addr": "{}"}}]}}}}, "log_shipping": {{"endpoint": "http://{addr}/x", "tls": {{}}}}}}"#,
            origin.addr
        )),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("log_shipping.tls"), "{}", r.text());
}
