//! Identity at the edge: `ip_restriction` on the client address (behind trusted proxies, from
//! `X-Forwarded-For`; a client's own claims count for nothing), and identity fields a client
//! sends never reaching the upstream.

use ringway_tests::{Client, Gateway, Upstream};

use crate::single;

const POLICY: &str = "    policies:\n      ip_restriction: {allow: [\"10.1.0.0/16\"], deny: [\"10.1.9.0/24\"]}\n";

#[test]
fn ip_restriction_reads_the_client_behind_trusted_hops_and_ignores_claims() {
    let up = Upstream::echo("a");
    let cfg = single(&[up.addr], "", POLICY);
    let get = |gw: &Gateway, xff: Option<&str>| {
        let lines: Vec<(&str, &str)> = xff.map(|v| ("X-Forwarded-For", v)).into_iter().collect();
        Client::connect(gw.addr).request("GET", "/x", &lines, b"")
    };

    // Direct: the peer, 127.0.0.1, is outside `allow`; a claim in X-Forwarded-For changes nothing.
    let gw = Gateway::start(&cfg);
    let r = get(&gw, None);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(get(&gw, Some("10.1.2.3")).status, 403, "an untrusted peer's claim counts for nothing");
    assert_eq!(up.request_count(), 0, "nothing refused reached the upstream");
    drop(gw);

    // One trusted hop (the proxy on loopback): the client is the entry it appended, the rightmost.
    let gw = Gateway::start_with(
        &cfg,
        &ringway_tests::gateway::default_driver(),
        &["--trusted-hops", "1", "--trusted-proxies", "127.0.0.1/32"],
    );
    assert_eq!(get(&gw, Some("10.1.2.3")).status, 200);
    assert_eq!(get(&gw, Some("10.1.9.9")).status, 403, "deny wins inside allow");
    assert_eq!(get(&gw, Some("192.168.1.1")).status, 403);
    assert_eq!(get(&gw, Some("10.1.2.3, 192.168.1.1")).status, 403, "a spoofed entry left of the proxy's");
    drop(gw);

    // Two trusted hops: the second entry from the right.
    let gw = Gateway::start_with(
        &cfg,
        &ringway_tests::gateway::default_driver(),
        &["--trusted-hops", "2", "--trusted-proxies", "127.0.0.1/32"],
    );
    assert_eq!(get(&gw, Some("6.6.6.6, 10.1.2.3, 10.0.0.5")).status, 200);
    assert_eq!(get(&gw, Some("10.1.2.3, 8.8.8.8, 10.0.0.5")).status, 403);
    assert_eq!(up.request_count(), 2, "only the admitted requests reached the upstream");

    // A bad rule is refused with its path.
    let r = gw.admin(
        "PUT",
        "/admin/v1/routes/bad",
        Some(r#"{"paths": ["/b"], "upstream": "u", "policies": {"ip_restriction": {"deny": ["10.0.0.0/40"]}}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("routes.bad.policies.ip_restriction.deny[0]"), "{}", r.text());
}

#[test]
fn identity_fields_a_client_sends_never_reach_the_upstream() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&single(&[up.addr], "", ""));
    let spoofed = [
        ("X-Consumer-Id", "admin"),
        ("x-consumer-groups", "root"),
        ("X-Credential-Id", "abc"),
        ("X-Consumer-Idx", "kept"),
    ];
    assert_eq!(Client::connect(gw.addr).request("GET", "/x", &spoofed, b"").status, 200);
    let seen = &up.requests()[0];
    for name in ["x-consumer-id", "x-consumer-groups", "x-credential-id"] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    assert_eq!(seen.header("x-consumer-idx"), Some("kept"), "only the identity fields are removed");
}

#[test]
fn the_documents_trusted_proxies_say_which_hops_to_believe() {
    let up = Upstream::echo("a");
    let route = "    policies:\n      ip_restriction: {allow: [\"192.0.2.0/24\"]}\n";
    let base = single(&[up.addr], "", route);
    let cfg = format!("{base}trusted_proxies: [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n");
    let gw = Gateway::start(&cfg);
    let get = |xff: &str| Client::connect(gw.addr).request("GET", "/x", &[("X-Forwarded-For", xff)], b"").status;
    assert_eq!(get("192.0.2.7"), 200, "one trusted hop: the peer");
    assert_eq!(get("192.0.2.7, 10.0.0.5"), 200, "two hops inside the list");
    assert_eq!(get("192.0.2.7, 198.51.100.9, 10.0.0.5"), 403, "the nearest untrusted entry is the client");
    assert_eq!(get("198.51.100.9, 192.0.2.7"), 200, "what the client wrote further left counts for nothing");
    // The list goes upstream with the peer appended.
    let seen = up.requests().last().cloned().unwrap();
    assert_eq!(seen.header_all("x-forwarded-for"), ["198.51.100.9, 192.0.2.7, 127.0.0.1"]);

    // Without the list, the peer is the client again (a live change, no restart).
    let doc = serde_json::json!({
        "upstreams": {"u": {"targets": [{"addr": up.addr.to_string()}]}},
        "routes": {"all": {"paths": ["/*"], "upstream": "u", "policies": {"ip_restriction": {"allow": ["192.0.2.0/24"]}}}},
    });
    assert_eq!(gw.admin("PUT", "/admin/v1/config", Some(&doc.to_string())).status, 200);
    assert_eq!(get("192.0.2.7"), 403);
    // A bad entry is refused with its path; nothing is lost.
    let mut bad = doc.clone();
    bad["trusted_proxies"] = serde_json::json!(["10.0.0.0/8", "nope"]);
    let r = gw.admin("PUT", "/admin/v1/config", Some(&bad.to_string()));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("trusted_proxies[1]"), "{}", r.text());
    assert_eq!(get("192.0.2.7"), 403, "the refused change changed nothing");
}
