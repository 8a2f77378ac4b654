//! Process topology for ringway: one monoio runtime per worker thread, each pinned to a core,
//! with the io_uring driver by default and the epoll driver as a fallback; the mailboxes that
//! carry values (configuration snapshots, drain orders) from the control thread to every
//! worker, and the acknowledgements that come back.
//!
//! Invariants: nothing here knows HTTP, routes or policies. A worker never blocks on the
//! control thread: it awaits its mailbox as one more task, woken across threads by monoio's
//! `sync` waker, so nothing is polled on the request path.

mod driver;
mod mailbox;
mod workers;

pub use driver::{DriverChoice, DriverKind};
pub use mailbox::{mailbox, Mailbox, MailboxSender};
pub use workers::{
    allowed_cpus, background_thread, on_background_cpus, parse_cpu_list, raise_nofile_limit, set_background_cpus,
    spare_cpus, spawn_background, spawn_workers, WorkerContext, WorkerOptions, Workers,
};
