//! The admin API under `/admin/v1`: resources (`upstreams`, `routes`), the whole document,
//! revisions and rollback, status; and `GET /metrics`. Runs on the admin thread only.

use std::hash::{BuildHasher, Hasher, RandomState};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use ringway_policy::{ConfigError, ConfigErrors};
use ringway_proxy::ConfigSpec;

use crate::http::{syntax_of, Request, Response};
use crate::metrics::{self, MetricsSource};
use crate::parse::{self, DocError, Syntax};
use crate::resources::{delete_one, get_one, list, merge_patch, put_one, typed};
use crate::state::{
    spec_from_state, AdminState, ApiError, ResourceChange, CERTIFICATES, CONSUMERS, GLOBAL, PROTOS, ROUTES, UPSTREAMS,
};

/// What the API needs besides the state.
pub struct ApiContext {
    pub token: Option<AdminToken>,
    pub version: &'static str,
    /// The node's client connection caps (open and refused connections for the status).
    pub caps: Option<std::sync::Arc<ringway_proxy::ConnectionCaps>>,
    /// What `GET /metrics` renders.
    pub metrics: MetricsSource,
    /// Metrics and the access log.
    pub telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
    /// Moves the gateway's wall clock (only with `--test-clock`).
    pub clock: Option<ringway_proxy::clock::ClockHand>,
}

/// The admin token, kept only as a keyed digest. A presented token is digested with the same
/// key, random per process, and the two fixed-length digests are compared without an early
/// exit, so the time a check takes tells nothing about the token, its length included.
pub struct AdminToken {
    key: RandomState,
    digest: [u64; 2],
}

impl AdminToken {
    pub fn new(token: &[u8]) -> AdminToken {
        let key = RandomState::new();
        let digest = Self::digest_with(&key, token);
        AdminToken { key, digest }
    }

    /// 128 bits: two outputs of the keyed hash (SipHash, keyed from the OS's random source).
    fn digest_with(key: &RandomState, v: &[u8]) -> [u64; 2] {
        [0u8, 1].map(|i| {
            let mut h = key.build_hasher();
            h.write_u8(i);
            h.write(v);
            h.finish()
        })
    }

    /// Whether `given` is the token.
    pub fn matches(&self, given: &[u8]) -> bool {
        let d = Self::digest_with(&self.key, given);
        let diff = (d[0] ^ self.digest[0]) | (d[1] ^ self.digest[1]);
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

fn authorized(ctx: &ApiContext, req: &Request) -> bool {
    let Some(token) = &ctx.token else { return true };
    let given = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| req.header("x-admin-token"))
        .unwrap_or("");
    token.matches(given.as_bytes())
}

fn err(e: ApiError) -> Response {
    let mut v = json!({"error": e.code, "message": e.message, "status": e.status});
    if !e.problems.is_empty() {
        v["problems"] = serde_json::to_value(&e.problems).unwrap_or(Value::Null);
    }
    Response::json(e.status, &v)
}

/// Handles one request.
pub fn handle(state: &mut AdminState, ctx: &ApiContext, req: &Request) -> Response {
    // The status page and its scripts hold no data: served without the token, which the page
    // then sends with every API call it makes.
    if let Some(page) = crate::page::asset(&req.path) {
        if !matches!(req.method.as_str(), "GET" | "HEAD") {
            return Response::error(
                405,
                "method_not_allowed",
                format!("{} is not allowed on {}", req.method, req.path),
            );
        }
        return page;
    }
    if !authorized(ctx, req) {
        return Response::error(401, "unauthorized", "a valid admin token is required (Authorization: Bearer TOKEN)");
    }
    if req.path == "/metrics" {
        if !matches!(req.method.as_str(), "GET" | "HEAD") {
            return Response::error(405, "method_not_allowed", format!("{} is not allowed on /metrics", req.method));
        }
        return metrics_page(ctx, state);
    }
    let Some(rest) = req.path.strip_prefix("/admin/v1/") else {
        return Response::error(404, "not_found", format!("no admin endpoint at {}", req.path));
    };
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let m = req.method.as_str();
    let result = match (m, parts.as_slice()) {
        ("GET", ["status"]) => Ok(status(state, ctx)),
        ("GET", ["stats"]) => stats(ctx, req),
        ("GET", ["config"]) => Ok(get_config(state, req)),
        ("PUT", ["config"]) => put_config(state, req),
        ("GET", ["revisions"]) => revisions(state, req),
        ("DELETE", ["cache"]) => purge(state, req),
        ("GET", ["global_policies"]) => {
            Ok(Response::json(200, &json!({"revision": state.revision(), "value": global_shown(state)})))
        }
        ("PUT", ["global_policies"]) => put_global(state, req, false),
        ("PATCH", ["global_policies"]) => put_global(state, req, true),
        ("DELETE", ["global_policies"]) => state
            .apply_changes(vec![ResourceChange::Global(None)], "delete the global policies".into())
            .map(|(rev, _)| Response::json(200, &json!({"revision": rev, "value": {}}))),
        ("POST", ["revisions", rev, "rollback"]) => rollback(state, rev),
        ("POST", ["clock"]) => move_clock(ctx, req),
        ("GET", ["upstreams", id, "health"]) => upstream_health(state, id),
        ("GET", [kind]) if is_kind(kind) => Ok(list(state, kind)),
        ("GET", [kind, id]) if is_kind(kind) => get_one(state, kind, id),
        ("PUT", [kind, id]) if is_kind(kind) => put_one(state, kind, id, req, false),
        ("PATCH", [kind, id]) if is_kind(kind) => put_one(state, kind, id, req, true),
        ("DELETE", [kind, id]) if is_kind(kind) => delete_one(state, kind, id),
        (
            _,
            ["status"]
            | ["stats"]
            | ["config"]
            | ["revisions"]
            | ["revisions", _, "rollback"]
            | ["cache"]
            | ["global_policies"]
            | ["upstreams", _, "health"],
        ) => Err(ApiError::new(405, "method_not_allowed", format!("{m} is not allowed on {}", req.path))),
        (_, [kind] | [kind, _]) if is_kind(kind) => {
            Err(ApiError::new(405, "method_not_allowed", format!("{m} is not allowed on {}", req.path)))
        }
        _ => Err(ApiError::new(404, "not_found", format!("no admin endpoint at {}", req.path))),
    };
    result.unwrap_or_else(err)
}

/// `GET /metrics` (the metrics listener's requests come here directly: no token there).
pub fn metrics_page(ctx: &ApiContext, state: &AdminState) -> Response {
    let mut out = String::with_capacity(4096);
    metrics::render(&mut out, &ctx.metrics);
    ringway_proxy::resilience::render_metrics(&mut out, state.snapshot());
    crate::certs::render_expiry(&mut out, state.snapshot());
    Response { status: 200, content_type: metrics::CONTENT_TYPE, body: out.into_bytes() }
}

/// `PUT` (or with `patch`, a JSON merge patch onto the current value) of the global policies.
fn put_global(state: &mut AdminState, req: &Request, patch: bool) -> Result<Response, ApiError> {
    let body: Value = parse_body(req, GLOBAL, Documents::JsonOnly)?;
    let value = if patch {
        let mut base = serde_json::to_value(&state.spec().global_policies).unwrap_or(Value::Null);
        merge_patch(&mut base, &body);
        base
    } else {
        body
    };
    let mut spec: ringway_policy::PoliciesSpec = typed(value, GLOBAL)?;
    let old = &state.spec().global_policies;
    crate::secrets::seal_policies(GLOBAL, &mut spec, Some(old), &state.secrets).map_err(ApiError::invalid)?;
    let verb = if patch { "patch" } else { "replace" };
    let (rev, _) = state
        .apply_changes(vec![ResourceChange::Global(Some(Box::new(spec)))], format!("{verb} the global policies"))?;
    Ok(Response::json(200, &json!({"revision": rev, "value": global_shown(state)})))
}

/// The global policies as shown: no sealed secret.
fn global_shown(state: &AdminState) -> Value {
    let mut v = serde_json::to_value(&state.spec().global_policies).unwrap_or(Value::Null);
    crate::secrets::strip_policies(&mut v);
    v
}

/// Decodes `%XX` escapes (and `+` as a space) in a query value.
fn unescape(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `DELETE /admin/v1/cache?route=ID&path=/exact` or `...&prefix=/some/prefix`.
fn purge(state: &mut AdminState, req: &Request) -> Result<Response, ApiError> {
    let param = |name: &str| -> Result<Option<String>, ApiError> {
        match req.query_param(name) {
            None => Ok(None),
            Some(v) => unescape(v)
                .map(Some)
                .ok_or_else(|| ApiError::new(400, "bad_query", format!("query parameter {name} is not valid UTF-8"))),
        }
    };
    let route = param("route")?.ok_or_else(|| ApiError::new(400, "bad_query", "route=ID is required"))?;
    let (path, prefix) = (param("path")?, param("prefix")?);
    let target = match (&path, &prefix) {
        (Some(p), None) | (None, Some(p)) => p,
        _ => {
            return Err(ApiError::new(400, "bad_query", "give exactly one of path=/exact/path and prefix=/some/prefix"))
        }
    };
    if !target.starts_with('/') {
        return Err(ApiError::new(400, "bad_query", "a path or prefix starts with '/'"));
    }
    if !state.spec().routes.contains_key(&route) {
        return Err(ApiError::new(404, "not_found", format!("no route with id {route:?}")));
    }
    // Stored responses are filed under the path as routing reads it (canonical, without a
    // trailing slash or `;` parameters where those are ignored): purge by the same reading.
    let (path, prefix) = {
        let snapshot = state.snapshot().clone();
        let opts = match snapshot.routes.get(&route) {
            Some(r) => *snapshot.path_normalization(r),
            None => snapshot.path_normalization,
        };
        let read = |p: &str, key: bool| -> Result<String, ApiError> {
            let c = ringway_proxy::h1::path::canonical(p, &opts)
                .map_err(|e| ApiError::new(400, "bad_query", format!("path {p:?}: {e}")))?;
            Ok(if key { ringway_proxy::h1::path::routing_key(&c, &opts).into_owned() } else { c.into_owned() })
        };
        (path.as_deref().map(|p| read(p, true)).transpose()?, prefix.as_deref().map(|p| read(p, false)).transpose()?)
    };
    let removed = state.purge(&route, path.as_deref(), prefix.as_deref())?;
    Ok(Response::json(200, &json!({"route": route, "path": path, "prefix": prefix, "removed": removed})))
}

/// `POST /admin/v1/clock {"advance_ms": N}`: moves the wall clock of a gateway started with
/// `--test-clock` forward by N milliseconds.
fn move_clock(ctx: &ApiContext, req: &Request) -> Result<Response, ApiError> {
    let Some(hand) = &ctx.clock else {
        return Err(ApiError::new(
            404,
            "not_found",
            "the clock can be moved only in a gateway started with --test-clock",
        ));
    };
    let body: Value = parse_body(req, "", Documents::JsonOnly)?;
    let Some(ms) = body.get("advance_ms").and_then(Value::as_u64).filter(|ms| *ms <= 365 * 86_400_000) else {
        return Err(ApiError::new(
            400,
            "bad_body",
            "expected {\"advance_ms\": N} with N from 0 to a year in milliseconds",
        ));
    };
    Ok(Response::json(200, &json!({"skew_ms": hand.advance(ms)})))
}

/// `GET /admin/v1/upstreams/{id}/health`: the node's view of the upstream's targets and
/// breaker, with the latest decisions and why they were made.
fn upstream_health(state: &mut AdminState, id: &str) -> Result<Response, ApiError> {
    if !state.spec().upstreams.contains_key(id) {
        return Err(ApiError::new(404, "not_found", format!("no upstream {id:?}")));
    }
    match state.health_report(id) {
        Some(r) => Ok(Response::json(200, &serde_json::to_value(r).unwrap_or_default())),
        None => Err(ApiError::new(503, "health_unavailable", "the health thread did not answer in time")),
    }
}

fn is_kind(k: &str) -> bool {
    k == UPSTREAMS || k == ROUTES || k == CONSUMERS || k == CERTIFICATES || k == PROTOS
}

fn status(state: &mut AdminState, ctx: &ApiContext) -> Response {
    if state.report().is_err() {
        state.refresh();
    }
    let drivers: Vec<&str> = state.worker_status.iter().map(|w| w.driver).collect();
    Response::json(
        200,
        &json!({
            "version": ctx.version,
            "driver": drivers.first().copied().unwrap_or("none"),
            "revision": state.revision(),
            "workers": state.worker_status,
            "last_rollout_ms": state.last_rollout.map(|d| d.as_secs_f64() * 1e3),
            "connections": ctx.caps.as_ref().map(|c| json!({
                "open": c.open(),
                "refused": c.refused.load(std::sync::atomic::Ordering::Relaxed),
            })),
            "access_log": ctx.telemetry.as_ref().map(|t| json!({
                "destination": t.destination(),
                "dropped": t.log_dropped(),
            })),
            "tracing": ctx.telemetry.as_ref().and_then(|t| t.tracing().map(|s| (s, t.trace_counts.clone()))).map(|(s, c)| {
                let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                json!({
                    "endpoint": format!("{}://{}{}", if s.post.tls.is_some() { "https" } else { "http" }, s.post.host, s.post.path),
                    "sample_ratio": s.ratio,
                    "exported": get(&c.exported),
                    "dropped": get(&c.dropped),
                    "failed_exports": get(&c.failed_exports),
                })
            }),
            "tls": crate::certs::status(state),
            "log_shipping": ctx.telemetry.as_ref().and_then(|t| t.shipping()).map(|(to, shipped, dropped, failed)| json!({
                "endpoint": to,
                "shipped": shipped,
                "dropped": dropped,
                "failed_batches": failed,
            })),
        }),
    )
}

/// `GET /admin/v1/stats?by=route|upstream|consumer|worker&window=5m[&series=false]`.
fn stats(ctx: &ApiContext, req: &Request) -> Result<Response, ApiError> {
    use ringway_proxy::stats::Dim;
    let by = req.query_param("by").unwrap_or("route");
    let dim = Dim::parse(by).ok_or_else(|| {
        ApiError::new(400, "invalid_parameter", format!("by={by:?}: expected route, upstream, consumer or worker"))
    })?;
    let window_text = req.query_param("window").unwrap_or("5m");
    let window = crate::stats::parse_window(window_text).ok_or_else(|| {
        ApiError::new(
            400,
            "invalid_parameter",
            format!("window={window_text:?}: expected a duration such as 60s, 5m or 1h, at most 24h"),
        )
    })?;
    let series = match req.query_param("series") {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(ApiError::new(400, "invalid_parameter", format!("series={v:?}: expected true or false")))
        }
    };
    let Some(store) = ctx.telemetry.as_ref().and_then(|t| t.stats.clone()) else {
        return Err(ApiError::new(404, "stats_off", "this node keeps no statistics (it was started with --no-stats)"));
    };
    let mut v = match store.lock() {
        Ok(s) => s.query(dim, window, series),
        Err(_) => return Err(ApiError::new(500, "stats_unavailable", "the statistics store failed")),
    };
    v["window"] = json!(window_text);
    Ok(Response::json(200, &v))
}

fn wants_yaml(req: &Request) -> bool {
    req.query_param("format") == Some("yaml") || req.header("accept").is_some_and(|a| a.contains("yaml"))
}

fn get_config(state: &AdminState, req: &Request) -> Response {
    // Consumers' sealed secrets never leave the node: the export names keys by fingerprint.
    let mut v = crate::secrets::public_document(state.spec());
    if wants_yaml(req) {
        let body = serde_norway::to_string(&v).unwrap_or_default().into_bytes();
        return Response { status: 200, content_type: "application/yaml", body };
    }
    v["revision"] = json!(state.revision());
    // `revision` is informational: PUT ignores it.
    Response::json(200, &v)
}

/// The syntaxes an endpoint takes: YAML only for whole configuration documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Documents {
    JsonOnly,
    JsonOrYaml,
}

/// Parses a body into `T` as its content type says (JSON or, where `accepted` allows it,
/// YAML; both guarded against deep nesting, YAML also against anchors and aliases), with
/// problems named by their path under `prefix`.
pub(crate) fn parse_body<T: DeserializeOwned>(req: &Request, prefix: &str, accepted: Documents) -> Result<T, ApiError> {
    let syntax = req.header("content-type").and_then(syntax_of).unwrap_or(Syntax::Json);
    if syntax == Syntax::Yaml && accepted == Documents::JsonOnly {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            format!(
                "{} {} accepts JSON only (Content-Type: application/json); YAML is accepted for the whole configuration document (PUT /admin/v1/config)",
                req.method, req.path
            ),
        ));
    }
    let text = std::str::from_utf8(&req.body).map_err(|_| ApiError::new(400, "bad_body", "the body is not UTF-8"))?;
    if text.trim().is_empty() {
        return Err(ApiError::new(400, "bad_body", "the body is empty"));
    }
    parse::parse(text, syntax).map_err(|e| match e {
        DocError::Refused(message) => ApiError::new(400, "bad_body", message),
        DocError::Invalid { path: inner, message } => {
            let path = match (prefix.is_empty(), inner == ".") {
                (true, true) => "$".to_string(),
                (true, false) => inner,
                (false, true) => prefix.to_string(),
                (false, false) => format!("{prefix}.{inner}"),
            };
            ApiError::invalid(ConfigErrors(vec![ConfigError::new(path, message)]))
        }
    })
}

fn put_config(state: &mut AdminState, req: &Request) -> Result<Response, ApiError> {
    let mut value: Value = parse_body(req, "", Documents::JsonOrYaml)?;
    if let Some(o) = value.as_object_mut() {
        o.remove("revision");
    }
    let mut spec: ConfigSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        ApiError::invalid(ConfigErrors(vec![ConfigError::new(e.path().to_string(), e.into_inner().to_string())]))
    })?;
    crate::secrets::seal_document(&mut spec, state.spec(), &state.secrets)?;
    if let Some(a) = spec.access_log.as_deref() {
        // A log file that cannot be opened is refused now rather than lost later.
        if let Ok(Some(d)) = ringway_proxy::access_log::Destination::parse(a) {
            if let Err(e) = d.open() {
                return Err(ApiError::invalid(ConfigErrors(vec![ConfigError::new(
                    "access_log",
                    format!("cannot open {a:?} for appending: {e}"),
                )])));
            }
        }
    }
    if req.query_param("dry_run") == Some("true") {
        let d = state.dry_run(spec)?;
        return Ok(Response::json(200, &json!({"dry_run": true, "revision": state.revision(), "diff": d})));
    }
    let (rev, d) = state.apply(spec, "replace the whole configuration".into())?;
    Ok(Response::json(200, &json!({"revision": rev, "diff": d})))
}

fn revisions(state: &AdminState, req: &Request) -> Result<Response, ApiError> {
    let limit = req.query_param("limit").and_then(|v| v.parse().ok()).unwrap_or(100usize).min(1000);
    let h = state.store().history(limit).map_err(|e| ApiError::new(500, "store_failed", e.to_string()))?;
    Ok(Response::json(200, &json!({"revision": state.revision(), "revisions": h})))
}

fn rollback(state: &mut AdminState, rev: &str) -> Result<Response, ApiError> {
    let target: u64 =
        rev.parse().map_err(|_| ApiError::new(400, "bad_revision", format!("{rev:?} is not a revision number")))?;
    let past = state.store().state_at(target).map_err(|e| match e {
        ringway_store::StoreError::UnknownRevision(_) | ringway_store::StoreError::Pruned { .. } => {
            ApiError::new(404, "unknown_revision", e.to_string())
        }
        other => ApiError::new(500, "store_failed", other.to_string()),
    })?;
    let mut spec = spec_from_state(&past).map_err(|e| ApiError::new(500, "store_failed", e))?;
    crate::secrets::open_document(&mut spec, &state.secrets).map_err(|e| ApiError::new(500, "store_failed", e))?;
    let (new_rev, d) = state.apply(spec, format!("rollback to revision {target}"))?;
    Ok(Response::json(200, &json!({"revision": new_rev, "rolled_back_to": target, "diff": d})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_digests_compare() {
        let t = AdminToken::new(b"secret");
        assert!(t.matches(b"secret"));
        assert!(!t.matches(b"secreT"));
        assert!(!t.matches(b"secret2"));
        assert!(!t.matches(b"secre"));
        assert!(!t.matches(b""));
        assert!(AdminToken::new(b"").matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(..)", "the token never shows in logs");
    }
}
