//! Consumers in the admin API: secrets sealed at write (no GET, list or export shows a key, a
//! digest or a password hash; the store's files hold none in plaintext), credentials kept by
//! fingerprint, a key or username never held by two consumers (409), changes reaching the
//! request path.

use ringway_tests::{Client, Gateway, Upstream};

use crate::single;

const KEY: &str = "alice-key-0123456789abcdef";
const PASSWORD: &str = "correct horse battery";

fn route_with_keys(up: std::net::SocketAddr) -> String {
    single(&[up], "", "    policies:\n      key_auth: {}\n")
}

fn get_with_key(gw: &Gateway, key: &str) -> u16 {
    Client::connect(gw.addr).request("GET", "/x", &[("apikey", key)], b"").status
}

fn no_secret_in(text: &str) {
    for secret in [KEY, PASSWORD, "$argon2", "digest", "password_hash"] {
        assert!(!text.contains(secret), "{secret:?} shown in {text}");
    }
}

#[test]
fn consumer_secrets_are_sealed_shown_by_fingerprint_and_never_stored_in_plaintext() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&route_with_keys(up.addr));
    let body = format!(
        r#"{{"groups": ["gold"], "metadata": {{"team": "payments"}},
            "credentials": {{"key_auth": [{{"key": "{KEY}"}}],
                             "basic_auth": {{"username": "alice", "password": "{PASSWORD}"}}}}}}"#
    );
    let r = gw.admin("PUT", "/admin/v1/consumers/alice", Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    no_secret_in(&r.text());
    let v = r.json();
    let fp = v["value"]["credentials"]["key_auth"][0]["fingerprint"].as_str().expect("a fingerprint").to_string();
    assert_eq!(fp.len(), 12);
    assert_eq!(v["value"]["credentials"]["basic_auth"]["username"], "alice");
    assert_eq!(v["value"]["metadata"]["team"], "payments");
    assert_eq!(get_with_key(&gw, KEY), 200);

    // Every way of reading it back.
    for path in ["/admin/v1/consumers/alice", "/admin/v1/consumers", "/admin/v1/config", "/admin/v1/config?format=yaml"]
    {
        let r = gw.admin("GET", path, None);
        assert_eq!(r.status, 200, "{path}");
        no_secret_in(&r.text());
        assert!(r.text().contains(&fp), "{path} names the key by its fingerprint");
    }

    // Two consumers never hold one key, or one username.
    let clash = format!(r#"{{"credentials": {{"key_auth": [{{"key": "{KEY}"}}]}}}}"#);
    let r = gw.admin("PUT", "/admin/v1/consumers/bob", Some(&clash));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "credential_conflict");
    assert!(r.text().contains("consumers.bob.credentials.key_auth[0]"), "{}", r.text());
    let clash = r#"{"credentials": {"basic_auth": {"username": "alice", "password": "another one"}}}"#;
    assert_eq!(gw.admin("PUT", "/admin/v1/consumers/bob", Some(clash)).status, 409);
    let twice = format!(
        r#"{{"upstreams": {{"u": {{"targets": [{{"addr": "{}"}}]}}}},
            "routes": {{"all": {{"paths": ["/*"], "upstream": "u"}}}},
            "consumers": {{"a": {{"credentials": {{"key_auth": [{{"key": "{KEY}x"}}]}}}},
                          "b": {{"credentials": {{"key_auth": [{{"key": "{KEY}x"}}]}}}}}}}}"#,
        up.addr
    );
    assert_eq!(gw.admin("PUT", "/admin/v1/config", Some(&twice)).status, 409);

    // Bad credentials are named by their path; nothing accepted is lost.
    let short = r#"{"credentials": {"key_auth": [{"key": "short"}]}}"#;
    let r = gw.admin("PUT", "/admin/v1/consumers/carol", Some(short));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("consumers.carol.credentials.key_auth[0].key"), "{}", r.text());
    let unknown = r#"{"credentials": {"key_auth": [{"fingerprint": "000000000000"}]}}"#;
    assert_eq!(gw.admin("PUT", "/admin/v1/consumers/carol", Some(unknown)).status, 400);
    let no_password = r#"{"credentials": {"basic_auth": {"username": "carol"}}}"#;
    assert_eq!(gw.admin("PUT", "/admin/v1/consumers/carol", Some(no_password)).status, 400);
    let bad_policy = r#"{"policies": {"key_auth": {}}}"#;
    let r = gw.admin("PUT", "/admin/v1/consumers/carol", Some(bad_policy));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("consumers.carol.policies"), "{}", r.text());
    assert_eq!(get_with_key(&gw, KEY), 200);

    // A PATCH and a PUT naming the key by fingerprint keep it; the export goes back in whole.
    let r = gw.admin("PATCH", "/admin/v1/consumers/alice", Some(r#"{"groups": ["gold", "silver"]}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_with_key(&gw, KEY), 200);
    let keep = format!(
        r#"{{"groups": ["gold"], "credentials": {{"key_auth": [{{"fingerprint": "{fp}"}}], "basic_auth": {{"username": "alice"}}}}}}"#
    );
    assert_eq!(gw.admin("PUT", "/admin/v1/consumers/alice", Some(&keep)).status, 200);
    assert_eq!(get_with_key(&gw, KEY), 200);
    let export = gw.admin("GET", "/admin/v1/config", None).text();
    let r = gw.admin("PUT", "/admin/v1/config", Some(&export));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_with_key(&gw, KEY), 200, "the exported document keeps the key");

    // The store's files: the fingerprint is there to be read; the key and password are not.
    assert!(gw.store_holds(fp.as_bytes()), "the store's files are readable to this search");
    assert!(gw.store_holds(b"$argon2id$"), "the password is stored as an argon2id hash");
    assert!(!gw.store_holds(KEY.as_bytes()), "the key is in the store's files");
    assert!(!gw.store_holds(PASSWORD.as_bytes()), "the password is in the store's files");

    // A deleted consumer's key stops working.
    assert_eq!(gw.admin("DELETE", "/admin/v1/consumers/alice", None).status, 200);
    assert_eq!(get_with_key(&gw, KEY), 401);
    assert_eq!(gw.admin("GET", "/admin/v1/consumers/alice", None).status, 404);
}

#[test]
fn a_key_moves_between_consumers_in_one_document() {
    let up = Upstream::echo("a");
    let file = format!(
        "{}consumers:\n  alice:\n    credentials:\n      key_auth:\n        - key: \"{KEY}\"\n",
        route_with_keys(up.addr)
    );
    let gw = Gateway::start(&file);
    assert_eq!(get_with_key(&gw, KEY), 200);
    let moved = format!(
        r#"{{"upstreams": {{"u": {{"targets": [{{"addr": "{}"}}]}}}},
            "routes": {{"all": {{"paths": ["/*"], "upstream": "u", "policies": {{"key_auth": {{}}}}}}}},
            "consumers": {{"alice": {{}}, "bob": {{"credentials": {{"key_auth": [{{"key": "{KEY}"}}]}}}}}}}}"#,
        up.addr
    );
    let r = gw.admin("PUT", "/admin/v1/config", Some(&moved));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = Client::connect(gw.addr).request("GET", "/x", &[("apikey", KEY)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.requests().last().unwrap().header("x-consumer-id"), Some("bob"));
}
