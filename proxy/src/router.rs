//! Route matching whose cost grows with the request's path depth and host labels, not with the
//! number of routes.
//!
//! Routes are indexed by host (exact names in a hash map, `*.suffix` wildcards in a second map
//! probed once per label, and a table for routes without hosts); inside each host table exact
//! paths sit in a hash map and patterns (`/users/{id}`, `/prefix/*`) in a segment trie. Every
//! candidate list is sorted by rank once, at compile time, so a lookup looks at the first few
//! entries of a handful of lists.

use std::collections::HashMap;

/// How a route's path pattern is shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `/exact`
    Exact(String),
    /// `/users/{id}/orders`: segments, `None` for a parameter.
    Params(Vec<Option<String>>),
    /// `/prefix/*` (segments before the star; may hold parameters). Matches `/prefix` too.
    Prefix(Vec<Option<String>>),
}

impl PathPattern {
    /// Parses a user's path pattern.
    pub fn parse(p: &str) -> Result<PathPattern, String> {
        if !p.starts_with('/') {
            return Err(format!("path {p:?} must start with '/'"));
        }
        if p.contains(['?', '#', '\\', ' ']) || p.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!("path {p:?} has a character not allowed in a path pattern"));
        }
        let body = &p[1..];
        let (body, prefix) = if body == "*" {
            ("", true)
        } else if let Some(b) = body.strip_suffix("/*") {
            (b, true)
        } else {
            (body, false)
        };
        let mut segs = Vec::new();
        let mut has_param = false;
        if !body.is_empty() {
            let parts: Vec<&str> = body.split('/').collect();
            for (i, s) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                if s.is_empty() && (prefix || !last) {
                    return Err(format!("path {p:?} has an empty segment"));
                }
                if *s == "." || *s == ".." {
                    return Err(format!("path {p:?} has a dot segment"));
                }
                if s.contains('*') {
                    return Err(format!("path {p:?}: '*' is only allowed as the last segment, as in /prefix/*"));
                }
                if let Some(name) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(format!("path {p:?}: parameter {s:?} needs a name of letters, digits or '_'"));
                    }
                    has_param = true;
                    segs.push(None);
                } else if s.contains(['{', '}']) {
                    return Err(format!("path {p:?}: a parameter must be a whole segment, like {{id}}"));
                } else {
                    segs.push(Some(s.to_string()));
                }
            }
        }
        Ok(if prefix {
            PathPattern::Prefix(segs)
        } else if has_param {
            PathPattern::Params(segs)
        } else {
            PathPattern::Exact(p.to_string())
        })
    }

    /// Specificity within the path dimension: exact > parameters > prefix, longer first.
    fn score(&self) -> u32 {
        let lit = |segs: &[Option<String>]| -> u32 {
            segs.iter().map(|s| s.as_ref().map_or(0, |x| x.len() as u32 + 1)).sum::<u32>().min(0xffff)
        };
        match self {
            PathPattern::Exact(s) => (3 << 16) | (s.len() as u32).min(0xffff),
            PathPattern::Params(s) => (2 << 16) | lit(s),
            PathPattern::Prefix(s) => (1 << 16) | lit(s),
        }
    }
}

/// How a host pattern is shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `example.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(h: &str) -> Result<HostPattern, String> {
        let lower = h.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, lower),
        };
        if name.is_empty()
            || name.len() > 253
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
            || name.starts_with('.')
            || name.ends_with('.')
        {
            return Err(format!("host {h:?} is not a host name or a '*.' wildcard"));
        }
        Ok(if wild { HostPattern::Wildcard(name) } else { HostPattern::Exact(name) })
    }
}

/// Rank used to order candidates: higher wins. Field order is significance order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rank {
    pub priority: i32,
    pub host: u32,
    pub path: u32,
    pub constraints: u32,
    /// Earlier routes (by id) win ties: stored as `u32::MAX - index`.
    pub order: u32,
}

/// One entry in a candidate list.
#[derive(Debug, Clone, Copy)]
struct Entry {
    route: u32,
    rank: Rank,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    param: Option<Box<Node>>,
    /// Routes whose `Params` pattern ends here.
    terminal: Vec<Entry>,
    /// Routes whose `Prefix` pattern ends here.
    prefix: Vec<Entry>,
}

impl Node {
    fn descend(&mut self, segs: &[Option<String>]) -> &mut Node {
        let mut n = self;
        for s in segs {
            n = match s {
                Some(lit) => n.children.entry(lit.clone()).or_default(),
                None => n.param.get_or_insert_with(Default::default),
            };
        }
        n
    }

    fn sort(&mut self) {
        sort_entries(&mut self.terminal);
        sort_entries(&mut self.prefix);
        self.children.values_mut().for_each(Node::sort);
        if let Some(p) = &mut self.param {
            p.sort();
        }
    }
}

fn sort_entries(v: &mut [Entry]) {
    v.sort_by_key(|e| std::cmp::Reverse(e.rank));
}

#[derive(Debug, Default)]
struct PathTable {
    exact: HashMap<String, Vec<Entry>>,
    trie: Node,
}

impl PathTable {
    fn insert(&mut self, pattern: &PathPattern, e: Entry) {
        match pattern {
            PathPattern::Exact(p) => self.exact.entry(p.clone()).or_default().push(e),
            PathPattern::Params(segs) => self.trie.descend(segs).terminal.push(e),
            PathPattern::Prefix(segs) => self.trie.descend(segs).prefix.push(e),
        }
    }

    fn sort(&mut self) {
        self.exact.values_mut().for_each(|v| sort_entries(v));
        self.trie.sort();
    }

    /// Calls `visit` with every candidate list that matches `path`.
    fn candidates<'s>(&'s self, path: &str, visit: &mut impl FnMut(&'s [Entry])) {
        if let Some(v) = self.exact.get(path) {
            visit(v);
        }
        let rest = path.strip_prefix('/').unwrap_or(path);
        walk(&self.trie, rest, visit);
    }
}

/// Depth-first walk of the trie over the remaining path `rest` (without its leading '/').
fn walk<'s>(node: &'s Node, rest: &str, visit: &mut impl FnMut(&'s [Entry])) {
    if !node.prefix.is_empty() {
        visit(&node.prefix);
    }
    if rest.is_empty() {
        if !node.terminal.is_empty() {
            visit(&node.terminal);
        }
        return;
    }
    let (seg, tail, more) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..], true),
        None => (rest, "", false),
    };
    let mut next = |child: &'s Node| {
        if more && tail.is_empty() {
            // A trailing slash: prefix routes of the child match; exact patterns do not.
            if !child.prefix.is_empty() {
                visit(&child.prefix);
            }
        } else {
            walk(child, tail, visit);
        }
    };
    if let Some(c) = node.children.get(seg) {
        next(c);
    }
    if !seg.is_empty() {
        if let Some(p) = &node.param {
            next(p);
        }
    }
}

/// The compiled routing index.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<String, PathTable>,
    wildcard_hosts: HashMap<String, PathTable>,
    any_host: PathTable,
    max_wildcard_labels: usize,
}

/// What the builder needs to know about a route.
pub struct RouteKey<'a> {
    pub hosts: &'a [HostPattern],
    pub paths: &'a [PathPattern],
    pub priority: i32,
    pub constraints: u32,
}

impl Router {
    /// Builds the index; `routes[i]` is route number `i`.
    pub fn build(routes: &[RouteKey<'_>]) -> Router {
        let mut r = Router::default();
        for (i, key) in routes.iter().enumerate() {
            let any = [HostPattern::Any];
            let hosts = if key.hosts.is_empty() { &any[..] } else { key.hosts };
            for host in hosts {
                let (table, host_score) = match host {
                    HostPattern::Any => (&mut r.any_host, 0),
                    HostPattern::Exact(h) => (r.exact_hosts.entry(h.clone()).or_default(), 2 << 16),
                    HostPattern::Wildcard(h) => {
                        r.max_wildcard_labels = r.max_wildcard_labels.max(h.split('.').count());
                        (r.wildcard_hosts.entry(h.clone()).or_default(), (1 << 16) | h.len() as u32)
                    }
                };
                for p in key.paths {
                    let rank = Rank {
                        priority: key.priority,
                        host: host_score,
                        path: p.score(),
                        constraints: key.constraints,
                        order: u32::MAX - i as u32,
                    };
                    table.insert(p, Entry { route: i as u32, rank });
                }
            }
        }
        r.any_host.sort();
        r.exact_hosts.values_mut().for_each(PathTable::sort);
        r.wildcard_hosts.values_mut().for_each(PathTable::sort);
        r
    }

    /// The best route for `host` (lower-case, no port) and `path` among those `accept`
    /// admits (method and header constraints).
    pub fn find(&self, host: &str, path: &str, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut best: Option<Entry> = None;
        let mut consider = |list: &[Entry]| {
            for e in list {
                if best.is_some_and(|b| b.rank >= e.rank) {
                    // Lists are sorted by rank: nothing further can win.
                    return;
                }
                if accept(e.route) {
                    best = Some(*e);
                    return;
                }
            }
        };
        if !host.is_empty() {
            if let Some(t) = self.exact_hosts.get(host) {
                t.candidates(path, &mut consider);
            }
            if !self.wildcard_hosts.is_empty() {
                let mut labels = 0;
                for (i, b) in host.bytes().enumerate() {
                    if b == b'.' {
                        labels += 1;
                        if let Some(t) = self.wildcard_hosts.get(&host[i + 1..]) {
                            t.candidates(path, &mut consider);
                        }
                        if labels > 128 {
                            break;
                        }
                    }
                }
            }
        }
        self.any_host.candidates(path, &mut consider);
        best.map(|e| e.route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R {
        hosts: Vec<HostPattern>,
        paths: Vec<PathPattern>,
        priority: i32,
    }

    fn r(hosts: &[&str], paths: &[&str], priority: i32) -> R {
        R {
            hosts: hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(),
            paths: paths.iter().map(|p| PathPattern::parse(p).unwrap()).collect(),
            priority,
        }
    }

    fn build(routes: &[R]) -> Router {
        let keys: Vec<_> = routes
            .iter()
            .map(|r| RouteKey { hosts: &r.hosts, paths: &r.paths, priority: r.priority, constraints: 0 })
            .collect();
        Router::build(&keys)
    }

    #[test]
    fn specificity_and_priority() {
        let router = build(&[
            r(&[], &["/*"], 0),                     // 0
            r(&[], &["/users/*"], 0),               // 1
            r(&[], &["/users/{id}"], 0),            // 2
            r(&[], &["/users/me"], 0),              // 3
            r(&["*.example.com"], &["/*"], 0),      // 4
            r(&["api.example.com"], &["/*"], 0),    // 5
            r(&[], &["/forced/*"], 10),             // 6
            r(&[], &["/users/{id}/orders/{o}"], 0), // 7
        ]);
        let f = |h: &str, p: &str| router.find(h, p, |_| true);
        assert_eq!(f("x", "/other"), Some(0));
        assert_eq!(f("x", "/users"), Some(1));
        assert_eq!(f("x", "/users/"), Some(1));
        assert_eq!(f("x", "/users/42"), Some(2));
        assert_eq!(f("x", "/users/me"), Some(3));
        assert_eq!(f("x", "/users/42/x"), Some(1));
        assert_eq!(f("x", "/users/42/orders/7"), Some(7));
        assert_eq!(f("a.example.com", "/users/me"), Some(4));
        assert_eq!(f("a.b.example.com", "/x"), Some(4));
        assert_eq!(f("api.example.com", "/x"), Some(5));
        assert_eq!(f("example.com", "/x"), Some(0));
        assert_eq!(f("api.example.com", "/forced/a"), Some(6));
        // A constraint that rejects the best falls back to the next.
        assert_eq!(router.find("x", "/users/me", |i| i != 3), Some(2));
    }

    #[test]
    fn no_match() {
        let router = build(&[r(&["a.com"], &["/x"], 0)]);
        assert_eq!(router.find("b.com", "/x", |_| true), None);
        assert_eq!(router.find("a.com", "/y", |_| true), None);
    }

    #[test]
    fn bad_patterns() {
        for p in ["x", "/a//b", "/a/*/b", "/{}", "/a{b}", "/../x", "/a b"] {
            assert!(PathPattern::parse(p).is_err(), "{p}");
        }
        assert!(HostPattern::parse("bad host").is_err());
        assert!(HostPattern::parse("*.").is_err());
    }
}
