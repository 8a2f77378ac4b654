//! JSON access logs: each worker copies one record per request into its current block (see
//! [`crate::log_record`]) and hands full blocks to the log thread over its own bounded queue
//! (wait-free, single producer, single consumer); the log thread formats the lines, a block at a
//! time, writes them to a file or stdout and passes them on to the shipper without copying a
//! line again. A worker never blocks, never formats a line (but a capturing route's) and never
//! writes a file: when its queue is full the block's records are dropped and counted. The file
//! is reopened on request (SIGHUP, the logrotate convention).
//!
//! The worker side is on the hot path: no lock, one copy of a record, no allocation but a new
//! block's when no spare one is left.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::log_line::LineCache;
pub use crate::log_line::{push_rfc3339, Entry};
use crate::log_record::Records;
use crate::metrics::WorkerGauges;
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

/// Whole lines, each ending with a newline, in the order each worker ended its requests.
pub struct Block {
    pub data: Vec<u8>,
    pub lines: usize,
}

/// Emptied buffers of blocks (of lines, or of records), kept for the next blocks: a block's
/// memory is used again (its pages mapped, perhaps still in cache) rather than allocated and
/// faulted in anew. Lock-free and bounded: what does not fit is freed.
pub struct Spares<T = Vec<u8>> {
    tx: crossbeam_channel::Sender<T>,
    rx: crossbeam_channel::Receiver<T>,
    block_bytes: usize,
}

impl<T> Clone for Spares<T> {
    fn clone(&self) -> Self {
        Spares { tx: self.tx.clone(), rx: self.rx.clone(), block_bytes: self.block_bytes }
    }
}

/// A block's buffer, made for about a block's bytes and emptied to be used again.
pub trait Reuse: Sized {
    fn fresh(bytes: usize) -> Self;
    /// Empties the buffer; false when it is not worth keeping (smaller than a block).
    fn emptied(&mut self, bytes: usize) -> bool;
}

impl Reuse for Vec<u8> {
    fn fresh(bytes: usize) -> Self {
        Vec::with_capacity(bytes)
    }

    fn emptied(&mut self, bytes: usize) -> bool {
        self.clear();
        self.capacity() >= bytes
    }
}

impl Reuse for Records {
    fn fresh(bytes: usize) -> Self {
        Records::with_bytes(bytes)
    }

    fn emptied(&mut self, _: usize) -> bool {
        self.clear();
        true
    }
}

impl<T: Reuse> Spares<T> {
    /// Room for `count` buffers of blocks of `block_bytes`.
    pub fn new(count: usize, block_bytes: usize) -> Spares<T> {
        let (tx, rx) = crossbeam_channel::bounded(count.max(1));
        Spares { tx, rx, block_bytes }
    }

    /// Keeps `buf` for a later block.
    pub fn give(&self, mut buf: T) {
        if buf.emptied(self.block_bytes) {
            let _ = self.tx.try_send(buf);
        }
    }

    pub(crate) fn take(&self) -> T {
        self.rx.try_recv().unwrap_or_else(|_| T::fresh(self.block_bytes))
    }
}

/// Room kept at the end of a block for the next line: a block is handed over before a line
/// could make its buffer grow (a copy).
pub(crate) const LINE_ROOM: usize = 2048;

/// Asks for `bytes` from `at` to be brought into the cache for writing while the worker does
/// other things. A block's memory comes back to a worker after a round through the log thread
/// (hundreds of kilobytes a worker), so the next record's room is seldom in the cache; written
/// cold, each of its cache lines would be a miss on the request path.
#[inline(always)]
pub(crate) fn prefetch_for_write(at: *const u8, bytes: usize) {
    prefetch(at, bytes, true);
}

/// Asks for `bytes` from `at` to be brought into the cache for reading: the log thread reads a
/// block of records long after the worker wrote it, its lines seldom still in the cache.
#[inline(always)]
pub(crate) fn prefetch_for_read(at: *const u8, bytes: usize) {
    prefetch(at, bytes, false);
}

#[inline(always)]
fn prefetch(at: *const u8, bytes: usize, write: bool) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..bytes.div_ceil(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        let p = at.wrapping_add(64 * line).cast::<i8>();
        // SAFETY: a prefetch is a hint: it never faults and changes no memory, whatever the
        // address.
        unsafe {
            if write {
                _mm_prefetch::<_MM_HINT_ET0>(p)
            } else {
                _mm_prefetch::<_MM_HINT_T0>(p)
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, bytes, write);
}

/// A worker's end of its log queue.
pub struct LogQueue {
    /// The block being filled, and what the worker keeps from one line to the next (for the
    /// few lines it formats).
    block: RefCell<(Records, LineCache)>,
    full: RefCell<rtrb::Producer<Records>>,
    spares: Spares<Records>,
    enabled: Arc<AtomicBool>,
    wake: Arc<Wake>,
    /// A full block was handed over since the worker's timer last looked.
    handed: std::cell::Cell<bool>,
}

/// How a worker wakes the log thread (its queue holding `at` blocks).
struct Wake {
    at: usize,
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

    /// Queues one request's record in the current block; hands the block over when it is full.
    pub fn push(&self, entry: &Entry<'_>, gauges: &WorkerGauges) {
        let (b, cache) = &mut *self.block.borrow_mut();
        b.push(entry, cache);
        if b.full() {
            self.hand_over(b, gauges);
            self.handed.set(true);
        }
        b.prefetch_next();
    }

    /// The worker's timer: hands over the current block's records when no full block went
    /// since the last tick, so the records of a quiet worker do not wait for a full block (two
    /// ticks at most) while a busy worker's blocks go full (a part-filled block takes a slot of
    /// the queue, and the log thread is woken by slots).
    pub fn tick(&self, gauges: &WorkerGauges) {
        if !self.handed.replace(false) {
            self.flush(gauges);
        }
    }

    /// Hands over the records of the current block, if any.
    pub fn flush(&self, gauges: &WorkerGauges) {
        let (b, _) = &mut *self.block.borrow_mut();
        if !b.is_empty() {
            self.hand_over(b, gauges);
        }
    }

    fn hand_over(&self, b: &mut Records, gauges: &WorkerGauges) {
        let lines = b.len() as u64;
        let mut full = self.full.borrow_mut();
        if full.is_full() {
            // The log thread is behind: these records are dropped and counted; the buffer stays.
            gauges.log_dropped.add(lines);
            b.clear();
            return;
        }
        let _ = full.push(std::mem::replace(b, self.spares.take()));
        gauges.log_queued.add(lines);
        // A queue a quarter full wakes the log thread (a syscall only when it sleeps).
        if full.buffer().capacity() - full.slots() >= self.wake.at && self.wake.parked.swap(false, Ordering::SeqCst) {
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
/// sooner, as do orders and a batch due to the shipper. Every wakeup of a thread that slept
/// costs, whatever it then does (its caches refilled; on a busy core a switch away from a
/// worker: 15 to 65 us on the machine measured, against about a microsecond for a thread
/// switched to and from at once), so they come per quarter queue, not per block or on a short
/// poll; this bound only counts for the records of a quiet worker (handed over by its timer,
/// which does not wake the thread) and for a log that is off.
pub(crate) const SLEEP: Duration = Duration::from_millis(500);

impl AccessLog {
    /// Starts the log thread with a queue of about `queue_bytes` per worker (blocks of up to
    /// 64 KiB); returns the control and the workers' queues. The log starts off (see
    /// [`AccessLog::set`]).
    pub fn start(workers: usize, queue_bytes: usize) -> std::io::Result<(AccessLog, Vec<LogQueue>)> {
        let block_bytes = (queue_bytes / 16).clamp(4096, 64 * 1024);
        let blocks = (queue_bytes / block_bytes).max(2);
        let enabled = Arc::new(AtomicBool::new(false));
        let (producers, consumers): (Vec<_>, Vec<_>) = (0..workers).map(|_| rtrb::RingBuffer::new(blocks)).unzip();
        let spares = Spares::<Vec<u8>>::new(workers * (blocks + 1), block_bytes);
        let record_spares = Spares::<Records>::new(workers * (blocks + 1), block_bytes);
        let (orders, rx) = crossbeam_channel::bounded(16);
        let lost = Arc::new(AtomicU64::new(0));
        let shipped = Arc::new(ShippingCounts::default());
        let shared = (enabled.clone(), lost.clone(), shipped.clone());
        let parked = Arc::new(AtomicBool::new(false));
        let (p, sp, rsp) = (parked.clone(), spares.clone(), record_spares.clone());
        // A queue a quarter full wakes the log thread.
        let wake_at = blocks.div_ceil(4);
        let thread = ringway_runtime::spawn_background("access-log", move || {
            ringway_runtime::background_thread();
            crate::log_thread::run(consumers, rx, (&p, sp, rsp, wake_at), shared)
        })?;
        let wake = Arc::new(Wake { at: wake_at, parked, thread: thread.thread().clone() });
        let queues = producers
            .into_iter()
            .map(|full| LogQueue {
                block: RefCell::new((Records::with_bytes(block_bytes), LineCache::default())),
                full: RefCell::new(full),
                spares: record_spares.clone(),
                enabled: enabled.clone(),
                wake: wake.clone(),
                handed: std::cell::Cell::new(false),
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
