//! OpenTelemetry traces to a collector the test starts: the OTLP/HTTP protobuf payloads decode
//! with the OpenTelemetry definitions, carry a server span per request and a client span per
//! upstream attempt with the right parent/child ids, follow the parent's sampled flag, and the
//! trace context always reaches the upstream, sampled or not.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use ringway_tests::upstream::Reply;
use ringway_tests::{Client, Gateway, Upstream};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every span the collector received, with the resource attributes of its export.
fn spans(collector: &Upstream) -> Vec<(Vec<(String, String)>, Span)> {
    let mut out = Vec::new();
    for r in collector.requests() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/v1/traces");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        let req = ExportTraceServiceRequest::decode(&r.body[..]).expect("an OTLP trace export");
        for rs in req.resource_spans {
            let res: Vec<(String, String)> = rs
                .resource
                .unwrap()
                .attributes
                .into_iter()
                .map(|kv| (kv.key, text(&kv.value.unwrap().value)))
                .collect();
            for ss in rs.scope_spans {
                assert_eq!(ss.scope.as_ref().unwrap().name, "ringway");
                for s in ss.spans {
                    out.push((res.clone(), s));
                }
            }
        }
    }
    out
}

fn text(v: &Option<Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).map(|kv| text(&kv.value.as_ref().unwrap().value))
}

fn wait_spans(collector: &Upstream, n: usize) -> Vec<(Vec<(String, String)>, Span)> {
    // Generous: a loaded machine may take a while to run the exporter and the collector.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = spans(collector);
        if s.len() >= n || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tracing_config(
    origin_extra: &str,
    targets: &[std::net::SocketAddr],
    collector: std::net::SocketAddr,
    ratio: f64,
) -> String {
    format!(
        "{}tracing: {{otlp_endpoint: \"http://{collector}/v1/traces\", sample_ratio: {ratio}, service_name: ringway-test, flush_every: \"20ms\"}}\n",
        crate::single(targets, origin_extra, "")
    )
}

#[test]
fn sampled_requests_export_server_and_client_spans_with_the_right_parents() {
    let origin = Upstream::echo("o");
    let collector = Upstream::start("otel", |_| Reply::Full(200, vec![], vec![]));
    let gw = Gateway::start(&tracing_config("", &[origin.addr], collector.addr, 1.0));
    let mut c = Client::connect(gw.addr);

    // A new trace: sampled at ratio 1; the origin hears the client span as its parent.
    assert_eq!(c.get("/new?q=1").status, 200);
    let got = wait_spans(&collector, 2);
    let status = gw.admin("GET", "/admin/v1/status", None).text();
    assert_eq!(got.len(), 2, "a server and a client span; {status}\n{}", gw.log());
    let (res, server) = got.iter().find(|(_, s)| s.kind == SpanKind::Server as i32).unwrap();
    let (_, client) = got.iter().find(|(_, s)| s.kind == SpanKind::Client as i32).unwrap();
    assert!(res.contains(&("service.name".into(), "ringway-test".into())), "{res:?}");
    assert!(res.iter().any(|(k, v)| k == "host.name" && !v.is_empty()));
    assert!(server.parent_span_id.is_empty(), "a new trace's server span is a root");
    assert_eq!(server.trace_id, client.trace_id);
    assert_eq!(client.parent_span_id, server.span_id, "the client span is the server span's child");
    assert_eq!(server.name, "GET");
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(server, "url.path").as_deref(), Some("/new"));
    // Query strings may carry secrets: not exported unless the log keeps them too.
    assert_eq!(attr(server, "url.query"), None);
    assert_eq!(attr(server, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(server, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(server, "ringway.route").as_deref(), Some("all"));
    assert_eq!(attr(client, "server.port").as_deref(), Some(origin.addr.port().to_string().as_str()));
    assert_eq!(attr(client, "http.response.status_code").as_deref(), Some("200"));
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert_eq!(server.flags & 0xff, 1, "sampled");
    let tp = origin.requests()[0].header("traceparent").unwrap().to_string();
    assert_eq!(tp, format!("00-{}-{}-01", hex(&server.trace_id), hex(&client.span_id)));

    // A trace that came sampled: the server span's parent is the caller's span.
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = c.request("GET", "/in", &[("traceparent", parent), ("tracestate", "k=v")], b"");
    assert_eq!(r.status, 200);
    let got = wait_spans(&collector, 4);
    let server = got
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == SpanKind::Server as i32 && hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c")
        .expect("the inbound trace's server span");
    assert_eq!(hex(&server.parent_span_id), "b7ad6b7169203331");
    assert_eq!(server.flags & 0x300, 0x300, "the parent is remote");
    let seen = &origin.requests()[1];
    assert!(seen.header("traceparent").unwrap().starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    assert_eq!(seen.header("tracestate"), Some("k=v"));

    // A trace that came unsampled: no spans, but the context goes on, unsampled.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    assert_eq!(c.request("GET", "/quiet", &[("traceparent", unsampled)], b"").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !spans(&collector).iter().any(|(_, s)| hex(&s.trace_id) == "11111111111111111111111111111111"),
        "an unsampled parent is followed"
    );
    let tp = origin.requests()[2].header("traceparent").unwrap().to_string();
    assert!(tp.starts_with("00-11111111111111111111111111111111-") && tp.ends_with("-00"), "{tp}");

    let status = gw.admin("GET", "/admin/v1/status", None).json();
    assert_eq!(status["tracing"]["sample_ratio"], 1.0);
    assert!(status["tracing"]["exported"].as_u64().unwrap() >= 4);
}

#[test]
fn ratio_zero_samples_no_new_trace_but_follows_a_sampled_parent() {
    let origin = Upstream::echo("o");
    let collector = Upstream::start("otel", |_| Reply::Full(200, vec![], vec![]));
    let gw = Gateway::start(&tracing_config("", &[origin.addr], collector.addr, 0.0));
    let mut c = Client::connect(gw.addr);
    for i in 0..20 {
        assert_eq!(c.get(&format!("/n{i}")).status, 200);
    }
    // The context still goes upstream: a new trace id per request, unsampled.
    let tps: std::collections::HashSet<String> =
        origin.requests().iter().map(|r| r.header("traceparent").unwrap()[3..35].to_string()).collect();
    assert_eq!(tps.len(), 20);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_eq!(c.request("GET", "/in", &[("traceparent", parent)], b"").status, 200);
    let got = wait_spans(&collector, 2);
    std::thread::sleep(Duration::from_millis(200));
    let got_after = spans(&collector);
    assert_eq!(got.len(), 2);
    assert_eq!(got_after.len(), 2, "only the sampled parent's request left spans");
    assert!(got.iter().all(|(_, s)| hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c"));
}

#[test]
fn each_attempt_has_its_own_client_span_and_names_it_upstream() {
    let a = Upstream::start("a", |_| Reply::Full(503, vec![], b"down".to_vec()));
    let b = Upstream::echo("b");
    let collector = Upstream::start("otel", |_| Reply::Full(200, vec![], vec![]));
    let extra = "    retries: {attempts: 2, on: [503], backoff: \"1ms\"}";
    let gw = Gateway::start_with(
        &tracing_config(extra, &[a.addr, b.addr], collector.addr, 1.0),
        &ringway_tests::gateway::default_driver(),
        &["--workers", "1"],
    );
    let mut c = Client::connect(gw.addr);
    for i in 0..4 {
        assert_eq!(c.get(&format!("/r{i}")).status, 200);
    }
    // Two of the four went to `a` first: 4 server spans, 6 client spans.
    let got = wait_spans(&collector, 10);
    assert_eq!(got.len(), 10);
    let retried: Vec<&Span> =
        got.iter().map(|(_, s)| s).filter(|s| attr(s, "http.request.resend_count").as_deref() == Some("1")).collect();
    assert_eq!(retried.len(), 2);
    for second in retried {
        let first = got
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.trace_id == second.trace_id && s.kind == SpanKind::Client as i32 && s.span_id != second.span_id)
            .expect("the first attempt's span");
        assert_eq!(attr(first, "http.response.status_code").as_deref(), Some("503"));
        assert_eq!(first.status.as_ref().map(|s| s.code), Some(2), "a 503 is an error on a client span");
        assert_eq!(first.parent_span_id, second.parent_span_id, "both are children of the server span");
        // The origin that answered heard the second attempt's span as its parent.
        let heard = b
            .requests()
            .iter()
            .filter_map(|r| r.header("traceparent").map(str::to_string))
            .find(|tp| tp[3..35] == hex(&second.trace_id))
            .expect("b saw the trace");
        assert_eq!(&heard[36..52], hex(&second.span_id));
        let a_heard = a
            .requests()
            .iter()
            .filter_map(|r| r.header("traceparent").map(str::to_string))
            .find(|tp| tp[3..35] == hex(&first.trace_id))
            .expect("a saw the trace");
        assert_eq!(&a_heard[36..52], hex(&first.span_id));
    }
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing_and_is_counted() {
    let origin = Upstream::echo("o");
    let (down, _hold) = ringway_tests::upstream::refused_addr();
    let gw = Gateway::start(&tracing_config("", &[origin.addr], down, 1.0));
    let mut c = Client::connect(gw.addr);
    for i in 0..50 {
        assert_eq!(c.get(&format!("/d{i}")).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = gw.admin("GET", "/admin/v1/status", None).json();
        let failed = status["tracing"]["failed_exports"].as_u64().unwrap();
        if failed > 0 {
            assert_eq!(status["tracing"]["exported"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "no failed export counted: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = gw.admin("GET", "/metrics", None).text();
    assert!(metrics.contains("ringway_trace_failed_exports_total"));
    // A bad setting is refused with its path named.
    let r =
        gw.admin("PUT", "/admin/v1/config", Some(r#"{"tracing": {"otlp_endpoint": "ftp://x", "sample_ratio": 2}}"#));
    assert_eq!(r.status, 400, "{}", r.text());
    let text = r.text();
    assert!(text.contains("tracing.sample_ratio") && text.contains("tracing.otlp_endpoint"), "{text}");
}
