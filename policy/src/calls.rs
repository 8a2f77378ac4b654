//! The calls a policy may ask the engine to make ([`crate::Verdict::Call`]), and what they
//! come back with.

use std::sync::Arc;

/// A call a policy asks the engine to make for it: the policy crate never touches a socket or
/// a thread.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Check `password` against the PHC string `hash`, off the workers; `None`: against a
    /// decoy (an unknown username costs what a wrong password does).
    VerifyPassword { hash: Option<Arc<str>>, password: Box<[u8]> },
    /// Fetch the key set at `uri` now (unless it was fetched moments ago), and keep it fresh
    /// every `refresh_ms`.
    FetchKeys { uri: Arc<str>, refresh_ms: u64 },
    /// Ask `endpoint` whether `token` is active (RFC 7662), authenticating with `client_auth`
    /// (an `Authorization` value), within `timeout_ms`.
    Introspect { endpoint: Arc<str>, client_auth: Arc<str>, token: Box<[u8]>, timeout_ms: u64 },
}

/// What an outbound call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Whether the password matched; `None`: the check could not be made (busy, stopped).
    Password(Option<bool>),
    /// Whether the key set could be fetched (it is in the key store either way).
    Keys(bool),
    /// The introspection endpoint's answer (a JSON body), or `None`: it could not be asked.
    Introspected(Option<std::rc::Rc<[u8]>>),
}
