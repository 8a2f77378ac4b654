//! The compiled, immutable configuration every worker serves from, and the compile step that
//! turns a [`ConfigSpec`] into it, reporting every problem with its JSON path.

use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};

use ringway_policy::{
    is_valid_header_name, is_valid_header_value, Chain, ConfigErrors, Layered, PathNormalization, PoliciesSpec,
};

use crate::config::{ConfigSpec, RouteSpec, UpstreamSpec};
use crate::router::{HostPattern, Indexed, PathPattern, RouteKey, Router};

mod grpc;
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
    /// Requests are HTTP/JSON calls of a gRPC method.
    pub transcode: Option<crate::grpc::transcode::Transcode>,
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
    Proto(&'a str, Option<&'a crate::grpc::proto::ProtoSpec>),
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
    /// Service descriptions by id.
    pub protos: OrdMap<String, Arc<crate::grpc::proto::Proto>>,
    /// Route ids by the proto they transcode with.
    proto_users: OrdMap<String, OrdSet<String>>,
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
            .chain(std::iter::once(Edit::TlsSettings(spec.tls.as_ref())))
            .chain(spec.protos.iter().map(|(id, p)| Edit::Proto(id, Some(p))));
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

    /// Ids of the routes that transcode with proto `id`.
    pub fn proto_users(&self, id: &str) -> impl Iterator<Item = &String> {
        self.proto_users.get(id).into_iter().flat_map(|s| s.iter())
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
        let mut proto_edits = Vec::new();
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
                Edit::Proto(id, p) => {
                    proto_edits.push((*id, *p));
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
        let protos_edited = grpc::apply(&mut next, &proto_edits, &mut errors);
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
                | Edit::TlsSettings(_)
                | Edit::Proto(..) => continue,
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
                if let Some(t) = &old.transcode {
                    unuse(&mut next.proto_users, &t.proto, id);
                }
            }
            let Some(r) = spec else { continue };
            if let Some(mut route) = compile_route(id, r, &next.upstreams, &broken, &mut errors) {
                let upstream = next.upstreams.get(&route.upstream_id).map(|u| &**u);
                route.transcode = grpc::compile_route(r, &format!("routes.{id}"), &next.protos, upstream, &mut errors);
                if let Some(t) = &route.transcode {
                    next.proto_users.entry(t.proto.clone()).or_default().insert(id.to_string());
                }
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
        grpc::check_users(&next, &protos_edited, &mut errors);
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
        unuse(&mut self.users, upstream, route);
    }
}

/// `route` no longer uses `what`.
fn unuse(users: &mut OrdMap<String, OrdSet<String>>, what: &str, route: &str) {
    if let Some(set) = users.get_mut(what) {
        set.remove(route);
        if set.is_empty() {
            users.remove(what);
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
        transcode: None,
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
mod tests;
