//! Routing through the gateway: hosts, paths, methods, headers, priority, strip_prefix, 404.

use ringway_tests::{Client, Gateway, Upstream};

use crate::both_drivers;

both_drivers!(routes_by_host_path_method_header_and_priority);

fn routes_by_host_path_method_header_and_priority(driver: &str) {
    let names = ["catchall", "api", "user", "me", "wild", "exact_host", "post_only", "beta", "forced"];
    let ups: Vec<Upstream> = names.iter().map(|n| Upstream::echo(n)).collect();
    let mut cfg = String::from("upstreams:\n");
    for u in &ups {
        cfg.push_str(&format!("  {}:\n    targets: [{{addr: \"{}\"}}]\n", u.name, u.addr));
    }
    cfg.push_str(
        r#"routes:
  catchall: {hosts: [test.local], paths: ["/*"], upstream: catchall}
  api: {paths: ["/api/*"], upstream: api, strip_prefix: "/api"}
  user: {paths: ["/users/{id}"], upstream: user}
  me: {paths: ["/users/me"], upstream: me}
  wild: {hosts: ["*.example.com"], paths: ["/*"], upstream: wild}
  exact_host: {hosts: ["shop.example.com"], paths: ["/*"], upstream: exact_host}
  post_only: {paths: ["/submit"], methods: [POST], upstream: post_only}
  beta: {paths: ["/feature"], headers: {x-beta: "1"}, upstream: beta}
  plain_feature: {paths: ["/feature"], upstream: catchall}
  forced: {paths: ["/forced/*"], upstream: forced, priority: 10}
  shadow: {paths: ["/forced/exact"], upstream: catchall}
"#,
    );
    let gw = Gateway::start_with(&cfg, driver, &[]);
    let mut c = Client::connect(gw.addr);
    let mut ask = |method: &str, host: &str, path: &str, extra: &[(&str, &str)]| {
        let mut h = vec![("Host", host)];
        h.extend_from_slice(extra);
        let r = c.request(method, path, &h, b"");
        (r.status, r.text())
    };
    assert_eq!(ask("GET", "test.local", "/anything", &[]).1, "catchall GET /anything");
    assert_eq!(ask("GET", "other", "/api/v1/items?x=1", &[]).1, "api GET /v1/items?x=1", "strip_prefix");
    assert_eq!(ask("GET", "other", "/api", &[]).1, "api GET /");
    assert_eq!(ask("GET", "other", "/users/42", &[]).1, "user GET /users/42");
    assert_eq!(ask("GET", "other", "/users/me", &[]).1, "me GET /users/me", "exact beats parameter");
    assert_eq!(ask("GET", "a.example.com", "/x", &[]).1, "wild GET /x");
    assert_eq!(ask("GET", "deep.a.example.com", "/x", &[]).1, "wild GET /x");
    assert_eq!(ask("GET", "SHOP.example.com:8080", "/x", &[]).1, "exact_host GET /x", "exact host beats wildcard");
    assert_eq!(ask("POST", "other", "/submit", &[]).1, "post_only POST /submit");
    assert_eq!(ask("GET", "other", "/feature", &[("X-Beta", "1")]).1, "beta GET /feature");
    assert_eq!(ask("GET", "other", "/feature", &[]).1, "catchall GET /feature");
    assert_eq!(ask("GET", "other", "/forced/exact", &[]).1, "forced GET /forced/exact", "priority beats specificity");

    let (status, body) = ask("GET", "other", "/submit", &[]);
    assert_eq!(status, 404, "method constraint");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "no_route");
    assert_eq!(v["status"], 404);
    assert_eq!(ask("GET", "other", "/nowhere", &[]).0, 404);
    // A 404 on a keep-alive connection leaves it usable.
    assert_eq!(ask("GET", "test.local", "/still-here", &[]).0, 200);
}
