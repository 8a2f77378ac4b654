//! What a worker queues for the access log: each request's record, not its line (the fields its
//! line shows, under 200 bytes, and its strings after one another in one buffer). The log
//! thread formats the lines ([`Records::write_lines`]), a block at a time, away from the request
//! path: the worker's share of a logged request is a copy of some 250 bytes.
//!
//! A request whose route captures bodies is the exception: its line is formatted by the worker
//! (the capture is not kept past the request) and queued as it is.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::access_log::{prefetch_for_read, prefetch_for_write, Block, LINE_ROOM};
use crate::log_line::{Entry, LineCache};
use crate::record::{CacheStatus, End, LimitOutcome, Record, RequestId};
use crate::respond::{Phase, Source};

/// One queued request. Nearly every item is a record, kept inline in the block (boxing it would
/// allocate per request); the rare line item wastes the record's room.
#[derive(Clone, Copy)]
#[allow(clippy::large_enum_variant)]
enum Item {
    /// A record; its strings are next in the block's text.
    Record(Fixed),
    /// A line the worker formatted (newline included): this many bytes of the block's text.
    Line(u32),
}

/// The fields of a record its line shows, other than its strings: only those (a [`Record`]
/// also keeps what the request needed on its way), durations in microseconds (all the line
/// shows of them). About half a record's bytes: fewer to copy on the worker, and twice the
/// records in a block, so the log thread is woken half as often for as many requests.
#[derive(Clone, Copy)]
struct Fixed {
    unix_ms: u64,
    total_us: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Connect, response head and last byte of the upstream ([`NONE`]: not there).
    upstream_us: [u64; 3],
    error: Option<&'static str>,
    target: Option<SocketAddr>,
    client_ip: IpAddr,
    trace_id: [u8; 16],
    status: u16,
    worker: u16,
    cache: CacheStatus,
    limit: LimitOutcome,
    attempts: u8,
    end: End,
    error_source: Option<Source>,
    error_phase: Option<Phase>,
    /// The lengths of the request id, route, consumer, upstream, method, host and path, in
    /// that order ([`ABSENT`]: not there).
    lens: [u32; 7],
}

/// How many records ahead of the one being formatted its memory is asked for.
const AHEAD: usize = 4;

/// A duration in microseconds (the line shows no finer), or [`NONE`].
const NONE: u64 = u64::MAX;

/// Whole seconds and the microseconds of the last one (no 128-bit arithmetic on the worker).
#[inline(always)]
fn micros(d: Duration) -> u64 {
    d.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(d.subsec_micros())).min(NONE - 1)
}

fn duration(us: u64) -> Option<Duration> {
    (us != NONE).then(|| Duration::from_micros(us))
}

const ABSENT: u32 = u32::MAX;

/// A block of queued requests, in the order the worker ended them.
pub struct Records {
    items: Vec<Item>,
    text: Vec<u8>,
}

/// Room kept in a block's text for the next request's strings: a block is handed over before
/// they could make it grow (a copy). Longer strings still fit, by growing it.
pub(crate) const TEXT_ROOM: usize = 2048;

impl Records {
    /// An empty block of about `bytes`: two thirds for the records' fixed fields, the rest for
    /// their strings (a small GET's, its request id included, are some 70 bytes against 200).
    pub fn with_bytes(bytes: usize) -> Records {
        let items = (bytes / 3 * 2 / std::mem::size_of::<Item>()).max(4);
        Records { items: Vec::with_capacity(items), text: Vec::with_capacity((bytes / 3).max(2 * TEXT_ROOM)) }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.text.clear();
    }

    /// Whether the block should be handed over before the next request.
    #[inline]
    pub fn full(&self) -> bool {
        self.items.len() == self.items.capacity() || self.text.len() + TEXT_ROOM > self.text.capacity()
    }

    /// Asks for the room of the next record to be brought into the cache for writing.
    #[inline(always)]
    pub fn prefetch_next(&self) {
        if self.items.len() < self.items.capacity() {
            prefetch_for_write(self.items.as_ptr().wrapping_add(self.items.len()).cast(), std::mem::size_of::<Item>());
        }
        prefetch_for_write(self.text.as_ptr().wrapping_add(self.text.len()), 64);
    }

    /// Queues `e`: as a record, or as a formatted line when it carries a capture.
    #[inline]
    pub fn push(&mut self, e: &Entry<'_>, cache: &mut LineCache) {
        if e.capture.is_some() {
            self.push_line(e, cache);
            return;
        }
        let r = e.rec;
        // The strings one after another, each length noted (straight-line code: the worker's
        // share of a logged request is mostly this and the copy of the fields below).
        let text = &mut self.text;
        let mut put = |s: &[u8]| {
            text.extend_from_slice(s);
            s.len() as u32
        };
        let id = r.request_id.as_bytes();
        let id = if id.is_empty() { ABSENT } else { put(id) };
        let mut name = |s: Option<&str>| match s {
            Some(s) => put(s.as_bytes()),
            None => ABSENT,
        };
        let (route, consumer, upstream) = (name(e.route), name(e.consumer), name(e.upstream));
        let [method, host, path] = match e.text {
            Some((m, h, p)) => [put(m), put(h), put(p)],
            None => [ABSENT; 3],
        };
        let lens = [id, route, consumer, upstream, method, host, path];
        let us = |d: Option<Duration>| match d {
            Some(d) => micros(d),
            None => NONE,
        };
        self.items.push(Item::Record(Fixed {
            unix_ms: e.unix_ms,
            total_us: micros(e.total),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            upstream_us: [us(r.upstream_connect), us(r.upstream_head), us(r.upstream_last)],
            error: r.error,
            target: e.target,
            client_ip: r.client_ip,
            trace_id: r.trace.trace_id,
            status: r.status,
            worker: u16::try_from(e.worker).unwrap_or(u16::MAX),
            cache: r.cache,
            limit: r.limit,
            attempts: r.attempts,
            end: r.end,
            error_source: r.error_source,
            error_phase: r.error_phase,
            lens,
        }));
    }

    #[cold]
    fn push_line(&mut self, e: &Entry<'_>, cache: &mut LineCache) {
        let before = self.text.len();
        e.write(&mut self.text, cache);
        self.items.push(Item::Line((self.text.len() - before) as u32));
    }

    /// Formats the block's lines into `out`, in order; `hand_over` is called with `out` when it
    /// has no room left for another line (it leaves `out` empty).
    pub fn write_lines(&self, cache: &mut LineCache, out: &mut Block, mut hand_over: impl FnMut(&mut Block)) {
        // The record each line is formatted from: what the line does not show stays as made.
        let mut rec = Record::new(monoio::time::Instant::now());
        let mut at = 0;
        for (i, item) in self.items.iter().enumerate() {
            // What the lines a few ahead read and write, asked for now: formatting is bound by
            // the misses on the block of records (written long ago) and on the block of lines.
            prefetch_for_read(self.items.as_ptr().wrapping_add(i + AHEAD).cast(), std::mem::size_of::<Item>());
            prefetch_for_read(self.text.as_ptr().wrapping_add(at + 64 * AHEAD), 64);
            prefetch_for_write(out.data.as_ptr().wrapping_add(out.data.len() + 512 * AHEAD), 512);
            match item {
                Item::Line(n) => {
                    out.data.extend_from_slice(&self.text[at..at + *n as usize]);
                    at += *n as usize;
                }
                Item::Record(f) => {
                    let mut next = |len: u32| {
                        (len != ABSENT).then(|| {
                            let s = &self.text[at..at + len as usize];
                            at += len as usize;
                            s
                        })
                    };
                    let [id, route, consumer, upstream, method, host, path] = f.lens.map(&mut next);
                    rec.request_id = id.map_or_else(RequestId::empty, RequestId::queued);
                    rec.trace.trace_id = f.trace_id;
                    rec.client_ip = f.client_ip;
                    rec.status = f.status;
                    rec.bytes_in = f.bytes_in;
                    rec.bytes_out = f.bytes_out;
                    let [connect, head, last] = f.upstream_us.map(duration);
                    (rec.upstream_connect, rec.upstream_head, rec.upstream_last) = (connect, head, last);
                    (rec.cache, rec.limit, rec.attempts, rec.end) = (f.cache, f.limit, f.attempts, f.end);
                    (rec.error, rec.error_source, rec.error_phase) = (f.error, f.error_source, f.error_phase);
                    let entry = Entry {
                        rec: &rec,
                        unix_ms: f.unix_ms,
                        total: Duration::from_micros(f.total_us),
                        worker: usize::from(f.worker),
                        route: route.map(name),
                        consumer: consumer.map(name),
                        upstream: upstream.map(name),
                        target: f.target,
                        text: method.zip(host).zip(path).map(|((m, h), p)| (m, h, p)),
                        capture: None,
                    };
                    entry.write(&mut out.data, cache);
                }
            }
            out.lines += 1;
            if out.data.len() + LINE_ROOM > out.data.capacity() {
                hand_over(out);
            }
        }
    }
}

/// A name queued by [`Records::push`] from a `&str`.
fn name(b: &[u8]) -> &str {
    // SAFETY: the route, consumer and upstream in a block's text were copied from `&str`s by
    // `push`, whole, and are read back at the offsets and lengths it wrote (only `push` and
    // `push_line` add to a block, each item's strings right after the one before).
    unsafe { std::str::from_utf8_unchecked(b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{CaptureRule, CaptureSpec, Captured};
    use crate::record::RequestId;

    #[test]
    fn queued_records_make_the_lines_the_worker_would_have_made() {
        let spec = CaptureSpec::default();
        let rule = CaptureRule::compile(&spec, "r", &mut ringway_policy::ConfigErrors::default()).unwrap();
        let captured = Captured::request(&rule, b"POST /c HTTP/1.1\r\nHost: a\r\n\r\n", b"hi");
        let mut recs = Vec::new();
        for i in 0..300u32 {
            let mut r = Record::new(monoio::time::Instant::now());
            r.request_id = RequestId::generated(*b"0123456789abcdef0123456789abcdef");
            r.client_ip = std::net::IpAddr::from([10, 0, (i / 7) as u8, 1]);
            r.status = 200 + (i % 3) as u16;
            r.bytes_out = u64::from(i) * 1000;
            r.error = (i % 5 == 0).then_some("upstream_timeout");
            if i % 4 == 1 {
                r.request_id =
                    RequestId::from_client(&b"client-id:1.2_3".repeat(4)[..15 + i as usize % 40]).expect("a sane id");
            }
            r.trace.trace_id = [(i % 256) as u8; 16];
            r.upstream_connect = (i % 3 == 1).then(|| Duration::from_nanos(99_999 + u64::from(i)));
            r.upstream_head = (i % 3 == 1).then(|| Duration::from_nanos(1_234_567 * u64::from(i)));
            r.upstream_last = (i % 6 == 1).then(|| Duration::from_secs(4000 + u64::from(i)));
            r.attempts = (i % 3) as u8;
            r.cache = if i % 7 == 0 { crate::record::CacheStatus::Hit } else { crate::record::CacheStatus::None };
            r.limit = if i % 11 == 0 { LimitOutcome::RateLimited } else { LimitOutcome::Passed };
            r.end = if i % 13 == 0 { End::ClientAbort } else { End::Completed };
            r.error_source = (i % 5 == 0).then_some(Source::Upstream);
            r.error_phase = (i % 5 == 0).then_some(Phase::Head);
            recs.push(r);
        }
        let path = format!("/{}", "p".repeat(3000));
        let entry = |i: usize| Entry {
            rec: &recs[i],
            unix_ms: 1_796_075_112_345 + i as u64 * 7,
            total: Duration::from_nanos(142_999 + i as u64 * 1_000_777),
            worker: i % 2,
            route: (!i.is_multiple_of(3)).then_some("r\"1"),
            consumer: i.is_multiple_of(4).then_some("émile"),
            upstream: (i % 3 == 1).then_some("u"),
            target: (i % 3 == 1).then(|| SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16))),
            text: match i % 10 {
                9 => None,
                8 => Some((b"GET".as_slice(), b"".as_slice(), path.as_bytes())),
                _ => Some((b"GET".as_slice(), b"h\x01st".as_slice(), b"/p?q=1".as_slice())),
            },
            capture: (i % 50 == 7).then_some(&*captured),
        };
        // What the worker would have written, line by line.
        let mut expected = Vec::new();
        for i in 0..recs.len() {
            entry(i).write_json(&mut expected);
        }
        // Queued in small blocks (as a worker hands them over), formatted into small blocks of
        // lines (as the log thread hands them on).
        let (mut worker_cache, mut cache) = (LineCache::default(), LineCache::default());
        let mut block = Records::with_bytes(16 * 1024);
        let mut queued = Vec::new();
        for i in 0..recs.len() {
            block.push(&entry(i), &mut worker_cache);
            block.prefetch_next();
            if block.full() {
                queued.push(std::mem::replace(&mut block, Records::with_bytes(16 * 1024)));
            }
        }
        queued.push(block);
        assert!(queued.len() > 3, "{} blocks", queued.len());
        // What the documents say a queued record takes.
        assert!(std::mem::size_of::<Item>() < 200, "{} bytes", std::mem::size_of::<Item>());
        assert_eq!(queued.iter().map(Records::len).sum::<usize>(), recs.len());
        let mut handed = Vec::new();
        let mut lines = Block { data: Vec::with_capacity(8 * 1024), lines: 0 };
        for records in &queued {
            records.write_lines(&mut cache, &mut lines, |full| {
                handed.push(std::mem::replace(full, Block { data: Vec::with_capacity(8 * 1024), lines: 0 }));
            });
        }
        handed.push(lines);
        assert!(handed.len() > 10, "{} blocks of lines", handed.len());
        for b in &handed {
            // Whole lines, counted.
            assert!(b.data.is_empty() || b.data.ends_with(b"\n"));
            assert_eq!(b.data.iter().filter(|c| **c == b'\n').count(), b.lines);
        }
        let got: Vec<u8> = handed.iter().flat_map(|b| b.data.iter().copied()).collect();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
        let captures = got.split(|c| *c == b'\n').filter(|l| l.windows(12).any(|w| w == b"request_body")).count();
        assert_eq!(captures, 6);
    }
}
