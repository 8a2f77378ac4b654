//! `ringway-perf identity`: what identity costs apart from the request around it.
//!
//! - The cold verification of a JWT per algorithm (signature and claims, through the library
//!   and provider the gateway uses): the price of a token a worker has not verified yet.
//! - Consumer lookup by API key (digest and index lookup, as `key_auth` does it) with 10 and
//!   100,000 consumers, and the memory each consumer takes in the compiled snapshot.

use std::hint::black_box;
use std::time::Instant;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ringway_policy::consumer::{fingerprint, KeyCredentialSpec, KeyDigest};
use ringway_policy::ConsumerSpec;
use ringway_proxy::config::ConfigSpec;
use ringway_proxy::Snapshot;

use crate::jwt_fixtures::TOKENS;

pub fn run(rounds: usize) {
    println!("JWT cold verification (signature and claims), per token:");
    for (alg, _, pem, token) in TOKENS {
        let alg: Algorithm = alg.parse().expect("a fixture algorithm");
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("a fixture key");
        let mut v = Validation::new(alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let verify = || jsonwebtoken::decode::<serde_json::Value>(black_box(*token), &key, &v).is_ok();
        assert!(verify(), "{alg:?} fixture verifies");
        let started = Instant::now();
        for _ in 0..rounds {
            black_box(verify());
        }
        println!("  {:<6} {:>8.1} us", format!("{alg:?}"), started.elapsed().as_secs_f64() * 1e6 / rounds as f64);
    }

    println!("Consumer lookup by API key (SHA-256 digest, then the index), and memory per consumer:");
    let mut per = Vec::new();
    for n in [10usize, 100_000] {
        let doc = document(n);
        let before = rss_kib();
        let snapshot = Snapshot::compile(&doc, 1).expect("the document compiles");
        let after = rss_kib();
        drop(doc);
        let keys: Vec<String> = (0..1024).map(|i| key(i * 7 % n)).collect();
        let lookups = rounds * 50;
        let started = Instant::now();
        for i in 0..lookups {
            let k = &keys[i % keys.len()];
            black_box(snapshot.consumers.key(&KeyDigest::of(black_box(k.as_bytes()))));
        }
        let ns = started.elapsed().as_secs_f64() * 1e9 / lookups as f64;
        let kib = after.saturating_sub(before) as f64;
        // Resident memory moves in pages: a per-consumer figure means something only for many.
        let shown = if n >= 10_000 { format!("{:.0} bytes per consumer", kib * 1024.0 / n as f64) } else { "-".into() };
        println!("  {n:>7} consumers: {ns:>6.0} ns per lookup; {shown}");
        per.push(ns);
        drop(snapshot);
    }
    println!("  lookup with 100,000 / with 10: {:.2}x", per[1] / per[0]);
}

fn key(i: usize) -> String {
    format!("bench-key-{i:08}-0123456789abcdef")
}

/// `n` consumers, each with one sealed key and a group.
fn document(n: usize) -> ConfigSpec {
    let mut spec = ConfigSpec::default();
    for i in 0..n {
        let k = key(i);
        let mut c = ConsumerSpec { groups: vec!["bench".into()], ..Default::default() };
        c.credentials.key_auth.push(KeyCredentialSpec {
            key: None,
            digest: Some(KeyDigest::of(k.as_bytes()).hex()),
            fingerprint: Some(fingerprint(k.as_bytes())),
        });
        spec.consumers.insert(format!("c{i:08}"), c);
    }
    spec
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
