//! One access-log line per request, formatted by the log thread from the records the workers
//! queue (see [`crate::log_record`]; a capturing route's line by its worker). Every request that
//! is shipped or logged pays for its line, so the line is written in one pass into a scratch
//! buffer sized for its longest form (fixed-size copies for the keys, no growth checks), with
//! what repeats from line to line kept formatted: the date of the current second, the last
//! client address and the last target.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::json::{is_plain, write_escaped};
use crate::record::{hex_into, LimitOutcome, Record};

/// One access-log line's fields.
pub struct Entry<'a> {
    pub rec: &'a Record,
    /// Milliseconds since the Unix epoch when the request began.
    pub unix_ms: u64,
    pub total: Duration,
    pub worker: usize,
    pub route: Option<&'a str>,
    /// The authenticated consumer's id.
    pub consumer: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<SocketAddr>,
    /// Method, host and path, when the head was understood.
    pub text: Option<(&'a [u8], &'a [u8], &'a [u8])>,
    /// What a capturing route kept of the request and response.
    pub capture: Option<&'a crate::capture::Captured>,
}

/// The longest a line can be apart from its strings of variable length (names, method, host,
/// path, error codes): every key, the longest number each field can hold, an IPv6 target and
/// client, a 64-byte request id. Counted with room to spare (the test of the longest line
/// checks it).
const FIXED_MAX: usize = 1024;

/// What a worker keeps from one line to the next.
pub struct LineCache {
    /// The line being written (grown to the longest line's bound, never shrunk).
    scratch: Vec<u8>,
    /// The second `date` was made for (`u64::MAX`: none yet) and its date with a placeholder
    /// for the milliseconds.
    second: u64,
    date: [u8; 24],
    client: Option<IpAddr>,
    client_text: [u8; 48],
    client_len: usize,
    target: Option<SocketAddr>,
    target_text: [u8; 56],
    target_len: usize,
}

impl Default for LineCache {
    fn default() -> Self {
        LineCache {
            scratch: vec![0; FIXED_MAX + 512],
            second: u64::MAX,
            date: [0; 24],
            client: None,
            client_text: [0; 48],
            client_len: 0,
            target: None,
            target_text: [0; 56],
            target_len: 0,
        }
    }
}

/// A line being written into a buffer long enough for it (checked before writing).
struct Line<'b> {
    b: &'b mut [u8],
    n: usize,
}

impl Line<'_> {
    #[inline(always)]
    fn put(&mut self, s: &[u8]) {
        let end = self.n + s.len();
        self.b[self.n..end].copy_from_slice(s);
        self.n = end;
    }

    #[inline(always)]
    fn byte(&mut self, c: u8) {
        self.b[self.n] = c;
        self.n += 1;
    }

    /// Copies `N` bytes of `from` and keeps the first `len` (`len <= N`): one fixed-size copy
    /// for text of varying length kept in an array (the line's bound leaves room past its end).
    #[inline(always)]
    fn put_first<const N: usize>(&mut self, from: &[u8; N], len: usize) {
        self.b[self.n..self.n + N].copy_from_slice(from);
        self.n += len.min(N);
    }

    /// A short copy as two fixed-size copies that may overlap (no call for a few bytes), a
    /// longer one as it is.
    #[inline(always)]
    fn put_short(&mut self, v: &[u8]) {
        let (n, len) = (self.n, v.len());
        match len {
            8..=16 => {
                self.b[n..n + 8].copy_from_slice(&v[..8]);
                self.b[n + len - 8..n + len].copy_from_slice(&v[len - 8..]);
            }
            4..=7 => {
                self.b[n..n + 4].copy_from_slice(&v[..4]);
                self.b[n + len - 4..n + len].copy_from_slice(&v[len - 4..]);
            }
            1..=3 => {
                self.b[n] = v[0];
                self.b[n + len / 2] = v[len / 2];
                self.b[n + len - 1] = v[len - 1];
            }
            0 => {}
            _ => self.b[n..n + len].copy_from_slice(v),
        }
        self.n = n + len;
    }

    /// A JSON string: as it is between quotes, or escaped (at most six bytes for one).
    #[inline]
    fn str(&mut self, v: &[u8]) {
        if is_plain(v) {
            self.byte(b'"');
            self.put_short(v);
            self.byte(b'"');
        } else {
            self.escaped(v);
        }
    }

    /// Escaped straight into the line (the line's bound counts six bytes for each).
    #[cold]
    fn escaped(&mut self, v: &[u8]) {
        self.n += write_escaped(&mut self.b[self.n..], v);
    }

    /// `key` and `v` as a JSON string, or nothing when there is no value.
    #[inline(always)]
    fn field(&mut self, key: &[u8], v: Option<&[u8]>) {
        if let Some(v) = v {
            self.put(key);
            self.str(v);
        }
    }

    /// A number: up to three digits without a loop (statuses, small sizes), more through the
    /// general formatter.
    #[inline]
    fn dec(&mut self, v: u64) {
        if v < 10 {
            self.byte(b'0' + v as u8);
        } else if v < 100 {
            self.put(&pair(v));
        } else if v < 1000 {
            let [a, b] = pair(v % 100);
            self.put(&[b'0' + (v / 100) as u8, a, b]);
        } else {
            let mut tmp = [0u8; 20];
            self.put(crate::h1::write::format_dec(v, &mut tmp));
        }
    }

    /// Milliseconds with three decimals.
    #[inline]
    fn ms(&mut self, d: Duration) {
        let us = d.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(d.subsec_micros()));
        let (whole, f) = (us / 1000, us % 1000);
        let [a, b] = pair(f % 100);
        let frac = [b'.', b'0' + (f / 100) as u8, a, b];
        if whole < 10 {
            // Under ten milliseconds (most requests): five bytes at once.
            self.put(&[b'0' + whole as u8, frac[0], frac[1], frac[2], frac[3]]);
        } else {
            self.dec(whole);
            self.put(&frac);
        }
    }

    #[inline(always)]
    fn ms_field(&mut self, key: &[u8], d: Option<Duration>) {
        if let Some(d) = d {
            self.put(key);
            self.ms(d);
        }
    }
}

impl Entry<'_> {
    /// Appends the line, newline included (for callers without a worker's cache).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write(out, &mut LineCache::default());
    }

    /// Appends the line, newline included. A field that does not apply to the request (no
    /// route, no upstream tried, no error...) is left out rather than written as `null`: every
    /// byte of a line is formatted, queued, written and shipped.
    pub fn write(&self, out: &mut Vec<u8>, cache: &mut LineCache) {
        let r = self.rec;
        let len = |v: Option<&str>| v.map_or(0, str::len);
        let text_len = self.text.map_or(0, |(m, h, p)| m.len() + h.len() + p.len());
        let names = len(self.route) + len(self.consumer) + len(self.upstream) + len(r.error);
        // Escaped, a byte takes six at most.
        // Escaped, a byte takes six at most; a fixed-size copy writes up to 64 bytes past the
        // line's end.
        let bound = FIXED_MAX + 6 * (text_len + names) + 64;
        if cache.scratch.len() < bound {
            cache.scratch.resize(bound, 0);
        }
        let second = self.unix_ms / 1000;
        if cache.second != second {
            cache.second = second;
            cache.date = rfc3339(self.unix_ms);
        }
        if let Some(ip) = Some(r.client_ip).filter(|ip| cache.client != Some(*ip)) {
            cache.client = Some(ip);
            cache.client_len = render(&mut cache.client_text, ip, None);
        }
        if let Some(t) = self.target.filter(|t| cache.target != Some(*t)) {
            cache.target = Some(t);
            cache.target_len = render(&mut cache.target_text, t.ip(), Some(t.port()));
        }
        let mut w = Line { b: &mut cache.scratch, n: 0 };
        w.put(b"{\"ts\":\"");
        let mut date = cache.date;
        let ms = self.unix_ms % 1000;
        date[20..23].copy_from_slice(&[b'0' + (ms / 100) as u8, b'0' + (ms / 10 % 10) as u8, b'0' + (ms % 10) as u8]);
        w.put(&date);
        // A request id is letters, digits and `-_.:` (made here or checked when it came).
        w.put(b"\",\"request_id\":\"");
        match <&[u8; 32]>::try_from(r.request_id.as_bytes()) {
            // A generated id: 32 bytes.
            Ok(id) => w.put(id),
            Err(_) => w.put(r.request_id.as_bytes()),
        }
        w.put(b"\",\"worker\":");
        w.dec(self.worker as u64);
        w.field(b",\"route\":", self.route.map(str::as_bytes));
        w.field(b",\"consumer\":", self.consumer.map(str::as_bytes));
        w.field(b",\"upstream\":", self.upstream.map(str::as_bytes));
        if self.target.is_some() {
            w.put(b",\"target\":");
            w.put_first(&cache.target_text, cache.target_len);
        }
        if let Some((method, host, path)) = self.text {
            w.field(b",\"method\":", Some(method));
            w.field(b",\"host\":", Some(host).filter(|h| !h.is_empty()));
            w.field(b",\"path\":", Some(path));
        }
        if r.status != 0 {
            w.put(b",\"status\":");
            w.dec(u64::from(r.status));
        }
        w.put(b",\"bytes_in\":");
        w.dec(r.bytes_in);
        w.put(b",\"bytes_out\":");
        w.dec(r.bytes_out);
        w.put(b",\"duration_ms\":");
        w.ms(self.total);
        w.ms_field(b",\"upstream_connect_ms\":", r.upstream_connect);
        w.ms_field(b",\"upstream_head_ms\":", r.upstream_head);
        w.ms_field(b",\"upstream_last_ms\":", r.upstream_last);
        w.field(b",\"cache\":", r.cache.as_str().map(str::as_bytes));
        let limit: Option<&[u8]> = match r.limit {
            LimitOutcome::Passed => None,
            LimitOutcome::RateLimited => Some(b"rate_limit"),
            LimitOutcome::ConcurrencyLimited => Some(b"concurrency_limit"),
        };
        w.field(b",\"limit\":", limit);
        w.put(b",\"attempts\":");
        w.dec(u64::from(r.attempts));
        w.put(b",\"end\":\"");
        w.put(r.end.as_str().as_bytes());
        w.byte(b'"');
        w.field(b",\"error\":", r.error.map(str::as_bytes));
        w.field(b",\"error_source\":", r.error_source.map(|s| s.as_str().as_bytes()));
        w.field(b",\"error_phase\":", r.error_phase.map(|p| p.as_str().as_bytes()));
        if r.trace.trace_id != [0; 16] {
            w.put(b",\"trace_id\":\"");
            let mut hex = [0u8; 32];
            hex_into(&mut hex, &r.trace.trace_id);
            w.put(&hex);
            w.byte(b'"');
        }
        match r.client_ip {
            IpAddr::V4(v) if v.is_unspecified() => {}
            _ => {
                w.put(b",\"client_ip\":");
                w.put_first(&cache.client_text, cache.client_len);
            }
        }
        let n = w.n;
        out.extend_from_slice(&cache.scratch[..n]);
        if let Some(c) = self.capture {
            c.write_json(out, r.bytes_in, r.bytes_out);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// `v` (below 100) as two digits.
#[inline(always)]
fn pair(v: u64) -> [u8; 2] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let i = v as usize * 2;
    [PAIRS[i], PAIRS[i + 1]]
}

/// A quoted address into `into` (long enough for any): `"ip"` or `"ip:port"` (`"[ip]:port"`
/// for IPv6); gives its length.
fn render(into: &mut [u8], ip: IpAddr, port: Option<u16>) -> usize {
    let mut w = Line { b: into, n: 0 };
    w.byte(b'"');
    match (ip, port) {
        (IpAddr::V6(_), Some(_)) => {
            w.byte(b'[');
            w.ip(ip);
            w.byte(b']');
        }
        _ => w.ip(ip),
    }
    if let Some(p) = port {
        w.byte(b':');
        w.dec(u64::from(p));
    }
    w.byte(b'"');
    w.n
}

impl Line<'_> {
    /// An IP address: IPv4 by hand (the common case, without the formatter), IPv6 through
    /// `Display`.
    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.byte(b'.');
                    }
                    if o >= 100 {
                        self.byte(b'0' + o / 100);
                    }
                    if o >= 10 {
                        self.byte(b'0' + o / 10 % 10);
                    }
                    self.byte(b'0' + o % 10);
                }
            }
            IpAddr::V6(v6) => {
                let mut buf = [0u8; 64];
                let mut cur = std::io::Cursor::new(&mut buf[..]);
                let _ = write!(cur, "{v6}");
                let n = cur.position() as usize;
                self.put(&buf[..n]);
            }
        }
    }
}

/// Appends `unix_ms` as RFC 3339 UTC with milliseconds.
pub fn push_rfc3339(out: &mut Vec<u8>, unix_ms: u64) {
    out.extend_from_slice(&rfc3339(unix_ms));
}

/// `unix_ms` as RFC 3339 UTC with milliseconds.
fn rfc3339(unix_ms: u64) -> [u8; 24] {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let two = |v: u64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    let y = year as u64;
    let (c, yy, mo, d) = (two(y / 100), two(y % 100), two(month as u64), two(day as u64));
    let (h, mi, se) = (two(rem / 3600), two(rem / 60 % 60), two(rem % 60));
    let ms = unix_ms % 1000;
    [
        c[0],
        c[1],
        yy[0],
        yy[1],
        b'-',
        mo[0],
        mo[1],
        b'-',
        d[0],
        d[1],
        b'T',
        h[0],
        h[1],
        b':',
        mi[0],
        mi[1],
        b':',
        se[0],
        se[1],
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::push_str;
    use crate::record::RequestId;

    fn addr_text(ip: IpAddr, port: Option<u16>) -> String {
        let mut buf = [0u8; 56];
        let n = render(&mut buf, ip, port);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn dates_are_rfc3339() {
        let mut out = Vec::new();
        push_rfc3339(&mut out, 0);
        assert_eq!(out, b"1970-01-01T00:00:00.000Z");
        out.clear();
        // 2026-11-30T21:45:12.345Z
        push_rfc3339(&mut out, 1_796_075_112_345);
        assert_eq!(String::from_utf8(out).unwrap(), "2026-11-30T21:45:12.345Z");
        let mut out = Vec::new();
        // 2000-02-29T23:59:59.999Z (a leap day)
        push_rfc3339(&mut out, 951_868_799_999);
        assert_eq!(String::from_utf8(out).unwrap(), "2000-02-29T23:59:59.999Z");
    }

    #[test]
    fn any_bytes_make_valid_json() {
        let mut out = Vec::new();
        push_str(&mut out, b"/a\"b\\c\x01\xff");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, "/a\"b\\c\u{1}\u{ff}");
        for (addr, text) in [("10.0.0.255:8080", "\"10.0.0.255:8080\""), ("[2001:db8::1]:443", "\"[2001:db8::1]:443\"")]
        {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(addr_text(a.ip(), Some(a.port())), text);
        }
        assert_eq!(addr_text("192.168.1.2".parse().unwrap(), None), "\"192.168.1.2\"");
    }

    #[test]
    fn every_byte_is_plain_or_escaped() {
        for b in 0..=255u8 {
            let mut out = Vec::new();
            push_str(&mut out, &[b'a', b, b'z']);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v.as_str().unwrap().chars().nth(1), Some(char::from(b)), "byte {b:#x}");
            let plain = (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
            assert_eq!(out.len() == 5, plain, "byte {b:#x} written as {out:?}");
        }
    }

    #[test]
    fn numbers_and_addresses() {
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "127.0.0.1", "::1"] {
            assert_eq!(addr_text(ip.parse().unwrap(), None), format!("\"{ip}\""));
        }
        for (us, text) in [(0, "0.000"), (81, "0.081"), (9_999, "9.999"), (10_000, "10.000"), (1_234_567, "1234.567")] {
            let mut buf = [0u8; 32];
            let mut w = Line { b: &mut buf, n: 0 };
            w.ms(Duration::from_micros(us));
            let n = w.n;
            assert_eq!(String::from_utf8(buf[..n].to_vec()).unwrap(), text);
        }
        for v in [0, 9, 10, 200, u64::MAX] {
            let mut buf = [0u8; 32];
            let mut w = Line { b: &mut buf, n: 0 };
            w.dec(v);
            let n = w.n;
            assert_eq!(String::from_utf8(buf[..n].to_vec()).unwrap(), v.to_string());
        }
    }

    #[test]
    fn lines_are_json_with_the_fields_that_apply() {
        let mut rec = Record::new(monoio::time::Instant::now());
        rec.request_id = RequestId::generated(*b"0123456789abcdef0123456789abcdef");
        rec.client_ip = "10.1.2.3".parse().unwrap();
        rec.status = 200;
        rec.attempts = 1;
        rec.upstream_head = Some(Duration::from_micros(81));
        let entry = |rec: &Record| {
            let e = Entry {
                rec,
                unix_ms: 1_796_075_112_345,
                total: Duration::from_micros(142),
                worker: 3,
                route: Some("r\"1"),
                consumer: None,
                upstream: Some("u"),
                target: Some("127.0.0.1:8080".parse().unwrap()),
                text: Some((b"GET", b"h", b"/p?q=\x01")),
                capture: None,
            };
            let mut out = Vec::new();
            e.write_json(&mut out);
            assert_eq!(out.last(), Some(&b'\n'));
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let v = entry(&rec);
        assert_eq!(v["ts"], "2026-11-30T21:45:12.345Z");
        assert_eq!((v["route"].as_str(), v["path"].as_str()), (Some("r\"1"), Some("/p?q=\u{1}")));
        assert_eq!((v["duration_ms"].as_f64(), v["upstream_head_ms"].as_f64()), (Some(0.142), Some(0.081)));
        assert_eq!((v["status"].as_u64(), v["worker"].as_u64(), v["attempts"].as_u64()), (Some(200), Some(3), Some(1)));
        // What does not apply is left out.
        for field in ["cache", "limit", "error", "error_source", "error_phase", "trace_id", "upstream_connect_ms"] {
            assert!(v.get(field).is_none(), "{field} in {v}");
        }
        assert_eq!((v["client_ip"].as_str(), v["target"].as_str()), (Some("10.1.2.3"), Some("127.0.0.1:8080")));
        rec.cache = crate::record::CacheStatus::Hit;
        rec.limit = crate::record::LimitOutcome::RateLimited;
        rec.cut(crate::record::End::ClientAbort, "client_closed");
        rec.trace.trace_id = [0xab; 16];
        let v = entry(&rec);
        assert_eq!((v["cache"].as_str(), v["limit"].as_str()), (Some("hit"), Some("rate_limit")));
        assert_eq!((v["error"].as_str(), v["error_source"].as_str()), (Some("client_closed"), Some("client")));
        assert_eq!(v["trace_id"].as_str(), Some("abababababababababababababababab"));
    }

    #[test]
    fn the_word_check_agrees_with_the_byte_check() {
        let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
        for len in 1..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'x'; len];
                    v[at] = b;
                    assert_eq!(crate::json::is_plain(&v), plain(b), "byte {b:#x} at {at} of {len}");
                }
            }
        }
        assert!(crate::json::is_plain(b""));
    }

    /// The longest line a request can make, but for its strings' own lengths, fits
    /// [`FIXED_MAX`].
    #[test]
    fn the_longest_line_fits_its_bound() {
        let mut rec = Record::new(monoio::time::Instant::now());
        rec.request_id = RequestId::from_client(&[b'a'; 64]).unwrap();
        rec.client_ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        rec.status = u16::MAX;
        (rec.bytes_in, rec.bytes_out, rec.attempts) = (u64::MAX, u64::MAX, u8::MAX);
        let long = Some(Duration::MAX);
        (rec.upstream_connect, rec.upstream_head, rec.upstream_last) = (long, long, long);
        rec.cache = crate::record::CacheStatus::Expired;
        rec.limit = LimitOutcome::ConcurrencyLimited;
        rec.failed(&crate::respond::Failure::new(
            crate::respond::ProxyError::UpstreamTimeout,
            crate::respond::Phase::ResponseBody,
        ));
        rec.end = crate::record::End::UpstreamReset;
        rec.trace.trace_id = [0xff; 16];
        let e = Entry {
            rec: &rec,
            // 9999-12-31T23:59:59.999Z
            unix_ms: 253_402_300_799_999,
            total: Duration::MAX,
            worker: usize::MAX,
            route: Some("r"),
            consumer: Some("c"),
            upstream: Some("u"),
            target: Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".parse().unwrap()),
            text: Some((b"M", b"h", b"/")),
            capture: None,
        };
        let mut out = Vec::new();
        e.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["bytes_out"].as_u64(), Some(u64::MAX));
        assert_eq!(v["ts"], "9999-12-31T23:59:59.999Z");
        assert_eq!(v["request_id"].as_str().map(str::len), Some(64));
        let strings = 6 + rec.error.map_or(0, str::len);
        assert!(out.len() - strings <= FIXED_MAX, "{} bytes: {}", out.len(), String::from_utf8_lossy(&out));
    }

    /// What the worker keeps between lines follows what changes: the second, the client, the
    /// target.
    #[test]
    fn kept_parts_follow_each_line() {
        let mut cache = LineCache::default();
        let mut rec = Record::new(monoio::time::Instant::now());
        rec.request_id = RequestId::generated(*b"0123456789abcdef0123456789abcdef");
        let mut line = |rec: &Record, unix_ms: u64, target: &str| {
            let e = Entry {
                rec,
                unix_ms,
                total: Duration::from_micros(10),
                worker: 0,
                route: None,
                consumer: None,
                upstream: None,
                target: Some(target.parse().unwrap()),
                text: None,
                capture: None,
            };
            let mut out = Vec::new();
            e.write(&mut out, &mut cache);
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        rec.client_ip = "10.0.0.1".parse().unwrap();
        let v = line(&rec, 1_796_075_112_345, "10.9.9.9:80");
        assert_eq!((v["ts"].as_str(), v["client_ip"].as_str()), (Some("2026-11-30T21:45:12.345Z"), Some("10.0.0.1")));
        let v = line(&rec, 1_796_075_112_999, "10.9.9.9:80");
        assert_eq!(v["ts"], "2026-11-30T21:45:12.999Z");
        rec.client_ip = "2001:db8::7".parse().unwrap();
        let v = line(&rec, 1_796_075_113_001, "[2001:db8::1]:443");
        assert_eq!(
            (v["ts"].as_str(), v["client_ip"].as_str()),
            (Some("2026-11-30T21:45:13.001Z"), Some("2001:db8::7"))
        );
        assert_eq!(v["target"], "[2001:db8::1]:443");
        rec.client_ip = "0.0.0.0".parse().unwrap();
        let v = line(&rec, 1_796_075_113_002, "10.9.9.8:81");
        assert!(v.get("client_ip").is_none(), "{v}");
        assert_eq!(v["target"], "10.9.9.8:81");
    }
}
