//! `jwt_auth`: every algorithm with valid, expired, not-yet-valid, tampered and `alg: none`
//! tokens; algorithm confusion; an issuer's JWKS that rotates mid-test (fetched off the
//! workers, a `kid` it lacks fetching again at a bounded rate, a removed key refused after the
//! fetch); audience and issuer checks; claims as headers; 503 when keys were never obtainable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ringway_tests::upstream::Reply;
use ringway_tests::{Client, Gateway, Upstream};

/// A key pair made for the test.
struct Key {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    public_pem: String,
    /// The raw public key (an Ed25519 key's JWK is written from it).
    public_raw: Vec<u8>,
}

fn key(alg: Algorithm, kid: &str) -> Key {
    let rc = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => &rcgen::PKCS_RSA_SHA256,
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        Algorithm::EdDSA => &rcgen::PKCS_ED25519,
        other => panic!("no key pair for {other:?}"),
    };
    let kp = rcgen::KeyPair::generate_for(rc).expect("generate a key pair");
    let pem = kp.serialize_pem();
    let encoding = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("an encoding key");
    Key { alg, kid: kid.into(), encoding, public_pem: kp.public_key_pem(), public_raw: kp.public_key_raw().to_vec() }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(k: &Key, claims: serde_json::Value) -> String {
    let mut h = Header::new(k.alg);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, &claims, &k.encoding).expect("sign")
}

fn jwks(keys: &[&Key]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| match k.alg {
            Algorithm::EdDSA => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": k.kid,
                "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&k.public_raw),
            }),
            _ => {
                let mut j = Jwk::from_encoding_key(&k.encoding, k.alg).expect("a JWK");
                j.common.key_id = Some(k.kid.clone());
                serde_json::to_value(j).unwrap()
            }
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn get(gw: &Gateway, path: &str, token: &str) -> ringway_tests::Response {
    let auth = format!("Bearer {token}");
    Client::connect(gw.addr).request("GET", path, &[("Authorization", &auth)], b"")
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn consumer_keys_of_every_algorithm_and_the_tokens_they_refuse() {
    let algs = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    let keys: Vec<Key> = algs.iter().enumerate().map(|(i, a)| key(*a, &format!("k{i}"))).collect();
    let up = Upstream::echo("a");
    let mut doc = format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{}\"\nroutes:\n  r:\n    paths: [\"/*\"]\n    upstream: u\n    policies:\n      jwt_auth: {{hide_credentials: true}}\nconsumers:\n",
        up.addr
    );
    for (i, k) in keys.iter().enumerate() {
        let pem = k.public_pem.replace('\n', "\\n");
        doc.push_str(&format!(
            "  c{i}:\n    credentials:\n      jwt:\n        - {{key_id: {}, algorithm: {:?}, public_key: \"{pem}\"}}\n",
            k.kid, k.alg
        ));
    }
    let gw = Gateway::start(&doc);
    let t = now();
    for (i, k) in keys.iter().enumerate() {
        let name = format!("{:?}", k.alg);
        let valid = token(k, serde_json::json!({"sub": "x", "exp": t + 600, "nbf": t - 5}));
        let r = get(&gw, "/x", &valid);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let seen = up.requests().pop().unwrap();
        assert_eq!(seen.header("x-consumer-id"), Some(format!("c{i}").as_str()), "{name}");
        assert_eq!(seen.header("authorization"), None, "{name}: hidden");
        assert_eq!(get(&gw, "/x", &valid).status, 200, "{name}: again, from the worker's cache");

        let expired = token(k, serde_json::json!({"exp": t - 120}));
        assert_eq!(get(&gw, "/x", &expired).status, 401, "{name}: expired");
        let within_leeway = token(k, serde_json::json!({"exp": t - 10}));
        assert_eq!(get(&gw, "/x", &within_leeway).status, 200, "{name}: expired within the leeway");
        let early = token(k, serde_json::json!({"nbf": t + 600, "exp": t + 1200}));
        assert_eq!(get(&gw, "/x", &early).status, 401, "{name}: not yet valid");
        let endless = token(k, serde_json::json!({"sub": "x"}));
        assert_eq!(get(&gw, "/x", &endless).status, 401, "{name}: no exp");
        // The payload changed after signing.
        let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
        parts[1] = b64(&serde_json::json!({"sub": "admin", "exp": t + 600}));
        assert_eq!(get(&gw, "/x", &parts.join(".")).status, 401, "{name}: tampered");
        // `alg: none`, unsigned.
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "kid": k.kid})),
            b64(&serde_json::json!({"exp": t + 600}))
        );
        assert_eq!(get(&gw, "/x", &none).status, 401, "{name}: alg none");
    }

    // Algorithm confusion: an HS256 token "signed" with an RSA consumer's public key as the
    // secret, naming that key.
    let rsa = &keys[0];
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(rsa.kid.clone());
    let forged = jsonwebtoken::encode(
        &h,
        &serde_json::json!({"exp": t + 600}),
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let r = get(&gw, "/x", &forged);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"ringway\", error=\"invalid_token\""));
    let r = Client::connect(gw.addr).request("GET", "/x", &[], b"");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"ringway\""));

    // Shared secrets of HS keys: sealed at rest, never shown, opened again after a restart.
    let mut gw = gw;
    let secret = "a shared secret of at least thirty-two bytes";
    for (i, alg) in ["HS256", "HS384", "HS512"].iter().enumerate() {
        let body = format!(
            r#"{{"credentials": {{"jwt": [{{"key_id": "h{i}", "algorithm": "{alg}", "secret": "{secret}"}}]}}}}"#
        );
        let r = gw.admin("PUT", &format!("/admin/v1/consumers/hs{i}"), Some(&body));
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(!r.text().contains(secret) && !r.text().contains("sealed"), "{}", r.text());
    }
    let hs = |i: usize, alg: Algorithm, claims: serde_json::Value| {
        let mut h = Header::new(alg);
        h.kid = Some(format!("h{i}"));
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
    };
    let hs_algs = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    let check_hs = |gw: &Gateway| {
        for (i, alg) in hs_algs.iter().enumerate() {
            let valid = hs(i, *alg, serde_json::json!({"exp": t + 600}));
            assert_eq!(get(gw, "/x", &valid).status, 200, "{alg:?}");
            assert_eq!(up.requests().pop().unwrap().header("x-consumer-id"), Some(format!("hs{i}").as_str()));
            assert_eq!(get(gw, "/x", &hs(i, *alg, serde_json::json!({"exp": t - 120}))).status, 401, "{alg:?} expired");
            let early = serde_json::json!({"nbf": t + 600, "exp": t + 1200});
            assert_eq!(get(gw, "/x", &hs(i, *alg, early)).status, 401, "{alg:?} early");
            let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
            parts[1] = b64(&serde_json::json!({"sub": "admin", "exp": t + 600}));
            assert_eq!(get(gw, "/x", &parts.join(".")).status, 401, "{alg:?} tampered");
            // The right secret under another algorithm of the family is refused too.
            let other = hs_algs[(i + 1) % 3];
            assert_eq!(get(gw, "/x", &hs(i, other, serde_json::json!({"exp": t + 600}))).status, 401, "{alg:?}");
        }
    };
    check_hs(&gw);
    for path in ["/admin/v1/consumers/hs0", "/admin/v1/config", "/admin/v1/config?format=yaml"] {
        let text = gw.admin("GET", path, None).text();
        assert!(!text.contains(secret) && !text.contains("secret_sealed"), "{path}: {text}");
    }
    assert!(gw.store_holds(b"\"key_id\":\"h0\""), "the store is readable");
    assert!(!gw.store_holds(secret.as_bytes()), "a secret in plaintext");
    let r = gw.admin(
        "PUT",
        "/admin/v1/consumers/short",
        Some(r#"{"credentials": {"jwt": [{"key_id": "s", "algorithm": "HS256", "secret": "short"}]}}"#),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("consumers.short.credentials.jwt[0].secret"), "{}", r.text());
    // Restarted on the same store: the secrets open with the node's key.
    gw.keep_dir = true;
    let dir = gw.dir.clone();
    drop(gw);
    let gw = Gateway::start_in(dir, None, &ringway_tests::gateway::default_driver(), &[]).expect("restart");
    check_hs(&gw);
}

#[test]
fn issuer_keys_from_a_rotating_jwks_with_audience_issuer_and_claims() {
    let k1 = key(Algorithm::RS256, "k1");
    let k2 = key(Algorithm::ES256, "k2");
    let k3 = key(Algorithm::RS256, "k3");
    // One key of every other asymmetric algorithm, in the same set.
    let others: Vec<Key> = [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ]
    .iter()
    .enumerate()
    .map(|(i, a)| key(*a, &format!("o{i}")))
    .collect();
    let mut first: Vec<&Key> = vec![&k1, &k2];
    first.extend(others.iter());
    let served = Arc::new(Mutex::new(jwks(&first)));
    let s = served.clone();
    let idp = Upstream::start("idp", move |_| {
        Reply::Full(
            200,
            vec![("Content-Type".into(), "application/json".into())],
            s.lock().unwrap().clone().into_bytes(),
        )
    });
    let up = Upstream::echo("a");
    let doc = format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{up}\"\nroutes:\n  r:\n    paths: [\"/*\"]\n    upstream: u\n    policies:\n      jwt_auth:\n        issuers:\n          - {{issuer: \"https://idp.test\", jwks_uri: \"http://{idp}/jwks\", audiences: [api], refresh: 10s, algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]}}\n        claims_to_headers: {{sub: x-user-id, tier: x-tier}}\n  strict:\n    paths: [\"/strict/*\"]\n    upstream: u\n    policies:\n      jwt_auth:\n        issuers:\n          - {{issuer: \"https://idp.test\", jwks_uri: \"http://{idp}/jwks\", require_consumer: true, refresh: 10s}}\n  dark:\n    paths: [\"/dark/*\"]\n    upstream: u\n    policies:\n      jwt_auth:\n        issuers:\n          - {{issuer: \"https://idp.test\", jwks_uri: \"http://127.0.0.1:1/jwks\"}}\nconsumers:\n  alice: {{groups: [gold]}}\n",
        up = up.addr,
        idp = idp.addr
    );
    let gw = Gateway::start(&doc);
    let t = now();
    let claims =
        |sub: &str| serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": sub, "exp": t + 600, "tier": 3});

    // A known consumer: identity and claims as headers (a client's own x-user-id dropped).
    let alice = token(&k1, claims("alice"));
    let auth = format!("Bearer {alice}");
    let r = Client::connect(gw.addr).request("GET", "/x", &[("Authorization", &auth), ("X-User-Id", "root")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-consumer-id"), Some("alice"));
    assert_eq!(seen.header_all("x-user-id"), ["alice"]);
    assert_eq!(seen.header("x-tier"), Some("3"));
    // ES256 from the same set; a subject that is no consumer authenticates with its claims only.
    assert_eq!(get(&gw, "/x", &token(&k2, claims("stranger"))).status, 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-consumer-id"), None);
    assert_eq!(seen.header("x-user-id"), Some("stranger"));
    // ...unless the issuer requires a consumer: the same token, verified on another route a
    // moment ago, is judged by this route's rules.
    let stranger = token(&k2, claims("stranger"));
    assert_eq!(get(&gw, "/x", &stranger).status, 200);
    assert_eq!(get(&gw, "/strict/x", &stranger).status, 401);
    assert_eq!(get(&gw, "/strict/x", &token(&k2, claims("alice"))).status, 200);

    // Audience and issuer.
    let mut c = claims("alice");
    c["aud"] = "other".into();
    assert_eq!(get(&gw, "/x", &token(&k1, c)).status, 401, "wrong audience");
    let mut c = claims("alice");
    c["iss"] = "https://evil.test".into();
    assert_eq!(get(&gw, "/x", &token(&k1, c)).status, 401, "wrong issuer");
    // Every algorithm: valid, wrong audience, wrong issuer, expired, not yet valid, tampered.
    for k in &others {
        let name = format!("{:?}", k.alg);
        assert_eq!(get(&gw, "/x", &token(k, claims("alice"))).status, 200, "{name}");
        let mut c = claims("alice");
        c["aud"] = "other".into();
        assert_eq!(get(&gw, "/x", &token(k, c)).status, 401, "{name}: wrong audience");
        let mut c = claims("alice");
        c["iss"] = "https://evil.test".into();
        assert_eq!(get(&gw, "/x", &token(k, c)).status, 401, "{name}: wrong issuer");
        let mut c = claims("alice");
        c["exp"] = (t - 120).into();
        assert_eq!(get(&gw, "/x", &token(k, c)).status, 401, "{name}: expired");
        let mut c = claims("alice");
        c["nbf"] = (t + 600).into();
        assert_eq!(get(&gw, "/x", &token(k, c)).status, 401, "{name}: not yet valid");
        let valid = token(k, claims("alice"));
        let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
        parts[1] = b64(&serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": "bob", "exp": t + 600}));
        assert_eq!(get(&gw, "/x", &parts.join(".")).status, 401, "{name}: tampered");
        let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "kid": k.kid})), parts[1]);
        assert_eq!(get(&gw, "/x", &none).status, 401, "{name}: alg none");
    }
    for missing in ["aud", "iss", "exp"] {
        let mut c = claims("alice");
        c.as_object_mut().unwrap().remove(missing);
        assert_eq!(get(&gw, "/x", &token(&k1, c)).status, 401, "no {missing}");
    }
    // A claim may not become a header the gateway sets itself.
    let r = gw.admin(
        "PUT",
        "/admin/v1/routes/bad",
        Some(r#"{"paths": ["/bad"], "upstream": "u", "policies": {"jwt_auth": {"claims_to_headers": {"sub": "x-consumer-id"}}}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("routes.bad.policies.jwt_auth.claims_to_headers.sub"), "{}", r.text());
    let fetched = idp.request_count();
    assert!(fetched >= 1, "the set was fetched");

    // Tokens naming a key the set lacks: fetched again at most once per interval.
    let stray = key(Algorithm::RS256, "k9");
    for _ in 0..10 {
        assert_eq!(get(&gw, "/x", &token(&stray, claims("alice"))).status, 401);
    }
    assert!(idp.request_count() <= fetched + 1, "{} fetches for 10 unknown-key tokens", idp.request_count() - fetched);

    // Rotation: k3 in, k1 out. A token signed with k3 fetches the new set; k1's are refused
    // from then on, though a worker had one verified.
    *served.lock().unwrap() = jwks(&[&k2, &k3]);
    std::thread::sleep(Duration::from_millis(1100));
    let r = get(&gw, "/x", &token(&k3, claims("alice")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&gw, "/x", &alice).status, 401, "a removed key no longer verifies");
    assert_eq!(get(&gw, "/x", &token(&k2, claims("alice"))).status, 200, "a kept key still does");

    // Keys never obtainable: 503, never a pass.
    let r = get(&gw, "/dark/x", &token(&k1, claims("alice")));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "keys_unavailable");
}
