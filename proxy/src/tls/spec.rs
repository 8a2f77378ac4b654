//! What users write about TLS: certificates (`certificates` in the document and
//! `/admin/v1/certificates/{id}`) and the listener's settings (`tls`).

use serde::{Deserialize, Serialize};

/// A certificate the TLS listener serves to the names in `snis`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The server names it answers (`api.example.com`, `*.example.com`); each must be covered
    /// by the certificate's own names.
    #[serde(default)]
    pub snis: Vec<String>,
    /// The chain in PEM: the certificate first, then its intermediates.
    pub cert: String,
    /// The private key in PEM. Held in memory only: stored sealed (`key_sealed`) and never
    /// shown.
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
    /// The key encrypted with the node's key (set by the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sealed: Option<String>,
    /// Served to clients that name no server, or a name no certificate has.
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    /// Asking clients of these names for a certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthSpec>,
}

/// `client_auth: {ca: PEM, required: true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthSpec {
    /// The authorities (PEM) client certificates must chain to.
    pub ca: String,
    /// Refuse clients without a certificate (default true); with false, a certificate is
    /// asked for, checked when sent, and not required.
    #[serde(default = "yes")]
    pub required: bool,
}

/// The document's `tls`: settings of the TLS listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettingsSpec {
    /// The TLS listener's address (`--tls-listen` wins over it); changed live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Refuse handshakes that name no server or a server no certificate has, instead of
    /// answering with the default certificate.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sni_required: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

/// An upstream's `tls`: `{enabled: true, sni, verify: true, ca, client_cert, client_key, alpn}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// TLS to the targets (default true once `tls` is given).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The server name sent and verified (default: none; the certificate must then name the
    /// target's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Verify the targets' certificates (default true).
    #[serde(default = "yes")]
    pub verify: bool,
    /// Authorities (PEM) to verify against instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A client certificate chain (PEM) for upstreams that ask for one, with its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Held in memory only: stored sealed (`client_key_sealed`) and never shown.
    #[serde(default, skip_serializing)]
    pub client_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_sealed: Option<String>,
    /// Application protocols offered (default `[http/1.1]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
}
