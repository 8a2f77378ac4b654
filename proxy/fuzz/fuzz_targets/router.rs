//! The routing index (`router`): patterns parsed from fuzz-chosen text, a router built from
//! them, lookups of fuzz-chosen hosts and paths, then removals.
//!
//! Checks, besides lookups never panicking:
//!
//! - every route is found at a host and path made to match one of its patterns, when the
//!   lookup accepts only that route, and the route found when every route is accepted ranks
//!   at least as high;
//! - after some routes are removed, they are no longer found and the others still are;
//! - the router cloned before the removals still finds every route (versions share structure
//!   but do not see each other's changes).

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringway_proxy::router::{HostPattern, Indexed, PathPattern, Rank, RouteKey, Router};

#[derive(Debug, Clone)]
struct Item {
    id: Arc<str>,
    /// Stands for method and header constraints: lookups may refuse some routes.
    tag: u8,
}

impl Indexed for Item {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Arbitrary)]
struct RouteIn {
    hosts: Vec<String>,
    paths: Vec<String>,
    priority: i8,
    constraints: u8,
    tag: u8,
    remove: bool,
}

#[derive(Debug, Arbitrary)]
struct Lookup {
    host: String,
    path: String,
    refuse: u8,
}

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<RouteIn>,
    lookups: Vec<Lookup>,
}

/// A host the pattern matches, when there is one to test with.
fn host_for(h: &HostPattern) -> Option<String> {
    match h {
        HostPattern::Any => Some("any.test".into()),
        HostPattern::Exact(h) => Some(h.clone()),
        // The lookup stops probing wildcards past 128 labels.
        HostPattern::Wildcard(s) if s.bytes().filter(|b| *b == b'.').count() < 120 => Some(format!("w.{s}")),
        HostPattern::Wildcard(_) => None,
    }
}

/// A path the pattern matches.
fn path_for(p: &PathPattern) -> String {
    let join = |segs: &[Option<String>]| -> String {
        segs.iter().map(|s| format!("/{}", s.as_deref().unwrap_or("p"))).collect()
    };
    match p {
        PathPattern::Exact(p) => p.clone(),
        PathPattern::Params(segs) => join(segs),
        PathPattern::Prefix(segs) => format!("{}/rest", join(segs)),
    }
}

/// Where each route must be found, with the rank it matches by there.
fn probes(key: &RouteKey) -> Vec<(String, String)> {
    let any = [HostPattern::Any];
    let hosts = if key.hosts.is_empty() { &any[..] } else { &key.hosts[..] };
    let mut out = Vec::new();
    for h in hosts {
        let Some(host) = host_for(h) else { continue };
        for p in &key.paths {
            out.push((host.clone(), path_for(p)));
        }
    }
    out
}

fn rank_of(router: &Router<Item>, host: &str, path: &str, id: &str) -> Option<Rank> {
    router.find_ranked(host, path, |i| &*i.id == id).map(|(i, rank)| {
        assert_eq!(&*i.id, id, "a lookup returned a route it did not accept");
        rank
    })
}

fuzz_target!(|input: Input| {
    let mut router: Router<Item> = Router::default();
    let mut routes = Vec::new();
    for (n, r) in input.routes.iter().take(64).enumerate() {
        let hosts: Vec<HostPattern> = r.hosts.iter().take(4).filter_map(|h| HostPattern::parse(h).ok()).collect();
        let paths: Vec<PathPattern> = r.paths.iter().take(4).filter_map(|p| PathPattern::parse(p).ok()).collect();
        if paths.is_empty() {
            continue;
        }
        let key = RouteKey { hosts, paths, priority: i32::from(r.priority), constraints: u32::from(r.constraints % 4) };
        let item = Item { id: Arc::from(format!("r{n:03}")), tag: r.tag };
        router.insert(&key, item.clone());
        routes.push((key, item, r.remove));
    }

    for l in input.lookups.iter().take(32) {
        let host = l.host.to_ascii_lowercase();
        let _ = router.find_ranked(&host, &l.path, |i| i.tag & l.refuse == 0);
        let _ = router.find(&host, &l.path, |_| true);
    }

    for (key, item, _) in &routes {
        for (host, path) in probes(key) {
            let own = rank_of(&router, &host, &path, &item.id);
            let own = own.unwrap_or_else(|| panic!("{} not found at {host:?} {path:?} ({key:?})", item.id));
            let (_, best) = router.find_ranked(&host, &path, |_| true).expect("a route matches");
            assert!(best >= own, "{} at {host:?} {path:?}: best rank {best:?} below its own {own:?}", item.id);
        }
    }

    let before = router.clone();
    for (key, item, remove) in &routes {
        if *remove {
            router.remove(key, &item.id);
        }
    }
    for (key, item, removed) in &routes {
        for (host, path) in probes(key) {
            let found = rank_of(&router, &host, &path, &item.id).is_some();
            assert_eq!(found, !removed, "{} at {host:?} {path:?} after removals (removed: {removed})", item.id);
            assert!(rank_of(&before, &host, &path, &item.id).is_some(), "the older router lost {}", item.id);
        }
    }
});
