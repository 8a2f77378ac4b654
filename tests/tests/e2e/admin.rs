//! The admin API: CRUD with validation, whole-document replace and dry run, revisions and
//! rollback, token, persistence across restarts and `kill -9`, rollout under load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringway_tests::gateway::{default_driver, scratch_dir};
use ringway_tests::{Client, Gateway, Upstream};
use serde_json::{json, Value};

fn empty(extra: &[&str]) -> Gateway {
    Gateway::start_in(scratch_dir(), None, &default_driver(), extra).unwrap_or_else(|(s, log)| panic!("{s:?}\n{log}"))
}

fn ok(r: &ringway_tests::Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    r.json()
}

#[test]
fn crud_with_immediate_rollout_and_referential_checks() {
    let a = Upstream::echo("a");
    let b = Upstream::echo("b");
    let gw = empty(&[]);
    assert_eq!(Client::connect(gw.addr).get("/x").status, 404, "an empty store routes nothing");

    let v = ok(
        &gw.admin(
            "PUT",
            "/admin/v1/upstreams/ua",
            Some(&json!({"targets": [{"addr": a.addr.to_string()}]}).to_string()),
        ),
        201,
    );
    assert_eq!(v["revision"], 1);
    let v = ok(&gw.admin("PUT", "/admin/v1/routes/r", Some(r#"{"paths": ["/x/*"], "upstream": "ua"}"#)), 201);
    assert_eq!(v["revision"], 2);
    // Answered only once every worker serves it: the very next request sees it, on any worker.
    for _ in 0..4 {
        assert_eq!(Client::connect(gw.addr).get("/x/1").text(), "a GET /x/1");
    }
    // Read back, list.
    let v = ok(&gw.admin("GET", "/admin/v1/routes/r", None), 200);
    assert_eq!(v["upstream"], "ua");
    let v = ok(&gw.admin("GET", "/admin/v1/routes", None), 200);
    assert_eq!(v["items"][0]["id"], "r");
    // Replace the upstream's target; PATCH the route.
    ok(
        &gw.admin(
            "PUT",
            "/admin/v1/upstreams/ub",
            Some(&json!({"targets": [{"addr": b.addr.to_string()}]}).to_string()),
        ),
        201,
    );
    let v = ok(&gw.admin("PATCH", "/admin/v1/routes/r", Some(r#"{"upstream": "ub", "strip_prefix": "/x"}"#)), 200);
    assert_eq!(v["value"]["paths"][0], "/x/*", "PATCH merges");
    assert_eq!(Client::connect(gw.addr).get("/x/1").text(), "b GET /1");
    // An upstream in use cannot be deleted.
    let r = gw.admin("DELETE", "/admin/v1/upstreams/ub", None);
    assert_eq!(ok(&r, 409)["error"], "in_use");
    ok(&gw.admin("DELETE", "/admin/v1/routes/r", None), 200);
    ok(&gw.admin("DELETE", "/admin/v1/upstreams/ub", None), 200);
    assert_eq!(Client::connect(gw.addr).get("/x/1").status, 404);
    ok(&gw.admin("GET", "/admin/v1/routes/r", None), 404);
    ok(&gw.admin("DELETE", "/admin/v1/routes/r", None), 404);
    ok(&gw.admin("PATCH", "/admin/v1/routes/nope", Some("{}")), 404);
    ok(&gw.admin("POST", "/admin/v1/routes/r", Some("{}")), 405);
    ok(&gw.admin("GET", "/admin/v1/nothing", None), 404);
    let st = ok(&gw.admin("GET", "/admin/v1/status", None), 200);
    assert_eq!(st["revision"], 6, "refused writes create no revision");
    assert_eq!(st["workers"].as_array().unwrap().len(), 2);
    assert!(st["workers"].as_array().unwrap().iter().all(|w| w["revision"] == 6), "{st}");
    assert!(st["driver"].is_string() && st["version"].is_string());
}

#[test]
fn invalid_writes_are_refused_with_every_problem_and_change_nothing() {
    let a = Upstream::echo("a");
    let gw = empty(&["--admin-max-body", "4096"]);
    ok(
        &gw.admin(
            "PUT",
            "/admin/v1/upstreams/u",
            Some(&json!({"targets": [{"addr": a.addr.to_string()}]}).to_string()),
        ),
        201,
    );
    ok(&gw.admin("PUT", "/admin/v1/routes/r", Some(r#"{"paths": ["/*"], "upstream": "u"}"#)), 201);
    let before = ok(&gw.admin("GET", "/admin/v1/config", None), 200);

    let v = ok(
        &gw.admin("PUT", "/admin/v1/routes/r2", Some(r#"{"paths": ["/*"], "upstream": "u", "colour": "red"}"#)),
        400,
    );
    assert_eq!(v["error"], "invalid_config");
    assert_eq!(v["problems"][0]["path"], "routes.r2.colour");
    assert!(v["problems"][0]["message"].as_str().unwrap().contains("unknown field"));
    let v = ok(&gw.admin("PUT", "/admin/v1/routes/r2", Some(r#"{"paths": "/x", "upstream": "u"}"#)), 400);
    assert_eq!(v["problems"][0]["path"], "routes.r2.paths");
    let v =
        ok(&gw.admin("PUT", "/admin/v1/routes/r2", Some(r#"{"paths": ["nope", "/ok"], "upstream": "ghost"}"#)), 400);
    let paths: Vec<&str> = v["problems"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["routes.r2.paths[0]", "routes.r2.upstream"]);
    let v =
        ok(&gw.admin("PUT", "/admin/v1/upstreams/u", Some(r#"{"targets": [], "timeouts": {"connect": "soon"}}"#)), 400);
    assert_eq!(v["problems"].as_array().unwrap().len(), 2, "{v}");
    ok(&gw.admin("PUT", "/admin/v1/routes/r2", Some("{not json")), 400);
    ok(&gw.admin("PUT", "/admin/v1/routes/r2", Some("")), 400);
    let big = format!(r#"{{"paths": ["/{}"], "upstream": "u"}}"#, "a".repeat(5000));
    ok(&gw.admin("PUT", "/admin/v1/routes/r2", Some(&big)), 413);
    let v = ok(&gw.admin("PUT", "/admin/v1/config", Some(r#"{"upstreams": {"u": {"targets": [{"addr": "bad"}]}}, "routes": {"r": {"paths": ["x"], "upstream": "u"}, "s": {"paths": ["/s"], "upstream": "none"}}}"#)), 400);
    assert_eq!(v["problems"].as_array().unwrap().len(), 3, "{v}");

    let after = ok(&gw.admin("GET", "/admin/v1/config", None), 200);
    assert_eq!(before, after, "a refused write changed the configuration");
    assert_eq!(Client::connect(gw.addr).get("/still").status, 200);
}

#[test]
fn whole_config_dry_run_revisions_and_rollback() {
    let a = Upstream::echo("a");
    let b = Upstream::echo("b");
    let gw = empty(&[]);
    let doc = |target: &str| {
        json!({"upstreams": {"u": {"targets": [{"addr": target}]}}, "routes": {"r": {"paths": ["/*"], "upstream": "u"}}}).to_string()
    };
    ok(&gw.admin("PUT", "/admin/v1/config", Some(&doc(&a.addr.to_string()))), 200);
    assert_eq!(Client::connect(gw.addr).get("/").text(), "a GET /");
    // Dry run: the diff, and nothing changes.
    let v = ok(&gw.admin("PUT", "/admin/v1/config?dry_run=true", Some(&doc(&b.addr.to_string()))), 200);
    assert_eq!(v["diff"]["upstreams"]["changed"][0], "u");
    assert_eq!(v["revision"], 1);
    assert_eq!(Client::connect(gw.addr).get("/").text(), "a GET /");
    // Apply it (YAML accepted too).
    let yaml = format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{}\"\nroutes:\n  r:\n    paths: [\"/*\"]\n    upstream: u\n",
        b.addr
    );
    let mut c = Client::connect(gw.admin);
    let host = gw.admin.to_string();
    let r = c.request(
        "PUT",
        "/admin/v1/config",
        &[("Host", host.as_str()), ("Content-Type", "application/yaml")],
        yaml.as_bytes(),
    );
    assert_eq!(ok(&r, 200)["revision"], 2);
    assert_eq!(Client::connect(gw.addr).get("/").text(), "b GET /");
    let r = gw.admin("GET", "/admin/v1/config?format=yaml", None);
    assert!(r.text().contains(&b.addr.to_string()));
    // History, then roll back to revision 1.
    let v = ok(&gw.admin("GET", "/admin/v1/revisions", None), 200);
    assert_eq!(v["revisions"][0]["revision"], 2);
    assert_eq!(v["revisions"][1]["revision"], 1);
    let v = ok(&gw.admin("POST", "/admin/v1/revisions/1/rollback", None), 200);
    assert_eq!(v["revision"], 3);
    assert_eq!(Client::connect(gw.addr).get("/").text(), "a GET /");
    ok(&gw.admin("POST", "/admin/v1/revisions/99/rollback", None), 404);
    // Rolling back to the empty start removes everything.
    ok(&gw.admin("POST", "/admin/v1/revisions/0/rollback", None), 200);
    assert_eq!(Client::connect(gw.addr).get("/").status, 404);
}

#[test]
fn admin_token_is_required_when_set() {
    let gw = empty(&["--admin-token", "s3cret"]);
    let mut c = Client::connect(gw.admin);
    let host = gw.admin.to_string();
    let h = ("Host", host.as_str());
    assert_eq!(c.request("GET", "/admin/v1/status", &[h], b"").status, 401);
    assert_eq!(c.request("GET", "/admin/v1/status", &[h, ("Authorization", "Bearer wrong")], b"").status, 401);
    assert_eq!(c.request("GET", "/admin/v1/status", &[h, ("Authorization", "Bearer s3cret")], b"").status, 200);
    assert_eq!(c.request("GET", "/admin/v1/status", &[h, ("X-Admin-Token", "s3cret")], b"").status, 200);
    // A non-loopback admin address without a token refuses to start.
    let (status, log) = Gateway::start_in(scratch_dir(), None, &default_driver(), &["--admin-listen", "0.0.0.0:0"])
        .err()
        .expect("started with an open admin API");
    assert_eq!(status.and_then(|s| s.code()), Some(2));
    assert!(log.contains("admin-token"), "{log}");
}

#[test]
fn config_file_seeds_an_empty_store_and_restarts_serve_the_stored_revision() {
    let a = Upstream::echo("a");
    let b = Upstream::echo("b");
    let file = |t: &Upstream| {
        format!(
            "upstreams:\n  u:\n    targets: [{{addr: \"{}\"}}]\nroutes:\n  r: {{paths: [\"/*\"], upstream: u}}\n",
            t.addr
        )
    };
    let dir = scratch_dir();
    let mut gw = Gateway::start_in(dir.clone(), Some(&file(&a)), &default_driver(), &[]).unwrap();
    gw.keep_dir = true;
    ok(&gw.admin("PUT", "/admin/v1/routes/extra", Some(r#"{"paths": ["/extra"], "upstream": "u"}"#)), 201);
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    drop(gw);
    // The file does not replace what is stored...
    let mut gw = Gateway::start_in(dir.clone(), Some(&file(&b)), &default_driver(), &[]).unwrap();
    gw.keep_dir = true;
    assert_eq!(Client::connect(gw.addr).get("/").text(), "a GET /");
    assert_eq!(Client::connect(gw.addr).get("/extra").text(), "a GET /extra");
    assert!(gw.logged("--replace-config"));
    drop(gw);
    // ...unless asked to.
    let gw = Gateway::start_in(dir, Some(&file(&b)), &default_driver(), &["--replace-config"]).unwrap();
    assert_eq!(Client::connect(gw.addr).get("/").text(), "b GET /");
    assert_eq!(gw.admin("GET", "/admin/v1/routes/extra", None).status, 404, "the stored-only route is gone");
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_revision() {
    let a = Upstream::echo("a");
    let dir = scratch_dir();
    let mut gw = Gateway::start_in(dir.clone(), None, &default_driver(), &[]).unwrap();
    gw.keep_dir = true;
    ok(
        &gw.admin(
            "PUT",
            "/admin/v1/upstreams/u",
            Some(&json!({"targets": [{"addr": a.addr.to_string()}]}).to_string()),
        ),
        201,
    );
    let admin = gw.admin;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut c = Client::connect(admin);
                let body = json!({"paths": [format!("/v{i}")], "upstream": "u"}).to_string();
                c.send(
                    format!(
                        "PUT /admin/v1/routes/r HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
                match c.try_read_response(false) {
                    Some(r) if r.status == 200 || r.status == 201 => {
                        acked.store(r.json()["revision"].as_u64().unwrap(), Ordering::SeqCst)
                    }
                    _ => break,
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    gw.kill9();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    drop(gw);
    let last = acked.load(Ordering::SeqCst);
    assert!(last > 3, "too few writes before the kill ({last})");
    let gw = Gateway::start_in(dir, None, &default_driver(), &[]).unwrap();
    let st = ok(&gw.admin("GET", "/admin/v1/status", None), 200);
    let rev = st["revision"].as_u64().unwrap();
    // The write in flight at the kill may or may not have been committed; nothing acknowledged
    // is lost and nothing half-written appears.
    assert!(rev == last || rev == last + 1, "stored revision {rev}, last acknowledged {last}");
    let route = ok(&gw.admin("GET", "/admin/v1/routes/r", None), 200);
    let n: u64 = route["paths"][0].as_str().unwrap().trim_start_matches("/v").parse().unwrap();
    // Revision 1 created the upstream; revision k (k >= 2) wrote /v{k-2}.
    assert_eq!(n, rev - 2, "the route matches its revision");
    assert_eq!(Client::connect(gw.addr).get(&format!("/v{n}")).text(), format!("a GET /v{n}"));
}

#[test]
fn rollout_under_load_loses_no_request() {
    let a = Upstream::echo("a");
    let b = Upstream::echo("b");
    let gw = empty(&[]);
    let ups = json!({"targets": [{"addr": a.addr.to_string()}]}).to_string();
    ok(&gw.admin("PUT", "/admin/v1/upstreams/a", Some(&ups)), 201);
    ok(
        &gw.admin(
            "PUT",
            "/admin/v1/upstreams/b",
            Some(&json!({"targets": [{"addr": b.addr.to_string()}]}).to_string()),
        ),
        201,
    );
    let route = |v: u64| {
        let up = if v.is_multiple_of(2) { "a" } else { "b" };
        json!({"paths": ["/*"], "upstream": up, "policies": {"headers": {"response": {"set": {"x-config": v.to_string()}}}}})
            .to_string()
    };
    ok(&gw.admin("PUT", "/admin/v1/routes/r", Some(&route(0))), 201);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = gw.addr;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let (mut n, mut last) = (0u64, 0u64);
                while n < 5000 || !stop.load(Ordering::Relaxed) {
                    let r = c.get("/load");
                    assert_eq!(r.status, 200, "request {n} failed: {}", r.text());
                    let v: u64 = r.header("x-config").expect("x-config").parse().unwrap();
                    let who = if v.is_multiple_of(2) { "a" } else { "b" };
                    assert_eq!(r.text(), format!("{who} GET /load"), "config {v} served by the wrong upstream");
                    assert!(v >= last, "went back from config {last} to {v} on one connection");
                    last = v;
                    n += 1;
                    if n >= 20_000 {
                        break;
                    }
                }
                n
            })
        })
        .collect();
    for v in 1..=200u64 {
        ok(&gw.admin("PUT", "/admin/v1/routes/r", Some(&route(v))), 200);
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = clients.into_iter().map(|h| h.join().expect("a client saw a failure")).sum();
    assert!(total >= 20_000, "only {total} requests");
    // Pools survived 200 swaps: a handful of upstream connections, not hundreds.
    assert!(a.accepted() + b.accepted() <= 16, "upstream connections: a {}, b {}", a.accepted(), b.accepted());
    assert_eq!(Client::connect(gw.addr).get("/").header("x-config"), Some("200"));
}
