//! The compiled, immutable configuration every worker serves from, and the compile step that
//! turns a [`ConfigSpec`] into it, reporting every problem with its JSON path.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use ringway_policy::{is_valid_header_name, is_valid_header_value, Chain, ConfigErrors};

use crate::config::{parse_duration, ConfigSpec, UpstreamSpec};
use crate::lb::{hash64, HashOn, HashRing, LbKind};
use crate::router::{HostPattern, PathPattern, RouteKey, Router};

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub id: String,
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    /// Upper-case methods; empty admits any.
    pub methods: Vec<String>,
    /// Lower-case header names with the exact value required.
    pub headers: Vec<(String, Vec<u8>)>,
    pub strip_prefix: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub chain: Chain,
}

impl Route {
    /// Whether the method and header constraints admit a request.
    pub fn admits<'h>(&self, method: &str, mut header: impl FnMut(&str) -> Option<&'h [u8]>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.headers.iter().all(|(n, v)| header(n) == Some(v.as_slice()))
    }

    /// The path to forward: `strip_prefix` removed at a segment boundary.
    pub fn forward_path<'p>(&self, path: &'p str) -> &'p str {
        if let Some(prefix) = &self.strip_prefix {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                if rest.is_empty() {
                    return "/";
                }
                if rest.starts_with('/') {
                    return rest;
                }
            }
        }
        path
    }
}

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    pub id: String,
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
}

/// Everything a worker needs to serve requests, built once and shared read-only.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: u64,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub router: Router,
}

impl Snapshot {
    /// Compiles a document; `Err` lists every problem.
    pub fn compile(spec: &ConfigSpec, revision: u64) -> Result<Snapshot, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut upstreams = Vec::with_capacity(spec.upstreams.len());
        for (id, u) in &spec.upstreams {
            if let Some(up) = compile_upstream(id, u, &mut errors) {
                upstreams.push(up);
            }
        }
        let mut routes = Vec::with_capacity(spec.routes.len());
        let mut keys: Vec<(Vec<HostPattern>, Vec<PathPattern>, i32, u32)> = Vec::new();
        for (id, r) in &spec.routes {
            let path = format!("routes.{id}");
            check_id(id, &path, &mut errors);
            let mut hosts = Vec::new();
            for (i, h) in r.hosts.iter().enumerate() {
                match HostPattern::parse(h) {
                    Ok(p) => hosts.push(p),
                    Err(e) => errors.push(format!("{path}.hosts[{i}]"), e),
                }
            }
            let mut paths = Vec::new();
            if r.paths.is_empty() {
                errors.push(format!("{path}.paths"), "a route needs at least one path (use \"/*\" for all)");
            }
            for (i, p) in r.paths.iter().enumerate() {
                match PathPattern::parse(p) {
                    Ok(p) => paths.push(p),
                    Err(e) => errors.push(format!("{path}.paths[{i}]"), e),
                }
            }
            let mut methods = Vec::new();
            for (i, m) in r.methods.iter().enumerate() {
                if m.is_empty() || !is_valid_header_name(m) {
                    errors.push(format!("{path}.methods[{i}]"), format!("{m:?} is not a method"));
                } else {
                    methods.push(m.to_ascii_uppercase());
                }
            }
            let mut headers = Vec::new();
            for (n, v) in &r.headers {
                if !is_valid_header_name(n) {
                    errors.push(format!("{path}.headers.{n}"), "not a valid header name");
                } else if !is_valid_header_value(v.as_bytes()) {
                    errors.push(format!("{path}.headers.{n}"), "not a valid header value");
                } else {
                    headers.push((n.to_ascii_lowercase(), v.as_bytes().to_vec()));
                }
            }
            let upstream = match spec.upstreams.keys().position(|k| k == &r.upstream) {
                Some(i) => i,
                None => {
                    errors.push(format!("{path}.upstream"), format!("no upstream with id {:?}", r.upstream));
                    0
                }
            };
            if let Some(sp) = &r.strip_prefix {
                if !sp.starts_with('/') || sp.len() < 2 || sp.ends_with('/') || sp.contains(['?', '#', '*', '{']) {
                    errors.push(
                        format!("{path}.strip_prefix"),
                        "must be a path prefix such as \"/api\": starting with '/', not ending with '/'",
                    );
                }
            }
            if r.max_body_bytes == Some(0) {
                errors.push(format!("{path}.max_body_bytes"), "must be at least 1 (omit it for no limit)");
            }
            let chain = ringway_policy::compile(&r.policies, &format!("{path}.policies"), &mut errors);
            let constraints = u32::from(!methods.is_empty()) + headers.len() as u32;
            keys.push((hosts, paths, r.priority, constraints));
            routes.push(Route {
                id: id.clone(),
                upstream,
                methods,
                headers,
                strip_prefix: r.strip_prefix.clone(),
                max_body_bytes: r.max_body_bytes,
                chain,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let route_keys: Vec<RouteKey<'_>> = keys
            .iter()
            .map(|(h, p, prio, c)| RouteKey { hosts: h, paths: p, priority: *prio, constraints: *c })
            .collect();
        let router = Router::build(&route_keys);
        Ok(Snapshot { revision, routes, upstreams, router })
    }
}

fn check_id(id: &str, path: &str, errors: &mut ConfigErrors) {
    if id.is_empty()
        || id.len() > 128
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        errors.push(path, "an id is 1 to 128 letters, digits, '-', '_' or '.'");
    }
}

fn duration_or(value: Option<&String>, default: Duration, path: String, errors: &mut ConfigErrors) -> Duration {
    match value.map(|v| parse_duration(v)) {
        None => default,
        Some(Ok(d)) if d.is_zero() => {
            errors.push(path, "must be greater than zero");
            default
        }
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(path, e);
            default
        }
    }
}

fn compile_upstream(id: &str, u: &UpstreamSpec, errors: &mut ConfigErrors) -> Option<Upstream> {
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
        duration_or(p.idle_timeout.as_ref(), Duration::from_secs(30), format!("{path}.pool.idle_timeout"), errors);
    if errors.0.len() != before {
        return None;
    }
    let pairs: Vec<(SocketAddr, u32)> = targets.iter().copied().zip(weights.iter().copied()).collect();
    let ring = if matches!(lb, LbKind::ConsistentHash(_)) { HashRing::new(&pairs) } else { HashRing::default() };
    let fingerprint = hash64(format!("{pairs:?}{lb:?}").as_bytes());
    Some(Upstream {
        id: id.to_string(),
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
    })
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("{addr:?} needs a port, as in \"host:port\""));
    }
    match addr.to_socket_addrs() {
        Ok(mut it) => it.next().ok_or_else(|| format!("{addr:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {addr:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> ConfigSpec {
        serde_json::from_value(serde_json::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let spec =
            doc(r#"{"upstreams": {"u": {"targets": [{"addr": "nope"}, {"addr": "127.0.0.1:1", "weight": 20000}],
                                 "lb": "fastest", "timeouts": {"connect": "2 parsecs"}}},
                "routes": {"r": {"paths": ["x", "/ok"], "upstream": "missing", "strip_prefix": "api/"}}}"#);
        let errs = Snapshot::compile(&spec, 1).unwrap_err();
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "upstreams.u.targets[0].addr",
                "upstreams.u.targets[1].weight",
                "upstreams.u.lb",
                "upstreams.u.timeouts.connect",
                "routes.r.paths[0]",
                "routes.r.upstream",
                "routes.r.strip_prefix",
            ]
        );
    }

    #[test]
    fn strip_prefix_at_segment_boundary() {
        let spec = doc(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}},
                "routes": {"r": {"paths": ["/api/*"], "upstream": "u", "strip_prefix": "/api"}}}"#);
        let s = Snapshot::compile(&spec, 1).unwrap();
        let r = &s.routes[0];
        assert_eq!(r.forward_path("/api/users"), "/users");
        assert_eq!(r.forward_path("/api"), "/");
        assert_eq!(r.forward_path("/apix"), "/apix");
    }
}
