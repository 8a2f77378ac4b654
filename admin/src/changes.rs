//! Changes to the document: what a write changes ([`ResourceChange`]), the diff it makes
//! ([`Diff`]), the store operations that keep it, and the document rebuilt from the store.

use std::collections::BTreeMap;

use ringway_policy::PoliciesSpec;
use ringway_proxy::config::{RouteSpec, UpstreamSpec};
use ringway_proxy::snapshot::Edit;
use ringway_proxy::ConfigSpec;
use ringway_store::{Op, StoredState};
use serde::Serialize;

use crate::state::{
    ACCESS_LOG, CERTIFICATES, CONSUMERS, GLOBAL, GLOBAL_ID, LOG_SHIPPING, PROTOS, ROUTES, SETTINGS, TLS, TRACING,
    TRUSTED_PROXIES, UPSTREAMS,
};

/// What a change adds, changes and removes, per kind.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct KindDiff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub upstreams: KindDiff,
    pub routes: KindDiff,
    pub consumers: KindDiff,
    pub certificates: KindDiff,
    pub protos: KindDiff,
    pub global_policies: KindDiff,
    pub settings: KindDiff,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

/// One resource created or replaced (`Some`) or deleted (`None`).
#[derive(Debug, Clone)]
pub enum ResourceChange {
    /// Boxed, as a route's: the specs are large beside the other changes.
    Upstream(String, Option<Box<UpstreamSpec>>),
    /// Boxed: a route's spec is several times the size of an upstream's.
    Route(String, Option<Box<RouteSpec>>),
    /// A consumer, its secrets sealed.
    Consumer(String, Option<Box<ringway_policy::ConsumerSpec>>),
    /// The global policies (`None`, or empty: none).
    Global(Option<Box<PoliciesSpec>>),
    /// The document's `access_log` (`None`: not set).
    AccessLog(Option<String>),
    /// The document's `log_shipping` (`None`: not set).
    LogShipping(Option<Box<ringway_proxy::shipping::LogShippingSpec>>),
    /// The document's `tracing` (`None`: not set).
    Tracing(Option<Box<ringway_proxy::traces::TracingSpec>>),
    /// The document's `trusted_proxies` (empty: none).
    TrustedProxies(Vec<String>),
    /// A certificate, its key sealed.
    Certificate(String, Option<Box<ringway_proxy::tls::CertificateSpec>>),
    /// The document's `tls` (`None`: not set).
    Tls(Option<ringway_proxy::tls::TlsSettingsSpec>),
    /// A service description (descriptor set or `.proto` sources).
    Proto(String, Option<Box<ringway_proxy::grpc::proto::ProtoSpec>>),
}

impl ResourceChange {
    /// Makes the change to the document `spec`.
    pub fn apply_to(self, spec: &mut ConfigSpec) {
        match self {
            ResourceChange::Upstream(id, Some(v)) => {
                spec.upstreams.insert(id, *v);
            }
            ResourceChange::Upstream(id, None) => {
                spec.upstreams.remove(&id);
            }
            ResourceChange::Route(id, Some(v)) => {
                spec.routes.insert(id, *v);
            }
            ResourceChange::Route(id, None) => {
                spec.routes.remove(&id);
            }
            ResourceChange::Consumer(id, Some(v)) => {
                spec.consumers.insert(id, *v);
            }
            ResourceChange::Consumer(id, None) => {
                spec.consumers.remove(&id);
            }
            ResourceChange::Global(v) => spec.global_policies = v.map(|b| *b).unwrap_or_default(),
            ResourceChange::AccessLog(v) => spec.access_log = v,
            ResourceChange::LogShipping(v) => spec.log_shipping = v.map(|b| *b),
            ResourceChange::Tracing(v) => spec.tracing = v.map(|b| *b),
            ResourceChange::TrustedProxies(v) => spec.trusted_proxies = v,
            ResourceChange::Certificate(id, Some(v)) => {
                spec.certificates.insert(id, *v);
            }
            ResourceChange::Certificate(id, None) => {
                spec.certificates.remove(&id);
            }
            ResourceChange::Tls(v) => spec.tls = v,
            ResourceChange::Proto(id, Some(v)) => {
                spec.protos.insert(id, *v);
            }
            ResourceChange::Proto(id, None) => {
                spec.protos.remove(&id);
            }
        }
    }

    pub(crate) fn edit(&self) -> Edit<'_> {
        match self {
            ResourceChange::Upstream(id, v) => Edit::Upstream(id, v.as_deref()),
            ResourceChange::Route(id, v) => Edit::Route(id, v.as_deref()),
            ResourceChange::Consumer(id, v) => Edit::Consumer(id, v.as_deref()),
            ResourceChange::Global(v) => Edit::Global(v.as_deref()),
            ResourceChange::AccessLog(v) => Edit::AccessLog(v.as_deref()),
            ResourceChange::LogShipping(v) => Edit::LogShipping(v.as_deref()),
            ResourceChange::Tracing(v) => Edit::Tracing(v.as_deref()),
            ResourceChange::TrustedProxies(v) => Edit::TrustedProxies(v),
            ResourceChange::Certificate(id, v) => Edit::Certificate(id, v.as_deref()),
            ResourceChange::Tls(v) => Edit::TlsSettings(v.as_ref()),
            ResourceChange::Proto(id, v) => Edit::Proto(id, v.as_deref()),
        }
    }
}

fn diff_map<T: PartialEq>(
    old: &BTreeMap<String, T>,
    mut new: BTreeMap<String, T>,
    make: impl Fn(String, Option<T>) -> ResourceChange,
    out: &mut Vec<ResourceChange>,
) {
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        out.push(make(id.clone(), None));
    }
    while let Some((id, v)) = new.pop_first() {
        if old.get(&id) != Some(&v) {
            out.push(make(id, Some(v)));
        }
    }
}

/// The changes that turn document `old` into `new`.
pub fn changes_between(old: &ConfigSpec, new: ConfigSpec) -> Vec<ResourceChange> {
    let mut out = Vec::new();
    diff_map(&old.upstreams, new.upstreams, |id, v| ResourceChange::Upstream(id, v.map(Box::new)), &mut out);
    diff_map(&old.routes, new.routes, |id, v| ResourceChange::Route(id, v.map(Box::new)), &mut out);
    diff_map(&old.consumers, new.consumers, |id, v| ResourceChange::Consumer(id, v.map(Box::new)), &mut out);
    diff_map(&old.certificates, new.certificates, |id, v| ResourceChange::Certificate(id, v.map(Box::new)), &mut out);
    diff_map(&old.protos, new.protos, |id, v| ResourceChange::Proto(id, v.map(Box::new)), &mut out);
    if old.tls != new.tls {
        out.push(ResourceChange::Tls(new.tls));
    }
    if old.global_policies != new.global_policies {
        let g = new.global_policies;
        out.push(ResourceChange::Global((g != PoliciesSpec::default()).then(|| Box::new(g))));
    }
    if old.access_log != new.access_log {
        out.push(ResourceChange::AccessLog(new.access_log));
    }
    if old.log_shipping != new.log_shipping {
        out.push(ResourceChange::LogShipping(new.log_shipping.map(Box::new)));
    }
    if old.tracing != new.tracing {
        out.push(ResourceChange::Tracing(new.tracing.map(Box::new)));
    }
    if old.trusted_proxies != new.trusted_proxies {
        out.push(ResourceChange::TrustedProxies(new.trusted_proxies));
    }
    out
}

/// The diff from `old` to `new` and the store operations that make it.
pub fn diff(old: &ConfigSpec, new: ConfigSpec) -> (Diff, Vec<Op>) {
    let (_, d, ops) = effective(old, changes_between(old, new));
    (d, ops)
}

/// Drops the changes that change nothing in `spec`; returns the rest with their diff and the
/// store operations that make them (only what changed is written).
pub(crate) fn effective(spec: &ConfigSpec, changes: Vec<ResourceChange>) -> (Vec<ResourceChange>, Diff, Vec<Op>) {
    fn one<T: PartialEq + Serialize>(
        kind: &str,
        id: &str,
        value: Option<&T>,
        old: Option<&T>,
        d: &mut KindDiff,
        ops: &mut Vec<Op>,
    ) -> bool {
        match (value, old) {
            (None, None) => return false,
            (Some(v), Some(o)) if v == o => return false,
            (None, Some(_)) => {
                d.removed.push(id.to_string());
                ops.push(Op::delete(kind, id));
                return true;
            }
            (Some(_), Some(_)) => d.changed.push(id.to_string()),
            (Some(_), None) => d.added.push(id.to_string()),
        }
        ops.push(Op::put(kind, id, serde_json::to_vec(&value).unwrap_or_default()));
        true
    }
    let mut d = Diff::default();
    let mut ops = Vec::new();
    let kept = changes
        .into_iter()
        .filter(|c| match c {
            ResourceChange::Upstream(id, v) => {
                one(UPSTREAMS, id, v.as_deref(), spec.upstreams.get(id), &mut d.upstreams, &mut ops)
            }
            ResourceChange::Route(id, v) => one(ROUTES, id, v.as_deref(), spec.routes.get(id), &mut d.routes, &mut ops),
            ResourceChange::Consumer(id, v) => {
                one(CONSUMERS, id, v.as_deref(), spec.consumers.get(id), &mut d.consumers, &mut ops)
            }
            ResourceChange::Global(v) => {
                let old = Some(&spec.global_policies).filter(|g| **g != PoliciesSpec::default());
                let new = v.as_deref().filter(|g| **g != PoliciesSpec::default());
                one(GLOBAL, GLOBAL_ID, new, old, &mut d.global_policies, &mut ops)
            }
            ResourceChange::AccessLog(v) => {
                one(SETTINGS, ACCESS_LOG, v.as_ref(), spec.access_log.as_ref(), &mut d.settings, &mut ops)
            }
            ResourceChange::LogShipping(v) => {
                one(SETTINGS, LOG_SHIPPING, v.as_deref(), spec.log_shipping.as_ref(), &mut d.settings, &mut ops)
            }
            ResourceChange::Tracing(v) => {
                one(SETTINGS, TRACING, v.as_deref(), spec.tracing.as_ref(), &mut d.settings, &mut ops)
            }
            ResourceChange::Certificate(id, v) => {
                one(CERTIFICATES, id, v.as_deref(), spec.certificates.get(id), &mut d.certificates, &mut ops)
            }
            ResourceChange::Tls(v) => one(SETTINGS, TLS, v.as_ref(), spec.tls.as_ref(), &mut d.settings, &mut ops),
            ResourceChange::Proto(id, v) => one(PROTOS, id, v.as_deref(), spec.protos.get(id), &mut d.protos, &mut ops),
            ResourceChange::TrustedProxies(v) => {
                let new = Some(v).filter(|v| !v.is_empty());
                let old = Some(&spec.trusted_proxies).filter(|v| !v.is_empty());
                one(SETTINGS, TRUSTED_PROXIES, new, old, &mut d.settings, &mut ops)
            }
        })
        .collect();
    for k in [
        &mut d.upstreams,
        &mut d.routes,
        &mut d.consumers,
        &mut d.certificates,
        &mut d.protos,
        &mut d.global_policies,
        &mut d.settings,
    ] {
        k.added.sort();
        k.changed.sort();
        k.removed.sort();
    }
    (kept, d, ops)
}

/// Rebuilds a document from stored resources.
pub fn spec_from_state(state: &StoredState) -> Result<ConfigSpec, String> {
    let mut spec = ConfigSpec::default();
    for ((kind, id), bytes) in &state.resources {
        let bad = |e: serde_json::Error| format!("stored {kind}/{id} is unreadable: {e}");
        match kind.as_str() {
            UPSTREAMS => {
                spec.upstreams.insert(id.clone(), serde_json::from_slice(bytes).map_err(bad)?);
            }
            ROUTES => {
                spec.routes.insert(id.clone(), serde_json::from_slice(bytes).map_err(bad)?);
            }
            CONSUMERS => {
                spec.consumers.insert(id.clone(), serde_json::from_slice(bytes).map_err(bad)?);
            }
            CERTIFICATES => {
                spec.certificates.insert(id.clone(), serde_json::from_slice(bytes).map_err(bad)?);
            }
            PROTOS => {
                spec.protos.insert(id.clone(), serde_json::from_slice(bytes).map_err(bad)?);
            }
            GLOBAL => spec.global_policies = serde_json::from_slice(bytes).map_err(bad)?,
            SETTINGS if id == TLS => spec.tls = serde_json::from_slice(bytes).map_err(bad)?,
            SETTINGS if id == ACCESS_LOG => spec.access_log = serde_json::from_slice(bytes).map_err(bad)?,
            SETTINGS if id == LOG_SHIPPING => spec.log_shipping = serde_json::from_slice(bytes).map_err(bad)?,
            SETTINGS if id == TRACING => spec.tracing = serde_json::from_slice(bytes).map_err(bad)?,
            SETTINGS if id == TRUSTED_PROXIES => spec.trusted_proxies = serde_json::from_slice(bytes).map_err(bad)?,
            other => return Err(format!("stored resource of unknown kind {other:?}")),
        }
    }
    Ok(spec)
}
