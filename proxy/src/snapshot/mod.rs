//! The compiled, immutable configuration every worker serves from, and the compile step that
//! turns a [`ConfigSpec`] into it, reporting every problem with its JSON path.

use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};

use ringway_policy::{
    is_valid_header_name, is_valid_header_value, Chain, ConfigErrors, Layered, PathNormalization, PoliciesSpec,
};

use crate::config::{ConfigSpec, RouteSpec, UpstreamSpec};
use crate::router::{HostPattern, Indexed, PathPattern, RouteKey, Router};

mod tls;
mod upstream;

use self::upstream::compile_upstream;
pub use self::upstream::{Upstream, DEFAULT_POOL_IDLE};

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub id: String,
    /// The upstream's id, and its slot in [`Snapshot::upstream`].
    pub upstream_id: String,
    pub upstream: u32,
    /// Upper-case methods; empty admits any.
    pub methods: Vec<String>,
    /// Lower-case header names with the exact value required.
    pub headers: Vec<(String, Vec<u8>)>,
    pub strip_prefix: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub chain: Chain,
    /// The route's own `policies.path_normalization`, replacing the global one.
    pub path_normalization: Option<PathNormalization>,
    /// Where the route sits in the routing index.
    pub key: RouteKey,
    /// What of its requests is captured into the access log.
    pub capture: Option<Arc<crate::capture::CaptureRule>>,
    /// WebSocket upgrades are tunnelled, with this idle timeout (`None`: not allowed).
    pub websocket: Option<std::time::Duration>,
}

impl Indexed for Arc<Route> {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Route {
    /// Whether the method and header constraints admit a request.
    pub fn admits<'h>(&self, method: &str, mut header: impl FnMut(&str) -> Option<&'h [u8]>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.headers.iter().all(|(n, v)| header(n) == Some(v.as_slice()))
    }

    /// The path to forward: `strip_prefix` removed at a segment boundary. The prefix's last
    /// segment may carry `;` parameters (`/api;v=1/x`, routed as `/api/x`): they go with it.
    pub fn forward_path<'p>(&self, path: &'p str) -> &'p str {
        if let Some(prefix) = &self.strip_prefix {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                let rest = match rest.strip_prefix(';') {
                    Some(params) => params.find('/').map_or("", |i| &params[i..]),
                    None => rest,
                };
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

/// How long a WebSocket tunnel may carry nothing before it is closed, unless the route says.
pub const WEBSOCKET_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// One change to a document, by reference: a resource created or replaced (`Some`) or
/// deleted (`None`).
#[derive(Debug, Clone, Copy)]
pub enum Edit<'a> {
    Upstream(&'a str, Option<&'a UpstreamSpec>),
    Route(&'a str, Option<&'a RouteSpec>),
    Consumer(&'a str, Option<&'a ringway_policy::ConsumerSpec>),
    /// The global policies (`None`: none).
    Global(Option<&'a PoliciesSpec>),
    /// The document's `access_log` (`None`: not set).
    AccessLog(Option<&'a str>),
    /// The document's `log_shipping` (`None`: not set).
    LogShipping(Option<&'a crate::shipping::LogShippingSpec>),
    /// The document's `tracing` (`None`: not set).
    Tracing(Option<&'a crate::traces::TracingSpec>),
    /// The document's `trusted_proxies` (empty: none).
    TrustedProxies(&'a [String]),
    Certificate(&'a str, Option<&'a crate::tls::CertificateSpec>),
    /// The document's `tls` (`None`: not set).
    TlsSettings(Option<&'a crate::tls::TlsSettingsSpec>),
}

/// Everything a worker needs to serve requests, built once and shared read-only.
///
/// Every collection is persistent: [`Snapshot::edit`] makes the next snapshot from this one
/// at a cost proportional to the change, sharing everything unchanged with it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub routes: OrdMap<String, Arc<Route>>,
    pub upstreams: OrdMap<String, Arc<Upstream>>,
    pub router: Router<Arc<Route>>,
    /// The global policies, run with every route's own (see [`Layered`]).
    pub global: Chain,
    /// `global_policies.path_normalization`: how paths are made canonical before routing.
    pub path_normalization: PathNormalization,
    /// The document's `access_log`: where the access log goes (`None`: off or not set).
    pub access_log: Option<crate::access_log::Destination>,
    /// The document's `log_shipping` (`None`: not shipping).
    pub log_shipping: Option<crate::shipping::Shipping>,
    /// The document's `tracing` (`None`: no spans are recorded).
    pub tracing: Option<crate::traces::Tracing>,
    /// The document's `trusted_proxies`.
    pub trusted_proxies: Arc<[ringway_policy::Network]>,
    /// The consumers, indexed by credential.
    pub consumers: ringway_policy::Consumers,
    /// Their own policies, by slot.
    pub consumer_chains: ringway_policy::ConsumerChains,
    /// The TLS listener's certificates by id.
    pub certificates: OrdMap<String, Arc<crate::tls::Site>>,
    /// The same, indexed by server name, with the listener's settings: what a handshake uses.
    pub tls: Arc<crate::tls::TlsSites>,
    pub tls_settings: crate::tls::TlsSettingsSpec,
    /// Upstreams by slot.
    slots: Vector<Option<Arc<Upstream>>>,
    free_slots: Vector<u32>,
    /// Route ids by the upstream they use.
    users: OrdMap<String, OrdSet<String>>,
}

impl Snapshot {
    /// Compiles a whole document; `Err` lists every problem.
    pub fn compile(spec: &ConfigSpec, revision: u64) -> Result<Snapshot, ConfigErrors> {
        let edits = spec
            .upstreams
            .iter()
            .map(|(id, u)| Edit::Upstream(id, Some(u)))
            .chain(spec.routes.iter().map(|(id, r)| Edit::Route(id, Some(r))))
            .chain(spec.consumers.iter().map(|(id, c)| Edit::Consumer(id, Some(c))))
            .chain(std::iter::once(Edit::Global(Some(&spec.global_policies))))
            .chain(std::iter::once(Edit::AccessLog(spec.access_log.as_deref())))
            .chain(std::iter::once(Edit::LogShipping(spec.log_shipping.as_ref())))
            .chain(std::iter::once(Edit::Tracing(spec.tracing.as_ref())))
            .chain(std::iter::once(Edit::TrustedProxies(&spec.trusted_proxies)))
            .chain(spec.certificates.iter().map(|(id, c)| Edit::Certificate(id, Some(c))))
            .chain(std::iter::once(Edit::TlsSettings(spec.tls.as_ref())));
        Snapshot::default().edit(edits, revision)
    }

    /// The upstream in `slot`.
    #[inline]
    pub fn upstream(&self, slot: u32) -> &Upstream {
        match self.slots.get(slot as usize) {
            Some(Some(u)) => u,
            // A compiled route always names a live slot.
            _ => unreachable!("route refers to an empty upstream slot"),
        }
    }

    /// A route's policies over the global ones.
    #[inline]
    pub fn chains<'s>(&'s self, route: &'s Route) -> Layered<'s> {
        Layered::new(&route.chain, &self.global, &self.consumer_chains)
    }

    /// The path normalisation that applies to `route`: its own, else the global one.
    #[inline]
    pub fn path_normalization<'s>(&'s self, route: &'s Route) -> &'s PathNormalization {
        route.path_normalization.as_ref().unwrap_or(&self.path_normalization)
    }

    /// Ids of the routes that use upstream `id`.
    pub fn routes_using(&self, id: &str) -> impl Iterator<Item = &String> {
        self.users.get(id).into_iter().flat_map(|s| s.iter())
    }

    /// The snapshot with `edits` applied, all or nothing, at `revision`; `self` is unchanged.
    /// Costs O(log n) per edited resource, whatever the number of routes; edits of upstreams
    /// come before edits of routes, so a route may name an upstream created in the same call.
    pub fn edit<'a>(&self, edits: impl IntoIterator<Item = Edit<'a>>, revision: u64) -> Result<Snapshot, ConfigErrors> {
        let mut next = self.clone();
        next.revision = revision;
        let mut errors = ConfigErrors::default();
        let mut globals = Vec::new();
        let mut consumers = Vec::new();
        let mut tls_edits = Vec::new();
        let (ups, routes): (Vec<_>, Vec<_>) = edits
            .into_iter()
            .filter(|e| match e {
                Edit::Global(g) => {
                    globals.push(*g);
                    false
                }
                Edit::AccessLog(a) => {
                    match a.map(crate::access_log::Destination::parse).transpose() {
                        Ok(d) => next.access_log = d.flatten(),
                        Err(e) => errors.push("access_log", e),
                    }
                    false
                }
                Edit::LogShipping(l) => {
                    next.log_shipping = l.and_then(|spec| crate::shipping::Shipping::compile(spec, &mut errors));
                    false
                }
                Edit::Tracing(t) => {
                    next.tracing = t.and_then(|spec| crate::traces::Tracing::compile(spec, &mut errors));
                    false
                }
                Edit::TrustedProxies(list) => {
                    let nets = list.iter().enumerate().filter_map(|(i, s)| {
                        ringway_policy::Network::parse(s)
                            .map_err(|e| errors.push(format!("trusted_proxies[{i}]"), e))
                            .ok()
                    });
                    next.trusted_proxies = nets.collect();
                    false
                }
                Edit::Consumer(id, c) => {
                    consumers.push((*id, *c));
                    false
                }
                Edit::Certificate(..) | Edit::TlsSettings(_) => {
                    tls_edits.push(*e);
                    false
                }
                _ => true,
            })
            .partition(|e| matches!(e, Edit::Upstream(..)));
        if globals.len() > 1 {
            errors.push("global_policies", "changed twice in one change");
        }
        if !tls_edits.is_empty() {
            tls::apply(&mut next, &tls_edits, &mut errors);
        }
        if let Some(g) = globals.first() {
            next.global = match g {
                Some(spec) => ringway_policy::compile(spec, "global_policies", &mut errors),
                None => Chain::default(),
            };
            next.path_normalization = g.and_then(|spec| spec.path_normalization).unwrap_or_default();
        }
        let mut seen = std::collections::HashSet::new();
        for (id, _) in &consumers {
            if !seen.insert(("consumers", *id)) {
                errors.push(format!("consumers.{id}"), "changed twice in one change");
            }
        }
        // Every changed consumer leaves the index before any comes back, so a key or a username
        // may move from one consumer to another in one change.
        // Deleted ones go; updated ones keep their slot (caches of verified credentials name
        // consumers by slot) but let go of their credentials for the moment.
        for (id, c) in &consumers {
            if let Some(slot) = next.consumers.by_id(id).map(|c| c.slot) {
                next.consumer_chains.set(slot, Chain::default());
            }
            match c {
                Some(_) => next.consumers.detach(id),
                None => next.consumers.edit(id, None, &mut errors),
            }
        }
        for (id, c) in &consumers {
            if let Some(c) = c {
                next.consumers.edit(id, Some(c), &mut errors);
                let chain =
                    ringway_policy::compile_consumer(&c.policies, &format!("consumers.{id}.policies"), &mut errors);
                if let Some(slot) = next.consumers.by_id(id).map(|c| c.slot) {
                    next.consumer_chains.set(slot, chain);
                }
            }
        }
        for e in ups.iter().chain(&routes) {
            let (kind, id) = match e {
                Edit::Upstream(id, _) => ("upstreams", *id),
                Edit::Route(id, _) => ("routes", *id),
                Edit::Consumer(..)
                | Edit::Global(_)
                | Edit::AccessLog(_)
                | Edit::LogShipping(_)
                | Edit::Tracing(_)
                | Edit::TrustedProxies(_)
                | Edit::Certificate(..)
                | Edit::TlsSettings(_) => continue,
            };
            if !seen.insert((kind, id)) {
                errors.push(format!("{kind}.{id}"), "changed twice in one change");
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Upstreams put in this call that did not compile: routes naming them are not blamed.
        let mut broken: Vec<&str> = Vec::new();
        let mut deleted: Vec<&str> = Vec::new();
        for e in ups {
            let Edit::Upstream(id, spec) = e else { continue };
            match spec {
                Some(u) => {
                    let old = next.upstreams.get(id).cloned();
                    let slot = match &old {
                        Some(old) => old.slot,
                        None => next.take_slot(),
                    };
                    match compile_upstream(id, u, slot, old.as_deref(), &mut errors) {
                        Some(up) => {
                            let up = Arc::new(up);
                            next.slots.set(slot as usize, Some(up.clone()));
                            next.upstreams.insert(id.to_string(), up);
                        }
                        None => broken.push(id),
                    }
                }
                None => {
                    if let Some(old) = next.upstreams.remove(id) {
                        next.slots.set(old.slot as usize, None);
                        next.free_slots.push_back(old.slot);
                        deleted.push(id);
                    }
                }
            }
        }
        for e in routes {
            let Edit::Route(id, spec) = e else { continue };
            if let Some(old) = next.routes.remove(id) {
                next.router.remove(&old.key, id);
                next.unuse(&old.upstream_id, id);
            }
            let Some(r) = spec else { continue };
            if let Some(route) = compile_route(id, r, &next.upstreams, &broken, &mut errors) {
                let route = Arc::new(route);
                next.router.insert(&route.key, route.clone());
                next.users.entry(route.upstream_id.clone()).or_default().insert(id.to_string());
                next.routes.insert(id.to_string(), route);
            }
        }
        for id in deleted {
            if next.upstreams.contains_key(id) {
                continue;
            }
            let users: Vec<&String> = next.routes_using(id).collect();
            if !users.is_empty() {
                let list = users.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ");
                errors.push(format!("upstreams.{id}"), format!("still used by route(s) {list}"));
            }
        }
        if errors.is_empty() {
            Ok(next)
        } else {
            Err(errors)
        }
    }

    fn take_slot(&mut self) -> u32 {
        match self.free_slots.pop_back() {
            Some(s) => s,
            None => {
                self.slots.push_back(None);
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn unuse(&mut self, upstream: &str, route: &str) {
        if let Some(set) = self.users.get_mut(upstream) {
            set.remove(route);
            if set.is_empty() {
                self.users.remove(upstream);
            }
        }
    }
}

fn compile_route(
    id: &str,
    r: &RouteSpec,
    upstreams: &OrdMap<String, Arc<Upstream>>,
    broken: &[&str],
    errors: &mut ConfigErrors,
) -> Option<Route> {
    let before = errors.0.len();
    let path = format!("routes.{id}");
    check_id(id, &path, errors);
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
            Ok(parsed) => {
                // Requests are matched in canonical form: a pattern in any other would never match.
                match crate::h1::path::canonical(p, &PathNormalization::default()) {
                    Ok(c) if c == p.as_str() => paths.push(parsed),
                    Ok(c) => errors.push(
                        format!("{path}.paths[{i}]"),
                        format!("path {p:?} is not in canonical form: write it as {c:?}"),
                    ),
                    Err(e) => errors.push(format!("{path}.paths[{i}]"), format!("path {p:?}: {e}")),
                }
            }
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
    let upstream = upstreams.get(&r.upstream).map(|u| u.slot);
    if upstream.is_none() && !broken.contains(&r.upstream.as_str()) {
        errors.push(format!("{path}.upstream"), format!("no upstream with id {:?}", r.upstream));
    }
    if let Some(sp) = &r.strip_prefix {
        if !sp.starts_with('/') || sp.len() < 2 || sp.ends_with('/') || sp.contains(['?', '#', '*', '{']) {
            errors.push(
                format!("{path}.strip_prefix"),
                "must be a path prefix such as \"/api\": starting with '/', not ending with '/'",
            );
        }
    }
    if r.max_body_bytes == Some(0) {
        errors.push(
            format!("{path}.max_body_bytes"),
            "must be at least 1 (omit it for the gateway's --max-body-bytes, 1 MiB by default)",
        );
    }
    let chain = ringway_policy::compile(&r.policies, &format!("{path}.policies"), errors);
    let capture =
        r.capture.as_ref().and_then(|c| crate::capture::CaptureRule::compile(c, &format!("{path}.capture"), errors));
    let websocket = match &r.websocket {
        None | Some(crate::config::WebSocketSpec::On(false)) => None,
        Some(crate::config::WebSocketSpec::On(true)) => Some(WEBSOCKET_IDLE),
        Some(crate::config::WebSocketSpec::Settings { idle_timeout }) => Some(crate::config::duration_or(
            Some(idle_timeout),
            WEBSOCKET_IDLE,
            format!("{path}.websocket.idle_timeout"),
            errors,
        )),
    };
    let upstream = upstream?;
    if errors.0.len() != before {
        return None;
    }
    let constraints = u32::from(!methods.is_empty()) + headers.len() as u32;
    Some(Route {
        id: id.to_string(),
        upstream_id: r.upstream.clone(),
        upstream,
        methods,
        headers,
        strip_prefix: r.strip_prefix.clone(),
        max_body_bytes: r.max_body_bytes,
        chain,
        path_normalization: r.policies.path_normalization,
        key: RouteKey { hosts, paths, priority: r.priority, constraints },
        capture,
        websocket,
    })
}

pub(super) fn check_id(id: &str, path: &str, errors: &mut ConfigErrors) {
    if id.is_empty()
        || id.len() > 128
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        errors.push(path, "an id is 1 to 128 letters, digits, '-', '_' or '.'");
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
    fn path_normalization_from_global_policies_and_routes() {
        use ringway_policy::{EscapedSlashes, PathNormalization};
        let spec = doc(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}},
                "routes": {"own": {"paths": ["/a/*"], "upstream": "u",
                                   "policies": {"path_normalization": {"escaped_slashes": "decode"}}},
                           "plain": {"paths": ["/b"], "upstream": "u"}},
                "global_policies": {"path_normalization": {"merge_slashes": false}}}"#);
        let s = Snapshot::compile(&spec, 1).unwrap();
        assert!(!s.path_normalization.merge_slashes);
        let own = s.path_normalization(&s.routes["own"]);
        // A route's own replaces the global one whole, like any policy.
        assert_eq!(*own, PathNormalization { escaped_slashes: EscapedSlashes::Decode, ..Default::default() });
        assert_eq!(s.path_normalization(&s.routes["plain"]), &s.path_normalization);
        let s2 = s.edit([Edit::Global(None)], 2).unwrap();
        assert_eq!(s2.path_normalization, PathNormalization::default());

        let bad = doc(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}},
                "routes": {"r": {"paths": ["/ok", "/l%6fgin", "/a%2fb", "/a%5Cb"], "upstream": "u"}}}"#);
        let errs = Snapshot::compile(&bad, 1).unwrap_err();
        let got: Vec<_> = errs.0.iter().map(|e| (e.path.as_str(), e.message.as_str())).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, "routes.r.paths[1]");
        assert!(got[0].1.contains("\"/login\""), "{}", got[0].1);
        assert!(got[1].1.contains("\"/a%2Fb\""), "{}", got[1].1);
        assert!(got[2].1.contains("backslash"), "{}", got[2].1);
    }

    #[test]
    fn strip_prefix_at_segment_boundary() {
        let spec = doc(r#"{"upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}},
                "routes": {"r": {"paths": ["/api/*"], "upstream": "u", "strip_prefix": "/api"}}}"#);
        let s = Snapshot::compile(&spec, 1).unwrap();
        let r = &s.routes["r"];
        assert_eq!(r.forward_path("/api/users"), "/users");
        assert_eq!(r.forward_path("/api"), "/");
        assert_eq!(r.forward_path("/apix"), "/apix");
    }

    fn route(paths: &[&str], hosts: &[&str], upstream: &str, priority: i32) -> RouteSpec {
        RouteSpec {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            upstream: upstream.into(),
            priority,
            ..Default::default()
        }
    }

    fn upstream(port: u16) -> UpstreamSpec {
        UpstreamSpec {
            targets: vec![crate::config::TargetSpec { addr: format!("127.0.0.1:{port}"), weight: 1 }],
            ..Default::default()
        }
    }

    fn lookup<'s>(s: &'s Snapshot, host: &str, path: &str) -> Option<(&'s str, u16)> {
        s.router.find(host, path, |_| true).map(|r| (r.id.as_str(), s.upstream(r.upstream).targets[0].port()))
    }

    #[test]
    fn edits_leave_the_previous_snapshot_untouched() {
        let u1 = upstream(1);
        let u2 = upstream(2);
        let a = route(&["/a"], &[], "u1", 0);
        let v1 = Snapshot::default().edit([Edit::Upstream("u1", Some(&u1)), Edit::Route("a", Some(&a))], 1).unwrap();
        let b = route(&["/a"], &[], "u2", 1);
        let v2 = v1
            .edit([Edit::Upstream("u2", Some(&u2)), Edit::Route("b", Some(&b)), Edit::Upstream("u1", Some(&u2))], 2)
            .unwrap();
        assert_eq!(lookup(&v1, "h", "/a"), Some(("a", 1)));
        assert_eq!(lookup(&v2, "h", "/a"), Some(("b", 2)));
        // A changed upstream keeps its slot, so routes that use it see the new targets.
        assert_eq!(v2.upstreams["u1"].slot, v1.upstreams["u1"].slot);
        let v3 = v2.edit([Edit::Route("b", None)], 3).unwrap();
        assert_eq!(lookup(&v3, "h", "/a"), Some(("a", 2)));
        assert_eq!(v3.routes_using("u2").count(), 0);
        assert_eq!(v2.routes_using("u2").collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn refused_edits_name_every_problem() {
        let u1 = upstream(1);
        let a = route(&["/a"], &[], "u1", 0);
        let v1 = Snapshot::default().edit([Edit::Upstream("u1", Some(&u1)), Edit::Route("a", Some(&a))], 1).unwrap();
        let e = v1.edit([Edit::Upstream("u1", None)], 2).unwrap_err();
        assert_eq!(e.0[0].path, "upstreams.u1");
        assert!(e.0[0].message.contains("route(s) a"), "{}", e.0[0].message);
        let bad = route(&["x"], &[], "nope", 0);
        let e = v1.edit([Edit::Route("a", Some(&bad))], 2).unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["routes.a.paths[0]", "routes.a.upstream"]);
        let e = v1.edit([Edit::Route("a", None), Edit::Route("a", Some(&a))], 2).unwrap_err();
        assert_eq!(e.0[0].path, "routes.a");
        // Deleting the route and its upstream together is fine.
        let v2 = v1.edit([Edit::Route("a", None), Edit::Upstream("u1", None)], 2).unwrap();
        assert!(v2.routes.is_empty() && v2.upstreams.is_empty());
        assert_eq!(lookup(&v1, "h", "/a"), Some(("a", 1)));
    }

    #[test]
    fn consumers_changed_together_keep_their_slots_and_may_swap_keys() {
        use ringway_policy::consumer::{fingerprint, KeyCredentialSpec, KeyDigest};
        let consumer = |key: &str| {
            let mut c = ringway_policy::ConsumerSpec::default();
            c.credentials.key_auth.push(KeyCredentialSpec {
                key: None,
                digest: Some(KeyDigest::of(key.as_bytes()).hex()),
                fingerprint: Some(fingerprint(key.as_bytes())),
            });
            c
        };
        let (ka, kb) = (consumer("key-of-a-0123456789"), consumer("key-of-b-0123456789"));
        let v1 = Snapshot::default().edit([Edit::Consumer("a", Some(&ka)), Edit::Consumer("b", Some(&kb))], 1).unwrap();
        let slot = |s: &Snapshot, id: &str| s.consumers.by_id(id).unwrap().slot;
        let owner = |s: &Snapshot, key: &str| {
            s.consumers.key(&KeyDigest::of(key.as_bytes())).and_then(|o| s.consumers.get(o.slot)).map(|c| c.id.clone())
        };
        // Both change in one edit, each taking the other's key.
        let v2 = v1.edit([Edit::Consumer("a", Some(&kb)), Edit::Consumer("b", Some(&ka))], 2).unwrap();
        assert_eq!((slot(&v2, "a"), slot(&v2, "b")), (slot(&v1, "a"), slot(&v1, "b")));
        assert_eq!(owner(&v2, "key-of-a-0123456789").as_deref(), Some("b"));
        assert_eq!(owner(&v2, "key-of-b-0123456789").as_deref(), Some("a"));
        assert_eq!(owner(&v1, "key-of-a-0123456789").as_deref(), Some("a"), "the earlier snapshot is untouched");
        // One key for two consumers is refused.
        assert!(v2.edit([Edit::Consumer("a", Some(&ka))], 3).is_err());
    }

    #[test]
    fn many_edits_answer_like_one_compile() {
        // A random walk of edits, checked against compiling the final document from scratch.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let paths = ["/a", "/a/*", "/a/{id}", "/b/{x}/c", "/*", "/b/*", "/a/b"];
        let hosts = ["", "h.com", "*.h.com"];
        let mut spec = ConfigSpec::default();
        for u in 0..4u16 {
            spec.upstreams.insert(format!("u{u}"), upstream(u + 1));
        }
        let mut snap = Snapshot::compile(&spec, 0).unwrap();
        for step in 1..400u64 {
            let id = format!("r{}", rand(30));
            let r = if rand(4) == 0 {
                None
            } else {
                let h = hosts[rand(3) as usize];
                let hs: Vec<&str> = if h.is_empty() { vec![] } else { vec![h] };
                Some(route(&[paths[rand(7) as usize]], &hs, &format!("u{}", rand(4)), rand(3) as i32))
            };
            snap = snap.edit([Edit::Route(&id, r.as_ref())], step).unwrap();
            match r {
                Some(r) => spec.routes.insert(id, r),
                None => spec.routes.remove(&id),
            };
        }
        let fresh = Snapshot::compile(&spec, 0).unwrap();
        assert_eq!(snap.routes.len(), fresh.routes.len());
        for host in ["h.com", "x.h.com", "other"] {
            for path in ["/a", "/a/1", "/a/b", "/b/1/c", "/b/1", "/zzz", "/a/1/2"] {
                assert_eq!(lookup(&snap, host, path), lookup(&fresh, host, path), "{host}{path}");
            }
        }
    }
}
