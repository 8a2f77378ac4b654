//! Service descriptions (`protos`) in the snapshot, and the routes that transcode with them:
//! a route names a proto, a service and a method (or the service's annotated methods), and
//! cannot be published against a method the proto lacks; a proto cannot be replaced by one
//! that drops what a route calls, nor deleted while a route uses it.

use std::sync::Arc;

use ringway_policy::ConfigErrors;

use super::{Snapshot, Upstream};
use crate::config::RouteSpec;
use crate::grpc::proto::{self, ProtoSpec};
use crate::grpc::transcode::Transcode;

/// Compiles the edited protos into `next`; returns the ids edited (checked against their
/// users once the routes of the same change are in, see [`check_users`]).
pub(super) fn apply<'a>(
    next: &mut Snapshot,
    edits: &[(&'a str, Option<&'a ProtoSpec>)],
    errors: &mut ConfigErrors,
) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    for (id, spec) in edits {
        if !seen.insert(*id) {
            errors.push(format!("protos.{id}"), "changed twice in one change");
            continue;
        }
        super::check_id(id, &format!("protos.{id}"), errors);
        match spec {
            Some(s) => {
                if let Some(p) = proto::compile(id, s, errors) {
                    next.protos.insert(id.to_string(), Arc::new(p));
                }
            }
            None => {
                next.protos.remove(*id);
            }
        }
    }
    edits.iter().map(|(id, _)| *id).collect()
}

/// Every route that uses an edited proto still finds what it calls.
pub(super) fn check_users(next: &Snapshot, edited: &[&str], errors: &mut ConfigErrors) {
    for id in edited {
        let users: Vec<&String> = next.proto_users.get(*id).into_iter().flat_map(|s| s.iter()).collect();
        if users.is_empty() {
            continue;
        }
        let Some(p) = next.protos.get(*id) else {
            let list = users.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ");
            errors.push(format!("protos.{id}"), format!("still used by route(s) {list}"));
            continue;
        };
        for r in users {
            if let Some(t) = next.routes.get(r).and_then(|r| r.transcode.as_ref()) {
                if let Err(e) = t.check(p) {
                    errors.push(format!("protos.{id}"), format!("route {r} calls what this proto lacks: {e}"));
                }
            }
        }
    }
}

/// A route's `grpc_transcode`, checked against its proto and its upstream.
pub(super) fn compile_route(
    r: &RouteSpec,
    at: &str,
    next_protos: &imbl::OrdMap<String, Arc<proto::Proto>>,
    upstream: Option<&Upstream>,
    errors: &mut ConfigErrors,
) -> Option<Transcode> {
    let spec = r.grpc_transcode.as_ref()?;
    let at = format!("{at}.grpc_transcode");
    let t = Transcode::compile(spec, &at, errors)?;
    match next_protos.get(&t.proto) {
        None => errors.push(format!("{at}.proto"), format!("no proto with id {:?}", t.proto)),
        Some(p) => {
            if let Err(e) = t.check(p) {
                errors.push(at.clone(), e);
            }
        }
    }
    if upstream.is_some_and(|u| !u.h2) {
        errors.push(at.clone(), "the route's upstream must speak gRPC: give it protocol h2c or h2");
    }
    if r.websocket.is_some() {
        errors.push(at, "a transcoding route does not take WebSocket upgrades");
    }
    Some(t)
}
