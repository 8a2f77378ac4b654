//! The admin API's requests and answers, and the checks every request passes before the admin
//! thread sees it: its `Host` must name this server, a request from a web page must come from
//! the API's own origin, and any request but GET and HEAD must declare JSON or YAML.
//!
//! Browsers. A page elsewhere can make a browser send a request here without asking first
//! (without a CORS preflight) only with no `Content-Type` or with `text/plain`, form or
//! multipart types; requiring a JSON or YAML type on every write, body or not, forces the
//! preflight, which this server never grants. `Origin` and `Sec-Fetch-Site` refuse the rest.
//!
//! The HTTP/1.1 server itself is in `server.rs`; the checks on raw request heads (framing, line
//! ends) in `gate.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ringway_proxy::h1::head::{host_without_port, HeadError};

use crate::parse::Syntax;

/// One admin request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// One admin response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response { status, content_type: "application/json", body }
    }

    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        Self::json(status, &serde_json::json!({"error": code, "message": message.into(), "status": status}))
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `--admin-listen`: the admin API, and `/metrics` under the API's token rule.
    Api,
    /// `--metrics-listen`: `GET /metrics` only, no token.
    Metrics,
}

/// A request waiting for the admin thread's answer.
#[derive(Debug)]
pub struct Job {
    pub endpoint: Endpoint,
    pub request: Request,
    /// Where the answer goes; the HTTP thread awaits it without blocking.
    pub reply: tokio::sync::oneshot::Sender<Response>,
}

/// Limits of the admin server.
#[derive(Debug, Clone)]
pub struct AdminLimits {
    /// Largest request body in bytes (413 past it).
    pub max_body: usize,
    /// Connections busy with a request, in all.
    pub max_busy: usize,
    /// Connections busy with a request from one client address.
    pub max_busy_per_addr: usize,
    /// Open connections, idle ones included; past it the longest-idle one is closed.
    pub max_open: usize,
    /// Time from a request's first byte until its head and body must have arrived.
    pub request_timeout: Duration,
    /// How long a connection may wait for the first byte of its next request.
    pub idle_timeout: Duration,
    /// Longest time one write of an answer may take.
    pub write_timeout: Duration,
    /// `Host` and `Origin` values the server answers.
    pub hosts: AllowedHosts,
}

/// The `Host` values the admin API answers: loopback names and addresses, the address it
/// listens on, and the names the operator adds; any port. Everything else is refused, so that
/// DNS rebinding cannot drive the API through a browser. An `Origin` must be the API's own:
/// `http`, one of those hosts and the port it listens on.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    listen: Option<IpAddr>,
    port: u16,
    names: Vec<String>,
}

fn ip_literal(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

impl AllowedHosts {
    /// Answers loopback, `listen`'s address (unless unspecified) and `names` (host names or
    /// addresses; a port given with one is ignored).
    pub fn new(listen: SocketAddr, names: &[String]) -> Result<AllowedHosts, String> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let host = host_without_port(n.trim().as_bytes())
                .map_err(|_| format!("--admin-host {n:?} is not a host name or address"))?;
            out.push(host.to_ascii_lowercase());
        }
        let ip = listen.ip();
        Ok(AllowedHosts { listen: (!ip.is_unspecified()).then_some(ip), port: listen.port(), names: out })
    }

    /// Whether a `Host` value (`host[:port]`) names this server.
    pub fn allows(&self, value: &str) -> bool {
        let Ok(host) = host_without_port(value.trim().as_bytes()) else { return false };
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Some(ip) = ip_literal(host) {
            if ip.is_loopback() || Some(ip) == self.listen {
                return true;
            }
        }
        self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }

    /// Whether an `Origin` value (`scheme://host[:port]`) is this server's own origin: `http`,
    /// an allowed host and the listen port (80 when the value gives none). Pages on any other
    /// port of the same host, the data plane's included, are other origins.
    pub fn allows_origin(&self, value: &str) -> bool {
        const HTTP: &str = "http://";
        let v = value.trim();
        let Some(rest) = v.get(..HTTP.len()).filter(|s| s.eq_ignore_ascii_case(HTTP)).map(|_| &v[HTTP.len()..]) else {
            return false;
        };
        let Ok(host) = host_without_port(rest.as_bytes()) else { return false };
        let port = match &rest[host.len()..] {
            "" => Some(80),
            p => p.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()),
        };
        port == Some(self.port) && self.allows(host)
    }
}

/// The syntax a `Content-Type` value announces: JSON (`application/json`, `*+json`) or YAML
/// (`application/yaml`, `application/x-yaml`, `text/yaml`, `text/x-yaml`, `*+yaml`).
pub fn syntax_of(content_type: &str) -> Option<Syntax> {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Some(Syntax::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Some(Syntax::Yaml),
        m if m.starts_with("application/") && m.ends_with("+json") => Some(Syntax::Json),
        m if m.starts_with("application/") && m.ends_with("+yaml") => Some(Syntax::Yaml),
        _ => None,
    }
}

/// The checks on a request whose head hyper parsed and the gate found well framed: `Host`,
/// `Expect`, `Origin`, `Sec-Fetch-Site`, the content type (of every request but GET and HEAD,
/// and of any body) and the body's size (`length`, from its `Content-Length`).
pub fn check_request(req: &Request, length: u64, limits: &AdminLimits) -> Result<(), Response> {
    let bad = |m: &str| Response::error(400, "bad_request", m);
    let (mut hosts, mut origins) = (0, 0);
    for (name, value) in &req.headers {
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("origin") {
            origins += 1;
        } else if name.eq_ignore_ascii_case("expect") && !value.trim().eq_ignore_ascii_case("100-continue") {
            return Err(head_error(HeadError::Expectation));
        }
    }
    if hosts != 1 {
        return Err(bad("a request needs exactly one Host header"));
    }
    let host = req.header("host").unwrap_or("");
    if !limits.hosts.allows(host) {
        return Err(Response::error(
            403,
            "forbidden_host",
            format!("Host {host:?} is not this admin API: use localhost, a loopback address, the address it listens on or a name given with --admin-host"),
        ));
    }
    if origins > 1 {
        return Err(bad("more than one Origin header"));
    }
    if let Some(origin) = req.header("origin") {
        if !limits.hosts.allows_origin(origin) {
            return Err(Response::error(
                403,
                "forbidden_origin",
                format!(
                    "requests from web pages at {origin:?} are not accepted: only the admin API's own origin is (http://HOST:{})",
                    limits.hosts.port
                ),
            ));
        }
    }
    if let Some(site) = req.header("sec-fetch-site") {
        let site = site.trim();
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return Err(Response::error(
                403,
                "forbidden_origin",
                format!("requests with Sec-Fetch-Site: {site:?} are not accepted: only same-origin ones and those a user makes directly (none)"),
            ));
        }
    }
    let content_type = req.header("content-type");
    let write = !matches!(req.method.as_str(), "GET" | "HEAD");
    if (write || length > 0 || content_type.is_some()) && content_type.and_then(syntax_of).is_none() {
        let got = content_type.map_or_else(|| "no Content-Type".to_string(), |c| format!("Content-Type {c:?}"));
        let what = if write {
            format!("every {} request, with a body or without", req.method)
        } else {
            "a request body".into()
        };
        return Err(Response::error(
            415,
            "unsupported_media_type",
            format!("send Content-Type: application/json (or application/yaml for a YAML body) with {what}, not {got}"),
        ));
    }
    if length > limits.max_body as u64 {
        return Err(Response::error(
            413,
            "body_too_large",
            format!("admin request bodies are limited to {} bytes (--admin-max-body)", limits.max_body),
        ));
    }
    Ok(())
}

/// A refusal for a head the data plane's checks turned down.
pub fn head_error(e: HeadError) -> Response {
    Response::error(e.status(), e.code(), e.to_string())
}

/// An answer the HTTP server writes itself, without hyper (refusals before hyper saw the
/// request): the same header fields hyper's answers get, and `Connection: close`.
pub fn raw_response(r: &Response) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
        r.status,
        ringway_proxy::h1::write::reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&r.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts() {
        let listen: SocketAddr = "10.1.2.3:9180".parse().unwrap();
        let h = AllowedHosts::new(listen, &["Admin.Example:8443".to_string(), "[fd00::1]".to_string()]).unwrap();
        for ok in ["localhost", "LocalHost:1", "127.0.0.1", "127.9.9.9:80", "[::1]", "[::1]:9180", "10.1.2.3:1"] {
            assert!(h.allows(ok), "{ok}");
        }
        for ok in ["admin.example", "ADMIN.example:1", "[fd00::1]:5"] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in ["", "evil.example", "localhost.evil.example", "10.1.2.4", "[::2]", "admin.example.", "a b", "x:y"] {
            assert!(!h.allows(bad), "{bad}");
        }
        // Origins: this server only, scheme, host and port.
        for ok in ["http://localhost:9180", "HTTP://LocalHost:9180", "http://127.0.0.1:9180", "http://[::1]:9180"] {
            assert!(h.allows_origin(ok), "{ok}");
        }
        for ok in ["http://10.1.2.3:9180", "http://admin.example:9180", "http://[fd00::1]:9180"] {
            assert!(h.allows_origin(ok), "{ok}");
        }
        for bad in [
            "null",
            "http://evil.example",
            "localhost",
            "ftp://localhost",
            "http://localhost/x",
            "http://",
            "http://localhost:9180/",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://localhost",
            "https://localhost:9180",
            "https://admin.example",
            "http://admin.example:8443",
            "http://evil.example:9180",
            "http://localhost:9180:9180",
        ] {
            assert!(!h.allows_origin(bad), "{bad}");
        }
        // On port 80 an origin may leave the port out.
        let on_80 = AllowedHosts::new("127.0.0.1:80".parse().unwrap(), &[]).unwrap();
        assert!(on_80.allows_origin("http://localhost") && on_80.allows_origin("http://127.0.0.1:80"));
        assert!(!on_80.allows_origin("http://localhost:8080"));
        let any: SocketAddr = "0.0.0.0:9180".parse().unwrap();
        assert!(!AllowedHosts::new(any, &[]).unwrap().allows("0.0.0.0"), "an unspecified address names nothing");
        assert!(AllowedHosts::new(listen, &["bad name".to_string()]).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(syntax_of("application/json"), Some(Syntax::Json));
        assert_eq!(syntax_of("Application/JSON; charset=utf-8"), Some(Syntax::Json));
        assert_eq!(syntax_of("application/merge-patch+json"), Some(Syntax::Json));
        assert_eq!(syntax_of("application/yaml"), Some(Syntax::Yaml));
        assert_eq!(syntax_of("text/x-yaml"), Some(Syntax::Yaml));
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "json", "text/json+x"]
        {
            assert_eq!(syntax_of(bad), None, "{bad}");
        }
    }

    fn limits() -> AdminLimits {
        AdminLimits {
            max_body: 1 << 20,
            max_busy: 4,
            max_busy_per_addr: 2,
            max_open: 16,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            hosts: AllowedHosts::new("127.0.0.1:9180".parse().unwrap(), &[]).unwrap(),
        }
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request {
        let mut all = vec![("Host".to_string(), "127.0.0.1:9180".to_string())];
        all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Request {
            method: method.into(),
            path: "/admin/v1/revisions/1/rollback".into(),
            headers: all,
            ..Default::default()
        }
    }

    fn refusal(method: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
        check_request(&request(method, headers), 0, &limits()).err().map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            (r.status, v["message"].as_str().unwrap_or("").to_string())
        })
    }

    #[test]
    fn writes_need_a_json_or_yaml_content_type_even_without_a_body() {
        let json = ("Content-Type", "application/json");
        for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let (status, message) = refusal(method, &[]).expect(method);
            assert_eq!(status, 415, "{method}");
            assert!(message.contains("Content-Type: application/json"), "{message}");
            assert_eq!(refusal(method, &[("Content-Type", "text/plain")]).map(|r| r.0), Some(415), "{method}");
            assert_eq!(refusal(method, &[json]), None, "{method}");
            assert_eq!(refusal(method, &[("Content-Type", "application/yaml")]), None, "{method}");
        }
        for method in ["GET", "HEAD"] {
            assert_eq!(refusal(method, &[]), None, "{method}");
        }
    }

    #[test]
    fn only_same_origin_or_direct_fetches_are_accepted() {
        let json = ("Content-Type", "application/json");
        for site in ["same-origin", "none", "Same-Origin"] {
            assert_eq!(refusal("POST", &[json, ("Sec-Fetch-Site", site)]), None, "{site}");
        }
        for site in ["same-site", "cross-site", "", "other"] {
            assert_eq!(refusal("POST", &[json, ("Sec-Fetch-Site", site)]).map(|r| r.0), Some(403), "{site:?}");
            assert_eq!(refusal("GET", &[("Sec-Fetch-Site", site)]).map(|r| r.0), Some(403), "{site:?}");
        }
        // A page on another port of the same host (the data plane, say) is another origin.
        let (status, _) = refusal("POST", &[json, ("Origin", "http://127.0.0.1:8080")]).unwrap();
        assert_eq!(status, 403);
        assert_eq!(refusal("POST", &[json, ("Origin", "http://127.0.0.1:9180")]), None);
    }

    #[test]
    fn hosts_and_expectations() {
        let mut r = request("GET", &[]);
        assert!(check_request(&r, 0, &limits()).is_ok());
        r.headers.push(("Expect".into(), "100-Continue".into()));
        assert!(check_request(&r, 0, &limits()).is_ok());
        r.headers.push(("Expect".into(), "something".into()));
        assert_eq!(check_request(&r, 0, &limits()).unwrap_err().status, 417);
        let mut r = request("GET", &[("Host", "localhost")]);
        assert_eq!(check_request(&r, 0, &limits()).unwrap_err().status, 400, "two Host fields");
        r.headers.clear();
        assert_eq!(check_request(&r, 0, &limits()).unwrap_err().status, 400, "no Host field");
        let r = request("PUT", &[("Content-Type", "application/json")]);
        assert_eq!(check_request(&r, 1 << 20, &limits()).map_err(|e| e.status), Ok(()));
        assert_eq!(check_request(&r, (1 << 20) + 1, &limits()).unwrap_err().status, 413);
    }

    #[test]
    fn raw_answers_close_and_say_what_they_carry() {
        let text = String::from_utf8(raw_response(&Response::error(408, "request_timeout", "late"))).unwrap();
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n") && text.contains("content-type: application/json"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{text}");
    }
}
