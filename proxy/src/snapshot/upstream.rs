//! A compiled upstream and the step that compiles one: targets resolved, the balancer, the
//! timeouts, the pool and the resilience settings, with every problem named by its path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringway_policy::{is_valid_header_name, ConfigErrors};

use super::check_id;
use crate::addr::resolve;
use crate::config::{duration_or, UpstreamSpec};
use crate::lb::{hash64, HashOn, HashRing, LbKind};

/// How long an idle upstream connection is kept by default: below the keep-alive timeouts of
/// common origin servers (Node.js and Apache httpd 5 s), so the gateway drops a connection
/// before the origin does rather than racing its close.
pub const DEFAULT_POOL_IDLE: Duration = Duration::from_secs(4);

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    pub id: String,
    /// Stable while the upstream exists; routes and per-worker state refer to it by slot.
    pub slot: u32,
    pub targets: Vec<SocketAddr>,
    pub weights: Vec<u32>,
    pub lb: LbKind,
    pub ring: HashRing,
    pub connect_timeout: Duration,
    pub response_head_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    /// Changes whenever targets, weights or the balancer change: a worker keeps its balancing
    /// state across a config change while this stays the same.
    pub fingerprint: u64,
    /// Retries, outlier ejection, the circuit breaker.
    pub resilience: crate::resilience::policy::Settings,
    /// The node's live view of the targets' health and the breaker (shared by every worker
    /// and the health thread; carried over from the snapshot before for the targets kept).
    pub health: Arc<crate::resilience::state::UpstreamState>,
    /// TLS to the targets (`None`: plaintext).
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// The targets speak HTTP/2 (`h2` or `h2c`): requests are streams of shared connections.
    pub h2: bool,
}

pub(super) fn compile_upstream(
    id: &str,
    u: &UpstreamSpec,
    slot: u32,
    old: Option<&Upstream>,
    errors: &mut ConfigErrors,
) -> Option<Upstream> {
    let path = format!("upstreams.{id}");
    let before = errors.0.len();
    check_id(id, &path, errors);
    if u.targets.is_empty() {
        errors.push(format!("{path}.targets"), "an upstream needs at least one target");
    }
    let mut targets = Vec::new();
    let mut weights = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tp = format!("{path}.targets[{i}]");
        match resolve(&t.addr) {
            Ok(a) => {
                if targets.contains(&a) {
                    errors.push(format!("{tp}.addr"), format!("{a} is listed twice"));
                }
                targets.push(a);
            }
            Err(e) => errors.push(format!("{tp}.addr"), e),
        }
        if t.weight > 10_000 {
            errors.push(format!("{tp}.weight"), "weight must be between 0 and 10000");
        }
        weights.push(t.weight);
    }
    if !u.targets.is_empty() && weights.iter().all(|w| *w == 0) {
        errors.push(format!("{path}.targets"), "at least one target needs a weight above 0");
    }
    let hash_on = match u.hash_on.as_deref() {
        None | Some("ip") => HashOn::Ip,
        Some(h) => match h.strip_prefix("header:") {
            Some(name) if is_valid_header_name(name) => HashOn::Header(name.to_ascii_lowercase()),
            _ => {
                errors.push(format!("{path}.hash_on"), format!("{h:?}: expected \"ip\" or \"header:NAME\""));
                HashOn::Ip
            }
        },
    };
    let lb = match u.lb.as_deref().unwrap_or("round_robin") {
        "round_robin" => LbKind::RoundRobin,
        "least_conn" => LbKind::LeastConn,
        "p2c_ewma" => LbKind::P2cEwma,
        "consistent_hash" => LbKind::ConsistentHash(hash_on),
        other => {
            errors.push(
                format!("{path}.lb"),
                format!("unknown balancer {other:?}: expected round_robin, least_conn, p2c_ewma or consistent_hash"),
            );
            LbKind::RoundRobin
        }
    };
    if u.hash_on.is_some() && !matches!(lb, LbKind::ConsistentHash(_)) {
        errors.push(format!("{path}.hash_on"), "hash_on only applies to lb: consistent_hash");
    }
    let t = u.timeouts.clone().unwrap_or_default();
    let tp = format!("{path}.timeouts");
    let connect_timeout = duration_or(t.connect.as_ref(), Duration::from_secs(5), format!("{tp}.connect"), errors);
    let response_head_timeout =
        duration_or(t.response_head.as_ref(), Duration::from_secs(60), format!("{tp}.response_head"), errors);
    let idle_timeout = duration_or(t.idle.as_ref(), Duration::from_secs(60), format!("{tp}.idle"), errors);
    let p = u.pool.clone().unwrap_or_default();
    let pool_max_idle = p.max_idle.unwrap_or(64) as usize;
    if pool_max_idle > 100_000 {
        errors.push(format!("{path}.pool.max_idle"), "must be at most 100000");
    }
    let pool_idle_timeout =
        duration_or(p.idle_timeout.as_ref(), DEFAULT_POOL_IDLE, format!("{path}.pool.idle_timeout"), errors);
    let h2 = match u.protocol.as_deref() {
        None | Some("http1") => false,
        Some("h2") => {
            if !u.tls.as_ref().is_some_and(|t| t.enabled) {
                errors.push(format!("{path}.protocol"), "h2 runs over tls (set tls), or use h2c for plaintext");
            }
            true
        }
        Some("h2c") => {
            if u.tls.as_ref().is_some_and(|t| t.enabled) {
                errors.push(format!("{path}.protocol"), "h2c is plaintext HTTP/2: use h2 with tls");
            }
            true
        }
        Some(other) => {
            errors.push(format!("{path}.protocol"), format!("{other:?}: expected http1, h2 or h2c"));
            false
        }
    };
    let tls = u.tls.as_ref().and_then(|t| crate::tls::client::compile(t, h2, &format!("{path}.tls"), errors));
    let mut resilience = crate::resilience::policy::compile(
        u.retries.as_ref(),
        u.health_checks.as_ref(),
        u.circuit_breaker.as_ref(),
        &path,
        errors,
    );
    if errors.0.len() != before {
        return None;
    }
    if let Some(a) = resilience.active.as_mut() {
        a.tls.clone_from(&tls);
    }
    let pairs: Vec<(SocketAddr, u32)> = targets.iter().copied().zip(weights.iter().copied()).collect();
    let ring = if matches!(lb, LbKind::ConsistentHash(_)) { HashRing::new(&pairs) } else { HashRing::default() };
    let fingerprint = hash64(format!("{pairs:?}{lb:?}").as_bytes());
    let health = Arc::new(crate::resilience::state::UpstreamState::carry(old.map(|o| &*o.health), &targets));
    Some(Upstream {
        id: id.to_string(),
        slot,
        targets,
        weights,
        lb,
        ring,
        connect_timeout,
        response_head_timeout,
        idle_timeout,
        pool_max_idle,
        pool_idle_timeout,
        fingerprint,
        resilience,
        health,
        tls,
        h2,
    })
}
