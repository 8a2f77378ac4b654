//! What a worker queues for the access log: each request's record as it is (its fixed fields
//! copied whole, its strings after one another in one buffer), not its line. The log thread
//! formats the lines ([`Records::write_lines`]), a block at a time, away from the request path:
//! the worker's share of a logged request is a copy of a few hundred bytes.
//!
//! A request whose route captures bodies is the exception: its line is formatted by the worker
//! (the capture is not kept past the request) and queued as it is.

use std::net::SocketAddr;
use std::time::Duration;

use crate::access_log::{prefetch_for_write, Block, LINE_ROOM};
use crate::log_line::{Entry, LineCache};
use crate::record::Record;

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

/// A record's fields other than its strings.
#[derive(Clone, Copy)]
struct Fixed {
    rec: Record,
    unix_ms: u64,
    total: Duration,
    target: Option<SocketAddr>,
    worker: u32,
    /// The lengths of the route, consumer, upstream, method, host and path, in that order
    /// ([`ABSENT`]: not there).
    lens: [u32; 6],
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
    /// An empty block of about `bytes`: four fifths for the records' fixed fields, the rest for
    /// their strings (a small GET's are a few dozen bytes against a few hundred).
    pub fn with_bytes(bytes: usize) -> Records {
        let items = (bytes / 5 * 4 / std::mem::size_of::<Item>()).max(4);
        Records { items: Vec::with_capacity(items), text: Vec::with_capacity((bytes / 5).max(2 * TEXT_ROOM)) }
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
        let (method, host, path) = match e.text {
            Some((m, h, p)) => (Some(m), Some(h), Some(p)),
            None => (None, None, None),
        };
        let strs = [
            e.route.map(str::as_bytes),
            e.consumer.map(str::as_bytes),
            e.upstream.map(str::as_bytes),
            method,
            host,
            path,
        ];
        let lens = strs.map(|s| s.map_or(ABSENT, |s| s.len() as u32));
        for s in strs.into_iter().flatten() {
            self.text.extend_from_slice(s);
        }
        self.items.push(Item::Record(Fixed {
            rec: *e.rec,
            unix_ms: e.unix_ms,
            total: e.total,
            target: e.target,
            worker: e.worker as u32,
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
        let mut at = 0;
        for item in &self.items {
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
                    let [route, consumer, upstream, method, host, path] = f.lens.map(&mut next);
                    let entry = Entry {
                        rec: &f.rec,
                        unix_ms: f.unix_ms,
                        total: f.total,
                        worker: f.worker as usize,
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
            recs.push(r);
        }
        let path = format!("/{}", "p".repeat(3000));
        let entry = |i: usize| Entry {
            rec: &recs[i],
            unix_ms: 1_796_075_112_345 + i as u64 * 7,
            total: Duration::from_micros(142 + i as u64),
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
