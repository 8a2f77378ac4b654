//! Command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ringway_runtime::DriverChoice;

fn duration(s: &str) -> Result<Duration, String> {
    ringway_proxy::config::parse_duration(s)
}

/// `--background-cpus`: named CPUs, or `any`.
#[derive(Debug, Clone, PartialEq)]
pub enum BackgroundCpus {
    Any,
    These(Vec<usize>),
}

fn background_cpus(s: &str) -> Result<BackgroundCpus, String> {
    if s == "any" {
        return Ok(BackgroundCpus::Any);
    }
    ringway_runtime::parse_cpu_list(s).map(BackgroundCpus::These)
}

fn network(s: &str) -> Result<ringway_proxy::Network, String> {
    ringway_proxy::Network::parse(s)
}

/// ringway: a thread-per-core API gateway.
#[derive(Debug, Clone, Parser)]
#[command(name = "ringway", version, about)]
pub struct Args {
    /// Configuration document (YAML or JSON): upstreams and routes.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,

    /// Address the gateway listens on (port 0 picks a free port; the log names it).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the TLS listener, beside the plaintext one (off unless set). Certificates
    /// come from the configuration (`certificates`, `/admin/v1/certificates/{id}`).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,

    /// Worker threads, one per core (default: every core this process may use).
    #[arg(long)]
    pub workers: Option<usize>,

    /// I/O driver: auto (io_uring, falling back to epoll), io_uring or epoll.
    #[arg(long, default_value = "auto")]
    pub driver: DriverChoice,

    /// Do not pin workers to cores.
    #[arg(long)]
    pub no_pin: bool,

    /// CPUs for the background threads (access log, log shipping, trace export, statistics,
    /// key fetching, health probes, the admin thread), as `1` or `0,2-3`, or `any`. By default,
    /// the CPUs this process may use beyond those the pinned workers take, if any; else any.
    /// A background thread on a core of its own shares no cache with a worker.
    #[arg(long, value_parser = background_cpus)]
    pub background_cpus: Option<BackgroundCpus>,

    /// Do not ask io_uring for SINGLE_ISSUER | DEFER_TASKRUN.
    #[arg(long)]
    pub no_defer_taskrun: bool,

    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Rate-limit keys (client addresses, header values) each worker tracks at most; past it
    /// the least recently seen half is dropped.
    #[arg(long, default_value_t = ringway_policy::limits::DEFAULT_KEYS_PER_WORKER)]
    pub rate_limit_keys: usize,

    /// Response cache budget for the whole node, in bytes, split evenly across the workers.
    #[arg(long, default_value_t = 64 << 20)]
    pub cache_size: u64,

    /// Largest request head in bytes (431 past it).
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_head_bytes: usize,

    /// Most header fields in a request (431 past it; at most 128).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub max_headers: u16,

    /// Time allowed for a whole request head.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub head_timeout: Duration,

    /// How long an idle client keep-alive connection is kept.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub keepalive_timeout: Duration,

    /// Longest silence while a client sends a request body (408 past it).
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub body_timeout: Duration,

    /// Least average rate of a request body, in bytes per second, once `--body-grace` has passed
    /// since it started (408 below it; 0: no minimum).
    #[arg(long, default_value_t = 1024)]
    pub body_min_rate: u64,

    /// How long a request body may take before `--body-min-rate` applies.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub body_grace: Duration,

    /// Longest time one write to a client may take.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub write_timeout: Duration,

    /// Largest request body in bytes unless a route sets `max_body_bytes` (413 past it; 0: no
    /// limit).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: u64,

    /// Proxies in front of ringway whose X-Forwarded-For entries are trusted: the inbound lines
    /// are kept (joined) and appended to, and the client address (for `key: ip` limits and
    /// hashing) is the Nth entry from the right of the inbound list.
    #[arg(long, default_value_t = 0)]
    pub trusted_hops: u32,

    /// With `--trusted-hops`: the proxies' networks (CIDR, comma-separated or repeated); only
    /// their X-Forwarded-For counts and only they are exempt from the per-address connection
    /// cap (default: every peer is a trusted proxy).
    #[arg(long, value_delimiter = ',', value_parser = network)]
    pub trusted_proxies: Vec<ringway_proxy::Network>,

    /// Client connections the node keeps open at most; past it new connections are closed as
    /// soon as they are accepted.
    #[arg(long, default_value_t = 65_536)]
    pub max_connections: usize,

    /// Client connections one address (IPv6: one /64) may hold open at most across the node
    /// (0: no cap). Trusted proxies (`--trusted-hops`, `--trusted-proxies`) are exempt.
    #[arg(long, default_value_t = 128)]
    pub max_connections_per_ip: u32,

    /// Address of the admin API (loopback unless a token is set).
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub admin_listen: SocketAddr,

    /// Token the admin API requires (`Authorization: Bearer TOKEN`); required for a
    /// non-loopback admin address. Visible in the process list: prefer `--admin-token-file`.
    #[arg(long, env = "RINGWAY_ADMIN_TOKEN", hide_env_values = true, conflicts_with = "admin_token_file")]
    pub admin_token: Option<String>,

    /// File holding the admin token (its content, surrounding white space removed).
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    /// A further name (or address) by which clients reach the admin API, accepted in `Host`
    /// and `Origin` besides localhost, loopback addresses and the listen address; repeatable.
    #[arg(long = "admin-host", value_name = "NAME")]
    pub admin_hosts: Vec<String>,

    /// Largest admin request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub admin_max_body: usize,

    /// Time an admin request's head and body may take to arrive, from its first byte (408).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub admin_request_timeout: Duration,

    /// Admin connections busy with a request at once (idle keep-alive connections do not count).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_max_conns: u16,

    /// Admin connections busy with a request at once from one client address.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_max_conns_per_addr: u16,

    /// A second listener that serves only `GET /metrics` (Prometheus text format), without the
    /// admin token, for scrapers (the admin listener serves `/metrics` too, under its own
    /// token and Host rules).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// JSON access log, one line per request: a file path, `stdout`, or `off`. Wins over the
    /// configuration's `access_log` (default: that, else off). SIGHUP reopens the file.
    #[arg(long, value_name = "PATH|stdout|off")]
    pub access_log: Option<String>,

    /// Include the query string in the access log's `path`.
    #[arg(long)]
    pub access_log_query: bool,

    /// Each worker's access-log queue, in bytes (blocks of request records of about 64 KiB); the
    /// records of a block that does not fit are dropped and counted. A queue a quarter full
    /// wakes the log thread. Emptied blocks are kept for reuse, up to as many again as the
    /// queue holds, of records and of lines: a log thread that fell behind leaves up to about
    /// three times this per worker allocated.
    #[arg(long, default_value_t = 4 << 20)]
    pub access_log_buffer: usize,

    /// Keep no per-API call statistics (`GET /admin/v1/stats` and the status page then have
    /// none to show).
    #[arg(long)]
    pub no_stats: bool,

    /// For tests only: `POST /admin/v1/clock {"advance_ms": N}` moves the gateway's wall clock
    /// (cache freshness, limit windows, log times) forward.
    #[arg(long, hide = true)]
    pub test_clock: bool,

    /// Where the configuration store (RocksDB) lives.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,

    /// Start with a new, empty configuration store when `--data-dir` holds none (without it,
    /// and without `--config`, an empty or missing store is refused).
    #[arg(long)]
    pub init: bool,

    /// Replace the stored configuration with `--config`'s (by default a file only seeds an
    /// empty store).
    #[arg(long)]
    pub replace_config: bool,

    /// Check the configuration, print every problem, and exit.
    #[arg(long)]
    pub check: bool,
}

impl Args {
    /// The flags of this process's command line; prints help or an error and exits when they
    /// ask for it or do not parse.
    pub fn from_env() -> Args {
        <Args as Parser>::parse()
    }
}
