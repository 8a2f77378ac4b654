//! Which admin connections are open, and which of them hold a slot.
//!
//! A connection holds a slot only while it is busy with a request: from the request's first
//! byte until its answer is handed over for writing. Idle connections (before a first request
//! or between requests) hold none; past `max_open` open connections the longest-idle one is
//! closed to make room. Busy connections are capped in all (`max_busy`) and per client address
//! (`max_busy_per_addr`). A request that finds no free slot takes one from the busy connection
//! that has been reading its request the longest (from its own address when that address is at
//! its cap): slow or stalled clients cannot keep out a request that arrives whole. Only when
//! every busy connection concerned is waiting for its answer is a request refused (503).
//!
//! Used from the admin HTTP thread only; the lock is never contended.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte: holds no slot.
    Idle,
    /// Reading a request: holds a slot, and gives it up to a newer request when slots run out.
    Reading,
    /// Waiting for the admin thread's answer: holds a slot.
    Answering,
}

struct Conn {
    ip: IpAddr,
    phase: Phase,
    since: Instant,
    /// The next request began while this one was answered (a pipelining client): it reads
    /// under the same slot once the answer is handed over.
    queued: bool,
    /// Closes the connection: its task drops it when notified.
    kill: Arc<Notify>,
}

/// Why a request may not go on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This connection's slot (or place) was taken by another.
    Closed,
    /// No slot: a 503 with this message.
    Busy(String),
}

/// Open connections and the slots they hold.
pub(crate) struct Slots {
    max_busy: usize,
    max_busy_per_addr: usize,
    max_open: usize,
    conns: Mutex<(u64, HashMap<u64, Conn>)>,
}

impl Slots {
    pub(crate) fn new(max_busy: usize, max_busy_per_addr: usize, max_open: usize) -> Slots {
        Slots { max_busy, max_busy_per_addr, max_open, conns: Mutex::new((0, HashMap::new())) }
    }

    fn lock(&self) -> MutexGuard<'_, (u64, HashMap<u64, Conn>)> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the oldest connection in `phase` that `pick` accepts; false when there is none.
    fn evict(conns: &mut HashMap<u64, Conn>, phase: Phase, pick: impl Fn(&Conn) -> bool) -> bool {
        let victim = conns.iter().filter(|(_, c)| c.phase == phase && pick(c)).min_by_key(|(_, c)| c.since);
        let Some(id) = victim.map(|(id, _)| *id) else { return false };
        if let Some(c) = conns.remove(&id) {
            c.kill.notify_one();
        }
        true
    }

    /// Registers a new connection (idle), closing the longest-idle one when too many are open;
    /// `None` when every open connection is busy. The `Notify` closes it when another takes
    /// its place.
    pub(crate) fn open(&self, ip: IpAddr) -> Option<(u64, Arc<Notify>)> {
        let mut g = self.lock();
        let (next, conns) = &mut *g;
        if conns.len() >= self.max_open && !Self::evict(conns, Phase::Idle, |_| true) {
            return None;
        }
        let id = *next;
        *next += 1;
        let kill = Arc::new(Notify::new());
        conns.insert(id, Conn { ip, phase: Phase::Idle, since: Instant::now(), queued: false, kill: kill.clone() });
        Some((id, kill))
    }

    /// Takes a slot for a request that has begun on connection `id`.
    pub(crate) fn begin(&self, id: u64) -> Result<(), Refusal> {
        let mut g = self.lock();
        let conns = &mut g.1;
        let c = conns.get_mut(&id).ok_or(Refusal::Closed)?;
        match c.phase {
            Phase::Idle => {}
            Phase::Reading => return Ok(()),
            Phase::Answering => {
                c.queued = true;
                return Ok(());
            }
        }
        let ip = c.ip;
        let busy = |c: &Conn| c.phase != Phase::Idle;
        let per_addr = self.max_busy_per_addr;
        if conns.values().filter(|c| c.ip == ip && busy(c)).count() >= per_addr {
            if !Self::evict(conns, Phase::Reading, |c| c.ip == ip) {
                return Err(Refusal::Busy(format!("{per_addr} admin requests from {ip} are already being answered")));
            }
        } else if conns.values().filter(|c| busy(c)).count() >= self.max_busy
            && !Self::evict(conns, Phase::Reading, |_| true)
        {
            return Err(Refusal::Busy(format!("{} admin requests are already being answered", self.max_busy)));
        }
        let c = conns.get_mut(&id).ok_or(Refusal::Closed)?;
        c.phase = Phase::Reading;
        c.since = Instant::now();
        Ok(())
    }

    /// Connection `id` has read its request whole and waits for the answer; false when it was
    /// closed meanwhile.
    pub(crate) fn answering(&self, id: u64) -> bool {
        self.set(id, Phase::Answering)
    }

    /// Connection `id`'s answer is handed over: it is idle again, or reading the next request
    /// when that began meanwhile.
    pub(crate) fn answered(&self, id: u64) {
        let mut g = self.lock();
        if let Some(c) = g.1.get_mut(&id) {
            c.phase = if std::mem::take(&mut c.queued) { Phase::Reading } else { Phase::Idle };
            c.since = Instant::now();
        }
    }

    fn set(&self, id: u64, phase: Phase) -> bool {
        let mut g = self.lock();
        let Some(c) = g.1.get_mut(&id) else { return false };
        c.phase = phase;
        c.since = Instant::now();
        true
    }

    /// Gives connection `id`'s place up.
    pub(crate) fn close(&self, id: u64) {
        self.lock().1.remove(&id);
    }
}

/// Gives a connection's place up when dropped: when its task ends, however it ends.
pub(crate) struct SlotGuard {
    pub(crate) slots: Arc<Slots>,
    pub(crate) id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.close(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    /// Whether `k` was notified (consumes the permit).
    fn killed(k: &Notify) -> bool {
        let mut f = std::pin::pin!(k.notified());
        let waker = std::task::Waker::noop();
        f.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
    }

    use std::future::Future;

    #[test]
    fn readers_give_way_to_newer_requests_and_answering_ones_do_not() {
        let s = Slots::new(3, 2, 8);
        let (a1, k1) = s.open(A).unwrap();
        let (a2, k2) = s.open(A).unwrap();
        let (a3, _) = s.open(A).unwrap();
        s.begin(a1).unwrap();
        s.begin(a2).unwrap();
        // A third request from A takes the slot of the oldest reader from A.
        s.begin(a3).unwrap();
        assert!(killed(&k1) && !killed(&k2));
        assert_eq!(s.begin(a1), Err(Refusal::Closed));
        // Both of A's busy connections wait for answers: the next one from A is refused.
        assert!(s.answering(a2) && s.answering(a3));
        let (a4, _) = s.open(A).unwrap();
        assert!(matches!(s.begin(a4), Err(Refusal::Busy(m)) if m.contains("127.0.0.1")));
        // B is under its own cap; at the node's cap a request takes a reader's slot.
        let (b1, kb1) = s.open(B).unwrap();
        s.begin(b1).unwrap();
        let (b2, _) = s.open(B).unwrap();
        s.begin(b2).unwrap();
        assert!(killed(&kb1));
        assert!(s.answering(b2));
        let (b3, _) = s.open(B).unwrap();
        assert!(matches!(s.begin(b3), Err(Refusal::Busy(m)) if m.contains("3 admin requests")));
        // Answered: idle again, the slot is free.
        s.answered(a2);
        let (a5, _) = s.open(A).unwrap();
        s.begin(a5).unwrap();
    }

    #[test]
    fn idle_connections_make_room_oldest_first() {
        let s = Slots::new(4, 4, 2);
        let (i1, k1) = s.open(A).unwrap();
        let (i2, k2) = s.open(A).unwrap();
        let (_i3, _) = s.open(A).unwrap();
        assert!(killed(&k1) && !killed(&k2));
        s.begin(i2).unwrap();
        let (_i4, _) = s.open(A).unwrap();
        assert!(!killed(&k2), "a busy connection was closed for an idle one");
        assert_eq!(s.begin(i1), Err(Refusal::Closed));
        // Every open connection busy: no room.
        let s = Slots::new(4, 4, 1);
        let (b, _) = s.open(A).unwrap();
        s.begin(b).unwrap();
        assert!(s.open(A).is_none());
    }

    #[test]
    fn a_request_begun_while_answering_reads_under_the_same_slot() {
        let s = Slots::new(1, 1, 4);
        let (a, ka) = s.open(A).unwrap();
        s.begin(a).unwrap();
        assert!(s.answering(a));
        s.begin(a).unwrap();
        s.answered(a);
        // Still reading: a newer request takes its slot.
        let (b, _) = s.open(B).unwrap();
        s.begin(b).unwrap();
        assert!(killed(&ka));
        assert_eq!(s.begin(a), Err(Refusal::Closed));
    }
}
