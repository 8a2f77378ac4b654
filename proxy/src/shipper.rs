//! The shipper: the log thread's handle ([`Shipper`]), which gathers lines into batches, and
//! the `log-shipper` thread, which sends them (see [`crate::shipping`]).

use crate::access_log::{Block, Spares};
use crate::collector::{answer, post, send, Conn, Sent};
use crate::shipping::{Shipping, ShippingCounts};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// One batch: blocks of whole lines as the workers wrote them (never copied together).
struct Batch {
    parts: Vec<Vec<u8>>,
    lines: usize,
}

/// What the log thread and the shipper thread tell each other besides the batches.
#[derive(Default)]
struct Flags {
    /// The handle is dropped: the thread ends.
    stop: AtomicBool,
    /// The thread is trying a failed batch again (sending it, or sleeping out a backoff) and
    /// takes no other before it is through: a batch handed over meanwhile needs no wakeup (it
    /// finds the batch queued when it looks next).
    resting: AtomicBool,
}

/// The log thread's handle on the shipper thread.
pub struct Shipper {
    batches: Sender<Batch>,
    /// Lines queued or in the batch being sent, not yet shipped.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    queue_max: usize,
    batch_max: usize,
    flush_every: Duration,
    /// The batch being gathered by the log thread, and when its first line came.
    pending: Batch,
    since: Option<Instant>,
    counts: Arc<ShippingCounts>,
    /// Where the buffers of dropped lines go back (the shipper thread gives back sent ones).
    spares: Spares,
    flags: Arc<Flags>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shipper {
    /// Starts the `log-shipper` thread; `counts` carry over from a shipper this one replaces.
    /// Sent blocks' buffers go back to `spares`.
    pub fn start(settings: Shipping, counts: Arc<ShippingCounts>, spares: Spares) -> std::io::Result<Shipper> {
        let (batches, rx) = crossbeam_channel::unbounded();
        let flags = Arc::new(Flags::default());
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (queue_max, batch_max, flush_every) = (settings.queue_max, settings.batch_max, settings.flush_every);
        let (c, f, q, sp) = (counts.clone(), flags.clone(), queued.clone(), spares.clone());
        let thread = ringway_runtime::spawn_background("log-shipper", move || {
            ringway_runtime::background_thread();
            ship(settings, rx, &c, &f, &q, &sp)
        })?;
        Ok(Shipper {
            batches,
            queued,
            queue_max,
            batch_max,
            flush_every,
            pending: Batch { parts: Vec::with_capacity(16), lines: 0 },
            since: None,
            counts,
            spares,
            flags,
            thread: Some(thread),
        })
    }

    /// Gathers a block of whole lines into batches of `batch_max` lines; each batch goes to the
    /// shipper as soon as it is full. Only a block that straddles two batches is split, its
    /// second part copied out.
    pub fn offer(&mut self, mut block: Block) {
        if block.lines == 0 {
            return;
        }
        // A block handed over early by a quiet worker keeps little of its room while queued.
        if block.data.capacity() > 2 * block.data.len() + 4096 {
            block.data.shrink_to_fit();
        }
        loop {
            if self.pending.lines == 0 {
                self.since.get_or_insert_with(Instant::now);
            }
            let room = self.batch_max - self.pending.lines;
            if block.lines < room {
                self.pending.lines += block.lines;
                self.pending.parts.push(block.data);
                return;
            }
            let rest = match block.lines - room {
                0 => None,
                more => {
                    let cut = memchr::memchr_iter(b'\n', &block.data).nth(room - 1).map_or(block.data.len(), |i| i + 1);
                    let rest = Block { data: block.data[cut..].to_vec(), lines: more };
                    block.data.truncate(cut);
                    Some(rest)
                }
            };
            self.pending.lines += room;
            self.pending.parts.push(block.data);
            self.hand_over();
            match rest {
                Some(r) => block = r,
                None => return,
            }
        }
    }

    /// Ends a pass of the log thread: hands over the batch being gathered once its first line
    /// has waited `flush_every`.
    pub fn flush_due(&mut self, now: Instant) {
        if self.due_in(now).is_some_and(|d| d.is_zero()) {
            self.hand_over();
        }
    }

    /// How long until the batch being gathered is due (`None`: it is empty).
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.since.map(|t| (t + self.flush_every).saturating_duration_since(now))
    }

    /// Hands the batch being gathered to the shipper: as many lines as the queue has room for,
    /// the oldest first; the others are dropped and counted.
    pub fn hand_over(&mut self) {
        self.since = None;
        if self.pending.lines == 0 {
            return;
        }
        let mut batch = std::mem::replace(&mut self.pending, Batch { parts: Vec::with_capacity(16), lines: 0 });
        let room = self.queue_max.saturating_sub(self.queued.load(Ordering::Relaxed));
        if batch.lines > room {
            self.counts.dropped.fetch_add((batch.lines - room) as u64, Ordering::Relaxed);
            for gone in keep_lines(&mut batch.parts, room) {
                self.spares.give(gone);
            }
            batch.lines = room;
        }
        if batch.lines == 0 {
            return;
        }
        self.queued.fetch_add(batch.lines, Ordering::Relaxed);
        let lines = batch.lines;
        if self.batches.send(batch).is_err() {
            self.queued.fetch_sub(lines, Ordering::Relaxed);
            self.counts.dropped.fetch_add(lines as u64, Ordering::Relaxed);
        }
        // Woken for each batch, at once, and given the core: its lines, just formatted, go into
        // the socket before the next batch is formatted rather than after the rest of the log
        // thread's pass. Both threads are `SCHED_BATCH`, so a wakeup alone does not
        // preempt the log thread; the yield lets the shipper run before the next batch is
        // formatted (its CPU a request 0.09 against 0.12-0.13 us: `perf/results/monitoring`).
        // A thread already sending finds the wakeup kept and looks at the queue once more; a
        // full queue hands over nothing and wakes no one, and neither does a batch handed over
        // while the thread tries a failed one again (a collector away for minutes costs a
        // wakeup per try, not one per batch). The fence pairs with the thread's as it stops
        // resting: either this sees it awake, or it sees this batch queued.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(t) = self.thread.as_ref().filter(|_| !self.flags.resting.load(Ordering::Relaxed)) {
            t.thread().unpark();
            std::thread::yield_now();
        }
    }
}

/// Keeps the first `n` lines of `parts` (blocks of whole lines); gives back the blocks left
/// out whole.
fn keep_lines(parts: &mut Vec<Vec<u8>>, mut n: usize) -> Vec<Vec<u8>> {
    let mut keep = 0;
    while keep < parts.len() && n > 0 {
        let p = &mut parts[keep];
        let lines = memchr::memchr_iter(b'\n', p).count();
        if lines > n {
            let cut = memchr::memchr_iter(b'\n', p).nth(n - 1).map_or(p.len(), |i| i + 1);
            p.truncate(cut);
            n = 0;
        } else {
            n -= lines;
        }
        keep += 1;
    }
    parts.split_off(keep)
}

impl Drop for Shipper {
    /// Stops the thread: the batch being sent may still go out; what is queued is dropped and
    /// counted.
    fn drop(&mut self) {
        self.hand_over();
        self.flags.stop.store(true, Ordering::Relaxed);
        // The channel closed first, so that the thread, once woken, finds it closed.
        let (dead, _) = crossbeam_channel::unbounded();
        drop(std::mem::replace(&mut self.batches, dead));
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        if let Some(t) = self.thread.take() {
            // Bounded: the thread checks `stop` between batches and during its waits, and a
            // send has one overall deadline.
            let _ = t.join();
        }
        // What it did not ship is gone: counted as dropped.
        self.counts.dropped.fetch_add(self.queued.swap(0, Ordering::Relaxed) as u64, Ordering::Relaxed);
    }
}

/// The shipper thread: sends each batch and reads its answer before it posts the next, so order
/// and retries are as if each were sent and answered at once; tries a failed one again after a
/// backoff. It sleeps until the log thread wakes it with a batch, then sends every batch
/// queued: its waits for answers are short ones, with its caches still warm (reading an answer
/// only when the next batch came took a timed wakeup of its own for a pass's last batch).
fn ship(
    s: Shipping,
    rx: Receiver<Batch>,
    counts: &ShippingCounts,
    flags: &Flags,
    queued: &std::sync::atomic::AtomicUsize,
    spares: &Spares,
) {
    let mut conn: Option<Conn> = None;
    let node = crate::otlp::node_name();
    // Ends when the log thread drops its handle (the channel closes).
    while let Ok(batch) = next_batch(&rx) {
        if flags.stop.load(Ordering::Relaxed) {
            return;
        }
        // OTLP: the lines become one export request, made once per batch (not per try).
        let encoded = s.otlp.as_ref().map(|service| crate::otlp_logs::encode(&batch.parts, service, &node));
        let reused = conn.is_some();
        let (body, kind) = payload(&batch, &encoded);
        let first = post(&s, &mut conn, &body, kind);
        drop(body);
        if !settle(&s, &mut conn, Posted { batch, encoded, first, reused }, (counts, flags, queued, spares)) {
            return;
        }
    }
}

/// The next batch, parked until one comes: the log thread wakes the thread with each batch.
/// A plain park, not a wait on the channel (which spins and yields first, each yield a
/// switch to a worker sharing the core and back). `Err`: the channel is closed and empty.
fn next_batch(rx: &Receiver<Batch>) -> Result<Batch, ()> {
    loop {
        match rx.try_recv() {
            Ok(b) => return Ok(b),
            Err(TryRecvError::Disconnected) => return Err(()),
            // An unpark between the try and the park is kept: the park returns at once.
            Err(TryRecvError::Empty) => std::thread::park(),
        }
    }
}

/// A batch the shipper posted (or failed to post), its answer not yet read.
struct Posted {
    batch: Batch,
    /// The batch as one OTLP export request, when shipping OTLP.
    encoded: Option<Vec<u8>>,
    /// The post: by when its answer must have come, or why it failed.
    first: Result<Instant, Sent>,
    /// Whether it went on a connection kept from an earlier batch.
    reused: bool,
}

/// What a batch's POST carries (its OTLP encoding when there is one), and its content type.
fn payload<'a>(batch: &'a Batch, encoded: &'a Option<Vec<u8>>) -> (Vec<&'a [u8]>, &'static str) {
    match encoded {
        Some(e) => (vec![&e[..]], PROTOBUF),
        None => (batch.parts.iter().map(|p| &p[..]).collect(), NDJSON),
    }
}

/// Reads the answer to a posted batch, and tries the batch again after a backoff (on a new
/// connection) until it is delivered or refused for good; then gives its buffers back. False
/// when the shipper is stopped meanwhile.
fn settle(
    s: &Shipping,
    conn: &mut Option<Conn>,
    Posted { batch, encoded, first, mut reused }: Posted,
    (counts, flags, queued, spares): (&ShippingCounts, &Flags, &std::sync::atomic::AtomicUsize, &Spares),
) -> bool {
    let lines = batch.lines;
    let (body, kind) = payload(&batch, &encoded);
    let mut sent = first.and_then(|deadline| answer(conn, deadline));
    let mut backoff = Duration::from_millis(100);
    let done = loop {
        if reused && matches!(&sent, Err(Sent::Failed(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof) {
            // A kept connection the collector closed while idle: once more at once, on a new
            // one.
            *conn = None;
            sent = send(s, conn, &body, kind);
        }
        match sent {
            Ok(()) => {
                counts.shipped.fetch_add(lines as u64, Ordering::Relaxed);
                queued.fetch_sub(lines, Ordering::Relaxed);
                break true;
            }
            Err(Sent::Refused(status)) => {
                // The collector will never take this batch (400, 413, ...): dropped, counted,
                // and the next one goes.
                log::error!(
                    "log shipping to {}: the collector refused a batch ({status}); {lines} records dropped",
                    s.addr
                );
                counts.failed_batches.fetch_add(1, Ordering::Relaxed);
                counts.dropped.fetch_add(lines as u64, Ordering::Relaxed);
                queued.fetch_sub(lines, Ordering::Relaxed);
                *conn = None;
                break true;
            }
            Err(Sent::Failed(e)) => {
                counts.failed_batches.fetch_add(1, Ordering::Relaxed);
                log::warn!("log shipping to {}: {e}; trying again in {backoff:?}", s.addr);
                // Never the same batch twice on one connection.
                *conn = None;
                // Parked for the whole backoff (stopping unparks it; batches handed over
                // meanwhile do not, until this batch is through): a collector away for minutes
                // costs a wakeup per try.
                let until = Instant::now() + backoff;
                flags.resting.store(true, Ordering::Relaxed);
                while Instant::now() < until {
                    if flags.stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        reused = false;
        sent = send(s, conn, &body, kind);
    };
    // Through with this batch: batches handed over from now on wake the thread again; the fence
    // pairs with the log thread's (it sees this, or the thread's next look at the queue sees
    // its batch).
    flags.resting.store(false, Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::SeqCst);
    // Sent (or refused for good): the blocks' buffers serve the workers again.
    drop(body);
    for part in batch.parts {
        spares.give(part);
    }
    done
}

const NDJSON: &str = "application/x-ndjson";
const PROTOBUF: &str = "application/x-protobuf";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shipping::LogShippingSpec;
    use ringway_policy::ConfigErrors;
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    /// A collector on a real socket that answers each POST with `answers` in turn (then 204),
    /// and gives back the bodies it read.
    fn collector(answers: Vec<&'static str>) -> (SocketAddr, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut bodies = Vec::new();
            let mut answers = answers.into_iter();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                // One request: its head, then Content-Length bytes.
                let (head_len, len) = loop {
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    let mut r = httparse::Request::new(&mut fields);
                    if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                        let len = r.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length")).unwrap();
                        break (n, std::str::from_utf8(len.value).unwrap().parse::<usize>().unwrap());
                    }
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return bodies,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                };
                while buf.len() < head_len + len {
                    let k = c.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..k]);
                }
                bodies.push(buf[head_len..head_len + len].to_vec());
                buf.drain(..head_len + len);
                let answer = answers.next().unwrap_or("HTTP/1.1 204 No Content\r\n\r\n");
                c.write_all(answer.as_bytes()).unwrap();
            }
        });
        (addr, t)
    }

    fn settings(addr: SocketAddr) -> Shipping {
        let spec = LogShippingSpec { endpoint: format!("http://{addr}/in"), ..LogShippingSpec::default() };
        Shipping::compile(&spec, &mut ConfigErrors::default()).unwrap()
    }

    #[test]
    fn an_interim_answer_is_skipped_and_a_refusal_for_good_is_not_retried() {
        let (addr, t) = collector(vec![
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n",
        ]);
        let s = settings(addr);
        let mut conn = None;
        assert!(send(&s, &mut conn, &[b"a\n"], NDJSON).is_ok(), "100 then 200");
        assert!(matches!(send(&s, &mut conn, &[b"b\n"], NDJSON), Err(Sent::Refused(413))));
        assert!(matches!(send(&s, &mut conn, &[b"c\n"], NDJSON), Err(Sent::Failed(_))), "a 503 is tried again");
        drop(conn);
        assert_eq!(t.join().unwrap(), [b"a\n".to_vec(), b"b\n".to_vec(), b"c\n".to_vec()], "one connection");
    }

    #[test]
    fn lines_go_in_batches_of_batch_max_and_a_short_one_when_it_is_due() {
        let (addr, t) = collector(vec![]);
        let counts = Arc::new(ShippingCounts::default());
        let s = Shipping { batch_max: 3, flush_every: Duration::from_millis(50), ..settings(addr) };
        let mut sh = Shipper::start(s, counts.clone(), Spares::new(4, 4096)).unwrap();
        let block = |text: &[u8]| Block { data: text.to_vec(), lines: memchr::memchr_iter(b'\n', text).count() };
        // The second block straddles two batches: split.
        sh.offer(block(b"l0\nl1\nl2\nl3\nl4\n"));
        sh.offer(block(b"l5\nl6\nl7\n"));
        sh.flush_due(Instant::now());
        assert_eq!(sh.pending.lines, 2, "two full batches left, the short one is not due yet");
        std::thread::sleep(Duration::from_millis(60));
        sh.flush_due(Instant::now());
        assert_eq!(sh.pending.lines, 0);
        let until = Instant::now() + Duration::from_secs(5);
        while counts.shipped.load(Ordering::Relaxed) < 8 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(sh);
        let bodies = t.join().unwrap();
        assert_eq!(bodies, [&b"l0\nl1\nl2\n"[..], b"l3\nl4\nl5\n", b"l6\nl7\n"]);
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_drops_the_newest_lines_and_counts_them() {
        // Nothing listens: every batch fails, so nothing leaves the queue.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let counts = Arc::new(ShippingCounts::default());
        let spares = Spares::new(4, 4096);
        let mut sh = Shipper::start(Shipping { queue_max: 5, ..settings(addr) }, counts.clone(), spares).unwrap();
        let lines = |r: std::ops::Range<usize>| Block {
            lines: r.len(),
            data: r.map(|i| format!("line {i}\n")).collect::<String>().into_bytes(),
        };
        sh.offer(lines(0..3));
        sh.hand_over();
        sh.offer(lines(3..7));
        sh.offer(lines(7..10));
        sh.hand_over();
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 5, "3 + 2 fit in 5: the 5 newest go");
        assert_eq!(sh.queued.load(Ordering::Relaxed), 5);
        // Stopping drops what is left, counted.
        drop(sh);
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 10);
        assert_eq!(counts.shipped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_batch_cut_to_the_queue_keeps_its_oldest_lines() {
        let mut parts = vec![b"a\nb\n".to_vec(), b"c\nd\ne\n".to_vec(), b"f\n".to_vec()];
        assert_eq!(keep_lines(&mut parts, 3), [b"f\n"]);
        assert_eq!(parts, [&b"a\nb\n"[..], b"c\n"]);
        assert_eq!(keep_lines(&mut parts, 2), [b"c\n"]);
        assert_eq!(parts, [&b"a\nb\n"[..]]);
        keep_lines(&mut parts, 0);
        assert!(parts.is_empty());
    }
}
