//! Certificates and the TLS settings in a snapshot: each changed certificate compiled on its
//! own, then the name index made again from every certificate (certificates are few; the
//! index is rebuilt only when one of them or the settings change).

use std::sync::Arc;

use ringway_policy::ConfigErrors;

use super::{Edit, Snapshot};
use crate::tls::{sites, TlsSites};

pub(super) fn apply(next: &mut Snapshot, edits: &[Edit<'_>], errors: &mut ConfigErrors) {
    let mut seen = std::collections::HashSet::new();
    for e in edits {
        match e {
            Edit::Certificate(id, spec) => {
                if !seen.insert(*id) {
                    errors.push(format!("certificates.{id}"), "changed twice in one change");
                    continue;
                }
                match spec {
                    Some(s) => match sites::compile(id, s) {
                        Ok(site) => {
                            next.certificates.insert(id.to_string(), Arc::new(site));
                        }
                        Err(e) => errors.0.extend(e.0),
                    },
                    None => {
                        next.certificates.remove(*id);
                    }
                }
            }
            Edit::TlsSettings(t) => next.tls_settings = t.cloned().unwrap_or_default(),
            _ => {}
        }
    }
    let all = next.certificates.values().cloned().collect();
    match TlsSites::build(all, next.tls_settings.sni_required) {
        Ok(t) => next.tls = Arc::new(t),
        Err(e) => errors.0.extend(e.0),
    }
}
