//! JSON access logs: each worker formats one line per request straight into its current block
//! (a buffer of whole lines) and hands full blocks to the log thread over its own bounded queue
//! (wait-free, single producer, single consumer); the log thread writes the blocks to a file or
//! stdout and passes them on to the shipper, without copying a line. A worker never blocks and
//! never writes a file: when its queue is full the block's lines are dropped and counted. The
//! file is reopened on request (SIGHUP, the logrotate convention).
//!
//! The worker side is on the hot path: no lock, no copy of a line, one allocation per block
//! (some hundred lines).

use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::json::push_str;
use crate::metrics::WorkerGauges;
use crate::record::{push_hex, Record};
use crate::shipping::{Shipping, ShippingCounts};

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    /// Reads `PATH|stdout|off` (`None` for off).
    pub fn parse(s: &str) -> Result<Option<Destination>, String> {
        match s.trim() {
            "" => Err("access_log: expected a file path, \"stdout\" or \"off\"".into()),
            "off" => Ok(None),
            "stdout" | "-" => Ok(Some(Destination::Stdout)),
            p => Ok(Some(Destination::File(PathBuf::from(p)))),
        }
    }

    /// Opens the destination for appending (a file is created when missing).
    pub fn open(&self) -> std::io::Result<Box<dyn Write + Send>> {
        match self {
            Destination::Stdout => Ok(Box::new(std::io::stdout())),
            Destination::File(p) => Ok(Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?)),
        }
    }
}

/// Whole lines, each ending with a newline, in the order a worker wrote them.
pub struct Block {
    pub data: Vec<u8>,
    pub lines: usize,
}

/// Emptied block buffers, kept for the workers' next blocks: a block's memory is used again
/// (its pages mapped, perhaps still in cache) rather than allocated and faulted in anew. Lock-free
/// and bounded: what does not fit is freed.
#[derive(Clone)]
pub struct Spares {
    tx: crossbeam_channel::Sender<Vec<u8>>,
    rx: crossbeam_channel::Receiver<Vec<u8>>,
    block_bytes: usize,
}

impl Spares {
    /// Room for `count` buffers of blocks of `block_bytes`.
    pub fn new(count: usize, block_bytes: usize) -> Spares {
        let (tx, rx) = crossbeam_channel::bounded(count.max(1));
        Spares { tx, rx, block_bytes }
    }

    /// Keeps `buf` for a later block (only a buffer of a whole block's size).
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() >= self.block_bytes {
            buf.clear();
            let _ = self.tx.try_send(buf);
        }
    }

    fn take(&self) -> Vec<u8> {
        self.rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(self.block_bytes))
    }
}

/// Room kept at the end of a block for the next line: a block is handed over before a line
/// could make its buffer grow (a copy).
const LINE_ROOM: usize = 2048;

/// A worker's end of its log queue.
pub struct LogQueue {
    /// The block being filled.
    block: RefCell<Block>,
    full: RefCell<rtrb::Producer<Block>>,
    block_bytes: usize,
    spares: Spares,
    enabled: Arc<AtomicBool>,
    wake: Arc<Wake>,
}

/// How a worker wakes the log thread (its queue a quarter full).
struct Wake {
    /// Set by the log thread while it sleeps (or is about to).
    parked: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl LogQueue {
    /// Whether lines are wanted now (the log is on).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Formats one line into the current block; hands the block over when it is full.
    pub fn push(&self, entry: &Entry<'_>, gauges: &WorkerGauges) {
        let mut b = self.block.borrow_mut();
        entry.write_json(&mut b.data);
        b.lines += 1;
        if b.data.len() + LINE_ROOM > self.block_bytes {
            self.hand_over(&mut b, gauges);
        }
    }

    /// Hands over the lines of the current block, if any: the worker's timer calls it, so the
    /// lines of a quiet worker do not wait for a full block.
    pub fn flush(&self, gauges: &WorkerGauges) {
        let mut b = self.block.borrow_mut();
        if b.lines > 0 {
            self.hand_over(&mut b, gauges);
        }
    }

    fn hand_over(&self, b: &mut Block, gauges: &WorkerGauges) {
        let lines = b.lines as u64;
        let mut full = self.full.borrow_mut();
        if full.is_full() {
            // The log thread is behind: these lines are dropped and counted; the buffer stays.
            gauges.log_dropped.add(lines);
            b.data.clear();
            b.lines = 0;
            return;
        }
        let next = Block { data: self.spares.take(), lines: 0 };
        let _ = full.push(std::mem::replace(b, next));
        gauges.log_queued.add(lines);
        // A queue a quarter full wakes the log thread (a syscall only when it sleeps).
        if full.slots() * 4 <= full.buffer().capacity() * 3 && self.wake.parked.swap(false, Ordering::SeqCst) {
            self.wake.thread.unpark();
        }
    }
}

/// Orders for the log thread.
pub(crate) enum Order {
    /// Write to this destination from now on; says on the channel once it is open (or off).
    Set(Option<Destination>, crossbeam_channel::Sender<()>),
    /// Ship lines with these settings from now on (`None`: stop shipping); says when done.
    Ship(Option<Box<Shipping>>, crossbeam_channel::Sender<()>),
    Reopen,
    Stop,
}

/// The control side of the access log: held by the admin thread.
pub struct AccessLog {
    orders: crossbeam_channel::Sender<Order>,
    enabled: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    destination: Option<Destination>,
    /// Lines drained but not written (the destination failing).
    lost: Arc<AtomicU64>,
    shipping: Option<Shipping>,
    /// The shipper's figures (kept across its restarts).
    pub shipped: Arc<ShippingCounts>,
}

/// How long the log thread sleeps at most: a worker whose queue is a quarter full wakes it
/// sooner, as do orders and a batch due to the shipper. Every wakeup costs (a switch away from
/// a worker on a busy core), so they come per quarter queue, not per block or on a short poll.
pub(crate) const SLEEP: Duration = Duration::from_millis(100);

impl AccessLog {
    /// Starts the log thread with a queue of about `queue_bytes` per worker (blocks of up to
    /// 64 KiB); returns the control and the workers' queues. The log starts off (see
    /// [`AccessLog::set`]).
    pub fn start(workers: usize, queue_bytes: usize) -> std::io::Result<(AccessLog, Vec<LogQueue>)> {
        let block_bytes = (queue_bytes / 16).clamp(4096, 64 * 1024);
        let blocks = (queue_bytes / block_bytes).max(2);
        let enabled = Arc::new(AtomicBool::new(false));
        let (producers, consumers): (Vec<_>, Vec<_>) = (0..workers).map(|_| rtrb::RingBuffer::new(blocks)).unzip();
        let spares = Spares::new(workers * (blocks + 1), block_bytes);
        let (orders, rx) = crossbeam_channel::bounded(16);
        let lost = Arc::new(AtomicU64::new(0));
        let shipped = Arc::new(ShippingCounts::default());
        let shared = (enabled.clone(), lost.clone(), shipped.clone());
        let parked = Arc::new(AtomicBool::new(false));
        let (p, sp) = (parked.clone(), spares.clone());
        let thread = std::thread::Builder::new().name("access-log".into()).spawn(move || {
            ringway_runtime::background_thread();
            crate::log_thread::run(consumers, rx, (&p, sp), shared)
        })?;
        let wake = Arc::new(Wake { parked, thread: thread.thread().clone() });
        let queues = producers
            .into_iter()
            .map(|full| LogQueue {
                block: RefCell::new(Block { data: Vec::with_capacity(block_bytes), lines: 0 }),
                full: RefCell::new(full),
                block_bytes,
                spares: spares.clone(),
                enabled: enabled.clone(),
                wake: wake.clone(),
            })
            .collect();
        let log = AccessLog { orders, enabled, lost, thread: Some(thread), destination: None, shipping: None, shipped };
        Ok((log, queues))
    }

    /// Sends an order and wakes the thread for it.
    fn order(&self, o: Order) {
        let _ = self.orders.send(o);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Sends lines to `to` from now on (`None`: off). Checks first that the destination opens.
    pub fn set(&mut self, to: Option<Destination>) -> std::io::Result<()> {
        if to == self.destination {
            return Ok(());
        }
        if let Some(d) = &to {
            d.open()?;
        }
        self.destination = to.clone();
        // Workers start writing lines only once the thread has the destination open (it turns
        // `enabled` on itself); turning off stops them at once.
        if to.is_none() && self.shipping.is_none() {
            self.enabled.store(false, Ordering::Relaxed);
        }
        // The admin thread waits (briefly) until the log thread has it open, so the requests
        // after a change are logged where the change says.
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.order(Order::Set(to, tx));
        let _ = rx.recv_timeout(Duration::from_secs(5));
        Ok(())
    }

    /// Ships lines to a collector with `to` from now on (`None`: stop shipping).
    pub fn ship(&mut self, to: Option<Shipping>) {
        if to == self.shipping {
            return;
        }
        self.shipping = to.clone();
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.order(Order::Ship(to.map(Box::new), tx));
        let _ = rx.recv_timeout(Duration::from_secs(15));
    }

    pub fn shipping(&self) -> Option<&Shipping> {
        self.shipping.as_ref()
    }

    pub fn destination(&self) -> Option<&Destination> {
        self.destination.as_ref()
    }

    /// Lines the thread could not write (destination failing), over every worker.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Reopens the file (after it was moved away by log rotation).
    pub fn reopen(&self) {
        if self.orders.try_send(Order::Reopen).is_ok() {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    /// Writes what is queued and stops the thread.
    pub fn stop(mut self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.order(Order::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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

/// Appends an IP address: IPv4 by hand (the common case, without the formatter), IPv6 through
/// `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Written whole on the stack, copied once.
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            out.extend_from_slice(&buf[..n]);
        }
        IpAddr::V6(v6) => {
            let mut buf = [0u8; 64];
            let mut cur = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cur, "{v6}");
            let n = cur.position() as usize;
            out.extend_from_slice(&buf[..n]);
        }
    }
}

/// Appends a quoted address: `ip` or `ip:port` (`[ip]:port` for IPv6).
fn push_addr(out: &mut Vec<u8>, ip: IpAddr, port: Option<u16>) {
    out.push(b'"');
    match (ip, port) {
        (IpAddr::V6(_), Some(_)) => {
            out.push(b'[');
            push_ip(out, ip);
            out.push(b']');
        }
        _ => push_ip(out, ip),
    }
    if let Some(p) = port {
        out.push(b':');
        push_u64(out, u64::from(p));
    }
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    crate::h1::write::push_dec(out, v);
}

/// Milliseconds with three decimals.
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros() as u64;
    let frac = us % 1000;
    let frac = [b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    if us < 10_000 {
        // Under ten milliseconds (most requests): five bytes in one copy.
        out.extend_from_slice(&[b'0' + (us / 1000) as u8, frac[0], frac[1], frac[2], frac[3]]);
    } else {
        push_u64(out, us / 1000);
        out.extend_from_slice(&frac);
    }
}

/// Appends `unix_ms` as RFC 3339 UTC with milliseconds.
pub fn push_rfc3339(out: &mut Vec<u8>, unix_ms: u64) {
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
    // Written whole on the stack, copied once.
    let two = |v: u64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    let y = year as u64;
    let (c, yy, mo, d) = (two(y / 100), two(y % 100), two(month as u64), two(day as u64));
    let (h, mi, se) = (two(rem / 3600), two(rem / 60 % 60), two(rem % 60));
    let ms = unix_ms % 1000;
    out.extend_from_slice(&[
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
    ]);
}

impl Entry<'_> {
    /// Appends the line, newline included. A field that does not apply to the request (no
    /// route, no upstream tried, no error...) is left out rather than written as `null`: every
    /// byte of a line is formatted, queued, written and shipped.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let r = self.rec;
        // Room for the whole line at once (strings may grow sixfold when escaped).
        let text_len = self.text.map_or(0, |(m, h, p)| m.len() + h.len() + p.len());
        out.reserve(640 + 6 * text_len);
        out.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339(out, self.unix_ms);
        out.extend_from_slice(b"\",\"request_id\":");
        push_str(out, r.request_id.as_bytes());
        out.extend_from_slice(b",\"worker\":");
        push_u64(out, self.worker as u64);
        push_field(out, b",\"route\":", self.route.map(str::as_bytes));
        push_field(out, b",\"consumer\":", self.consumer.map(str::as_bytes));
        push_field(out, b",\"upstream\":", self.upstream.map(str::as_bytes));
        if let Some(t) = self.target {
            out.extend_from_slice(b",\"target\":");
            push_addr(out, t.ip(), Some(t.port()));
        }
        if let Some((method, host, path)) = self.text {
            push_field(out, b",\"method\":", Some(method));
            push_field(out, b",\"host\":", Some(host).filter(|h| !h.is_empty()));
            push_field(out, b",\"path\":", Some(path));
        }
        if r.status != 0 {
            out.extend_from_slice(b",\"status\":");
            push_u64(out, u64::from(r.status));
        }
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, r.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, r.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        push_ms(out, self.total);
        push_ms_field(out, b",\"upstream_connect_ms\":", r.upstream_connect);
        push_ms_field(out, b",\"upstream_head_ms\":", r.upstream_head);
        push_ms_field(out, b",\"upstream_last_ms\":", r.upstream_last);
        push_field(out, b",\"cache\":", r.cache.as_str().map(str::as_bytes));
        let limit: Option<&[u8]> = match r.limit {
            crate::record::LimitOutcome::Passed => None,
            crate::record::LimitOutcome::RateLimited => Some(b"rate_limit"),
            crate::record::LimitOutcome::ConcurrencyLimited => Some(b"concurrency_limit"),
        };
        push_field(out, b",\"limit\":", limit);
        out.extend_from_slice(b",\"attempts\":");
        push_u64(out, u64::from(r.attempts));
        out.extend_from_slice(b",\"end\":\"");
        out.extend_from_slice(r.end.as_str().as_bytes());
        out.push(b'"');
        push_field(out, b",\"error\":", r.error.map(str::as_bytes));
        push_field(out, b",\"error_source\":", r.error_source.map(|s| s.as_str().as_bytes()));
        push_field(out, b",\"error_phase\":", r.error_phase.map(|p| p.as_str().as_bytes()));
        if r.trace.trace_id != [0; 16] {
            out.extend_from_slice(b",\"trace_id\":\"");
            push_hex(out, &r.trace.trace_id);
            out.push(b'"');
        }
        match r.client_ip {
            IpAddr::V4(v) if v.is_unspecified() => {}
            ip => {
                out.extend_from_slice(b",\"client_ip\":");
                push_addr(out, ip, None);
            }
        }
        if let Some(c) = self.capture {
            c.write_json(out, r.bytes_in, r.bytes_out);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Appends `key` (`,"name":`) and `v` as a JSON string, or nothing when there is no value.
#[inline]
fn push_field(out: &mut Vec<u8>, key: &[u8], v: Option<&[u8]>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
        push_str(out, v);
    }
}

/// Appends `key` and `d` in milliseconds, or nothing when there is no duration.
#[inline]
fn push_ms_field(out: &mut Vec<u8>, key: &[u8], d: Option<Duration>) {
    if let Some(d) = d {
        out.extend_from_slice(key);
        push_ms(out, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut out = Vec::new();
            push_addr(&mut out, a.ip(), Some(a.port()));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
        let mut out = Vec::new();
        push_addr(&mut out, "192.168.1.2".parse().unwrap(), None);
        assert_eq!(out, b"\"192.168.1.2\"");
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
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "127.0.0.1"] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), ip);
        }
        for (us, text) in [(0, "0.000"), (81, "0.081"), (9_999, "9.999"), (10_000, "10.000"), (1_234_567, "1234.567")] {
            let mut out = Vec::new();
            push_ms(&mut out, Duration::from_micros(us));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
        for v in [0, 9, 10, 200, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn lines_are_json_with_the_fields_that_apply() {
        let mut rec = Record::new(monoio::time::Instant::now());
        rec.request_id = crate::record::RequestId::generated(*b"0123456789abcdef0123456789abcdef");
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
}
