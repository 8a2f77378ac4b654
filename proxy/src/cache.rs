//! The response cache: one partition per worker, bounded in bytes, and the RFC 9111 rules that
//! decide what is stored and for how long.
//!
//! The key is the host, path and query plus the values of the route's keyed request headers
//! (`vary` and `key_extra`). On a cached request no other client header reaches the upstream,
//! so no unkeyed header can shape a stored response; a response `Vary` naming any other header
//! therefore changes nothing, and `Vary: *` is never stored.
//!
//! Invalidation is per path: the partition indexes its keys by (route, path), kept in step
//! with evictions, so a successful unsafe request removes only that path's entries; and a fill
//! in flight is discarded only when its own path was invalidated meanwhile (a generation
//! counter per slot of (route, path) hashes). Purges by prefix scan the partition.
//!
//! Bodies being collected for the cache (captures) share a budget per worker, a quarter of
//! the partition: a capture that does not fit is not stored.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hash, Hasher};
use std::rc::Rc;

use quick_cache::unsync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use rustc_hash::{FxHashMap, FxHashSet};

use ringway_policy::HeaderList;

use crate::event::LocalEvent;
use crate::h1::head::{classify, Known};

/// Header fields as stored: name and value.
pub type StoredHeaders = Vec<(Box<str>, Box<[u8]>)>;

/// A stored response.
#[derive(Debug)]
pub struct Stored {
    pub status: u16,
    /// End-to-end header fields as the upstream sent them (framing, hop-by-hop, `Age` and
    /// `X-Request-Id` removed).
    pub headers: StoredHeaders,
    pub body: Vec<u8>,
    pub stored_ms: u64,
    /// `Age` the response already had when it arrived, in seconds.
    pub age_s: u64,
    pub fresh_ms: u64,
    pub stale_if_error_ms: u64,
    /// May answer requests that carry `Authorization` (`public`, `s-maxage`, `must-revalidate`).
    pub auth_ok: bool,
    pub route: Box<str>,
    pub path: Box<str>,
}

impl Stored {
    fn elapsed(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_ms)
    }

    pub fn is_fresh(&self, now_ms: u64) -> bool {
        self.elapsed(now_ms) < self.fresh_ms
    }

    /// Whether `stale-if-error` still lets this answer for a failed upstream.
    pub fn usable_on_error(&self, now_ms: u64) -> bool {
        self.elapsed(now_ms) < self.fresh_ms.saturating_add(self.stale_if_error_ms)
    }

    /// `Age` now, in seconds.
    pub fn age(&self, now_ms: u64) -> u64 {
        self.age_s.saturating_add(self.elapsed(now_ms) / 1000)
    }
}

/// A stored response with the hash of its (route, path), which indexes it.
struct Entry {
    stored: Rc<Stored>,
    path: u64,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<u64, Entry> for ByBytes {
    fn weight(&self, _: &u64, e: &Entry) -> u64 {
        let v = &e.stored;
        let headers: usize = v.headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        // 64 more for the path index's share.
        (v.body.len() + headers + v.path.len() + v.route.len() + 224) as u64
    }
}

/// Reports evictions (key and path hash) to the insert that caused them, so the path index
/// can follow.
#[derive(Clone)]
struct Evictions;

impl Lifecycle<u64, Entry> for Evictions {
    type RequestState = Vec<(u64, u64)>;

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, evicted: &mut Self::RequestState, key: u64, e: Entry) {
        evicted.push((key, e.path));
    }
}

/// The keys stored under one (route, path): most paths have one.
enum PathKeys {
    One(u64),
    Many(FxHashSet<u64>),
}

impl PathKeys {
    fn add(&mut self, key: u64) {
        match self {
            PathKeys::One(k) if *k == key => {}
            PathKeys::One(k) => *self = PathKeys::Many([*k, key].into_iter().collect()),
            PathKeys::Many(all) => {
                all.insert(key);
            }
        }
    }

    /// Removes `key`; answers whether none are left.
    fn remove(&mut self, key: u64) -> bool {
        match self {
            PathKeys::One(k) => *k == key,
            PathKeys::Many(all) => {
                all.remove(&key);
                all.is_empty()
            }
        }
    }
}

/// Slots of fill generations; (route, path) hashes share them, so an invalidation may discard
/// a fill of another path in the same slot, rarely.
const GENERATION_SLOTS: usize = 1024;

/// Bytes in-flight captures of one worker hold, and the most they may hold.
pub struct CaptureBudget {
    held: Cell<u64>,
    limit: u64,
}

/// Bytes reserved for one capture; given back when dropped, however the capture ends.
pub struct CaptureReservation {
    budget: Rc<CaptureBudget>,
    bytes: u64,
}

impl Drop for CaptureReservation {
    fn drop(&mut self) {
        self.budget.held.set(self.budget.held.get() - self.bytes);
    }
}

/// One worker's partition.
pub struct WorkerCache {
    entries: Cache<u64, Entry, ByBytes, DefaultHashBuilder, Evictions>,
    /// The keys stored under each (route, path), by the pair's hash.
    by_path: FxHashMap<u64, PathKeys>,
    /// Misses being fetched, by key: later misses for the key wait for the first (coalescing).
    pub inflight: FxHashMap<u64, Rc<LocalEvent>>,
    seed: std::hash::RandomState,
    /// Invalidations per slot of (route, path) hashes: a response fetched across an
    /// invalidation of its path is not stored.
    generations: Box<[u64]>,
    /// Purges by prefix: a response fetched across one is not stored.
    epoch: u64,
    captures: Rc<CaptureBudget>,
}

impl WorkerCache {
    /// A partition holding at most `bytes`; its captures in flight may hold a quarter of that.
    pub fn new(bytes: u64) -> Self {
        let items = (bytes / 2048).clamp(16, 1 << 20) as usize;
        WorkerCache {
            entries: Cache::with(items, bytes.max(1), ByBytes, DefaultHashBuilder::default(), Evictions),
            by_path: FxHashMap::default(),
            inflight: FxHashMap::default(),
            seed: std::hash::RandomState::new(),
            generations: vec![0; GENERATION_SLOTS].into_boxed_slice(),
            epoch: 0,
            captures: Rc::new(CaptureBudget { held: Cell::new(0), limit: bytes / 4 }),
        }
    }

    /// The key of a request: route, scheme, host as sent, path, query and the keyed header
    /// values, in order (`None` separates one header's values from the next's).
    pub fn key<'h>(
        &self,
        route: &str,
        scheme: &[u8],
        (host, path, query): (&[u8], &str, Option<&str>),
        keyed: impl Iterator<Item = Option<&'h [u8]>>,
    ) -> u64 {
        let mut h = self.seed.build_hasher();
        (route, scheme, host, path, query).hash(&mut h);
        for v in keyed {
            v.hash(&mut h);
        }
        h.finish()
    }

    /// The hash of (route, path) that indexes entries and picks their generation slot.
    fn path_hash(&self, route: &str, path: &str) -> u64 {
        self.seed.hash_one((0xff_u8, route, path))
    }

    fn generation_of(&self, path: u64) -> u64 {
        self.epoch.wrapping_add(self.generations[(path % GENERATION_SLOTS as u64) as usize])
    }

    pub fn get(&self, key: u64) -> Option<Rc<Stored>> {
        self.entries.get(&key).map(|e| e.stored.clone())
    }

    /// The generation of fills of `route` at `path`: read before fetching, handed back to
    /// [`WorkerCache::insert`].
    pub fn generation(&self, route: &str, path: &str) -> u64 {
        self.generation_of(self.path_hash(route, path))
    }

    /// Stores `s` under `key` unless its path was invalidated (or a prefix purged) since
    /// `generation` was read; answers whether it was.
    pub fn insert(&mut self, key: u64, s: Stored, generation: u64) -> bool {
        let path = self.path_hash(&s.route, &s.path);
        if self.generation_of(path) != generation {
            return false;
        }
        let evicted = self.entries.insert_with_lifecycle(key, Entry { stored: Rc::new(s), path });
        for (k, p) in evicted {
            self.unindex(p, k);
        }
        // Not admitted when larger than the partition allows.
        let admitted = self.entries.contains_key(&key);
        if admitted {
            self.by_path.entry(path).and_modify(|keys| keys.add(key)).or_insert(PathKeys::One(key));
        }
        admitted
    }

    fn unindex(&mut self, path: u64, key: u64) {
        if let Some(keys) = self.by_path.get_mut(&path) {
            if keys.remove(key) {
                self.by_path.remove(&path);
            }
        }
    }

    /// Removes the entries of `route` at `path` and discards that path's fills in flight;
    /// answers how many entries went. Costs the path's entries, not the partition's.
    pub fn invalidate(&mut self, route: &str, path: &str) -> usize {
        let p = self.path_hash(route, path);
        let slot = &mut self.generations[(p % GENERATION_SLOTS as u64) as usize];
        *slot = slot.wrapping_add(1);
        match self.by_path.remove(&p) {
            None => 0,
            Some(PathKeys::One(k)) => usize::from(self.entries.remove(&k).is_some()),
            Some(PathKeys::Many(all)) => all.iter().filter(|k| self.entries.remove(*k).is_some()).count(),
        }
    }

    /// Removes the entries of `route` whose path is `path`, or starts with `prefix` (a scan
    /// of the partition, which also discards every fill in flight).
    pub fn purge(&mut self, route: &str, path: Option<&str>, prefix: Option<&str>) -> usize {
        let mut removed = path.map_or(0, |p| self.invalidate(route, p));
        if let Some(prefix) = prefix {
            self.epoch = self.epoch.wrapping_add(1);
            let gone = RefCell::new(Vec::new());
            self.entries.retain(|k, e| {
                let hit = &*e.stored.route == route && e.stored.path.starts_with(prefix);
                if hit {
                    gone.borrow_mut().push((*k, e.path));
                }
                !hit
            });
            let gone = gone.into_inner();
            removed += gone.len();
            for (k, p) in gone {
                self.unindex(p, k);
            }
        }
        removed
    }

    /// Reserves room for capturing a body of `bytes` for the cache, or `None` when the
    /// worker's captures in flight already hold too much (the response is then not stored).
    pub fn reserve_capture(&self, bytes: u64) -> Option<CaptureReservation> {
        let held = self.captures.held.get();
        if held.saturating_add(bytes) > self.captures.limit {
            return None;
        }
        self.captures.held.set(held + bytes);
        Some(CaptureReservation { budget: self.captures.clone(), bytes })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a response allows a shared cache to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub fresh_ms: u64,
    pub stale_if_error_ms: u64,
    pub age_s: u64,
    pub auth_ok: bool,
}

/// The largest delta-seconds kept: RFC 9111 1.2.2 lets larger values count as 2^31.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The delta-seconds of a `name=value` directive (the quoted form accepted), or `None` when
/// it has no value or one that is not all digits.
fn directive_value(d: &str) -> Option<u64> {
    let v = d.split_once('=')?.1.trim();
    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
    delta_seconds(v)
}

fn delta_seconds(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)))
}

/// Statuses a cache may store without explicit freshness (RFC 9110 heuristically cacheable),
/// which are also the only ones stored here.
fn cacheable_status(s: u16) -> bool {
    matches!(s, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Whether and for how long a response may be stored, following RFC 9111 for a shared cache;
/// `default_ms` (the route's `ttl`) fills in when the response is silent. `None`: not stored.
/// `headers`: the response's end-to-end fields.
pub fn freshness(status: u16, headers: &HeaderList<'_>, now_ms: u64, default_ms: u64) -> Option<Freshness> {
    if !cacheable_status(status) {
        return None;
    }
    let get = |name: &'static str| headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| &*h.value);
    if get("set-cookie").next().is_some() {
        return None;
    }
    if get("vary").any(|v| v.split(|b| *b == b',').any(|p| p.trim_ascii() == b"*")) {
        return None;
    }
    let mut max_age = None;
    let mut s_maxage = None;
    let mut sie = 0;
    let mut public = false;
    let mut revalidate = false;
    for v in get("cache-control") {
        let v = std::str::from_utf8(v).ok()?;
        for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            let name = d.split('=').next().unwrap_or("").trim();
            match name {
                "no-store" | "private" | "no-cache" => return None,
                "public" => public = true,
                "must-revalidate" | "proxy-revalidate" => revalidate = true,
                // An invalid value is kept as such: it makes the response stale.
                "max-age" => max_age = Some(directive_value(&d)),
                "s-maxage" => s_maxage = Some(directive_value(&d)),
                "stale-if-error" => sie = directive_value(&d).unwrap_or(0),
                _ => {}
            }
        }
    }
    let age_s = get("age").next().and_then(|v| delta_seconds(std::str::from_utf8(v).ok()?.trim())).unwrap_or(0);
    // s-maxage overrides max-age in a shared cache; an invalid one of them means stale
    // (RFC 9111 4.2.1), never the route's ttl.
    let lifetime_ms = if let Some(s) = s_maxage.or(max_age) {
        s?.saturating_mul(1000)
    } else if let Some(exp) = get("expires").next() {
        // An invalid date means already expired.
        let date = get("date").next().and_then(http_date_ms).unwrap_or(now_ms);
        http_date_ms(exp).map_or(0, |e| e.saturating_sub(date))
    } else {
        default_ms
    };
    let fresh_ms = lifetime_ms.saturating_sub(age_s.saturating_mul(1000));
    if fresh_ms == 0 {
        return None;
    }
    // Shared with requests that carry credentials only when the response says so: public,
    // s-maxage, or must-revalidate with an explicit lifetime (never the route's ttl alone).
    let auth_ok = public || s_maxage.is_some() || (revalidate && max_age.is_some_and(|m| m.is_some()));
    // A stale copy may not answer for a failed upstream when it must be revalidated.
    let sie = if revalidate || s_maxage.is_some() { 0 } else { sie };
    Some(Freshness { fresh_ms, stale_if_error_ms: sie.saturating_mul(1000), age_s, auth_ok })
}

/// The header fields kept with a stored response: of its end-to-end fields (hop-by-hop ones,
/// those its `Connection` names included, already gone), all but `Age`, `Trailer` and framing.
pub fn stored_headers(headers: &HeaderList<'_>) -> StoredHeaders {
    headers
        .iter()
        .filter(|h| match classify(&h.name) {
            Known::Other => !h.name.eq_ignore_ascii_case("age") && !h.name.eq_ignore_ascii_case("trailer"),
            Known::Expect | Known::Forwarded => true,
            _ => false,
        })
        .map(|h| (Box::from(&*h.name), Box::from(&*h.value)))
        .collect()
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix milliseconds.
pub fn http_date_ms(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let rest = s.get(5..)?; // "Sun, "
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok().filter(|y| (1..=9999).contains(y))?;
    let mut hms = it.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from civil date (proleptic Gregorian).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days.checked_mul(86_400)? + (h * 3600 + m * 60 + sec) as i64;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> HeaderList<'a> {
        let mut list = HeaderList::default();
        for (n, v) in pairs {
            list.push(*n, v.as_bytes());
        }
        list
    }

    #[test]
    fn dates() {
        assert_eq!(http_date_ms(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777_000));
        assert_eq!(http_date_ms(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date_ms(b"Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(http_date_ms(b"0"), None);
    }

    #[test]
    fn rfc9111_rules() {
        let f = |status, pairs: &[(&str, &str)]| freshness(status, &h(pairs), 1_000_000, 60_000);
        assert_eq!(f(200, &[]).unwrap().fresh_ms, 60_000, "route ttl fills in");
        assert_eq!(f(200, &[("cache-control", "max-age=10")]).unwrap().fresh_ms, 10_000);
        let s = f(200, &[("Cache-Control", "max-age=10, s-maxage=20")]).unwrap();
        assert_eq!((s.fresh_ms, s.auth_ok), (20_000, true), "s-maxage wins for a shared cache");
        assert_eq!(f(200, &[("cache-control", "max-age=10"), ("age", "4")]).unwrap().fresh_ms, 6_000);
        assert_eq!(f(200, &[("cache-control", "max-age=10, stale-if-error=30")]).unwrap().stale_if_error_ms, 30_000);
        for cc in ["no-store", "private", "no-cache", "max-age=0"] {
            assert!(f(200, &[("cache-control", cc)]).is_none(), "{cc}");
        }
        assert!(f(200, &[("set-cookie", "a=b")]).is_none());
        assert!(f(200, &[("vary", "accept, *")]).is_none());
        assert!(f(500, &[("cache-control", "max-age=10")]).is_none());
        assert!(f(200, &[("expires", "0")]).is_none(), "an invalid Expires is already expired");
        let e = f(200, &[("date", "Thu, 01 Jan 1970 00:00:00 GMT"), ("expires", "Thu, 01 Jan 1970 00:00:30 GMT")]);
        assert_eq!(e.unwrap().fresh_ms, 30_000);
        assert!(!f(200, &[("cache-control", "max-age=5")]).unwrap().auth_ok);
        assert!(!f(200, &[("cache-control", "must-revalidate")]).unwrap().auth_ok, "ttl alone does not share");
        assert!(f(200, &[("cache-control", "must-revalidate, max-age=5")]).unwrap().auth_ok);
        for cc in ["max-age=5, stale-if-error=60, must-revalidate", "s-maxage=5, stale-if-error=60"] {
            assert_eq!(f(200, &[("cache-control", cc)]).unwrap().stale_if_error_ms, 0, "{cc}");
        }
        assert_eq!(http_date_ms(b"Sun, 06 Nov 99999999999 08:49:37 GMT"), None);
    }

    #[test]
    fn invalid_lifetimes_are_stale() {
        let f = |cc: &str| freshness(200, &h(&[("cache-control", cc)]), 1_000_000, 60_000);
        for cc in ["max-age=abc", "max-age=-1", "max-age=", "max-age=1.5", "s-maxage=x, max-age=60", "s-maxage=-5"] {
            assert!(f(cc).is_none(), "{cc}: the route ttl must not fill in for an invalid value");
        }
        assert_eq!(f("max-age=\"10\"").unwrap().fresh_ms, 10_000, "the quoted form is accepted");
    }

    #[test]
    fn huge_lifetimes_do_not_overflow() {
        let f = |cc: &str| freshness(200, &h(&[("cache-control", cc)]), 1_000_000, 60_000);
        let huge = "max-age=99999999999999999999999, stale-if-error=99999999999999999999999";
        for cc in ["max-age=18446744073709551, stale-if-error=18446744073709551", huge] {
            let fr = f(cc).unwrap_or_else(|| panic!("{cc} is stored"));
            let s = Stored {
                status: 200,
                headers: vec![],
                body: vec![],
                stored_ms: 1_000_000,
                age_s: 0,
                fresh_ms: fr.fresh_ms,
                stale_if_error_ms: fr.stale_if_error_ms,
                auth_ok: false,
                route: "r".into(),
                path: "/p".into(),
            };
            assert!(s.is_fresh(2_000_000) && s.usable_on_error(3_000_000_000_000), "{cc}");
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    fn stored(path: &str, body: usize) -> Stored {
        Stored {
            status: 200,
            headers: vec![],
            body: vec![b'x'; body],
            stored_ms: 0,
            age_s: 0,
            fresh_ms: 60_000,
            stale_if_error_ms: 0,
            auth_ok: false,
            route: "r".into(),
            path: path.into(),
        }
    }

    fn put(c: &mut WorkerCache, key: u64, path: &str, body: usize) -> bool {
        let g = c.generation("r", path);
        c.insert(key, stored(path, body), g)
    }

    #[test]
    fn partition_stays_within_its_bytes() {
        let mut c = WorkerCache::new(100_000);
        for i in 0..300u64 {
            put(&mut c, i, "/p", 900);
        }
        assert!(c.len() <= 100, "{} entries", c.len());
        assert!(c.entries.weight() <= 100_000, "{} bytes", c.entries.weight());
    }

    #[test]
    fn the_path_index_follows_evictions_and_invalidations() {
        let mut c = WorkerCache::new(100_000);
        for i in 0..3000u64 {
            put(&mut c, i, &format!("/p/{}", i % 7), 500);
        }
        let indexed: usize = c
            .by_path
            .values()
            .map(|k| match k {
                PathKeys::One(_) => 1,
                PathKeys::Many(all) => all.len(),
            })
            .sum();
        assert_eq!(indexed, c.len(), "evicted keys left the index");
        assert!(c.by_path.len() <= 7);
        let before = c.len();
        let removed = c.invalidate("r", "/p/3");
        assert!(removed >= 1);
        assert_eq!(c.len(), before - removed);
        assert!(c.invalidate("r", "/p/3") == 0 && c.invalidate("other", "/p/4") == 0);
        assert_eq!(c.purge("r", None, Some("/p/")), before - removed);
        assert!(c.is_empty() && c.by_path.is_empty());
        // Replacing a key indexes it once.
        put(&mut c, 1, "/x", 10);
        put(&mut c, 1, "/x", 20);
        assert_eq!(c.invalidate("r", "/x"), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn only_fills_of_an_invalidated_path_are_discarded() {
        let mut c = WorkerCache::new(100_000);
        let (ga, gb) = (c.generation("r", "/a"), c.generation("r", "/b"));
        c.invalidate("r", "/b");
        assert!(c.insert(1, stored("/a", 10), ga), "another path's invalidation");
        assert!(!c.insert(2, stored("/b", 10), gb), "its own path's invalidation");
        let ga = c.generation("r", "/a");
        c.purge("r", None, Some("/zzz"));
        assert!(!c.insert(3, stored("/a", 10), ga), "a prefix purge discards every fill");
    }

    #[test]
    fn captures_share_a_quarter_of_the_partition() {
        let c = WorkerCache::new(400_000);
        let a = c.reserve_capture(60_000).expect("fits");
        assert!(c.reserve_capture(50_000).is_none(), "past 100 000 bytes");
        let b = c.reserve_capture(40_000).expect("fits exactly");
        drop(a);
        let d = c.reserve_capture(60_000).expect("given back when dropped");
        drop((b, d));
        assert_eq!(c.captures.held.get(), 0);
    }
}
