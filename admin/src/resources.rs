//! The resources under `/admin/v1/{kind}/{id}` (upstreams, routes, consumers, certificates,
//! protos): listing, reading as shown (secrets sealed or stripped), writing whole or by JSON
//! merge patch, and deleting what nothing uses.

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use ringway_policy::{ConfigError, ConfigErrors};

use crate::api::{parse_body, Documents};
use crate::http::{Request, Response};
use crate::state::{AdminState, ApiError, ResourceChange, CERTIFICATES, CONSUMERS, PROTOS, ROUTES, UPSTREAMS};

pub(crate) fn list(state: &AdminState, kind: &str) -> Response {
    let items: Vec<Value> = match kind {
        UPSTREAMS => state
            .spec()
            .upstreams
            .iter()
            .map(|(id, v)| json!({"id": id, "value": crate::certs::public_upstream(v)}))
            .collect(),
        CONSUMERS => state
            .spec()
            .consumers
            .iter()
            .map(|(id, v)| json!({"id": id, "value": crate::secrets::public_consumer(v)}))
            .collect(),
        CERTIFICATES => state
            .spec()
            .certificates
            .iter()
            .map(|(id, v)| json!({"id": id, "value": crate::certs::public(v)}))
            .collect(),
        PROTOS => state.spec().protos.keys().map(|id| json!({"id": id, "value": proto_shown(state, id)})).collect(),
        _ => state
            .spec()
            .routes
            .iter()
            .map(|(id, v)| json!({"id": id, "value": crate::secrets::public_route(v)}))
            .collect(),
    };
    Response::json(200, &json!({"revision": state.revision(), "items": items}))
}

/// A resource as stored (a consumer's secrets sealed, not stripped): what a PATCH merges over.
fn stored(state: &AdminState, kind: &str, id: &str) -> Option<Value> {
    match kind {
        UPSTREAMS => state.spec().upstreams.get(id).and_then(|v| serde_json::to_value(v).ok()),
        CONSUMERS => state.spec().consumers.get(id).and_then(|v| serde_json::to_value(v).ok()),
        CERTIFICATES => state.spec().certificates.get(id).and_then(|v| serde_json::to_value(v).ok()),
        PROTOS => state.spec().protos.get(id).and_then(|v| serde_json::to_value(v).ok()),
        _ => state.spec().routes.get(id).and_then(|v| serde_json::to_value(v).ok()),
    }
}

/// A resource as shown: a consumer or a route without its sealed secrets.
fn current(state: &AdminState, kind: &str, id: &str) -> Option<Value> {
    match kind {
        CONSUMERS => state.spec().consumers.get(id).map(crate::secrets::public_consumer),
        ROUTES => state.spec().routes.get(id).map(crate::secrets::public_route),
        CERTIFICATES => state.spec().certificates.get(id).map(crate::certs::public),
        UPSTREAMS => state.spec().upstreams.get(id).map(crate::certs::public_upstream),
        PROTOS => state.spec().protos.contains_key(id).then(|| proto_shown(state, id)),
        _ => stored(state, kind, id),
    }
}

/// A proto as shown: the upload's form, what it compiled to (services, methods, HTTP
/// bindings), and the routes that use it.
fn proto_shown(state: &AdminState, id: &str) -> Value {
    let spec = state.spec().protos.get(id);
    let mut v = json!({
        "form": if spec.is_some_and(|s| s.descriptor_set.is_some()) { "descriptor_set" } else { "files" },
        "files": spec.map(|s| s.files.keys().collect::<Vec<_>>()).unwrap_or_default(),
        "used_by": state.snapshot().proto_users(id).collect::<Vec<_>>(),
    });
    if let (Some(p), Value::Object(o)) = (state.snapshot().protos.get(id), &mut v) {
        if let Value::Object(summary) = p.summary() {
            o.extend(summary);
        }
    }
    v
}

pub(crate) fn get_one(state: &AdminState, kind: &str, id: &str) -> Result<Response, ApiError> {
    current(state, kind, id)
        .map(|v| Response::json(200, &v))
        .ok_or_else(|| ApiError::new(404, "not_found", format!("no {} with id {id:?}", singular(kind))))
}

fn singular(kind: &str) -> &'static str {
    match kind {
        UPSTREAMS => "upstream",
        CONSUMERS => "consumer",
        CERTIFICATES => "certificate",
        PROTOS => "proto",
        _ => "route",
    }
}

/// RFC 7396 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

pub(crate) fn typed<T: DeserializeOwned>(v: Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." { prefix.to_string() } else { format!("{prefix}.{inner}") };
        ApiError::invalid(ConfigErrors(vec![ConfigError::new(path, e.into_inner().to_string())]))
    })
}

pub(crate) fn put_one(
    state: &mut AdminState,
    kind: &str,
    id: &str,
    req: &Request,
    patch: bool,
) -> Result<Response, ApiError> {
    let prefix = format!("{kind}.{id}");
    let body: Value = parse_body(req, &prefix, Documents::JsonOnly)?;
    let existed = stored(state, kind, id);
    let value = if patch {
        let mut base = existed
            .clone()
            .ok_or_else(|| ApiError::new(404, "not_found", format!("no {} with id {id:?}", singular(kind))))?;
        merge_patch(&mut base, &body);
        base
    } else {
        body
    };
    let change = match kind {
        UPSTREAMS => {
            let mut u: ringway_proxy::config::UpstreamSpec = typed(value, &prefix)?;
            crate::certs::seal_upstream(id, &mut u, state.spec().upstreams.get(id), &state.secrets)
                .map_err(ApiError::invalid)?;
            ResourceChange::Upstream(id.to_string(), Some(Box::new(u)))
        }
        CONSUMERS => {
            let mut c: ringway_policy::ConsumerSpec = typed(value, &prefix)?;
            crate::secrets::seal(id, &mut c, state.spec().consumers.get(id), &state.secrets)
                .map_err(ApiError::invalid)?;
            crate::secrets::check_owners(id, &c, &state.snapshot().consumers)?;
            ResourceChange::Consumer(id.to_string(), Some(Box::new(c)))
        }
        CERTIFICATES => {
            let mut c: ringway_proxy::tls::CertificateSpec = typed(value, &prefix)?;
            crate::certs::seal(id, &mut c, state.spec().certificates.get(id), &state.secrets)
                .map_err(ApiError::invalid)?;
            ResourceChange::Certificate(id.to_string(), Some(Box::new(c)))
        }
        PROTOS => ResourceChange::Proto(id.to_string(), Some(Box::new(typed(value, &prefix)?))),
        _ => {
            let mut r: ringway_proxy::config::RouteSpec = typed(value, &prefix)?;
            let old = state.spec().routes.get(id).map(|o| &o.policies);
            let at = format!("{prefix}.policies");
            crate::secrets::seal_policies(&at, &mut r.policies, old, &state.secrets).map_err(ApiError::invalid)?;
            ResourceChange::Route(id.to_string(), Some(Box::new(r)))
        }
    };
    let verb = if patch {
        "patch"
    } else if existed.is_some() {
        "replace"
    } else {
        "create"
    };
    let (rev, _) = state.apply_changes(vec![change], format!("{verb} {} {id}", singular(kind)))?;
    let status = if existed.is_none() { 201 } else { 200 };
    Ok(Response::json(status, &json!({"revision": rev, "id": id, "value": current(state, kind, id)})))
}

pub(crate) fn delete_one(state: &mut AdminState, kind: &str, id: &str) -> Result<Response, ApiError> {
    if current(state, kind, id).is_none() {
        return Err(ApiError::new(404, "not_found", format!("no {} with id {id:?}", singular(kind))));
    }
    let change = if kind == UPSTREAMS {
        let users: Vec<&String> = state.snapshot().routes_using(id).collect();
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::new(
                409,
                "in_use",
                format!("upstream {id:?} is used by route(s) {}", names.join(", ")),
            ));
        }
        ResourceChange::Upstream(id.to_string(), None)
    } else if kind == CONSUMERS {
        ResourceChange::Consumer(id.to_string(), None)
    } else if kind == CERTIFICATES {
        ResourceChange::Certificate(id.to_string(), None)
    } else if kind == PROTOS {
        let users: Vec<&str> = state.snapshot().proto_users(id).map(|s| s.as_str()).collect();
        if !users.is_empty() {
            return Err(ApiError::new(409, "in_use", format!("proto {id:?} is used by route(s) {}", users.join(", "))));
        }
        ResourceChange::Proto(id.to_string(), None)
    } else {
        ResourceChange::Route(id.to_string(), None)
    };
    let (rev, _) = state.apply_changes(vec![change], format!("delete {} {id}", singular(kind)))?;
    Ok(Response::json(200, &json!({"revision": rev, "deleted": id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}
