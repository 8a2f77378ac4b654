//! The `access-log` thread: drains the workers' queues of blocks of lines, writes them to the
//! log's file and passes them to the shipper, and follows the admin thread's orders (see
//! [`crate::access_log`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::access_log::{Block, Destination, Order, Spares, SLEEP};
use crate::shipping::{Shipper, ShippingCounts};

pub(crate) fn run(
    mut queues: Vec<rtrb::Consumer<Block>>,
    orders: crossbeam_channel::Receiver<Order>,
    (parked, spares): (&AtomicBool, Spares),
    (enabled, lost, counts): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<ShippingCounts>),
) {
    let mut shipper: Option<Shipper> = None;
    let capacity = queues.first().map_or(0, |q| q.buffer().capacity());
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
                    shipper = settings.and_then(|s| match Shipper::start(*s, counts.clone(), spares.clone()) {
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
        // Every block queued, oldest first, worker by worker: to the file, then to the
        // shipper (which keeps it until it is sent), never copied.
        let mut fullest = 0usize;
        for queue in queues.iter_mut() {
            let n = queue.slots();
            fullest = fullest.max(n);
            for _ in 0..n {
                let Ok(block) = queue.pop() else { break };
                let written = match out.as_mut() {
                    Some(w) => w.write_all(&block.data).is_ok(),
                    // No file (shipping only, or lines made just before the log was turned
                    // off): nothing to write, nothing lost.
                    None => true,
                };
                if !written {
                    lost.fetch_add(block.lines as u64, Ordering::Relaxed);
                    if out.is_some() {
                        log::error!("access log: write failed; reopening");
                        out = destination.as_ref().and_then(open);
                    }
                }
                match shipper.as_mut() {
                    Some(sh) => sh.offer(block),
                    None => spares.give(block.data),
                }
            }
        }
        let now = std::time::Instant::now();
        if let Some(sh) = shipper.as_mut() {
            sh.flush_due(now);
        }
        // A queue a quarter full is drained again at once.
        if fullest * 4 >= capacity && fullest > 0 && !stopping {
            continue;
        }
        if let Some(w) = out.as_mut() {
            let _ = w.flush();
        }
        if stopping {
            return;
        }
        // Sleep until a worker's queue is a quarter full (it wakes the thread), an order
        // comes, the batch in hand is due or [`SLEEP`] passes. Plain parking: a timed wait on
        // a channel would spin and yield first, each yield a switch to a worker and back.
        let wait = shipper.as_ref().and_then(|sh| sh.due_in(now)).map_or(SLEEP, |d| d.min(SLEEP));
        parked.store(true, Ordering::SeqCst);
        if queues.iter().all(|q| q.slots() * 4 < capacity) {
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
