//! JSON access logs: each worker formats one line per request into its own bounded ring
//! (wait-free, single producer, single consumer); the log thread drains every ring into a file
//! or stdout. A worker never blocks and never writes a file: when its ring is full the line is
//! dropped and counted. The file is reopened on request (SIGHUP, the logrotate convention).
//!
//! The worker side is on the hot path: no allocation per line (one buffer is reused), no lock.

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
use crate::shipping::{Shipper, Shipping, ShippingCounts};

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

/// A worker's end of its log ring.
pub struct LogQueue {
    ring: RefCell<rtrb::Producer<u8>>,
    line: RefCell<Vec<u8>>,
    enabled: Arc<AtomicBool>,
}

impl LogQueue {
    /// Whether lines are wanted now (the log is on).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Formats and queues one line; counts it as dropped when the ring has no room.
    pub fn push(&self, entry: &Entry<'_>, gauges: &WorkerGauges) {
        let mut line = self.line.borrow_mut();
        line.clear();
        entry.write_json(&mut line);
        let mut ring = self.ring.borrow_mut();
        let Ok(mut chunk) = ring.write_chunk(line.len()) else {
            gauges.log_dropped.add(1);
            return;
        };
        let (a, b) = chunk.as_mut_slices();
        let split = a.len();
        a.copy_from_slice(&line[..split]);
        b.copy_from_slice(&line[split..]);
        chunk.commit_all();
        gauges.log_queued.add(1);
    }
}

/// Orders for the log thread.
enum Order {
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

/// How often the log thread looks at the rings when they held little.
const POLL: Duration = Duration::from_millis(10);

impl AccessLog {
    /// Starts the log thread with one ring of `ring_bytes` per worker; returns the control and
    /// the workers' queues. The log starts off (see [`AccessLog::set`]).
    pub fn start(workers: usize, ring_bytes: usize) -> std::io::Result<(AccessLog, Vec<LogQueue>)> {
        let enabled = Arc::new(AtomicBool::new(false));
        let mut consumers = Vec::with_capacity(workers);
        let mut queues = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (p, c) = rtrb::RingBuffer::new(ring_bytes.max(4096));
            consumers.push(c);
            queues.push(LogQueue {
                ring: RefCell::new(p),
                line: RefCell::new(Vec::with_capacity(512)),
                enabled: enabled.clone(),
            });
        }
        let (orders, rx) = crossbeam_channel::bounded(16);
        let lost = Arc::new(AtomicU64::new(0));
        let shipped = Arc::new(ShippingCounts::default());
        let shared = (enabled.clone(), lost.clone(), shipped.clone());
        let thread =
            std::thread::Builder::new().name("access-log".into()).spawn(move || log_thread(consumers, rx, shared))?;
        let log = AccessLog { orders, enabled, lost, thread: Some(thread), destination: None, shipping: None, shipped };
        Ok((log, queues))
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
        let _ = self.orders.send(Order::Set(to, tx));
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
        let _ = self.orders.send(Order::Ship(to.map(Box::new), tx));
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
        let _ = self.orders.try_send(Order::Reopen);
    }

    /// Writes what is queued and stops the thread.
    pub fn stop(mut self) {
        self.enabled.store(false, Ordering::Relaxed);
        let _ = self.orders.send(Order::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn log_thread(
    mut rings: Vec<rtrb::Consumer<u8>>,
    orders: crossbeam_channel::Receiver<Order>,
    (enabled, lost, counts): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<ShippingCounts>),
) {
    let mut shipper: Option<Shipper> = None;
    let capacity = rings.first().map_or(0, |r| r.buffer().capacity());
    let mut destination: Option<Destination> = None;
    let mut out: Option<std::io::BufWriter<Box<dyn Write + Send>>> = None;
    let open = |d: &Destination| match d.open() {
        Ok(w) => Some(std::io::BufWriter::with_capacity(64 * 1024, w)),
        Err(e) => {
            log::error!("access log: cannot open {d:?}: {e}; lines are dropped until it opens");
            None
        }
    };
    let mut stopping = false;
    let mut order = None;
    loop {
        // Orders first: lines queued just after the log was turned on must find it open.
        while let Some(o) = order.take().or_else(|| orders.try_recv().ok()) {
            match o {
                Order::Set(d, done) => {
                    if let Some(w) = out.as_mut() {
                        let _ = w.flush();
                    }
                    out = d.as_ref().and_then(open);
                    enabled.store(out.is_some() || shipper.is_some(), Ordering::Relaxed);
                    destination = d;
                    let _ = done.send(());
                }
                Order::Ship(settings, done) => {
                    // The old shipper sends what it holds, then the new one takes over.
                    drop(shipper.take());
                    shipper = settings.and_then(|s| match Shipper::start(*s, counts.clone()) {
                        Ok(sh) => Some(sh),
                        Err(e) => {
                            log::error!("log shipping: cannot start its thread: {e}");
                            None
                        }
                    });
                    enabled.store(out.is_some() || shipper.is_some(), Ordering::Relaxed);
                    let _ = done.send(());
                }
                Order::Reopen => {
                    if let Some(w) = out.as_mut() {
                        let _ = w.flush();
                    }
                    out = destination.as_ref().and_then(open);
                }
                Order::Stop => {
                    enabled.store(false, Ordering::Relaxed);
                    stopping = true;
                }
            }
        }
        let mut fullest = 0usize;
        for ring in rings.iter_mut() {
            let n = ring.slots();
            if n == 0 {
                continue;
            }
            let Ok(chunk) = ring.read_chunk(n) else { continue };
            let (a, b) = chunk.as_slices();
            if let Some(sh) = shipper.as_mut() {
                // Workers commit whole lines and a round takes all that is committed: the two
                // halves of the ring together are whole lines, in the order the worker wrote
                // them.
                sh.offer_lines(a, b);
            }
            let written = match out.as_mut() {
                Some(w) => w.write_all(a).and_then(|_| w.write_all(b)).is_ok(),
                // Shipping only: nothing to write, nothing lost.
                None => shipper.is_some(),
            };
            if !written {
                // Whole lines only reach the rings: count them as lost.
                let lines = memchr::memchr_iter(b'\n', a).count() + memchr::memchr_iter(b'\n', b).count();
                lost.fetch_add(lines as u64, Ordering::Relaxed);
                if out.is_some() {
                    log::error!("access log: write failed; reopening");
                    out = destination.as_ref().and_then(open);
                }
            }
            fullest = fullest.max(n);
            chunk.commit_all();
        }
        if let Some(sh) = shipper.as_mut() {
            sh.hand_over();
        }
        // A ring a quarter full is drained again at once; otherwise the thread waits a poll
        // interval, so a steady trickle of lines costs a hundred wakeups a second, not a busy
        // loop.
        if fullest >= capacity / 4 && fullest > 0 && !stopping {
            continue;
        }
        if let Some(w) = out.as_mut() {
            let _ = w.flush();
        }
        if stopping {
            return;
        }
        match orders.recv_timeout(POLL) {
            Ok(o) => order = Some(o),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => order = Some(Order::Stop),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
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
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(*o));
            }
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
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8]);
}

fn push_opt_ms(out: &mut Vec<u8>, d: Option<Duration>) {
    match d {
        Some(d) => push_ms(out, d),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_str(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => push_str(out, v),
        None => out.extend_from_slice(b"null"),
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
    let two = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    let y = year as u64;
    two(out, y / 100);
    two(out, y % 100);
    out.push(b'-');
    two(out, month as u64);
    out.push(b'-');
    two(out, day as u64);
    out.push(b'T');
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem / 60 % 60);
    out.push(b':');
    two(out, rem % 60);
    let ms = unix_ms % 1000;
    out.extend_from_slice(&[b'.', b'0' + (ms / 100) as u8, b'0' + (ms / 10 % 10) as u8, b'0' + (ms % 10) as u8, b'Z']);
}

impl Entry<'_> {
    /// Appends the line, newline included.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let r = self.rec;
        out.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339(out, self.unix_ms);
        out.extend_from_slice(b"\",\"request_id\":");
        push_str(out, r.request_id.as_bytes());
        out.extend_from_slice(b",\"worker\":");
        push_u64(out, self.worker as u64);
        out.extend_from_slice(b",\"route\":");
        push_opt_str(out, self.route.map(str::as_bytes));
        if let Some(c) = self.consumer {
            out.extend_from_slice(b",\"consumer\":");
            push_str(out, c.as_bytes());
        }
        out.extend_from_slice(b",\"upstream\":");
        push_opt_str(out, self.upstream.map(str::as_bytes));
        out.extend_from_slice(b",\"target\":");
        match self.target {
            Some(t) => push_addr(out, t.ip(), Some(t.port())),
            None => out.extend_from_slice(b"null"),
        }
        let (method, host, path) = match self.text {
            Some((m, h, p)) => (Some(m), Some(h), Some(p)),
            None => (None, None, None),
        };
        out.extend_from_slice(b",\"method\":");
        push_opt_str(out, method);
        out.extend_from_slice(b",\"host\":");
        push_opt_str(out, host.filter(|h| !h.is_empty()));
        out.extend_from_slice(b",\"path\":");
        push_opt_str(out, path);
        out.extend_from_slice(b",\"status\":");
        match r.status {
            0 => out.extend_from_slice(b"null"),
            s => push_u64(out, u64::from(s)),
        }
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, r.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, r.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        push_ms(out, self.total);
        out.extend_from_slice(b",\"upstream_connect_ms\":");
        push_opt_ms(out, r.upstream_connect);
        out.extend_from_slice(b",\"upstream_head_ms\":");
        push_opt_ms(out, r.upstream_head);
        out.extend_from_slice(b",\"upstream_last_ms\":");
        push_opt_ms(out, r.upstream_last);
        out.extend_from_slice(b",\"cache\":");
        push_opt_str(out, r.cache.as_str().map(str::as_bytes));
        out.extend_from_slice(b",\"limit\":");
        let limit: Option<&str> = match r.limit {
            crate::record::LimitOutcome::Passed => None,
            crate::record::LimitOutcome::RateLimited => Some("rate_limit"),
            crate::record::LimitOutcome::ConcurrencyLimited => Some("concurrency_limit"),
        };
        push_opt_str(out, limit.map(str::as_bytes));
        out.extend_from_slice(b",\"attempts\":");
        push_u64(out, u64::from(r.attempts));
        out.extend_from_slice(b",\"end\":\"");
        out.extend_from_slice(r.end.as_str().as_bytes());
        out.extend_from_slice(b"\",\"error\":");
        push_opt_str(out, r.error.map(str::as_bytes));
        out.extend_from_slice(b",\"error_source\":");
        push_opt_str(out, r.error_source.map(|s| s.as_str().as_bytes()));
        out.extend_from_slice(b",\"error_phase\":");
        push_opt_str(out, r.error_phase.map(|p| p.as_str().as_bytes()));
        out.extend_from_slice(b",\"trace_id\":");
        if r.trace.trace_id == [0; 16] {
            out.extend_from_slice(b"null");
        } else {
            out.push(b'"');
            push_hex(out, &r.trace.trace_id);
            out.push(b'"');
        }
        out.extend_from_slice(b",\"client_ip\":");
        match r.client_ip {
            IpAddr::V4(v) if v.is_unspecified() => out.extend_from_slice(b"null"),
            ip => push_addr(out, ip, None),
        }
        if let Some(c) = self.capture {
            c.write_json(out, r.bytes_in, r.bytes_out);
        }
        out.extend_from_slice(b"}\n");
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
}
