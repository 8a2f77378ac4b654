//! One canonical path for routing, policies and forwarding: spellings of a path that an origin
//! would read as the same cannot skip its route, `//`, dot segments and `%2F` are served as
//! `path_normalization` says, and absolute-form targets are routed by their authority.

use ringway_tests::{Client, Gateway, Upstream};

use crate::both_drivers;

both_drivers!(
    other_spellings_of_a_limited_path_cannot_skip_its_route,
    slashes_and_dot_segments_are_served_in_canonical_form,
    encoded_slash_stays_inside_its_segment,
    route_options_reject_decode_and_keep_slashes,
    absolute_form_is_routed_by_its_authority,
    every_reading_of_a_path_agrees,
);

/// One request on a fresh connection (refusals close theirs): status and body.
fn ask(gw: &Gateway, target: &str) -> (u16, String) {
    let mut c = Client::connect(gw.addr);
    let r = c.get(target);
    (r.status, r.text())
}

fn other_spellings_of_a_limited_path_cannot_skip_its_route(driver: &str) {
    let login = Upstream::echo("login");
    let rest = Upstream::echo("rest");
    let cfg = format!(
        r#"upstreams:
  login: {{targets: [{{addr: "{}"}}]}}
  rest: {{targets: [{{addr: "{}"}}]}}
routes:
  login:
    paths: ["/login"]
    upstream: login
    policies: {{rate_limit: {{limit: 1, window: 1h, key: route}}}}
  all: {{paths: ["/*"], upstream: rest}}
"#,
        login.addr, rest.addr
    );
    let gw = Gateway::start_with(&cfg, driver, &[]);
    assert_eq!(ask(&gw, "/login"), (200, "login GET /login".to_string()));
    for spelling in
        ["/l%6fgin", "/%6C%6F%67%69%6E", "/login/", "/login;x", "/login;jsessionid=1/", "//login", "/x/../login"]
    {
        let (status, body) = ask(&gw, spelling);
        assert_eq!(status, 429, "{spelling} skipped the /login route: {body}");
    }
    assert_eq!(login.request_count(), 1, "{:?}", login.requests());
    assert_eq!(rest.request_count(), 0, "{:?}", rest.requests());
    // What only looks alike is still another path.
    assert_eq!(ask(&gw, "/login2").1, "rest GET /login2");
    assert_eq!(ask(&gw, "/logi%6E/more").1, "rest GET /login/more");
}

fn slashes_and_dot_segments_are_served_in_canonical_form(driver: &str) {
    let up = Upstream::echo("u");
    let gw = Gateway::start_with(&crate::single(&[up.addr], "", ""), driver, &[]);
    let cases = [
        ("//a", "/a"),
        ("/a//b?x=//y", "/a/b?x=//y"),
        ("/a/./b/../c", "/a/c"),
        ("/a/%2e%2E/b", "/b"),
        ("/a/b/..", "/a/"),
        ("/%7Euser/caf%c3%a9", "/~user/caf%C3%A9"),
    ];
    for (sent, seen) in cases {
        assert_eq!(ask(&gw, sent), (200, format!("u GET {seen}")), "{sent}");
    }
    for refused in ["/../etc/passwd", "/a/%2e%2e/%2e%2e/b", "/a\\b", "/a%5Cb", "/a%00b"] {
        let mut c = Client::connect(gw.addr);
        let r = c.get(refused);
        assert_eq!(r.status, 400, "{refused}: {}", r.text());
        assert_eq!(r.json()["error"], "bad_request", "{refused}");
    }
    assert_eq!(up.request_count(), cases.len());
}

fn encoded_slash_stays_inside_its_segment(driver: &str) {
    let projects = Upstream::echo("projects");
    let rest = Upstream::echo("rest");
    let cfg = format!(
        r#"upstreams:
  projects: {{targets: [{{addr: "{}"}}]}}
  rest: {{targets: [{{addr: "{}"}}]}}
routes:
  project: {{paths: ["/projects/{{id}}"], upstream: projects}}
  all: {{paths: ["/*"], upstream: rest}}
"#,
        projects.addr, rest.addr
    );
    let gw = Gateway::start_with(&cfg, driver, &[]);
    assert_eq!(ask(&gw, "/projects/group%2Fproject").1, "projects GET /projects/group%2Fproject");
    assert_eq!(ask(&gw, "/projects/group%2fproject").1, "projects GET /projects/group%2Fproject");
    assert_eq!(ask(&gw, "/projects/group/project").1, "rest GET /projects/group/project");
    // Inside a segment, an encoded slash does not make `..` a dot segment.
    assert_eq!(ask(&gw, "/projects/a%2F..%2Fb").1, "projects GET /projects/a%2F..%2Fb");
}

fn route_options_reject_decode_and_keep_slashes(driver: &str) {
    let up = Upstream::echo("u");
    let cfg = format!(
        r#"upstreams:
  u: {{targets: [{{addr: "{}"}}]}}
routes:
  strict:
    paths: ["/strict/*"]
    upstream: u
    policies: {{path_normalization: {{dot_segments: reject}}}}
  noslash:
    paths: ["/noslash/{{id}}"]
    upstream: u
    policies: {{path_normalization: {{escaped_slashes: reject}}}}
  files:
    paths: ["/files/*"]
    upstream: u
    policies: {{path_normalization: {{escaped_slashes: decode}}}}
  raw:
    paths: ["/raw/*"]
    upstream: u
    policies: {{path_normalization: {{merge_slashes: false}}}}
  repos:
    paths: ["/repos/{{id}}"]
    upstream: u
    policies: {{path_normalization: {{escaped_slashes: decode}}}}
  exact:
    paths: ["/exact"]
    upstream: u
    policies: {{path_normalization: {{trailing_slash: strict, semicolons: reject}}}}
  all: {{paths: ["/*"], upstream: u}}
"#,
        up.addr
    );
    let gw = Gateway::start_with(&cfg, driver, &[]);
    let refused = |target: &str, word: &str| {
        let mut c = Client::connect(gw.addr);
        let r = c.get(target);
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(word), "{target}: {msg}");
    };
    refused("/strict/a/../b", "dot segment");
    refused("/strict/a/%2E/b", "dot segment");
    refused("/noslash/a%2Fb", "encoded slash");
    // Read with `decode`, the path is /repos/a/b: not this route's.
    refused("/repos/a%2Fb", "another route");
    refused("/exact;x", "';'");
    assert_eq!(ask(&gw, "/strict/a/b"), (200, "u GET /strict/a/b".to_string()));
    assert_eq!(ask(&gw, "/noslash/a%20b"), (200, "u GET /noslash/a%20b".to_string()));
    assert_eq!(ask(&gw, "/files/a%2Fb%2F..%2Fc"), (200, "u GET /files/a/c".to_string()));
    assert_eq!(ask(&gw, "/raw/a//b"), (200, "u GET /raw/a//b".to_string()));
    assert_eq!(ask(&gw, "/repos/a%2Db"), (200, "u GET /repos/a-b".to_string()));
    // `trailing_slash: strict`: /exact/ is not the exact route's, and the route's own reading
    // must agree with the global one, which routes it there.
    refused("/exact/", "another route");
    assert_eq!(ask(&gw, "/exact"), (200, "u GET /exact".to_string()));
    // Everything else keeps the defaults.
    assert_eq!(ask(&gw, "//other/./x"), (200, "u GET /other/x".to_string()));

    // The options are checked when the configuration is written, each problem named by path.
    let put = |body: &str| {
        let r = gw.admin("PUT", "/admin/v1/routes/bad", Some(body));
        assert_eq!(r.status, 400, "{}", r.text());
        let v = r.json();
        (v["problems"][0]["path"].as_str().unwrap_or_default().to_string(), v["problems"][0]["message"].to_string())
    };
    let (path, msg) =
        put(r#"{"paths": ["/b"], "upstream": "u", "policies": {"path_normalization": {"dot_segments": "tidy"}}}"#);
    assert_eq!(path, "routes.bad.policies.path_normalization.dot_segments", "{msg}");
    let (path, msg) =
        put(r#"{"paths": ["/b"], "upstream": "u", "policies": {"path_normalization": {"slashes": "keep"}}}"#);
    assert_eq!(path, "routes.bad.policies.path_normalization.slashes", "{msg}");
    let (path, msg) = put(r#"{"paths": ["/l%6fgin"], "upstream": "u"}"#);
    assert_eq!(path, "routes.bad.paths[0]", "{msg}");
    assert!(msg.contains("/login"), "{msg}");
}

fn absolute_form_is_routed_by_its_authority(driver: &str) {
    let api = Upstream::echo("api");
    let rest = Upstream::echo("rest");
    let cfg = format!(
        r#"upstreams:
  api: {{targets: [{{addr: "{}"}}]}}
  rest: {{targets: [{{addr: "{}"}}]}}
routes:
  api: {{hosts: [api.example.com], paths: ["/*"], upstream: api}}
  all: {{paths: ["/*"], upstream: rest}}
"#,
        api.addr, rest.addr
    );
    let gw = Gateway::start_with(&cfg, driver, &[]);
    let mut c = Client::connect(gw.addr);
    let r = c.request("GET", "http://api.example.com:8080/x//y?q=1", &[("Host", "other.example")], b"");
    assert_eq!((r.status, r.text()), (200, "api GET /x/y?q=1".to_string()));
    let r = c.request("GET", "HTTP://API.example.com", &[("Host", "other.example")], b"");
    assert_eq!((r.status, r.text()), (200, "api GET /".to_string()));
    let seen = api.requests();
    assert_eq!(seen[0].header("host"), Some("api.example.com:8080"));
    assert_eq!(seen[0].header("x-forwarded-host"), Some("api.example.com:8080"));
    assert_eq!(seen[1].header("host"), Some("API.example.com"));
    assert_eq!(ask(&gw, "/x"), (200, "rest GET /x".to_string()));
    // HTTP/1.0 without Host: the authority stands in, upstream too.
    let mut c = Client::connect(gw.addr);
    c.send(b"GET http://api.example.com/old HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).text(), "api GET /old");
    assert_eq!(api.requests()[2].header("host"), Some("api.example.com"));
    for refused in ["ftp://api.example.com/x", "http:///x", "http://user@api.example.com/x", "*"] {
        let mut c = Client::connect(gw.addr);
        let r = c.request("GET", refused, &[("Host", "api.example.com")], b"");
        assert_eq!(r.status, 400, "{refused}: {}", r.text());
    }
    assert_eq!(api.request_count(), 3);
}

fn every_reading_of_a_path_agrees(driver: &str) {
    let admin = Upstream::echo("admin");
    let api = Upstream::echo("api");
    let projects = Upstream::echo("projects");
    let rest = Upstream::start("rest", |r| {
        ringway_tests::Reply::Full(
            200,
            vec![("cache-control".into(), "max-age=60".into())],
            format!("rest {} {}", r.method, r.target).into_bytes(),
        )
    });
    let cfg = format!(
        r#"upstreams:
  admin: {{targets: [{{addr: "{}"}}]}}
  api: {{targets: [{{addr: "{}"}}]}}
  projects: {{targets: [{{addr: "{}"}}]}}
  rest: {{targets: [{{addr: "{}"}}]}}
routes:
  admin:
    paths: ["/admin/"]
    upstream: admin
    policies: {{rate_limit: {{limit: 1, window: 1h, key: route}}}}
  secret: {{paths: ["/vault/*"], upstream: admin}}
  api: {{paths: ["/api/*"], strip_prefix: "/api", upstream: api}}
  projects: {{paths: ["/projects/{{id}}"], upstream: projects}}
  all:
    paths: ["/*"]
    upstream: rest
    policies: {{cache: {{ttl: 60s}}}}
"#,
        admin.addr, api.addr, projects.addr, rest.addr
    );
    let gw = Gateway::start_with(&cfg, driver, &[]);
    // A route written with a trailing slash is reached with or without one, and keeps its limit.
    assert_eq!(ask(&gw, "/admin").0, 200);
    assert_eq!(ask(&gw, "/admin/").0, 429);
    assert_eq!(rest.request_count(), 0);
    // A kept %2F that an origin would decode into another, stronger route's path is refused;
    // one that only a weaker route would take stays served.
    let (status, body) = ask(&gw, "/vault%2Fkeys");
    assert_eq!(status, 400, "{body}");
    assert_eq!(ask(&gw, "/projects/group%2Fproject").1, "projects GET /projects/group%2Fproject");
    // strip_prefix takes the prefix's parameters with it.
    assert_eq!(ask(&gw, "/api;v=1/x").1, "api GET /x");
    // A POST to a path drops what its other spellings stored.
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/doc/").header("x-cache-status"), Some("MISS"));
    assert_eq!(c.get("/doc/").header("x-cache-status"), Some("HIT"));
    assert_eq!(c.request("POST", "/doc", &[], b"x").status, 200);
    assert_eq!(c.get("/doc/").header("x-cache-status"), Some("MISS"));
    // An admin purge is read the same way.
    assert_eq!(c.get("/doc/").header("x-cache-status"), Some("HIT"));
    let r = gw.admin("DELETE", "/admin/v1/cache?route=all&path=/d%256Fc", None);
    assert_eq!(r.json()["removed"], 1, "{}", r.text());
    assert_eq!(c.get("/doc/").header("x-cache-status"), Some("MISS"));
}
