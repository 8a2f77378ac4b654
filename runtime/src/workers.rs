//! Spawning and joining the per-core workers.

use std::future::Future;
use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::driver::{DriverChoice, DriverKind};

/// What a worker knows about itself.
#[derive(Debug, Clone, Copy)]
pub struct WorkerContext {
    /// 0-based worker index.
    pub id: usize,
    /// The CPU it is pinned to, if pinning succeeded.
    pub cpu: Option<usize>,
    /// The driver its runtime runs.
    pub driver: DriverKind,
}

/// How workers are built.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    pub count: usize,
    pub driver: DriverChoice,
    /// Pin worker `i` to the `i`-th CPU this process may run on.
    pub pin: bool,
    /// Ask io_uring for `SINGLE_ISSUER | DEFER_TASKRUN` (falls back silently when refused).
    pub defer_taskrun: bool,
}

/// Running workers.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    contexts: Vec<WorkerContext>,
}

impl Workers {
    pub fn contexts(&self) -> &[WorkerContext] {
        &self.contexts
    }

    /// Waits for every worker to return.
    pub fn join(self) {
        for h in self.handles {
            if h.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit (a gateway holds one descriptor per
/// client and per pooled upstream connection); returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// Marks the calling thread as background work beside the workers (`SCHED_BATCH`): when it
/// wakes it does not preempt a worker busy on the same core, but waits for the worker to block or
/// for the scheduler's next tick; it keeps its fair share of the core otherwise (unlike
/// `SCHED_IDLE`). A thread that wakes often (to gather log lines, send a batch, export spans)
/// then switches a busy worker out less often. False when the policy could not be set.
pub fn background_thread() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the struct passed to it; pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0 }
}

/// The CPUs background threads run on; empty: wherever the process may run.
static BACKGROUND_CPUS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Sets the CPUs the background threads started from now on run on (empty: wherever the
/// process may). Threads that share no core with a worker share none of its caches either: the
/// log thread's lines, streaming through a core's cache, no longer push the worker's own data
/// out of it.
pub fn set_background_cpus(cpus: Vec<usize>) {
    *BACKGROUND_CPUS.lock().unwrap_or_else(|e| e.into_inner()) = cpus;
}

/// Starts a named background thread on the background CPUs ([`set_background_cpus`]): every
/// thread that is not a worker starts here, so none is left beside the workers by oversight.
pub fn spawn_background<F, T>(name: impl Into<String>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name.into()).spawn(move || {
        place_background();
        f()
    })
}

/// Runs `f` on the calling thread moved to the background CPUs for its length, then moves the
/// thread back: threads a library starts inside `f` (the store's flushes and compactions, made
/// as it opens) inherit the background CPUs, while those started after it keep the caller's.
pub fn on_background_cpus<T>(f: impl FnOnce() -> T) -> T {
    /// Moves the thread back when dropped, so also when `f` unwinds.
    struct Back(Vec<usize>);
    impl Drop for Back {
        fn drop(&mut self) {
            if !pin_to_set(&self.0) {
                log::warn!("cannot move the thread back to CPUs {:?}: {}", self.0, io::Error::last_os_error());
            }
        }
    }
    let before = allowed_cpus();
    let _back = place_background().then_some(Back(before));
    f()
}

/// Moves the calling thread to the background CPUs, if any are set; false (and a warning) when
/// they are set and the move failed, say to CPUs outside the process's cgroup: the thread then
/// runs wherever the process may.
fn place_background() -> bool {
    let cpus = BACKGROUND_CPUS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if cpus.is_empty() || pin_to_set(&cpus) {
        return true;
    }
    log::warn!(
        "cannot move the {:?} thread to CPUs {cpus:?}: {}",
        std::thread::current().name().unwrap_or("unnamed"),
        io::Error::last_os_error()
    );
    false
}

/// The CPUs the background threads run on when none are named: those this process may run on
/// beyond the first `workers`, which pinned workers take; none (anywhere) when the workers are
/// not pinned or take every one.
pub fn spare_cpus(workers: usize, pinned: bool) -> Vec<usize> {
    let cpus = allowed_cpus();
    if !pinned || cpus.len() <= workers {
        return Vec::new();
    }
    cpus[workers..].to_vec()
}

/// A list of CPUs as `0,2-3`; each must exist on this machine.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    // SAFETY: sysconf only reads the name it is given.
    let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize;
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let num = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("{part:?} is not a CPU or a range of CPUs"));
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi {
            return Err(format!("{part:?}: the range runs backwards"));
        }
        if hi >= configured {
            return Err(format!("CPU {hi} does not exist (this machine has {configured}: 0 to {})", configured - 1));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn pin_to_set(cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is plain data, initialised before use; every CPU is below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs this process is allowed to run on (respects `taskset`).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

fn pin_to(cpu: usize) -> bool {
    // SAFETY: as above; the set is initialised before use.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn uring_builder(defer_taskrun: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if defer_taskrun {
        b.setup_single_issuer().setup_defer_taskrun();
    }
    b
}

enum Built {
    Uring(monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>),
    Legacy(monoio::Runtime<monoio::time::TimeDriver<LegacyDriver>>),
}

fn build_runtime(opts: &WorkerOptions) -> io::Result<Built> {
    let uring =
        |defer| RuntimeBuilder::<IoUringDriver>::new().uring_builder(uring_builder(defer)).enable_timer().build();
    let legacy = || RuntimeBuilder::<LegacyDriver>::new().enable_timer().build();
    match opts.driver {
        DriverChoice::Epoll => legacy().map(Built::Legacy),
        DriverChoice::IoUring | DriverChoice::Auto => {
            let first = if opts.defer_taskrun { uring(true).or_else(|_| uring(false)) } else { uring(false) };
            match first {
                Ok(rt) => Ok(Built::Uring(rt)),
                Err(e) if opts.driver == DriverChoice::Auto => {
                    log::warn!("io_uring unavailable ({e}); falling back to epoll");
                    legacy().map(Built::Legacy)
                }
                Err(e) => Err(io::Error::new(e.kind(), format!("io_uring refused: {e}"))),
            }
        }
    }
}

/// Starts `opts.count` workers. `make` runs inside each worker thread and returns the future
/// the worker runs to completion. Returns once every runtime is built (or the first error).
pub fn spawn_workers<F, Fut>(opts: WorkerOptions, make: F) -> io::Result<Workers>
where
    F: Fn(WorkerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let make = Arc::new(make);
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(opts.count);
    let mut contexts = Vec::with_capacity(opts.count);
    for id in 0..opts.count {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<WorkerContext>>();
        let make = make.clone();
        let cpu = if opts.pin && !cpus.is_empty() { Some(cpus[id % cpus.len()]) } else { None };
        let handle = std::thread::Builder::new().name(format!("ringway-w{id}")).spawn(move || {
            let cpu = cpu.filter(|&c| pin_to(c));
            let rt = match build_runtime(&opts) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let driver = match rt {
                Built::Uring(_) => DriverKind::IoUring,
                Built::Legacy(_) => DriverKind::Epoll,
            };
            let ctx = WorkerContext { id, cpu, driver };
            let _ = ready_tx.send(Ok(ctx));
            match rt {
                Built::Uring(mut rt) => rt.block_on(make(ctx)),
                Built::Legacy(mut rt) => rt.block_on(make(ctx)),
            }
        })?;
        match ready_rx.recv() {
            Ok(Ok(ctx)) => contexts.push(ctx),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("worker thread died while starting")),
        }
        handles.push(handle);
    }
    Ok(Workers { handles, contexts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_parsed_and_checked_against_the_machine() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("0,0-0"), Ok(vec![0]));
        for bad in ["", "x", "1-0", "0,", "-1"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
        let e = parse_cpu_list("0,100000").unwrap_err();
        assert!(e.contains("CPU 100000 does not exist"), "{e}");
    }

    #[test]
    fn background_threads_move_to_the_cpus_set_for_them_and_the_spare_ones_are_past_the_workers() {
        // `allowed_cpus` reads the calling thread's CPUs.
        let mine = allowed_cpus();
        assert_eq!(spare_cpus(1, true), mine[1..].to_vec());
        assert!(spare_cpus(1, false).is_empty(), "unpinned workers leave nothing spare");
        assert!(spare_cpus(mine.len(), true).is_empty());
        let last = *mine.last().unwrap();
        set_background_cpus(vec![last]);
        let placed = spawn_background("placed", allowed_cpus).unwrap().join().unwrap();
        // A thread a library starts inside `on_background_cpus` inherits them; the caller is
        // back on its own CPUs after.
        let (during, inherited) =
            on_background_cpus(|| (allowed_cpus(), std::thread::spawn(allowed_cpus).join().unwrap()));
        let after = allowed_cpus();
        set_background_cpus(Vec::new());
        assert_eq!(placed, [last]);
        assert_eq!((during, inherited), (vec![last], vec![last]));
        assert_eq!(after, mine);
        // With none set, a thread keeps the mask it was started with.
        let unplaced = spawn_background("unplaced", || (place_background(), allowed_cpus())).unwrap().join().unwrap();
        assert_eq!(unplaced, (true, mine));
    }
}
