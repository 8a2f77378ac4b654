//! Route matching whose cost grows with the request's path depth and host labels, not with the
//! number of routes, and route changes whose cost grows with the change, not with the number of
//! routes.
//!
//! Routes are indexed by host (exact names in a hash map, `*.suffix` wildcards in a second map
//! probed once per label, and a table for routes without hosts); inside each host table exact
//! paths sit in a hash map and patterns (`/users/{id}`, `/prefix/*`) in a segment trie. Every
//! candidate list is kept sorted by rank, so a lookup looks at the first few entries of a
//! handful of lists.
//!
//! The maps are persistent (hash array mapped tries that share structure between versions):
//! cloning a [`Router`] is O(1), and inserting or removing one route copies only the nodes on
//! its way, O(log n) each. A new snapshot is therefore the old one plus the change, while
//! workers go on reading the old one.

use std::sync::Arc;

type Map<K, V> = imbl::GenericHashMap<K, V, rustc_hash::FxBuildHasher, imbl::shared_ptr::DefaultSharedPtr>;

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
        // Requests are routed without their trailing slash (unless `trailing_slash: strict`):
        // `/a/` as a pattern means `/a`, so a route written either way is reached.
        let p = match p.strip_suffix('/') {
            Some(t) if !t.is_empty() && !t.ends_with('/') => t,
            _ => p,
        };
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

/// Rank used to order candidates: higher wins. Field order is significance order; equal ranks
/// go to the route whose id sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rank {
    pub priority: i32,
    pub host: u32,
    pub path: u32,
    pub constraints: u32,
}

/// What the index stores per route: cheap to clone, and named by a unique id.
pub trait Indexed: Clone {
    fn id(&self) -> &str;
}

/// One entry in a candidate list.
#[derive(Debug, Clone)]
struct Entry<T> {
    item: T,
    rank: Rank,
}

impl<T: Indexed> Entry<T> {
    /// Whether `self` is tried before `other`.
    fn precedes(&self, other: &Entry<T>) -> bool {
        self.rank > other.rank || (self.rank == other.rank && self.item.id() <= other.item.id())
    }
}

/// Inserts keeping the list ordered by [`Entry::precedes`].
fn insert_sorted<T: Indexed>(list: &mut Vec<Entry<T>>, e: Entry<T>) {
    let at = list.partition_point(|x| x.precedes(&e));
    list.insert(at, e);
}

#[derive(Debug, Clone)]
struct Node<T> {
    children: Map<Arc<str>, Arc<Node<T>>>,
    param: Option<Arc<Node<T>>>,
    /// Routes whose `Params` pattern ends here.
    terminal: Vec<Entry<T>>,
    /// Routes whose `Prefix` pattern ends here.
    prefix: Vec<Entry<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { children: Map::default(), param: None, terminal: Vec::new(), prefix: Vec::new() }
    }
}

impl<T: Indexed> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.param.is_none() && self.terminal.is_empty() && self.prefix.is_empty()
    }

    /// The node for `segs`, created (and copied where shared) on the way.
    fn descend(&mut self, segs: &[Option<String>]) -> &mut Node<T> {
        let mut n = self;
        for s in segs {
            let child = match s {
                Some(lit) => n.children.entry(Arc::from(lit.as_str())).or_default(),
                None => n.param.get_or_insert_with(Default::default),
            };
            n = Arc::make_mut(child);
        }
        n
    }

    /// Removes `id` from the list at `segs`, pruning nodes left empty. Returns whether `self`
    /// is now empty.
    fn remove(&mut self, segs: &[Option<String>], prefix: bool, id: &str) -> bool {
        match segs.split_first() {
            None => {
                let list = if prefix { &mut self.prefix } else { &mut self.terminal };
                list.retain(|e| e.item.id() != id);
            }
            Some((Some(lit), rest)) => {
                if let Some(child) = self.children.get_mut(lit.as_str()) {
                    if Arc::make_mut(child).remove(rest, prefix, id) {
                        self.children.remove(lit.as_str());
                    }
                }
            }
            Some((None, rest)) => {
                if let Some(child) = &mut self.param {
                    if Arc::make_mut(child).remove(rest, prefix, id) {
                        self.param = None;
                    }
                }
            }
        }
        self.is_empty()
    }
}

#[derive(Debug, Clone)]
struct PathTable<T> {
    exact: Map<Arc<str>, Arc<Vec<Entry<T>>>>,
    trie: Node<T>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        PathTable { exact: Map::default(), trie: Node::default() }
    }
}

impl<T: Indexed> PathTable<T> {
    fn insert(&mut self, pattern: &PathPattern, e: Entry<T>) {
        match pattern {
            PathPattern::Exact(p) => {
                insert_sorted(Arc::make_mut(self.exact.entry(Arc::from(p.as_str())).or_default()), e)
            }
            PathPattern::Params(segs) => insert_sorted(&mut self.trie.descend(segs).terminal, e),
            PathPattern::Prefix(segs) => insert_sorted(&mut self.trie.descend(segs).prefix, e),
        }
    }

    fn remove(&mut self, pattern: &PathPattern, id: &str) {
        match pattern {
            PathPattern::Exact(p) => {
                if let Some(list) = self.exact.get_mut(p.as_str()) {
                    let list = Arc::make_mut(list);
                    list.retain(|e| e.item.id() != id);
                    if list.is_empty() {
                        self.exact.remove(p.as_str());
                    }
                }
            }
            PathPattern::Params(segs) => {
                self.trie.remove(segs, false, id);
            }
            PathPattern::Prefix(segs) => {
                self.trie.remove(segs, true, id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.trie.is_empty()
    }

    /// Calls `visit` with every candidate list that matches `path`.
    fn candidates<'s>(&'s self, path: &str, visit: &mut impl FnMut(&'s [Entry<T>])) {
        if let Some(v) = self.exact.get(path) {
            visit(v);
        }
        let rest = path.strip_prefix('/').unwrap_or(path);
        walk(&self.trie, rest, visit);
    }
}

/// Depth-first walk of the trie over the remaining path `rest` (without its leading '/').
fn walk<'s, T: Indexed>(node: &'s Node<T>, rest: &str, visit: &mut impl FnMut(&'s [Entry<T>])) {
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
    let mut next = |child: &'s Node<T>| {
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

/// The routing index. Cloning is O(1); see the module documentation.
#[derive(Debug, Clone)]
pub struct Router<T> {
    exact_hosts: Map<Arc<str>, Arc<PathTable<T>>>,
    wildcard_hosts: Map<Arc<str>, Arc<PathTable<T>>>,
    any_host: PathTable<T>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router { exact_hosts: Map::default(), wildcard_hosts: Map::default(), any_host: PathTable::default() }
    }
}

/// Where a route sits in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKey {
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<PathPattern>,
    pub priority: i32,
    pub constraints: u32,
}

impl RouteKey {
    /// Every (host pattern, host score) the route is indexed under.
    fn hosts(&self) -> impl Iterator<Item = (&HostPattern, u32)> {
        const ANY: &[HostPattern] = &[HostPattern::Any];
        let hosts = if self.hosts.is_empty() { ANY } else { &self.hosts[..] };
        hosts.iter().map(|h| {
            let score = match h {
                HostPattern::Any => 0,
                HostPattern::Exact(_) => 2 << 16,
                HostPattern::Wildcard(name) => (1 << 16) | name.len() as u32,
            };
            (h, score)
        })
    }
}

impl<T: Indexed> Router<T> {
    fn table(&mut self, host: &HostPattern) -> &mut PathTable<T> {
        match host {
            HostPattern::Any => &mut self.any_host,
            HostPattern::Exact(h) => Arc::make_mut(self.exact_hosts.entry(Arc::from(h.as_str())).or_default()),
            HostPattern::Wildcard(h) => Arc::make_mut(self.wildcard_hosts.entry(Arc::from(h.as_str())).or_default()),
        }
    }

    /// Indexes `item` under `key`. Its id must not be indexed already.
    pub fn insert(&mut self, key: &RouteKey, item: T) {
        for (host, host_score) in key.hosts() {
            let table = self.table(host);
            for p in &key.paths {
                let rank =
                    Rank { priority: key.priority, host: host_score, path: p.score(), constraints: key.constraints };
                table.insert(p, Entry { item: item.clone(), rank });
            }
        }
    }

    /// Removes the route `id`, indexed under `key`.
    pub fn remove(&mut self, key: &RouteKey, id: &str) {
        for (host, _) in key.hosts() {
            let (map, name) = match host {
                HostPattern::Any => {
                    key.paths.iter().for_each(|p| self.any_host.remove(p, id));
                    continue;
                }
                HostPattern::Exact(h) => (&mut self.exact_hosts, h),
                HostPattern::Wildcard(h) => (&mut self.wildcard_hosts, h),
            };
            if let Some(t) = map.get_mut(name.as_str()) {
                let t = Arc::make_mut(t);
                key.paths.iter().for_each(|p| t.remove(p, id));
                if t.is_empty() {
                    map.remove(name.as_str());
                }
            }
        }
    }

    /// The best route for `host` (lower-case, no port) and `path` among those `accept`
    /// admits (method and header constraints).
    pub fn find<'s>(&'s self, host: &str, path: &str, accept: impl FnMut(&T) -> bool) -> Option<&'s T> {
        self.find_ranked(host, path, accept).map(|(item, _)| item)
    }

    /// [`Router::find`], with the rank the route matched by.
    pub fn find_ranked<'s>(
        &'s self,
        host: &str,
        path: &str,
        mut accept: impl FnMut(&T) -> bool,
    ) -> Option<(&'s T, Rank)> {
        let mut best: Option<&'s Entry<T>> = None;
        let mut consider = |list: &'s [Entry<T>]| {
            for e in list {
                if best.is_some_and(|b| b.precedes(e)) {
                    // Lists are sorted: nothing further can win.
                    return;
                }
                if accept(&e.item) {
                    best = Some(e);
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
        best.map(|e| (&e.item, e.rank))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Item(u32, String);

    impl Indexed for Item {
        fn id(&self) -> &str {
            &self.1
        }
    }

    fn r(hosts: &[&str], paths: &[&str], priority: i32) -> RouteKey {
        RouteKey {
            hosts: hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(),
            paths: paths.iter().map(|p| PathPattern::parse(p).unwrap()).collect(),
            priority,
            constraints: 0,
        }
    }

    fn item(i: usize) -> Item {
        Item(i as u32, format!("r{i:04}"))
    }

    fn build(routes: &[RouteKey]) -> Router<Item> {
        let mut router = Router::default();
        for (i, k) in routes.iter().enumerate() {
            router.insert(k, item(i));
        }
        router
    }

    fn find(router: &Router<Item>, h: &str, p: &str) -> Option<u32> {
        router.find(h, p, |_| true).map(|i| i.0)
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
        let f = |h: &str, p: &str| find(&router, h, p);
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
        assert_eq!(router.find("x", "/users/me", |i| i.0 != 3).map(|i| i.0), Some(2));
    }

    #[test]
    fn equal_ranks_go_to_the_smaller_id_in_any_insertion_order() {
        // Same rank from two different lists: /ab/* and /{p}/cd/* both score 3 literal bytes.
        let keys = [r(&[], &["/ab/*"], 0), r(&[], &["/{p}/cd/*"], 0)];
        for order in [[0, 1], [1, 0]] {
            let mut router = Router::default();
            for i in order {
                router.insert(&keys[i], item(i));
            }
            assert_eq!(find(&router, "x", "/ab/cd/e"), Some(0));
        }
        let mut router = Router::default();
        router.insert(&r(&[], &["/same"], 0), item(2));
        router.insert(&r(&[], &["/same"], 0), item(1));
        assert_eq!(find(&router, "x", "/same"), Some(1));
    }

    #[test]
    fn insert_and_remove_leave_older_versions_untouched() {
        let keys = [r(&[], &["/a/{id}"], 0), r(&["h.com"], &["/a/*"], 0), r(&["*.h.com"], &["/x"], 0)];
        let v1 = build(&keys);
        let mut v2 = v1.clone();
        v2.remove(&keys[1], "r0001");
        v2.remove(&keys[2], "r0002");
        v2.insert(&r(&[], &["/a/{id}"], 5), item(9));
        // v1 is unchanged.
        assert_eq!(find(&v1, "h.com", "/a/1"), Some(1));
        assert_eq!(find(&v1, "q.h.com", "/x"), Some(2));
        // v2 sees the change; emptied tables and nodes are pruned.
        assert_eq!(find(&v2, "h.com", "/a/1"), Some(9));
        assert_eq!(find(&v2, "q.h.com", "/x"), None);
        assert!(v2.exact_hosts.is_empty() && v2.wildcard_hosts.is_empty());
        v2.remove(&r(&[], &["/a/{id}"], 5), "r0009");
        v2.remove(&keys[0], "r0000");
        assert!(v2.any_host.is_empty());
        assert_eq!(find(&v1, "x", "/a/1"), Some(0));
    }

    #[test]
    fn no_match() {
        let router = build(&[r(&["a.com"], &["/x"], 0)]);
        assert_eq!(find(&router, "b.com", "/x"), None);
        assert_eq!(find(&router, "a.com", "/y"), None);
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
