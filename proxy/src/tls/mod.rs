//! TLS on rustls (aws-lc-rs provider): the stream adapter over monoio ([`TlsStream`]), the
//! certificates compiled for the listener ([`TlsSites`]) and the server handshake that chooses
//! among them by server name ([`accept`]).

mod accept;
pub mod client;
pub mod sites;
pub mod spec;
mod stream;

pub use accept::{accept, Refused, TlsInfo};
pub use client::UpstreamTls;
pub use sites::{Site, TlsSites};
pub use spec::{CertificateSpec, ClientAuthSpec, TlsSettingsSpec, UpstreamTlsSpec};
pub use stream::TlsStream;

/// The application protocols the TLS listener offers, in order of preference.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
