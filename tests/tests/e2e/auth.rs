//! Authentication and authorisation on the request path: key-auth in a header and the query
//! (hidden from the upstream when asked), basic auth checked off the workers, several schemes
//! on one route, ACL groups, the identity headers the upstream gets (never a client's own),
//! per-consumer limits.

use std::time::{Duration, Instant};

use base64::Engine as _;
use ringway_tests::{Client, Gateway, Upstream};

const ALICE_KEY: &str = "alice-key-0123456789abcdef";
const BOB_KEY: &str = "bob-key-0123456789abcdefgh";

/// Two consumers (alice in gold, bob in bronze), one upstream, and `routes` (YAML under
/// `routes:`).
fn doc(up: std::net::SocketAddr, routes: &str, alice_policies: &str) -> String {
    format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{up}\"\nroutes:\n{routes}\nconsumers:\n  alice:\n    groups: [gold]\n    credentials:\n      key_auth:\n        - key: \"{ALICE_KEY}\"\n      basic_auth: {{username: alice, password: \"open sesame\"}}\n{alice_policies}  bob:\n    groups: [bronze]\n    credentials:\n      key_auth:\n        - key: \"{BOB_KEY}\"\n"
    )
}

fn route(id: &str, path: &str, policies: &str) -> String {
    format!("  {id}:\n    paths: [\"{path}\"]\n    upstream: u\n    policies:\n{policies}")
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[test]
fn key_auth_in_header_and_query_sets_identity_headers_and_hides_the_key() {
    let up = Upstream::echo("a");
    let routes = route("hidden", "/h/*", "      key_auth: {hide_credentials: true}\n")
        + &route("shown", "/s/*", "      key_auth: {header: x-api-key, query: key}\n");
    let gw = Gateway::start(&doc(up.addr, &routes, ""));
    let get = |target: &str, headers: &[(&str, &str)]| Client::connect(gw.addr).request("GET", target, headers, b"");

    // Without a key, and with a wrong one: the same 401, which says nothing of why.
    let none = get("/h/x", &[]);
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Key realm=\"ringway\""));
    assert_eq!(none.json()["error"], "unauthorized");
    let wrong = get("/h/x", &[("apikey", "not-a-key-of-anyone-at-all")]);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body, none.body, "a wrong key and no key answer alike");
    assert_eq!(up.request_count(), 0);

    // In the header, hidden; a client's own identity fields are dropped, the gateway's set.
    let r = get("/h/x", &[("apikey", ALICE_KEY), ("X-Consumer-Id", "bob"), ("X-Consumer-Groups", "root")]);
    assert_eq!(r.status, 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-consumer-id"), Some("alice"));
    assert_eq!(seen.header_all("x-consumer-id").len(), 1);
    assert_eq!(seen.header("x-consumer-groups"), Some("gold"));
    let fp = gw.admin("GET", "/admin/v1/consumers/alice", None).json()["credentials"]["key_auth"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(seen.header("x-credential-id"), Some(fp.as_str()), "the key's fingerprint, never the key");
    assert_eq!(seen.header("apikey"), None, "hidden");

    // In the query, hidden: the other parameters stay.
    assert_eq!(get(&format!("/h/x?a=1&apikey={ALICE_KEY}&b=2"), &[]).status, 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.target, "/h/x?a=1&b=2");
    assert_eq!(get(&format!("/h/x?apikey={ALICE_KEY}"), &[]).status, 200);
    assert_eq!(up.requests().pop().unwrap().target, "/h/x");

    // Not hidden: the upstream gets it as sent; the route's own names.
    assert_eq!(get("/s/x", &[("x-api-key", BOB_KEY)]).status, 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-api-key"), Some(BOB_KEY));
    assert_eq!(seen.header("x-consumer-id"), Some("bob"));
    assert_eq!(get(&format!("/s/x?key={BOB_KEY}"), &[]).status, 200);
    assert_eq!(get("/s/x", &[("apikey", BOB_KEY)]).status, 401, "the route reads x-api-key, not apikey");

    // A request authenticated on one route tells a route without policies nothing.
    let r = gw.admin("PUT", "/admin/v1/routes/open", Some(r#"{"paths": ["/o/*"], "upstream": "u"}"#));
    assert_eq!(r.status, 201);
    assert_eq!(get("/o/x", &[("apikey", ALICE_KEY), ("X-Consumer-Id", "alice")]).status, 200);
    assert_eq!(up.requests().pop().unwrap().header("x-consumer-id"), None);
}

#[test]
fn basic_auth_and_key_auth_on_one_route_any_passes_and_a_401_names_both() {
    let up = Upstream::echo("a");
    let routes = route("r", "/*", "      key_auth: {}\n      basic_auth: {realm: \"shop\", hide_credentials: true}\n");
    let gw = Gateway::start(&doc(up.addr, &routes, ""));
    let get = |headers: &[(&str, &str)]| Client::connect(gw.addr).request("GET", "/x", headers, b"");

    let r = get(&[]);
    assert_eq!(r.status, 401);
    let challenges: Vec<&str> =
        r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("www-authenticate")).map(|(_, v)| v.as_str()).collect();
    assert_eq!(challenges, ["Key realm=\"ringway\"", "Basic realm=\"shop\""]);

    let right = basic("alice", "open sesame");
    for _ in 0..3 {
        // The first is checked off the workers; the others are answered from the worker's cache.
        assert_eq!(get(&[("Authorization", &right)]).status, 200);
    }
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-consumer-id"), Some("alice"));
    assert_eq!(seen.header("x-credential-id"), Some("alice"));
    assert_eq!(seen.header("authorization"), None, "hidden");
    assert_eq!(get(&[("Authorization", &basic("alice", "open sesame!"))]).status, 401);
    assert_eq!(get(&[("Authorization", &basic("mallory", "open sesame"))]).status, 401);
    assert_eq!(get(&[("Authorization", "Basic !!!")]).status, 401);
    assert_eq!(get(&[("apikey", BOB_KEY)]).status, 200, "the key passes where the password is absent");

    // A changed password: the old one stops at once, though this worker had it cached.
    let r = gw.admin(
        "PATCH",
        "/admin/v1/consumers/alice",
        Some(r#"{"credentials": {"basic_auth": {"username": "alice", "password": "new sesame"}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&[("Authorization", &right)]).status, 401);
    assert_eq!(get(&[("Authorization", &basic("alice", "new sesame"))]).status, 200);
}

#[test]
fn an_unknown_username_costs_what_a_wrong_password_does() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&doc(up.addr, &route("r", "/*", "      basic_auth: {}\n"), ""));
    let time = |user: &str, i: usize| {
        let auth = basic(user, &format!("guess number {i}"));
        let started = Instant::now();
        assert_eq!(Client::connect(gw.addr).request("GET", "/x", &[("Authorization", &auth)], b"").status, 401);
        started.elapsed()
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..7 {
        known.push(time("alice", i));
        unknown.push(time("nobody-by-this-name", i));
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[3].as_secs_f64(), unknown[3].as_secs_f64());
    // Without the decoy check an unknown name answers in well under a millisecond, against
    // tens of milliseconds for a hash.
    assert!(k > 0.002, "a wrong password is checked against its hash ({k} s)");
    assert!(u / k > 0.5 && u / k < 2.0, "median unknown {u} s against wrong {k} s");
}

#[test]
fn acl_groups_and_per_consumer_limits() {
    let up = Upstream::echo("a");
    let routes = route("gold", "/gold/*", "      key_auth: {}\n      acl: {allow_groups: [gold]}\n")
        + &route("nobronze", "/nb/*", "      key_auth: {}\n      acl: {deny_groups: [bronze]}\n")
        + &route("metered", "/m/*", "      key_auth: {}\n      rate_limit: {limit: 3, window: 1m, key: consumer}\n");
    // alice's own limit: 5 a minute on every route she calls, over the route's.
    let own = "    policies:\n      rate_limit: {limit: 5, window: 1m}\n";
    let gw = Gateway::start(&doc(up.addr, &routes, own));
    let get = |path: &str, key: &str| Client::connect(gw.addr).request("GET", path, &[("apikey", key)], b"").status;

    assert_eq!(get("/gold/x", BOB_KEY), 403);
    assert_eq!(get("/gold/x", ALICE_KEY), 200);
    assert_eq!(get("/gold/x", "nobody-has-this-key-at-all"), 401);
    assert_eq!(get("/nb/x", BOB_KEY), 403);
    assert_eq!(get("/nb/x", ALICE_KEY), 200);

    // `key: consumer`: bob's three on the metered route, then 429; his limit is his own.
    for _ in 0..3 {
        assert_eq!(get("/m/x", BOB_KEY), 200);
    }
    assert_eq!(get("/m/x", BOB_KEY), 429);
    // alice has made two calls; her own limit of five replaces the route's three.
    assert_eq!(get("/m/x", ALICE_KEY), 200);
    assert_eq!(get("/m/x", ALICE_KEY), 200);
    assert_eq!(get("/m/x", ALICE_KEY), 200);
    let r = Client::connect(gw.addr).request("GET", "/gold/x", &[("apikey", ALICE_KEY)], b"");
    assert_eq!(r.status, 429, "alice's sixth call anywhere");
    assert_eq!(r.header("ratelimit-limit"), Some("5"));

    // Statistics by consumer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = gw.admin("GET", "/admin/v1/stats?by=consumer&window=5m", None).json();
        let text = s.to_string();
        if text.contains("\"alice\"") && text.contains("\"bob\"") {
            break;
        }
        assert!(Instant::now() < deadline, "no statistics by consumer: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
