//! The configuration document: the guarded parsing the admin API and `--config` use
//! (`admin/src/parse.rs`, `admin/src/bootstrap.rs`, compiled into this crate) and the compile
//! step that turns it into a snapshot (`Snapshot::compile`).
//!
//! Input: one byte choosing JSON or YAML, then the document (UTF-8, as the admin API requires).
//!
//! Target addresses that are not literal `ip:port` are replaced by literal ones before
//! compiling: the compile step would resolve them through the system resolver.
//!
//! Checks, besides nothing panicking: a document that compiles is the same document once
//! written as JSON (as the admin API returns and stores it) and read back, and that still
//! compiles.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use ringway_fuzz::bootstrap::parse_document_as;
use ringway_fuzz::parse::{self, Syntax};
use ringway_proxy::{ConfigSpec, Snapshot};

/// Replaces every target address that would need a name lookup by a literal one.
fn without_lookups(spec: &mut ConfigSpec) {
    let mut n = 0u32;
    for u in spec.upstreams.values_mut() {
        for t in &mut u.targets {
            if t.addr.parse::<SocketAddr>().is_err() && t.addr.contains(':') {
                n += 1;
                t.addr = format!("127.{}.{}.{}:80", (n >> 16) & 255, (n >> 8) & 255, n & 255);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [syntax, doc @ ..] = data else { return };
    let Ok(text) = std::str::from_utf8(doc) else { return };
    let syntax = if syntax & 1 == 0 { Syntax::Yaml } else { Syntax::Json };

    // The admin API's path: any JSON value first (the body of PUT /config).
    let _ = parse::parse::<serde_json::Value>(text, syntax);

    let Ok(mut spec) = parse_document_as(text, syntax) else { return };
    without_lookups(&mut spec);
    let Ok(snapshot) = Snapshot::compile(&spec, 1) else { return };
    assert_eq!(snapshot.routes.len(), spec.routes.len());
    assert_eq!(snapshot.upstreams.len(), spec.upstreams.len());

    let json = serde_json::to_string(&spec).expect("a compiled document serialises");
    let again = match parse_document_as(&json, Syntax::Json) {
        Ok(again) => again,
        Err(e) => panic!("the document written as JSON does not parse back: {e}\n{json}"),
    };
    assert_eq!(again, spec, "the document changed through JSON:\n{json}");
    if let Err(e) = Snapshot::compile(&again, 2) {
        panic!("the document read back from JSON does not compile: {e}\n{json}");
    }
});
