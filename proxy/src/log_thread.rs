//! The `access-log` thread: drains the workers' queues of blocks of records, formats their
//! lines into blocks of lines, writes those to the log's file and passes them to the shipper,
//! and follows the admin thread's orders (see [`crate::access_log`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::access_log::{Block, Destination, Order, Spares, SLEEP};
use crate::log_line::LineCache;
use crate::log_record::Records;
use crate::shipper::Shipper;
use crate::shipping::ShippingCounts;

/// Where blocks of lines go: the file, then the shipper (which keeps each until it is sent).
struct Sink<'a> {
    out: Option<std::io::BufWriter<Box<dyn Write + Send>>>,
    destination: Option<Destination>,
    shipper: Option<Shipper>,
    spares: &'a Spares,
    lost: &'a AtomicU64,
}

impl Sink<'_> {
    fn open(d: &Destination) -> Option<std::io::BufWriter<Box<dyn Write + Send>>> {
        match d.open() {
            Ok(w) => Some(std::io::BufWriter::with_capacity(64 * 1024, w)),
            Err(e) => {
                log::error!("access log: cannot open {d:?}: {e}; lines are dropped until it opens");
                None
            }
        }
    }

    /// Writes `block` to the file and hands it to the shipper (or back to the spares).
    fn deliver(&mut self, block: Block) {
        let written = match self.out.as_mut() {
            Some(w) => w.write_all(&block.data).is_ok(),
            // No file (shipping only, or lines made just before the log was turned off):
            // nothing to write, nothing lost.
            None => true,
        };
        if !written {
            self.lost.fetch_add(block.lines as u64, Ordering::Relaxed);
            if self.out.is_some() {
                log::error!("access log: write failed; reopening");
                self.out = self.destination.as_ref().and_then(Sink::open);
            }
        }
        match self.shipper.as_mut() {
            Some(sh) => sh.offer(block),
            None => self.spares.give(block.data),
        }
    }
}

pub(crate) fn run(
    mut queues: Vec<rtrb::Consumer<Records>>,
    orders: crossbeam_channel::Receiver<Order>,
    (parked, spares, record_spares, wake_at): (&AtomicBool, Spares, Spares<Records>, usize),
    (enabled, lost, counts): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<ShippingCounts>),
) {
    let mut sink = Sink { out: None, destination: None, shipper: None, spares: &spares, lost: &lost };
    // The block of lines being formatted, and what the formatter keeps from line to line.
    let mut lines = Block { data: spares.take(), lines: 0 };
    let mut cache = LineCache::default();
    let mut stopping = false;
    let mut order = None;
    loop {
        // Orders first: lines queued just after the log was turned on must find it open.
        while let Some(o) = order.take().or_else(|| orders.try_recv().ok()) {
            match o {
                Order::Set(d, done) => {
                    if let Some(w) = sink.out.as_mut() {
                        let _ = w.flush();
                    }
                    sink.out = d.as_ref().and_then(Sink::open);
                    enabled.store(sink.out.is_some() || sink.shipper.is_some(), Ordering::Relaxed);
                    sink.destination = d;
                    let _ = done.send(());
                }
                Order::Ship(settings, done) => {
                    // The old shipper sends what it holds, then the new one takes over.
                    drop(sink.shipper.take());
                    sink.shipper = settings.and_then(|s| match Shipper::start(*s, counts.clone(), spares.clone()) {
                        Ok(sh) => Some(sh),
                        Err(e) => {
                            log::error!("log shipping: cannot start its thread: {e}");
                            None
                        }
                    });
                    enabled.store(sink.out.is_some() || sink.shipper.is_some(), Ordering::Relaxed);
                    let _ = done.send(());
                }
                Order::Reopen => {
                    if let Some(w) = sink.out.as_mut() {
                        let _ = w.flush();
                    }
                    sink.out = sink.destination.as_ref().and_then(Sink::open);
                }
                Order::Stop => {
                    enabled.store(false, Ordering::Relaxed);
                    stopping = true;
                }
            }
        }
        // Every block queued, oldest first, worker by worker: its lines formatted into blocks
        // of lines, each, once full, to the file and then to the shipper (which keeps it until
        // it is sent).
        let mut fullest = 0usize;
        for queue in queues.iter_mut() {
            let n = queue.slots();
            fullest = fullest.max(n);
            for _ in 0..n {
                let Ok(records) = queue.pop() else { break };
                records.write_lines(&mut cache, &mut lines, |full| {
                    sink.deliver(std::mem::replace(full, Block { data: spares.take(), lines: 0 }));
                });
                record_spares.give(records);
            }
        }
        // What is left waits for no more lines.
        if lines.lines > 0 {
            sink.deliver(std::mem::replace(&mut lines, Block { data: spares.take(), lines: 0 }));
        }
        let now = std::time::Instant::now();
        if let Some(sh) = sink.shipper.as_mut() {
            sh.flush_due(now);
        }
        // A queue a quarter full is drained again at once.
        if fullest >= wake_at && !stopping {
            continue;
        }
        if let Some(w) = sink.out.as_mut() {
            let _ = w.flush();
        }
        if stopping {
            return;
        }
        // Sleep until a worker's queue is a quarter full (it wakes the thread), an order
        // comes, the batch in hand is due or [`SLEEP`] passes. Plain parking: a timed wait on
        // a channel would spin and yield first, each yield a switch to a worker and back.
        let wait = sink.shipper.as_ref().and_then(|sh| sh.due_in(now)).map_or(SLEEP, |d| d.min(SLEEP));
        parked.store(true, Ordering::SeqCst);
        if queues.iter().all(|q| q.slots() < wake_at) {
            std::thread::park_timeout(wait);
        }
        parked.store(false, Ordering::Relaxed);
        match orders.try_recv() {
            Ok(o) => order = Some(o),
            Err(crossbeam_channel::TryRecvError::Disconnected) => order = Some(Order::Stop),
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
    }
}
