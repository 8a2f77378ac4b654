//! The response cache: one partition per worker, bounded in bytes, and the RFC 9111 rules that
//! decide what is stored and for how long.
//!
//! The key is the host, path and query plus the values of the route's keyed request headers
//! (`vary` and `key_extra`). On a cached request no other client header reaches the upstream,
//! so no unkeyed header can shape a stored response; a response `Vary` naming any other header
//! therefore changes nothing, and `Vary: *` is never stored.

use std::hash::{BuildHasher, Hash, Hasher};
use std::rc::Rc;

use quick_cache::unsync::Cache;
use quick_cache::Weighter;
use rustc_hash::FxHashMap;

use crate::h1::head::{classify, Known};
use crate::worker::LocalEvent;

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
        self.elapsed(now_ms) < self.fresh_ms + self.stale_if_error_ms
    }

    /// `Age` now, in seconds.
    pub fn age(&self, now_ms: u64) -> u64 {
        self.age_s + self.elapsed(now_ms) / 1000
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<u64, Rc<Stored>> for ByBytes {
    fn weight(&self, _: &u64, v: &Rc<Stored>) -> u64 {
        let headers: usize = v.headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        (v.body.len() + headers + v.path.len() + v.route.len() + 160) as u64
    }
}

/// One worker's partition.
pub struct WorkerCache {
    entries: Cache<u64, Rc<Stored>, ByBytes>,
    /// Misses being fetched, by key: later misses for the key wait for the first (coalescing).
    pub inflight: FxHashMap<u64, Rc<LocalEvent>>,
    seed: std::hash::RandomState,
    /// Counts purges: a response fetched across a purge is not stored.
    generation: u64,
}

impl WorkerCache {
    /// A partition holding at most `bytes`.
    pub fn new(bytes: u64) -> Self {
        let items = (bytes / 2048).clamp(16, 1 << 20) as usize;
        WorkerCache {
            entries: Cache::with_weighter(items, bytes.max(1), ByBytes),
            inflight: FxHashMap::default(),
            seed: std::hash::RandomState::new(),
            generation: 0,
        }
    }

    /// The key of a request: route, host as sent, path, query and the keyed header values, in
    /// order (`None` separates one header's values from the next's).
    pub fn key<'h>(
        &self,
        route: &str,
        host: &[u8],
        path: &str,
        query: Option<&str>,
        keyed: impl Iterator<Item = Option<&'h [u8]>>,
    ) -> u64 {
        let mut h = self.seed.build_hasher();
        (route, host, path, query).hash(&mut h);
        for v in keyed {
            v.hash(&mut h);
        }
        h.finish()
    }

    pub fn get(&self, key: u64) -> Option<Rc<Stored>> {
        self.entries.get(&key).cloned()
    }

    pub fn insert(&mut self, key: u64, s: Stored) {
        self.entries.insert(key, Rc::new(s));
    }

    /// Removes the entries of `route` whose path is `path`, or starts with `prefix`.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn purge(&mut self, route: &str, path: Option<&str>, prefix: Option<&str>) -> usize {
        self.generation += 1;
        let before = self.entries.len();
        self.entries.retain(|_, v| {
            let hit = &*v.route == route
                && (path.is_some_and(|p| &*v.path == p) || prefix.is_some_and(|p| v.path.starts_with(p)));
            !hit
        });
        before - self.entries.len()
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

fn directive_value(d: &str) -> Option<u64> {
    d.split_once('=').and_then(|(_, v)| v.trim().trim_matches('"').parse().ok())
}

/// Statuses a cache may store without explicit freshness (RFC 9110 heuristically cacheable),
/// which are also the only ones stored here.
fn cacheable_status(s: u16) -> bool {
    matches!(s, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Whether and for how long a response may be stored, following RFC 9111 for a shared cache;
/// `default_ms` (the route's `ttl`) fills in when the response is silent. `None`: not stored.
pub fn freshness(status: u16, headers: &[httparse::Header<'_>], now_ms: u64, default_ms: u64) -> Option<Freshness> {
    if !cacheable_status(status) {
        return None;
    }
    fn values<'h>(headers: &'h [httparse::Header<'h>], name: &'static str) -> impl Iterator<Item = &'h [u8]> + 'h {
        headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }
    let get = |name: &'static str| values(headers, name);
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
                "max-age" => max_age = directive_value(&d),
                "s-maxage" => s_maxage = directive_value(&d),
                "stale-if-error" => sie = directive_value(&d).unwrap_or(0),
                _ => {}
            }
        }
    }
    let age_s = get("age").next().and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok()).unwrap_or(0u64);
    let lifetime_ms = if let Some(s) = s_maxage.or(max_age) {
        s.saturating_mul(1000)
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
    let auth_ok = public || s_maxage.is_some() || (revalidate && max_age.is_some());
    // A stale copy may not answer for a failed upstream when it must be revalidated.
    let sie = if revalidate || s_maxage.is_some() { 0 } else { sie };
    Some(Freshness { fresh_ms, stale_if_error_ms: sie.saturating_mul(1000), age_s, auth_ok })
}

/// The header fields kept with a stored response.
pub fn stored_headers(headers: &[httparse::Header<'_>]) -> StoredHeaders {
    headers
        .iter()
        .filter(|h| match classify(h.name) {
            Known::Other => !h.name.eq_ignore_ascii_case("age") && !h.name.eq_ignore_ascii_case("trailer"),
            Known::Expect | Known::Forwarded => true,
            _ => false,
        })
        .map(|h| (Box::from(h.name), Box::from(h.value)))
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

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
        pairs.iter().map(|(n, v)| httparse::Header { name: n, value: v.as_bytes() }).collect()
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
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn partition_stays_within_its_bytes() {
        let mut c = WorkerCache::new(100_000);
        for i in 0..300u64 {
            c.insert(
                i,
                Stored {
                    status: 200,
                    headers: vec![],
                    body: vec![b'x'; 900],
                    stored_ms: 0,
                    age_s: 0,
                    fresh_ms: 60_000,
                    stale_if_error_ms: 0,
                    auth_ok: false,
                    route: "r".into(),
                    path: "/p".into(),
                },
            );
        }
        assert!(c.len() <= 100, "{} entries", c.len());
        assert!(c.entries.weight() <= 100_000, "{} bytes", c.entries.weight());
    }
}
