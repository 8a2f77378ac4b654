//! The compile step's checks.

use super::*;

fn doc(yaml: &str) -> ConfigSpec {
    serde_json::from_value(serde_json::from_str(yaml).unwrap()).unwrap()
}

#[test]
fn reports_every_problem_with_its_path() {
    let spec = doc(r#"{"upstreams": {"u": {"targets": [{"addr": "nope"}, {"addr": "127.0.0.1:1", "weight": 20000}],
                             "lb": "fastest", "timeouts": {"connect": "2 parsecs"}}},
            "routes": {"r": {"paths": ["x", "/ok"], "upstream": "missing", "strip_prefix": "api/"}}}"#);
    let errs = Snapshot::compile(&spec, 1).unwrap_err();
    let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "upstreams.u.targets[0].addr",
            "upstreams.u.targets[1].weight",
            "upstreams.u.lb",
            "upstreams.u.timeouts.connect",
            "routes.r.paths[0]",
            "routes.r.upstream",
            "routes.r.strip_prefix",
        ]
    );
}

#[test]
fn path_normalization_from_global_policies_and_routes() {
    use ringway_policy::{EscapedSlashes, PathNormalization};
    let spec = doc(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}},
            "routes": {"own": {"paths": ["/a/*"], "upstream": "u",
                               "policies": {"path_normalization": {"escaped_slashes": "decode"}}},
                       "plain": {"paths": ["/b"], "upstream": "u"}},
            "global_policies": {"path_normalization": {"merge_slashes": false}}}"#);
    let s = Snapshot::compile(&spec, 1).unwrap();
    assert!(!s.path_normalization.merge_slashes);
    let own = s.path_normalization(&s.routes["own"]);
    // A route's own replaces the global one whole, like any policy.
    assert_eq!(*own, PathNormalization { escaped_slashes: EscapedSlashes::Decode, ..Default::default() });
    assert_eq!(s.path_normalization(&s.routes["plain"]), &s.path_normalization);
    let s2 = s.edit([Edit::Global(None)], 2).unwrap();
    assert_eq!(s2.path_normalization, PathNormalization::default());

    let bad = doc(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}},
            "routes": {"r": {"paths": ["/ok", "/l%6fgin", "/a%2fb", "/a%5Cb"], "upstream": "u"}}}"#);
    let errs = Snapshot::compile(&bad, 1).unwrap_err();
    let got: Vec<_> = errs.0.iter().map(|e| (e.path.as_str(), e.message.as_str())).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, "routes.r.paths[1]");
    assert!(got[0].1.contains("\"/login\""), "{}", got[0].1);
    assert!(got[1].1.contains("\"/a%2Fb\""), "{}", got[1].1);
    assert!(got[2].1.contains("backslash"), "{}", got[2].1);
}

#[test]
fn strip_prefix_at_segment_boundary() {
    let spec = doc(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}},
            "routes": {"r": {"paths": ["/api/*"], "upstream": "u", "strip_prefix": "/api"}}}"#);
    let s = Snapshot::compile(&spec, 1).unwrap();
    let r = &s.routes["r"];
    assert_eq!(r.forward_path("/api/users"), "/users");
    assert_eq!(r.forward_path("/api"), "/");
    assert_eq!(r.forward_path("/apix"), "/apix");
}

fn route(paths: &[&str], hosts: &[&str], upstream: &str, priority: i32) -> RouteSpec {
    RouteSpec {
        paths: paths.iter().map(|p| p.to_string()).collect(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        upstream: upstream.into(),
        priority,
        ..Default::default()
    }
}

fn upstream(port: u16) -> UpstreamSpec {
    UpstreamSpec {
        targets: vec![crate::config::TargetSpec { addr: format!("127.0.0.1:{port}"), weight: 1 }],
        ..Default::default()
    }
}

fn lookup<'s>(s: &'s Snapshot, host: &str, path: &str) -> Option<(&'s str, u16)> {
    s.router.find(host, path, |_| true).map(|r| (r.id.as_str(), s.upstream(r.upstream).targets[0].port()))
}

#[test]
fn edits_leave_the_previous_snapshot_untouched() {
    let u1 = upstream(1);
    let u2 = upstream(2);
    let a = route(&["/a"], &[], "u1", 0);
    let v1 = Snapshot::default().edit([Edit::Upstream("u1", Some(&u1)), Edit::Route("a", Some(&a))], 1).unwrap();
    let b = route(&["/a"], &[], "u2", 1);
    let v2 = v1
        .edit([Edit::Upstream("u2", Some(&u2)), Edit::Route("b", Some(&b)), Edit::Upstream("u1", Some(&u2))], 2)
        .unwrap();
    assert_eq!(lookup(&v1, "h", "/a"), Some(("a", 1)));
    assert_eq!(lookup(&v2, "h", "/a"), Some(("b", 2)));
    // A changed upstream keeps its slot, so routes that use it see the new targets.
    assert_eq!(v2.upstreams["u1"].slot, v1.upstreams["u1"].slot);
    let v3 = v2.edit([Edit::Route("b", None)], 3).unwrap();
    assert_eq!(lookup(&v3, "h", "/a"), Some(("a", 2)));
    assert_eq!(v3.routes_using("u2").count(), 0);
    assert_eq!(v2.routes_using("u2").collect::<Vec<_>>(), ["b"]);
}

#[test]
fn refused_edits_name_every_problem() {
    let u1 = upstream(1);
    let a = route(&["/a"], &[], "u1", 0);
    let v1 = Snapshot::default().edit([Edit::Upstream("u1", Some(&u1)), Edit::Route("a", Some(&a))], 1).unwrap();
    let e = v1.edit([Edit::Upstream("u1", None)], 2).unwrap_err();
    assert_eq!(e.0[0].path, "upstreams.u1");
    assert!(e.0[0].message.contains("route(s) a"), "{}", e.0[0].message);
    let bad = route(&["x"], &[], "nope", 0);
    let e = v1.edit([Edit::Route("a", Some(&bad))], 2).unwrap_err();
    let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["routes.a.paths[0]", "routes.a.upstream"]);
    let e = v1.edit([Edit::Route("a", None), Edit::Route("a", Some(&a))], 2).unwrap_err();
    assert_eq!(e.0[0].path, "routes.a");
    // Deleting the route and its upstream together is fine.
    let v2 = v1.edit([Edit::Route("a", None), Edit::Upstream("u1", None)], 2).unwrap();
    assert!(v2.routes.is_empty() && v2.upstreams.is_empty());
    assert_eq!(lookup(&v1, "h", "/a"), Some(("a", 1)));
}

#[test]
fn consumers_changed_together_keep_their_slots_and_may_swap_keys() {
    use ringway_policy::consumer::{fingerprint, KeyCredentialSpec, KeyDigest};
    let consumer = |key: &str| {
        let mut c = ringway_policy::ConsumerSpec::default();
        c.credentials.key_auth.push(KeyCredentialSpec {
            key: None,
            digest: Some(KeyDigest::of(key.as_bytes()).hex()),
            fingerprint: Some(fingerprint(key.as_bytes())),
        });
        c
    };
    let (ka, kb) = (consumer("key-of-a-0123456789"), consumer("key-of-b-0123456789"));
    let v1 = Snapshot::default().edit([Edit::Consumer("a", Some(&ka)), Edit::Consumer("b", Some(&kb))], 1).unwrap();
    let slot = |s: &Snapshot, id: &str| s.consumers.by_id(id).unwrap().slot;
    let owner = |s: &Snapshot, key: &str| {
        s.consumers.key(&KeyDigest::of(key.as_bytes())).and_then(|o| s.consumers.get(o.slot)).map(|c| c.id.clone())
    };
    // Both change in one edit, each taking the other's key.
    let v2 = v1.edit([Edit::Consumer("a", Some(&kb)), Edit::Consumer("b", Some(&ka))], 2).unwrap();
    assert_eq!((slot(&v2, "a"), slot(&v2, "b")), (slot(&v1, "a"), slot(&v1, "b")));
    assert_eq!(owner(&v2, "key-of-a-0123456789").as_deref(), Some("b"));
    assert_eq!(owner(&v2, "key-of-b-0123456789").as_deref(), Some("a"));
    assert_eq!(owner(&v1, "key-of-a-0123456789").as_deref(), Some("a"), "the earlier snapshot is untouched");
    // One key for two consumers is refused.
    assert!(v2.edit([Edit::Consumer("a", Some(&ka))], 3).is_err());
}

#[test]
fn many_edits_answer_like_one_compile() {
    // A random walk of edits, checked against compiling the final document from scratch.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let paths = ["/a", "/a/*", "/a/{id}", "/b/{x}/c", "/*", "/b/*", "/a/b"];
    let hosts = ["", "h.com", "*.h.com"];
    let mut spec = ConfigSpec::default();
    for u in 0..4u16 {
        spec.upstreams.insert(format!("u{u}"), upstream(u + 1));
    }
    let mut snap = Snapshot::compile(&spec, 0).unwrap();
    for step in 1..400u64 {
        let id = format!("r{}", rand(30));
        let r = if rand(4) == 0 {
            None
        } else {
            let h = hosts[rand(3) as usize];
            let hs: Vec<&str> = if h.is_empty() { vec![] } else { vec![h] };
            Some(route(&[paths[rand(7) as usize]], &hs, &format!("u{}", rand(4)), rand(3) as i32))
        };
        snap = snap.edit([Edit::Route(&id, r.as_ref())], step).unwrap();
        match r {
            Some(r) => spec.routes.insert(id, r),
            None => spec.routes.remove(&id),
        };
    }
    let fresh = Snapshot::compile(&spec, 0).unwrap();
    assert_eq!(snap.routes.len(), fresh.routes.len());
    for host in ["h.com", "x.h.com", "other"] {
        for path in ["/a", "/a/1", "/a/b", "/b/1/c", "/b/1", "/zzz", "/a/1/2"] {
            assert_eq!(lookup(&snap, host, path), lookup(&fresh, host, path), "{host}{path}");
        }
    }
}
