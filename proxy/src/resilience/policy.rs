//! An upstream's resilience settings, compiled from `retries`, `health_checks` and
//! `circuit_breaker` (see [`crate::config`]): every value checked, with the path of each problem.

use std::time::Duration;

use ringway_policy::ConfigErrors;

use crate::config::duration_or as duration;

use crate::config::{ActiveSpec, CircuitBreakerSpec, HealthChecksSpec, PassiveSpec, RetriesSpec, RetryOnSpec};

/// A set of response statuses (100-999), one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Statuses([u64; 16]);

impl Statuses {
    pub fn of(list: &[u16]) -> Statuses {
        let mut s = Statuses::default();
        for &c in list {
            s.insert(c);
        }
        s
    }

    pub fn insert(&mut self, code: u16) {
        if code < 1024 {
            self.0[usize::from(code / 64)] |= 1 << (code % 64);
        }
    }

    #[inline]
    pub fn contains(&self, code: u16) -> bool {
        code < 1024 && self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }
}

const DEFAULT_FAILURE_STATUSES: [u16; 3] = [502, 503, 504];

/// `retries`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub on_status: Statuses,
    pub backoff: Duration,
    /// Retries at most this share of requests, per worker and so for the node ...
    pub budget_ratio: f64,
    /// ... plus this many a second for the node.
    pub budget_min_per_sec: u32,
}

/// `health_checks.passive`: outlier ejection.
#[derive(Debug, Clone, PartialEq)]
pub struct Passive {
    pub consecutive_failures: u32,
    pub failure_statuses: Statuses,
    pub base_ejection: Duration,
    pub max_ejected_percent: u32,
}

/// `health_checks.active`: probes.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    /// A connection is enough (`tcp`), or an HTTP answer with an expected status.
    pub tcp: bool,
    /// A gRPC health check of this service instead (`grpc`).
    pub grpc: Option<String>,
    pub path: String,
    pub host: Option<String>,
    pub expect_status: Statuses,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// The upstream's TLS, which probes speak too.
    pub tls: Option<std::sync::Arc<crate::tls::UpstreamTls>>,
}

/// `circuit_breaker`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_requests: u32,
    pub consecutive_failures: Option<u32>,
    pub failure_statuses: Statuses,
}

/// Everything an upstream does about failures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    pub retries: Option<RetryPolicy>,
    pub passive: Option<Passive>,
    pub active: Option<Active>,
    pub breaker: Option<BreakerPolicy>,
    /// When every target is out of rotation: send to all of them anyway (else 503 at once).
    pub fail_open: bool,
}

impl Settings {
    /// Whether the health thread has anything to decide for the upstream.
    pub fn watches(&self) -> bool {
        self.passive.is_some() || self.breaker.is_some() || self.active.is_some()
    }

    /// Whether targets can be out of rotation (so picks look at their state).
    pub fn checks_health(&self) -> bool {
        self.passive.is_some() || self.active.is_some()
    }
}

fn statuses(list: Option<&Vec<u16>>, path: &str, errors: &mut ConfigErrors) -> Statuses {
    let Some(list) = list else { return Statuses::of(&DEFAULT_FAILURE_STATUSES) };
    for (i, c) in list.iter().enumerate() {
        if !(200..=599).contains(c) {
            errors.push(format!("{path}[{i}]"), format!("{c} is not a response status (200-599)"));
        }
    }
    Statuses::of(list)
}

fn ratio(value: Option<f64>, default: f64, path: String, errors: &mut ConfigErrors) -> f64 {
    let v = value.unwrap_or(default);
    if !(0.0..=1.0).contains(&v) {
        errors.push(path, format!("{v} is not a ratio between 0 and 1"));
        return default;
    }
    v
}

fn count(
    value: Option<u32>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    path: String,
    errors: &mut ConfigErrors,
) -> u32 {
    let v = value.unwrap_or(default);
    if !range.contains(&v) {
        errors.push(path, format!("{v} is out of range: {} to {}", range.start(), range.end()));
        return default;
    }
    v
}

/// Compiles an upstream's settings; `path` is the upstream's (`upstreams.ID`).
pub fn compile(
    retries: Option<&RetriesSpec>,
    health: Option<&HealthChecksSpec>,
    breaker: Option<&CircuitBreakerSpec>,
    path: &str,
    errors: &mut ConfigErrors,
) -> Settings {
    Settings {
        retries: retries.map(|r| compile_retries(r, &format!("{path}.retries"), errors)),
        passive: health.and_then(|h| h.passive.as_ref()).map(|p| compile_passive(p, path, errors)),
        active: health.and_then(|h| h.active.as_ref()).map(|a| compile_active(a, path, errors)),
        breaker: breaker.map(|b| compile_breaker(b, &format!("{path}.circuit_breaker"), errors)),
        fail_open: match health.and_then(|h| h.all_unhealthy.as_deref()) {
            None | Some("fail_closed") => false,
            Some("fail_open") => true,
            Some(other) => {
                errors.push(
                    format!("{path}.health_checks.all_unhealthy"),
                    format!("{other:?}: expected \"fail_closed\" or \"fail_open\""),
                );
                false
            }
        },
    }
}

fn compile_retries(r: &RetriesSpec, path: &str, errors: &mut ConfigErrors) -> RetryPolicy {
    let attempts = count(r.attempts, 2, 1..=10, format!("{path}.attempts"), errors);
    let mut p = RetryPolicy {
        attempts,
        on_connect_failure: false,
        on_reset: false,
        on_timeout: false,
        on_status: Statuses::default(),
        backoff: duration(r.backoff.as_ref(), Duration::from_millis(25), format!("{path}.backoff"), errors),
        budget_ratio: 0.2,
        budget_min_per_sec: 10,
    };
    let default_on = [
        RetryOnSpec::Name("connect_failure".into()),
        RetryOnSpec::Name("reset".into()),
        RetryOnSpec::Status(502),
        RetryOnSpec::Status(503),
        RetryOnSpec::Status(504),
    ];
    for (i, on) in r.on.as_deref().unwrap_or(&default_on).iter().enumerate() {
        match on {
            RetryOnSpec::Name(n) if n == "connect_failure" => p.on_connect_failure = true,
            RetryOnSpec::Name(n) if n == "reset" => p.on_reset = true,
            RetryOnSpec::Name(n) if n == "timeout" => p.on_timeout = true,
            RetryOnSpec::Status(c) if (500..=599).contains(c) => p.on_status.insert(*c),
            RetryOnSpec::Status(c) => {
                errors.push(format!("{path}.on[{i}]"), format!("{c}: only statuses 500-599 are retried"))
            }
            RetryOnSpec::Name(n) => errors.push(
                format!("{path}.on[{i}]"),
                format!("{n:?}: expected connect_failure, reset, timeout or a status 500-599"),
            ),
        }
    }
    if let Some(b) = &r.budget {
        p.budget_ratio = ratio(b.ratio, 0.2, format!("{path}.budget.ratio"), errors);
        p.budget_min_per_sec = count(b.min_per_sec, 10, 0..=1_000_000, format!("{path}.budget.min_per_sec"), errors);
    }
    p
}

fn compile_passive(p: &PassiveSpec, upstream: &str, errors: &mut ConfigErrors) -> Passive {
    let path = format!("{upstream}.health_checks.passive");
    Passive {
        consecutive_failures: count(
            p.consecutive_failures,
            5,
            1..=1000,
            format!("{path}.consecutive_failures"),
            errors,
        ),
        failure_statuses: statuses(p.failure_statuses.as_ref(), &format!("{path}.failure_statuses"), errors),
        base_ejection: duration(
            p.base_ejection.as_ref(),
            Duration::from_secs(30),
            format!("{path}.base_ejection"),
            errors,
        ),
        max_ejected_percent: count(p.max_ejected_percent, 50, 0..=100, format!("{path}.max_ejected_percent"), errors),
    }
}

fn compile_active(a: &ActiveSpec, upstream: &str, errors: &mut ConfigErrors) -> Active {
    let path = format!("{upstream}.health_checks.active");
    let (tcp, grpc) = match a.kind.as_deref() {
        None | Some("http") => (false, None),
        Some("tcp") => (true, None),
        Some("grpc") => (false, Some(a.service.clone().unwrap_or_default())),
        Some(other) => {
            errors.push(format!("{path}.type"), format!("{other:?}: expected \"http\", \"tcp\" or \"grpc\""));
            (false, None)
        }
    };
    if a.service.is_some() && grpc.is_none() {
        errors.push(format!("{path}.service"), "only a grpc check asks about a service");
    }
    let probe_path = a.path.clone().unwrap_or_else(|| "/".into());
    if !probe_path.starts_with('/') || probe_path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        errors.push(format!("{path}.path"), format!("{probe_path:?}: expected an absolute path without spaces"));
    }
    if let Some(h) = &a.host {
        if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/') {
            errors.push(format!("{path}.host"), format!("{h:?}: not a host name"));
        }
    }
    let expect = a.expect_status.clone().unwrap_or_else(|| vec![200]);
    for (i, c) in expect.iter().enumerate() {
        if !(200..=599).contains(c) {
            errors.push(format!("{path}.expect_status[{i}]"), format!("{c} is not a response status (200-599)"));
        }
    }
    let interval = duration(a.interval.as_ref(), Duration::from_secs(2), format!("{path}.interval"), errors);
    let timeout = duration(a.timeout.as_ref(), Duration::from_secs(1), format!("{path}.timeout"), errors);
    if timeout > interval {
        errors.push(format!("{path}.timeout"), "must not be longer than the interval");
    }
    Active {
        tcp,
        grpc,
        path: probe_path,
        host: a.host.clone(),
        expect_status: Statuses::of(&expect),
        interval,
        timeout,
        healthy_after: count(a.healthy_after, 2, 1..=100, format!("{path}.healthy_after"), errors),
        unhealthy_after: count(a.unhealthy_after, 3, 1..=100, format!("{path}.unhealthy_after"), errors),
        tls: None,
    }
}

fn compile_breaker(b: &CircuitBreakerSpec, path: &str, errors: &mut ConfigErrors) -> BreakerPolicy {
    BreakerPolicy {
        failure_ratio: ratio(b.failure_ratio, 0.5, format!("{path}.failure_ratio"), errors),
        min_requests: count(b.min_requests, 20, 1..=1_000_000, format!("{path}.min_requests"), errors),
        window: {
            let w = duration(b.window.as_ref(), Duration::from_secs(10), format!("{path}.window"), errors);
            if w > Duration::from_secs(600) {
                errors.push(format!("{path}.window"), "must be at most 10m");
            }
            w
        },
        open_for: duration(b.open_for.as_ref(), Duration::from_secs(15), format!("{path}.open_for"), errors),
        half_open_requests: count(b.half_open_requests, 3, 1..=1000, format!("{path}.half_open_requests"), errors),
        consecutive_failures: b
            .consecutive_failures
            .map(|c| count(Some(c), 5, 1..=100_000, format!("{path}.consecutive_failures"), errors)),
        failure_statuses: statuses(b.failure_statuses.as_ref(), &format!("{path}.failure_statuses"), errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_a_bitset() {
        let s = Statuses::of(&[200, 502, 999]);
        assert!(s.contains(502) && s.contains(200) && s.contains(999));
        assert!(!s.contains(503) && !s.contains(0) && !s.contains(2000));
    }
}
