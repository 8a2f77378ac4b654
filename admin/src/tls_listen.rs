//! Where the TLS listener listens: `--tls-listen`, else the document's `tls.listen`, which may
//! change live. A new address is bound on every worker's behalf before the change is committed
//! (a bind that fails refuses the change, 400 naming the address), then each worker gets its
//! listener and stops accepting on the old one; connections already open stay.

use std::net::SocketAddr;

use ringway_proxy::Control;
use ringway_runtime::MailboxSender;

use crate::error::ApiError;

/// The TLS listener as the admin thread knows it.
#[derive(Debug, Default)]
pub struct TlsListen {
    /// Set by `--tls-listen`: the document may not move it.
    pub pinned: bool,
    /// The address bound now (port 0 resolved).
    pub bound: Option<SocketAddr>,
}

/// Listeners bound for a new address, one per worker.
#[derive(Debug)]
pub struct Rebind {
    bound: Option<SocketAddr>,
    listeners: Vec<std::net::TcpListener>,
}

impl TlsListen {
    pub fn new(pinned: bool, bound: Option<SocketAddr>) -> TlsListen {
        TlsListen { pinned, bound }
    }

    /// What a change of the document's `tls.listen` from `was` to `want` needs: nothing, or
    /// listeners bound for it (none when it stops listening).
    pub fn prepare(&self, was: Option<&str>, want: Option<&str>, workers: usize) -> Result<Option<Rebind>, ApiError> {
        if want == was {
            return Ok(None);
        }
        if self.pinned {
            return Err(ApiError::new(
                400,
                "invalid_config",
                "tls.listen: this node's TLS listener is set by --tls-listen; leave tls.listen out",
            ));
        }
        let Some(text) = want else { return Ok(Some(Rebind { bound: None, listeners: Vec::new() })) };
        let addr: SocketAddr = text.parse().map_err(|_| {
            ApiError::new(400, "invalid_config", format!("tls.listen: {text:?} is not an address such as 0.0.0.0:8443"))
        })?;
        let (bound, listeners) = crate::listen::bind_listeners(addr, workers)
            .map_err(|e| ApiError::new(400, "invalid_config", format!("tls.listen: cannot listen on {addr}: {e}")))?;
        Ok(Some(Rebind { bound: Some(bound), listeners }))
    }

    /// Hands each worker its listener (or none: it stops accepting TLS).
    pub fn hand_over(&mut self, mut r: Rebind, workers: &[MailboxSender<Control>]) {
        for w in workers {
            let _ = w.send(Control::TlsListener(r.listeners.pop()));
        }
        if let Some(a) = r.bound {
            log::info!("TLS listening on {a}");
        }
        self.bound = r.bound;
    }
}
