//! The ringway data plane: listeners, HTTP/1.1 both ways, routing, load balancing, upstream
//! pools, the policy chain's engine, and the per-core worker that owns all of it.
//!
//! Key types: [`Snapshot`] (the compiled configuration, shared read-only by every worker),
//! [`worker::Worker`] (one core's state: the current generation, balancing state, pools),
//! [`config::ConfigSpec`] (what users write).
//!
//! Invariants: nothing here touches the store or blocks a worker; errors become HTTP responses
//! only in [`respond`]. Hot-path files say so at the top.

pub mod access_log;
pub mod addr;
pub mod admission;
pub mod cache;
pub mod calls;
pub mod capture;
pub mod client;
pub mod clock;
pub mod collector;
pub mod config;
pub mod conn;
pub mod event;
pub mod fetch;
pub mod forward;
pub mod grpc;
pub mod h1;
pub mod h2;
pub mod introspect;
pub mod io;
pub mod json;
pub mod jwks;
pub mod lb;
pub mod log_line;
pub mod log_record;
mod log_thread;
pub mod metrics;
pub mod otlp;
pub mod otlp_logs;
pub mod pool;
pub mod record;
pub mod reply;
pub mod resilience;
pub mod respond;
pub mod router;
pub mod run;
pub mod session;
pub mod shipper;
pub mod shipping;
pub mod snapshot;
pub mod spares;
pub mod stats;
pub mod stream;
pub mod task;
pub mod tls;
pub mod traces;
pub mod upstream;
pub mod verify;
pub mod worker;

pub use admission::{ConnectionCaps, Network};
pub use config::ConfigSpec;
pub use ringway_policy::limits::LimitBank;
pub use run::{run_worker, WorkerSetup};
pub use snapshot::Snapshot;
pub use worker::{Ack, Control, Invalidate, Purge, ServerLimits};
