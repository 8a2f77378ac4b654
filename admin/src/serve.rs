//! Start-up and shutdown: open the store, seed it from a file when asked, compile, bind, start
//! the workers and the admin API, run the admin thread until a signal, drain.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use crossbeam_channel::{select, unbounded};
use ringway_proxy::{run_worker, Ack, Control, ServerLimits, Snapshot, WorkerSetup};
use ringway_runtime::{mailbox, spawn_workers, MailboxSender, WorkerOptions};
use ringway_store::{Change, ConfigStore, RocksStore};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::api::{self, AdminToken, ApiContext};
use crate::bootstrap::load_file;
use crate::cli::Args;
use crate::http::{self, AdminLimits, AllowedHosts, Job};
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
fn open_store(args: &Args) -> anyhow::Result<Box<dyn ConfigStore>> {
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
    if stored == 0 && !seeded {
        bail!(
            "the configuration store in {} is empty: pass --config FILE to seed it, or --init to start with no routes",
            args.data_dir.display()
        );
    }
    if let Some(path) = &args.config {
        let (spec, _) = load_file(path, stored + 1).map_err(|e| report(path, e))?;
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
    Ok(Box::new(store))
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

/// Runs the gateway until SIGTERM or SIGINT, then drains.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.check {
        let Some(path) = &args.config else { bail!("--check needs --config FILE") };
        let (_, snapshot) = load_file(path, 1).map_err(|e| report(path, e))?;
        println!("configuration OK: {} upstream(s), {} route(s)", snapshot.upstreams.len(), snapshot.routes.len());
        return Ok(());
    }
    let token = admin_token(&args)?;
    if !args.admin_listen.ip().is_loopback() && token.is_none() {
        bail!(
            "the admin API on {} is not loopback: set --admin-token-file, --admin-token or RINGWAY_ADMIN_TOKEN",
            args.admin_listen
        );
    }
    let nofile = ringway_runtime::raise_nofile_limit();
    log::debug!("open-file limit {nofile}");
    let count = args.workers.unwrap_or_else(|| ringway_runtime::allowed_cpus().len().max(1));
    if count == 0 {
        bail!("--workers must be at least 1");
    }
    let store = open_store(&args)?;
    let stored = store.load().context("cannot load the stored configuration")?;
    let spec = spec_from_state(&stored).map_err(anyhow::Error::msg)?;
    let snapshot = Snapshot::compile(&spec, stored.revision).map_err(|e| {
        anyhow::anyhow!("the stored configuration (revision {}) does not compile: {e}", stored.revision)
    })?;
    let snapshot = Arc::new(snapshot);

    let admin_listener = std::net::TcpListener::bind(args.admin_listen)
        .with_context(|| format!("cannot listen for the admin API on {}", args.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let (local, listeners) = crate::listen::bind_listeners(args.listen, count)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
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
    if args.body_min_rate > 0 && args.body_grace < Duration::from_secs(1) {
        bail!("--body-grace must be at least 1s while --body-min-rate is set (0 turns the minimum off)");
    }
    let caps = Arc::new(ringway_proxy::ConnectionCaps::new(args.max_connections, args.max_connections_per_ip));
    ringway_policy::limits::set_bank_key_cap(args.rate_limit_keys.saturating_mul(count).saturating_mul(2));
    let (ack_tx, ack_rx) = unbounded::<Ack>();
    let (inv_tx, inv_rx) = unbounded::<ringway_proxy::Invalidate>();
    let mut senders: Vec<MailboxSender<Control>> = Vec::with_capacity(count);
    // Listeners and mailboxes are interchangeable: each worker takes one setup at start.
    let (setup_tx, setup_rx) = crossbeam_channel::bounded::<WorkerSetup>(count);
    let base_seed = seed();
    let (telemetry, mut each) = Telemetry::start(count, args.access_log_buffer, args.access_log.as_deref())?;
    telemetry
        .configure(snapshot.access_log.as_ref())
        .with_context(|| format!("cannot open the access log {:?}", args.access_log))?;
    for (i, listener) in listeners.into_iter().enumerate() {
        let WorkerTelemetry { metrics, log } = each.remove(0);
        let (tx, rx) = mailbox();
        senders.push(tx);
        let _ = setup_tx.send(WorkerSetup {
            listener,
            mailbox: rx,
            snapshot: snapshot.clone(),
            limits: limits.clone(),
            acks: ack_tx.clone(),
            seed: base_seed.wrapping_add(i as u64),
            workers: count,
            cache_bytes: args.cache_size / count as u64,
            limit_keys: args.rate_limit_keys,
            invalidations: inv_tx.clone(),
            caps: caps.clone(),
            metrics,
            log,
            clock: ringway_proxy::clock::Clock::real(),
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

    let (job_tx, job_rx) = unbounded::<Job>();
    let max_busy = usize::from(args.admin_max_conns);
    let admin_limits = AdminLimits {
        max_body: args.admin_max_body,
        max_busy,
        max_busy_per_addr: usize::from(args.admin_max_conns_per_addr),
        max_open: max_busy * 4,
        request_timeout: args.admin_request_timeout,
        idle_timeout: Duration::from_secs(30),
        hosts: AllowedHosts::new(admin_addr, &args.admin_hosts).map_err(anyhow::Error::msg)?,
    };
    std::thread::Builder::new()
        .name("ringway-admin-accept".into())
        .spawn(move || http::serve(admin_listener, job_tx, admin_limits))
        .context("cannot start the admin API")?;
    log::info!("admin listening on {admin_addr} (token {})", if token.is_some() { "required" } else { "not set" });

    let (sig_tx, sig_rx) = unbounded::<i32>();
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let on_hup = telemetry.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                // logrotate moved the file away: the next lines go to a new one.
                on_hup.reopen();
                continue;
            }
            if sig_tx.send(sig).is_err() {
                log::warn!("second signal: exiting without waiting for the drain");
                std::process::exit(1);
            }
        }
    });

    let mut state = AdminState::new(store, spec, snapshot, senders, ack_rx, worker_status);
    let ctx = ApiContext {
        token: token.map(|t| AdminToken::new(t.as_bytes())),
        version: env!("CARGO_PKG_VERSION"),
        caps: Some(caps),
        telemetry: Some(telemetry.clone()),
    };
    let sig = loop {
        select! {
            recv(job_rx) -> job => {
                let Ok((req, reply)) = job else { continue };
                let resp = api::handle(&mut state, &ctx, &req);
                if let Err(e) = telemetry.configure(state.snapshot().access_log.as_ref()) {
                    log::error!("access log: {e}");
                }
                let _ = reply.send(resp);
            }
            recv(inv_rx) -> inv => {
                // What is queued goes out together: one batch per worker, each path once.
                if let Ok(first) = inv {
                    state.relay_invalidations(crate::state::coalesce(first, &inv_rx));
                }
            }
            recv(sig_rx) -> sig => break sig.unwrap_or(SIGTERM),
        }
    };
    drop(sig_rx);
    log::info!("signal {sig}: draining (up to {:?})", args.drain_timeout);
    state.drain(args.drain_timeout);
    workers.join();
    telemetry.stop();
    log::info!("drained; exiting");
    Ok(())
}
