//! `oauth2_introspection` against an RFC 7662 server the test runs, which counts its calls:
//! answers are cached (active ones no longer than the token lives, inactive ones briefly),
//! concurrent requests with one token make one call, scopes are required, and an endpoint that
//! cannot be reached answers 503 with nothing let through.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringway_tests::upstream::Reply;
use ringway_tests::{Client, Gateway, Upstream};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn json(v: serde_json::Value) -> Reply {
    Reply::Full(200, vec![("Content-Type".into(), "application/json".into())], v.to_string().into_bytes())
}

/// The introspection server: what it says of each token.
fn server() -> Upstream {
    Upstream::start("idp", |r| {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        if r.header("authorization") != Some("Basic Z2F0ZXdheTpzM2NyZXQ=") {
            return Reply::Full(401, vec![], b"{\"error\": \"invalid_client\"}".to_vec());
        }
        let token = body.split('&').find_map(|p| p.strip_prefix("token=")).unwrap_or("").to_string();
        let t = now();
        match token.as_str() {
            "good-token" => {
                json(serde_json::json!({"active": true, "client_id": "alice", "scope": "read write", "exp": t + 600}))
            }
            "short-token" => {
                json(serde_json::json!({"active": true, "client_id": "alice", "scope": "write", "exp": t + 1}))
            }
            "narrow-token" => json(serde_json::json!({"active": true, "client_id": "alice", "scope": "read"})),
            "slow-token" => Reply::Delay(
                Duration::from_millis(400),
                Box::new(json(serde_json::json!({"active": true, "client_id": "bob", "scope": "write"}))),
            ),
            _ => json(serde_json::json!({"active": false})),
        }
    })
}

fn call(gw: &Gateway, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    Client::connect(gw.addr).request("GET", "/x", &[("Authorization", &auth)], b"").status
}

#[test]
fn introspection_caches_coalesces_requires_scopes_and_fails_closed() {
    let idp = server();
    let up = Upstream::echo("a");
    let doc = format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{}\"\nroutes:\n  r:\n    paths: [\"/*\"]\n    upstream: u\n    policies:\n      oauth2_introspection: {{endpoint: \"http://{}/introspect\", client_id: gateway, client_secret: s3cret, cache_ttl: 60s, negative_ttl: 2s, required_scopes: [write], timeout: 1s}}\nconsumers:\n  alice: {{groups: [gold]}}\n  bob: {{}}\n",
        up.addr, idp.addr
    );
    // One worker, so every request shares one cache and one set of calls under way.
    let gw = Gateway::start_with(&doc, &ringway_tests::gateway::default_driver(), &["--workers", "1"]);

    assert_eq!(call(&gw, "good-token"), 200);
    assert_eq!(up.requests().pop().unwrap().header("x-consumer-id"), Some("alice"));
    assert_eq!(idp.request_count(), 1);
    // The client secret is sealed: no answer of the admin API shows it, the store holds none.
    for path in ["/admin/v1/routes/r", "/admin/v1/routes", "/admin/v1/config", "/admin/v1/config?format=yaml"] {
        let text = gw.admin("GET", path, None).text();
        assert!(!text.contains("s3cret") && !text.contains("sealed"), "{path}: {text}");
        assert!(text.contains("client_id"), "{path}: {text}");
    }
    assert!(gw.store_holds(b"\"client_id\":\"gateway\""), "the store is readable");
    assert!(!gw.store_holds(b"s3cret"), "the client secret in plaintext");
    for _ in 0..5 {
        assert_eq!(call(&gw, "good-token"), 200);
    }
    assert_eq!(idp.request_count(), 1, "an active token is asked about once while cached");

    // Inactive: refused, and the refusal cached for negative_ttl.
    assert_eq!(call(&gw, "revoked-token"), 401);
    assert_eq!(call(&gw, "revoked-token"), 401);
    assert_eq!(idp.request_count(), 2);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(call(&gw, "revoked-token"), 401);
    assert_eq!(idp.request_count(), 3, "asked again once negative_ttl passed");

    // Missing scope.
    assert_eq!(call(&gw, "narrow-token"), 401);
    // Cached no longer than the token lives (exp in a second, cache_ttl a minute).
    assert_eq!(call(&gw, "short-token"), 200);
    let before = idp.request_count();
    std::thread::sleep(Duration::from_millis(1600));
    call(&gw, "short-token");
    assert_eq!(idp.request_count(), before + 1, "asked again once the token expired");

    // Concurrent requests with one token: one call.
    let before = idp.request_count();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let addr = gw.addr;
            std::thread::spawn(move || {
                Client::connect(addr).request("GET", "/x", &[("Authorization", "Bearer slow-token")], b"").status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(idp.request_count(), before + 1, "six concurrent requests, one call");

    // An edit of the route that leaves the policy as it was keeps the worker's answers.
    let asked = idp.request_count();
    let r = gw.admin("PATCH", "/admin/v1/routes/r", Some(r#"{"max_body_bytes": 2048}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(call(&gw, "good-token"), 200);
    assert_eq!(idp.request_count(), asked, "the cache outlived an unrelated edit");
    // A change that leaves the secret out keeps it.
    let r = gw.admin(
        "PATCH",
        "/admin/v1/routes/r",
        Some(r#"{"policies": {"oauth2_introspection": {"cache_ttl": "61s"}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(call(&gw, "good-token"), 200);

    // The endpoint gone: an unknown token gets 503 and reaches nothing; a cached one passes.
    let passed = up.request_count();
    idp.kill();
    let r = Client::connect(gw.addr).request("GET", "/x", &[("Authorization", "Bearer new-token")], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "introspection_unavailable");
    assert_eq!(up.request_count(), passed, "nothing passed unchecked");
    assert_eq!(call(&gw, "good-token"), 200);
}
