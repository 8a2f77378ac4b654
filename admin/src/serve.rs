//! Start-up and shutdown: compile the configuration, bind, start the workers, wait for a
//! signal, drain.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ringway_proxy::{run_worker, Ack, ConfigSpec, Control, ServerLimits, Snapshot, WorkerSetup};
use ringway_runtime::{mailbox, spawn_workers, MailboxSender, WorkerOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::bootstrap::load_file;
use crate::cli::Args;

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// Runs the gateway until SIGTERM or SIGINT, then drains.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (_spec, snapshot) = match &args.config {
        Some(path) => match load_file(path, 1) {
            Ok(v) => v,
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("ringway: config error at {}: {}", e.path, e.message);
                }
                bail!("{} refused: {} problem(s)", path.display(), errors.0.len());
            }
        },
        None => {
            let spec = ConfigSpec::default();
            let snap = Snapshot::compile(&spec, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
            (spec, snap)
        }
    };
    if args.check {
        println!("configuration OK: {} upstream(s), {} route(s)", snapshot.upstreams.len(), snapshot.routes.len());
        return Ok(());
    }
    let snapshot = Arc::new(snapshot);
    let count = args.workers.unwrap_or_else(|| ringway_runtime::allowed_cpus().len().max(1));
    if count == 0 {
        bail!("--workers must be at least 1");
    }
    let (local, listeners) = crate::listen::bind_listeners(args.listen, count)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let limits = ServerLimits {
        max_head_bytes: args.max_head_bytes.max(1024),
        max_headers: usize::from(args.max_headers),
        head_timeout: args.head_timeout,
        keepalive_timeout: args.keepalive_timeout,
        body_timeout: args.body_timeout,
        write_timeout: args.write_timeout,
        max_body_bytes: args.max_body_bytes,
        trusted_hops: args.trusted_hops,
    };
    let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<Ack>();
    let mut senders: Vec<MailboxSender<Control>> = Vec::with_capacity(count);
    // Listeners and mailboxes are interchangeable: each worker takes one setup at start.
    let (setup_tx, setup_rx) = crossbeam_channel::bounded::<WorkerSetup>(count);
    let base_seed = seed();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = mailbox();
        senders.push(tx);
        let _ = setup_tx.send(WorkerSetup {
            listener,
            mailbox: rx,
            snapshot: snapshot.clone(),
            limits: limits.clone(),
            acks: ack_tx.clone(),
            seed: base_seed.wrapping_add(i as u64),
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
    for _ in 0..count {
        ack_rx.recv_timeout(Duration::from_secs(10)).context("a worker did not start")?;
    }
    let drivers: Vec<&str> = workers.contexts().iter().map(|c| c.driver.as_str()).collect();
    log::info!(
        "ringway {} listening on {local} with {count} worker(s), driver {}; {} route(s), {} upstream(s)",
        env!("CARGO_PKG_VERSION"),
        drivers.first().copied().unwrap_or("none"),
        snapshot.routes.len(),
        snapshot.upstreams.len()
    );

    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    let sig = signals.forever().next().unwrap_or(SIGTERM);
    log::info!("signal {sig}: draining (up to {:?})", args.drain_timeout);
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            log::warn!("second signal: exiting without waiting for the drain");
            std::process::exit(1);
        }
    });
    for s in &senders {
        let _ = s.send(Control::Drain(args.drain_timeout));
    }
    workers.join();
    log::info!("drained; exiting");
    Ok(())
}
