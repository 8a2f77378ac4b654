//! Start-up and shutdown: open the store, seed it from a file when asked, compile, bind, start
//! the workers, the admin thread (which owns the store) and the admin API's HTTP thread; then
//! run until asked to stop, and drain.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use crossbeam_channel::{never, select, unbounded, Receiver, Sender};
use ringway_proxy::{run_worker, Ack, Control, Invalidate, ServerLimits, Snapshot, WorkerSetup};
use ringway_runtime::{mailbox, spawn_workers, MailboxSender, WorkerOptions, Workers};
use ringway_store::{Change, ConfigStore, RocksStore};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::api::{self, AdminToken, ApiContext};
use crate::bootstrap::load_file;
use crate::cli::Args;
use crate::http::{AdminLimits, AllowedHosts, Endpoint, Job};
use crate::metrics::MetricsSource;
use crate::secrets::SecretBox;
use crate::server::HttpServer;
use crate::state::{diff, spec_from_state, AdminState, WorkerStatus};
use crate::telemetry::{Telemetry, WorkerTelemetry};

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

fn report(path: &std::path::Path, errors: ringway_policy::ConfigErrors) -> anyhow::Error {
    for e in &errors.0 {
        eprintln!("ringway: config error at {}: {}", e.path, e.message);
    }
    anyhow::anyhow!("{} refused: {} problem(s)", path.display(), errors.0.len())
}

/// Opens the store and applies `--config` to it as the flags say. A missing or empty store is
/// refused unless `--config` seeds it or `--init` asks for an empty one, so that a mistyped
/// `--data-dir` does not start a gateway with no routes.
fn open_store(args: &Args) -> anyhow::Result<(Box<dyn ConfigStore>, SecretBox)> {
    let seeded = args.config.is_some() || args.init;
    // RocksDB keeps a CURRENT file in every database directory.
    if !seeded && !args.data_dir.join("CURRENT").exists() {
        bail!(
            "no configuration store in {}: check --data-dir, or pass --config FILE to seed a new store, or --init to start with an empty one",
            args.data_dir.display()
        );
    }
    let mut store = RocksStore::open(&args.data_dir)
        .with_context(|| format!("cannot open the configuration store in {}", args.data_dir.display()))?;
    let stored = store.revision().context("cannot read the store's revision")?;
    // The key of secrets that must be opened again: beside the store's directory, not in it.
    let key_file = secrets_key_path(&args.data_dir);
    let secrets = SecretBox::open_or_create(&key_file)
        .with_context(|| format!("cannot read or make the secrets key {}", key_file.display()))?;
    if stored == 0 && !seeded {
        bail!(
            "the configuration store in {} is empty: pass --config FILE to seed it, or --init to start with no routes",
            args.data_dir.display()
        );
    }
    if let Some(path) = &args.config {
        let (spec, _) = load_file(path, stored + 1, &secrets).map_err(|e| report(path, e))?;
        if stored == 0 || args.replace_config {
            let current = spec_from_state(&store.load()?).map_err(anyhow::Error::msg)?;
            let (_, ops) = diff(&current, spec);
            if stored == 0 || !ops.is_empty() {
                let rev = store.commit(Change { ops, summary: format!("load {}", path.display()) })?;
                log::info!("stored {} as revision {rev}", path.display());
            }
        } else {
            log::warn!(
                "{} not loaded: the store in {} already holds revision {stored} (--replace-config replaces it)",
                path.display(),
                args.data_dir.display()
            );
        }
    }
    Ok((Box::new(store), secrets))
}

/// `DIR.key` beside the store's directory `DIR` (read as an absolute path, so `.` is never
/// its own parent).
fn secrets_key_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let name = dir.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.key"))
}

/// The admin token from `--admin-token-file` (trimmed) or `--admin-token`; none when empty.
fn admin_token(args: &Args) -> anyhow::Result<Option<String>> {
    if let Some(path) = &args.admin_token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("the admin token file {} is empty", path.display());
        }
        return Ok(Some(token.to_string()));
    }
    Ok(args.admin_token.clone().filter(|t| !t.is_empty()))
}

/// `--check`: validates the `--config` file and prints a summary; starts nothing.
pub fn check(args: &Args) -> anyhow::Result<()> {
    let Some(path) = &args.config else { bail!("--check needs --config FILE") };
    let (_, snapshot) = load_file(path, 1, &SecretBox::ephemeral()).map_err(|e| report(path, e))?;
    println!("configuration OK: {} upstream(s), {} route(s)", snapshot.upstreams.len(), snapshot.routes.len());
    Ok(())
}

/// A running gateway: its workers, the admin thread and the admin API's HTTP thread.
/// [`Handle::stop`] drains and ends them; dropping the handle does the same.
pub struct Handle {
    data_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    drain_timeout: Duration,
    /// Metrics and the access log (SIGHUP reopens its file).
    telemetry: Arc<Telemetry>,
    running: Option<Running>,
}

struct Running {
    /// Tells the admin thread to drain the workers and end.
    stop: Sender<()>,
    admin: JoinHandle<()>,
    http: HttpServer,
}

impl Handle {
    /// Where the data plane listens.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// Where the TLS listener listens (`--tls-listen`), if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where the metrics-only listener listens (`--metrics-listen`), if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Drains (in-flight requests get up to `--drain-timeout`), then ends every thread the
    /// gateway started and waits for them. An error says a thread had panicked.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shut()
    }

    /// Runs until SIGTERM or SIGINT, then stops as [`Handle::stop`] does. A second signal
    /// during the drain ends the process at once.
    pub fn wait(self) -> anyhow::Result<()> {
        self.wait_ready(|_| Ok(()))
    }

    /// [`Handle::wait`], calling `ready` once the signals are caught (so that whoever it tells
    /// the gateway is up may stop it at once), for example to tell a supervisor the addresses.
    pub fn wait_ready(self, ready: impl FnOnce(&Handle) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
        ready(&self)?;
        // SIGHUP: logrotate moved the access log away; the next lines go to a new file.
        let sig = loop {
            match signals.forever().next() {
                Some(SIGHUP) => self.telemetry.reopen(),
                Some(s) => break s,
                None => break SIGTERM,
            }
        };
        log::info!("signal {sig}");
        let telemetry = self.telemetry.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    telemetry.reopen();
                    continue;
                }
                log::warn!("second signal: exiting without waiting for the drain");
                std::process::exit(1);
            }
        });
        self.stop()
    }

    fn shut(&mut self) -> anyhow::Result<()> {
        let Some(r) = self.running.take() else { return Ok(()) };
        log::info!("draining (up to {:?})", self.drain_timeout);
        let _ = r.stop.send(());
        let admin = r.admin.join();
        r.http.stop();
        if admin.is_err() {
            bail!("the admin thread panicked");
        }
        log::info!("drained");
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.shut() {
            log::error!("{e:#}");
        }
    }
}

/// Starts the gateway: opens the store (seeding it from `--config` as the flags say), binds
/// every listener, starts the workers, the admin thread and the admin API, and answers once
/// every worker serves the stored configuration.
pub fn start(args: Args) -> anyhow::Result<Handle> {
    if args.check {
        bail!("--check validates a configuration and starts nothing");
    }
    let token = admin_token(&args)?;
    if !args.admin_listen.ip().is_loopback() && token.is_none() {
        bail!(
            "the admin API on {} is not loopback: set --admin-token-file, --admin-token or RINGWAY_ADMIN_TOKEN",
            args.admin_listen
        );
    }
    if args.body_min_rate > 0 && args.body_grace < Duration::from_secs(1) {
        bail!("--body-grace must be at least 1s while --body-min-rate is set (0 turns the minimum off)");
    }
    let nofile = ringway_runtime::raise_nofile_limit();
    log::debug!("open-file limit {nofile}");
    let count = args.workers.unwrap_or_else(|| ringway_runtime::allowed_cpus().len().max(1));
    if count == 0 {
        bail!("--workers must be at least 1");
    }
    // Before any background thread starts.
    let background = match &args.background_cpus {
        Some(crate::cli::BackgroundCpus::Any) => Vec::new(),
        Some(crate::cli::BackgroundCpus::These(cpus)) => cpus.clone(),
        None => ringway_runtime::spare_cpus(count, !args.no_pin),
    };
    if !background.is_empty() {
        log::info!("background threads on CPUs {background:?}");
    }
    ringway_runtime::set_background_cpus(background);
    // Opened on the background CPUs: the store's own threads, started as it opens, stay there.
    let (store, secrets) = ringway_runtime::on_background_cpus(|| open_store(&args))?;
    let stored = store.load().context("cannot load the stored configuration")?;
    let mut spec = spec_from_state(&stored).map_err(anyhow::Error::msg)?;
    crate::secrets::open_document(&mut spec, &secrets).map_err(anyhow::Error::msg)?;
    let snapshot = Snapshot::compile(&spec, stored.revision).map_err(|e| {
        anyhow::anyhow!("the stored configuration (revision {}) does not compile: {e}", stored.revision)
    })?;
    let snapshot = Arc::new(snapshot);

    // Everything that can fail is done before any thread starts.
    let admin_listener = std::net::TcpListener::bind(args.admin_listen)
        .with_context(|| format!("cannot listen for the admin API on {}", args.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let metrics_listener = match args.metrics_listen {
        Some(a) => Some(std::net::TcpListener::bind(a).with_context(|| format!("cannot listen for metrics on {a}"))?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let max_busy = usize::from(args.admin_max_conns);
    let admin_limits = AdminLimits {
        max_body: args.admin_max_body,
        max_busy,
        max_busy_per_addr: usize::from(args.admin_max_conns_per_addr),
        max_open: max_busy * 4,
        request_timeout: args.admin_request_timeout,
        idle_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(10),
        hosts: AllowedHosts::new(admin_addr, &args.admin_hosts).map_err(anyhow::Error::msg)?,
    };
    let (local, listeners) = crate::listen::bind_listeners(args.listen, count)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // `--tls-listen`, else the document's `tls.listen` (which may then move live).
    let doc_listen = snapshot.tls_settings.listen.clone();
    if args.tls_listen.is_some() && doc_listen.is_some() {
        log::warn!("--tls-listen wins over the configuration's tls.listen {doc_listen:?}");
    }
    let tls_want = match (args.tls_listen, doc_listen.as_deref()) {
        (Some(a), _) => Some(a),
        (None, Some(text)) => {
            Some(text.parse().map_err(|_| anyhow::anyhow!("tls.listen: {text:?} is not an address"))?)
        }
        (None, None) => None,
    };
    let (tls_addr, mut tls_listeners) = match tls_want {
        Some(a) => {
            let (local, l) =
                crate::listen::bind_listeners(a, count).with_context(|| format!("cannot listen on {a} (TLS)"))?;
            (Some(local), l)
        }
        None => (None, Vec::new()),
    };
    let limits = ServerLimits {
        max_head_bytes: args.max_head_bytes.max(1024),
        max_headers: usize::from(args.max_headers),
        head_timeout: args.head_timeout,
        keepalive_timeout: args.keepalive_timeout,
        body_timeout: args.body_timeout,
        body_min_rate: args.body_min_rate,
        body_grace: args.body_grace,
        write_timeout: args.write_timeout,
        max_body_bytes: Some(args.max_body_bytes).filter(|n| *n > 0),
        trusted_hops: args.trusted_hops,
        trusted_proxies: args.trusted_proxies.clone(),
        log_query: args.access_log_query,
    };
    let caps = Arc::new(ringway_proxy::ConnectionCaps::new(args.max_connections, args.max_connections_per_ip));
    // The node's limit bank: one for the gateway's life, handed to every worker (it tracks
    // twice what all the workers do).
    let limit_bank =
        Arc::new(ringway_policy::limits::LimitBank::new(args.rate_limit_keys.saturating_mul(count).saturating_mul(2)));
    // Password checks (argon2) run on a few threads of their own, never on a worker; token
    // issuers' keys are fetched by another into the store every worker reads.
    let keys = Arc::new(ringway_policy::keys::KeyStore::default());
    let identity = ringway_proxy::calls::IdentityCalls {
        verifier: ringway_proxy::verify::Verifier::start((count / 2).clamp(1, 4))
            .context("cannot start the password-check threads")?,
        keys: ringway_proxy::jwks::KeyFetcher::start(keys.clone()).context("cannot start the key-fetch thread")?,
        introspect: ringway_proxy::introspect::Introspector::start(2)
            .context("cannot start the introspection threads")?,
    };
    let (ack_tx, ack_rx) = unbounded::<Ack>();
    let (inv_tx, inv_rx) = unbounded::<Invalidate>();
    let mut senders: Vec<MailboxSender<Control>> = Vec::with_capacity(count);
    // Listeners and mailboxes are interchangeable: each worker takes one setup at start.
    let (setup_tx, setup_rx) = crossbeam_channel::bounded::<WorkerSetup>(count);
    let base_seed = seed();
    let (telemetry, mut each) =
        Telemetry::start(count, args.access_log_buffer, args.access_log.as_deref(), !args.no_stats)?;
    telemetry
        .configure(snapshot.access_log.as_ref())
        .with_context(|| format!("cannot open the access log {:?}", args.access_log))?;
    telemetry.ship(snapshot.log_shipping.as_ref());
    telemetry.trace(snapshot.tracing.as_ref());
    // A gateway started for tests may have its wall clock moved through the admin API.
    let (clock, clock_hand) = if args.test_clock {
        let (clock, hand) = ringway_proxy::clock::Clock::movable();
        (clock, Some(hand))
    } else {
        (ringway_proxy::clock::Clock::real(), None)
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let WorkerTelemetry { metrics, log, traces } = each.remove(0);
        let (tx, rx) = mailbox();
        senders.push(tx);
        let _ = setup_tx.send(WorkerSetup {
            listener,
            tls_listener: tls_listeners.pop(),
            mailbox: rx,
            snapshot: snapshot.clone(),
            limits: limits.clone(),
            acks: ack_tx.clone(),
            seed: base_seed.wrapping_add(i as u64),
            workers: count,
            cache_bytes: args.cache_size / count as u64,
            limit_keys: args.rate_limit_keys,
            limit_bank: limit_bank.clone(),
            invalidations: inv_tx.clone(),
            caps: caps.clone(),
            metrics,
            log,
            traces: Some(traces),
            identity: Some(identity.clone()),
            keys: keys.clone(),
            clock: clock.clone(),
        });
    }
    let opts = WorkerOptions { count, driver: args.driver, pin: !args.no_pin, defer_taskrun: !args.no_defer_taskrun };
    let workers = spawn_workers(opts, move |ctx| {
        let setup = setup_rx.try_recv().ok();
        async move {
            if let Some(setup) = setup {
                run_worker(ctx, setup).await;
            }
        }
    })
    .context("cannot start workers")?;
    let mut worker_status: Vec<WorkerStatus> = workers
        .contexts()
        .iter()
        .map(|c| WorkerStatus {
            id: c.id,
            cpu: c.cpu,
            driver: c.driver.as_str(),
            revision: 0,
            rate_limit_keys: 0,
            cache_entries: 0,
        })
        .collect();
    // Worker ids come from the runtime; the mailbox a worker took may belong to any index, so
    // acknowledgements name the worker id.
    for _ in 0..count {
        let a = ack_rx.recv_timeout(Duration::from_secs(10)).context("a worker did not start")?;
        if let Some(w) = worker_status.get_mut(a.worker) {
            w.revision = a.revision;
        }
    }
    let driver = worker_status.first().map_or("none", |w| w.driver);
    log::info!(
        "ringway {} listening on {local} with {count} worker(s), driver {driver}; revision {}: {} route(s), {} upstream(s)",
        env!("CARGO_PKG_VERSION"),
        snapshot.revision,
        snapshot.routes.len(),
        snapshot.upstreams.len()
    );

    let state_certificates = snapshot.certificates.len();
    let mut state = AdminState::new(store, spec, snapshot, senders, ack_rx, worker_status);
    state.secrets = secrets;
    state.tls_listen = crate::tls_listen::TlsListen::new(args.tls_listen.is_some(), tls_addr);
    state.start_health().context("cannot start the health thread")?;
    let ctx = ApiContext {
        token: token.as_ref().map(|t| AdminToken::new(t.as_bytes())),
        version: env!("CARGO_PKG_VERSION"),
        caps: Some(caps),
        telemetry: Some(telemetry.clone()),
        metrics: MetricsSource::new(Some(telemetry.clone())),
        clock: clock_hand,
    };
    let (job_tx, job_rx) = unbounded::<Job>();
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let drain_timeout = args.drain_timeout;
    let admin = ringway_runtime::spawn_background("ringway-admin", move || {
        admin_thread(state, ctx, job_rx, inv_rx, stop_rx, workers, drain_timeout)
    })
    .context("cannot start the admin thread")?;
    let http = match HttpServer::start(admin_listener, metrics_listener, job_tx, admin_limits) {
        Ok(h) => h,
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = admin.join();
            return Err(e);
        }
    };
    log::info!("admin listening on {admin_addr} (token {})", if token.is_some() { "required" } else { "not set" });
    if let Some(m) = metrics_addr {
        log::info!("metrics listening on {m} (GET /metrics, no token)");
    }
    if let Some(t) = tls_addr {
        log::info!("TLS listening on {t} with {} certificate(s)", state_certificates);
    }
    Ok(Handle {
        data_addr: local,
        tls_addr,
        admin_addr,
        metrics_addr,
        drain_timeout,
        telemetry,
        running: Some(Running { stop: stop_tx, admin, http }),
    })
}

/// The admin thread: answers admin requests and relays cache invalidations until told to
/// stop, then drains the workers and waits for them.
fn admin_thread(
    mut state: AdminState,
    ctx: ApiContext,
    mut jobs: Receiver<Job>,
    mut invalidations: Receiver<Invalidate>,
    stop: Receiver<()>,
    workers: Workers,
    drain_timeout: Duration,
) {
    loop {
        select! {
            recv(jobs) -> job => {
                // Every sender gone (the HTTP thread ended): nothing more will come.
                let Ok(job) = job else { jobs = never(); continue };
                let resp = match job.endpoint {
                    Endpoint::Api => api::handle(&mut state, &ctx, &job.request),
                    Endpoint::Metrics => api::metrics_page(&ctx, &state),
                };
                if let Some(Err(e)) = ctx.telemetry.as_ref().map(|t| t.configure(state.snapshot().access_log.as_ref())) {
                    log::error!("access log: {e}");
                }
                if let Some(t) = ctx.telemetry.as_ref() {
                    t.ship(state.snapshot().log_shipping.as_ref());
                    t.trace(state.snapshot().tracing.as_ref());
                }
                let _ = job.reply.send(resp);
            }
            recv(invalidations) -> inv => {
                // What is queued goes out together: one batch per worker, each path once.
                match inv {
                    Ok(first) => state.relay_invalidations(crate::state::coalesce(first, &invalidations)),
                    Err(_) => invalidations = never(),
                }
            }
            recv(stop) -> _ => break,
        }
    }
    // Requests still queued, and those to come, are answered 503 by the HTTP thread.
    drop(jobs);
    state.drain(drain_timeout);
    workers.join();
    if let Some(t) = &ctx.telemetry {
        t.stop();
    }
}
