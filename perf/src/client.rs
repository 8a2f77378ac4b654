//! One load-generating connection slot: sends requests, reads full responses and records the
//! outcome, in closed-loop or open-loop (fixed schedule) mode.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use monoio::net::TcpStream;
use monoio::time::Instant as RtInstant;

use crate::conn::{Conn, MAX_HEADERS};
use crate::http::{response_head, BodyDecoder, HeadInfo};

/// How long after the end of the run an in-flight request may still complete.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Pause after a failed connect, so a dead target does not turn into a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Requests may leave this much before their slot: the timer has millisecond resolution.
const EARLY_SEND: Duration = Duration::from_millis(1);

/// Outcome counters and the latency histogram of one thread.
pub struct Stats {
    /// Latency of completed responses, in nanoseconds.
    pub hist: Histogram<u64>,
    /// Completed responses (any status).
    pub requests: u64,
    /// Responses whose status was not 2xx.
    pub non_2xx: u64,
    /// Non-2xx responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Response body bytes received.
    pub body_bytes: u64,
    /// Failed attempts by kind (connect, io, protocol, closed, timeout).
    pub errors: BTreeMap<&'static str, u64>,
}

impl Stats {
    /// Empty counters with a histogram spanning 1 ns to 100 s at 3 significant digits.
    pub fn new() -> Result<Self> {
        Ok(Stats {
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3)?,
            requests: 0,
            non_2xx: 0,
            statuses: BTreeMap::new(),
            body_bytes: 0,
            errors: BTreeMap::new(),
        })
    }

    /// Adds another thread's counters to these.
    pub fn merge(&mut self, other: &Stats) -> Result<()> {
        self.hist.add(&other.hist)?;
        self.requests += other.requests;
        self.non_2xx += other.non_2xx;
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.body_bytes += other.body_bytes;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        Ok(())
    }

    /// Total failed attempts.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// Settings shared by every connection slot of the run.
pub struct Plan {
    /// Target address.
    pub addr: SocketAddr,
    /// The complete request (head and body), sent as is.
    pub request: Rc<Vec<u8>>,
    /// Open a fresh connection for every request.
    pub new_connection: bool,
    /// Longest wait for one response.
    pub timeout: Duration,
    /// Total request rate of the whole run, for open-loop mode.
    pub rate: Option<f64>,
    /// Connections in the whole run (all threads).
    pub total_connections: usize,
}

/// Request budget shared by all threads (`--requests`).
pub struct Budget {
    /// Maximum requests to start, if bounded.
    pub max: Option<u64>,
    /// Requests started so far.
    pub issued: AtomicU64,
}

impl Budget {
    /// Claims one request; false once the budget is spent.
    pub fn take(&self) -> bool {
        match self.max {
            None => true,
            Some(max) => self.issued.fetch_add(1, Ordering::Relaxed) < max,
        }
    }
}

/// Where one slot stands in time: run start and end, and its position in the schedule.
pub struct SlotClock {
    /// Start of the measured run.
    pub start: Instant,
    /// No request starts at or after this instant.
    pub end: Instant,
    /// This slot's index among all connections of the run.
    pub index: usize,
}

/// Connects within `limit`.
pub async fn connect(addr: SocketAddr, limit: Instant) -> Result<Conn> {
    let fut = TcpStream::connect_addr(addr);
    match monoio::time::timeout_at(RtInstant::from_std(limit), fut).await {
        Ok(Ok(stream)) => Ok(Conn::new(stream)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(anyhow::anyhow!("connect timed out")),
    }
}

/// The intended send time of request `seq` of a slot, in open-loop mode.
fn slot_time(plan: &Plan, clock: &SlotClock, seq: u64) -> Option<Instant> {
    let rate = plan.rate?;
    let n = plan.total_connections as f64;
    let offset = (clock.index as f64 + seq as f64 * n) / rate;
    Some(clock.start + Duration::from_secs_f64(offset))
}

/// Runs one connection slot until the end of the run or the budget.
pub async fn run_slot(
    plan: Rc<Plan>,
    clock: SlotClock,
    budget: std::sync::Arc<Budget>,
    stats: Rc<RefCell<Stats>>,
    mut conn: Option<Conn>,
) {
    let hard_end = clock.end + DRAIN_GRACE;
    let mut seq: u64 = 0;
    loop {
        let intended = slot_time(&plan, &clock, seq);
        seq += 1;
        if intended.unwrap_or_else(Instant::now) >= clock.end || !budget.take() {
            break;
        }
        if let Some(at) = intended {
            let now = Instant::now();
            if at > now + EARLY_SEND {
                monoio::time::sleep_until(RtInstant::from_std(at - EARLY_SEND)).await;
            }
        }
        let sent = Instant::now();
        // Latency counts from the slot time when late, so stalls are never hidden.
        let from = intended.map_or(sent, |at| at.min(sent));
        let limit = (from + plan.timeout).min(hard_end);
        if plan.new_connection || conn.is_none() {
            match connect(plan.addr, limit).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    stats.borrow_mut().error("connect");
                    let pause = (Instant::now() + CONNECT_BACKOFF).min(clock.end);
                    monoio::time::sleep_until(RtInstant::from_std(pause)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let outcome = monoio::time::timeout_at(RtInstant::from_std(limit), exchange(c, &plan.request)).await;
        let done = Instant::now();
        let mut st = stats.borrow_mut();
        match outcome {
            Ok(Ok(resp)) => {
                let nanos = done.duration_since(from).as_nanos();
                st.hist.saturating_record(u64::try_from(nanos).unwrap_or(u64::MAX));
                st.requests += 1;
                st.body_bytes += resp.body_bytes;
                if !(200..300).contains(&resp.status) {
                    st.non_2xx += 1;
                    *st.statuses.entry(resp.status).or_default() += 1;
                }
                if !resp.keep_alive || plan.new_connection {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                st.error(e.kind());
                conn = None;
            }
            Err(_) => {
                st.error("timeout");
                conn = None;
            }
        }
    }
}

/// A complete response as far as the load generator cares.
struct Response {
    status: u16,
    keep_alive: bool,
    body_bytes: u64,
}

/// A failed exchange, classified for the error breakdown.
enum ExchangeError {
    Io,
    Protocol,
    Closed,
}

impl ExchangeError {
    fn kind(&self) -> &'static str {
        match self {
            ExchangeError::Io => "io",
            ExchangeError::Protocol => "protocol",
            ExchangeError::Closed => "closed",
        }
    }

    fn classify(e: anyhow::Error) -> Self {
        if e.downcast_ref::<std::io::Error>().is_some() {
            ExchangeError::Io
        } else {
            ExchangeError::Protocol
        }
    }
}

/// Sends one request and reads its whole response, skipping interim 1xx responses.
async fn exchange(conn: &mut Conn, request: &Rc<Vec<u8>>) -> Result<Response, ExchangeError> {
    conn.write_all(request.clone()).await.map_err(|_| ExchangeError::Io)?;
    loop {
        let head = conn.read_head(parse_response).await.map_err(ExchangeError::classify)?;
        let Some((status, info)) = head else {
            return Err(ExchangeError::Closed);
        };
        let body_bytes = conn.skip_body(BodyDecoder::new(info.framing)).await.map_err(ExchangeError::classify)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        return Ok(Response { status, keep_alive: info.keep_alive, body_bytes });
    }
}

/// Parses a response head; `Ok(None)` while incomplete.
fn parse_response(data: &[u8]) -> Result<Option<(usize, (u16, HeadInfo))>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(data)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => {
            let info = response_head(&resp)?;
            Ok(Some((len, (resp.code.unwrap_or(0), info))))
        }
    }
}
