//! Configuration files for the proxies under test, each given one worker and keep-alive
//! connections to the origin, and tuned so no proxy touches the disk on the request path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// Idle keep-alive connections each proxy may hold to the origin.
pub const UPSTREAM_KEEPALIVE: usize = 64;

/// nginx: one worker, no access log, pooled HTTP/1.1 upstream connections, buffers large
/// enough that neither the 16 KiB request body nor the 64 KiB response goes to a temp file.
/// With `access_log`, every request is logged in the default format through a 64 KiB buffer.
pub fn nginx(origin: SocketAddr, listen: SocketAddr, dir: &Path, access_log: bool) -> String {
    let d = dir.display();
    let access_log = if access_log {
        format!("access_log {d}/nginx-access.log combined buffer=64k flush=1s")
    } else {
        "access_log off".to_string()
    };
    format!(
        r#"worker_processes 1;
pid {d}/nginx.pid;
worker_rlimit_nofile 30000;
error_log {d}/nginx-error.log warn;

events {{
    worker_connections 24576;
}}

http {{
    {access_log};
    client_body_temp_path {d}/nginx-client-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_buffer_size 64k;

    upstream origin {{
        server {origin};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 10000000;
    }}

    server {{
        listen {listen};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"#
    )
}

/// HAProxy: one thread, HTTP mode, connections to the origin always reused.
pub fn haproxy(origin: SocketAddr, listen: SocketAddr) -> String {
    format!(
        r#"global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    http-reuse always

frontend bench
    bind {listen}
    default_backend origin

backend origin
    server origin {origin}
"#
    )
}

/// ringway: one upstream, and either a catch-all route (with `policies`, YAML flow, when not
/// empty) or `extra_routes` non-matching routes
/// followed by the `/bench/*` route the load hits.
pub fn ringway(origin: SocketAddr, extra_routes: usize, policies: &str, upstream: &str) -> String {
    let mut out = format!(
        "upstreams:\n  origin:\n    targets:\n      - addr: \"{origin}\"\n        weight: 1\n{upstream}routes:\n"
    );
    if extra_routes == 0 {
        out.push_str("  all:\n    paths: [\"/*\"]\n    upstream: origin\n");
        if !policies.is_empty() {
            let _ = writeln!(out, "    policies: {policies}");
        }
        return out;
    }
    for i in 1..=extra_routes {
        let _ = writeln!(out, "  r{i:04}: {{paths: [\"/svc{i:04}/*\"], upstream: origin}}");
    }
    out.push_str("  hit: {paths: [\"/bench/*\"], upstream: origin}\n");
    out
}

/// The key of consumer `i` in [`consumers`]; the load sends consumer 0's.
pub fn consumer_key(i: usize) -> String {
    format!("bench-key-{i:08}-0123456789abcdef")
}

/// `n` consumers (`c00000000`...), each with one API key; the first also has the basic-auth
/// credential `bench:bench password`.
pub fn consumers(n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let mut out = String::with_capacity(n * 96);
    out.push_str("consumers:\n");
    for i in 0..n {
        let basic = if i == 0 { ", basic_auth: {username: bench, password: \"bench password\"}" } else { "" };
        let _ = writeln!(out, "  c{i:08}: {{credentials: {{key_auth: [{{key: \"{}\"}}]{basic}}}}}", consumer_key(i));
    }
    out
}

/// The document's `log_shipping` for a scenario (empty when off).
pub fn shipping(origin: SocketAddr, s: crate::scenarios::Shipping) -> String {
    use crate::scenarios::Shipping;
    match s {
        Shipping::Off => String::new(),
        Shipping::ToOrigin => format!("log_shipping: {{endpoint: \"http://{origin}/ingest\"}}\n"),
        // Port 1 on loopback: nothing listens, every batch is refused.
        Shipping::Down => "log_shipping: {endpoint: \"http://127.0.0.1:1/ingest\"}\n".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringway_route_table_has_the_hit_route_last() {
        let origin = "127.0.0.1:9001".parse().unwrap();
        let yaml = ringway(origin, 999, "", "");
        assert_eq!(yaml.matches("upstream: origin").count(), 1000);
        assert!(yaml.contains("r0999: {paths: [\"/svc0999/*\"]"));
        assert!(yaml.trim_end().ends_with("hit: {paths: [\"/bench/*\"], upstream: origin}"));
        assert!(ringway(origin, 0, "", "").contains("paths: [\"/*\"]"));
        assert!(ringway(origin, 0, "{rate_limit: {limit: 5, window: 1s}}", "")
            .ends_with("policies: {rate_limit: {limit: 5, window: 1s}}\n"));
    }

    #[test]
    fn proxies_point_at_the_origin() {
        let origin: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let listen: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let n = nginx(origin, listen, Path::new("/tmp/x"), false);
        assert!(n.contains("server 127.0.0.1:9001;") && n.contains("listen 127.0.0.1:9002;"));
        let h = haproxy(origin, listen);
        assert!(h.contains("server origin 127.0.0.1:9001") && h.contains("bind 127.0.0.1:9002"));
    }
}
