//! The status page in a real headless browser (Chromium, driven over the DevTools protocol):
//! behind the admin token it asks for the token, with it the page loads, its charts draw, and
//! they change as traffic flows. A screenshot is kept as an artifact.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use ringway_tests::{Client, Gateway, Upstream};

/// A headless Chromium and one page of it, driven over the DevTools protocol.
struct Browser {
    child: Child,
    page: WebSocket<TcpStream>,
    next: u64,
    dir: PathBuf,
}

fn chromium() -> String {
    if let Ok(b) = std::env::var("RINGWAY_CHROMIUM") {
        return b;
    }
    for b in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {b}")).output();
        if found.is_ok_and(|o| o.status.success()) {
            return b.to_string();
        }
    }
    panic!("no Chromium found: install Debian's chromium package (.ci/run does) or set RINGWAY_CHROMIUM");
}

/// `GET path` on the browser's DevTools HTTP endpoint.
fn devtools_get(port: u16, path: &str) -> Value {
    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap());
    let r = c.request("GET", path, &[("Host", &format!("127.0.0.1:{port}"))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

impl Browser {
    fn start() -> Browser {
        let dir = ringway_tests::gateway::scratch_dir().join("chromium");
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1400,1800",
                &format!("--user-data-dir={}", dir.display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // The browser writes the port it chose into its profile directory.
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            let text = std::fs::read_to_string(dir.join("DevToolsActivePort")).unwrap_or_default();
            if let Some(p) = text.lines().next().and_then(|l| l.parse().ok()) {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port");
            std::thread::sleep(Duration::from_millis(50));
        };
        let targets = devtools_get(port, "/json/list");
        let url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (page, _) = tungstenite::client(url.as_str(), stream).expect("DevTools websocket");
        Browser { child, page, next: 0, dir }
    }

    /// Calls a DevTools method and returns its result (events on the way are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.page.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).unwrap();
        loop {
            let msg = self.page.read().expect("DevTools answer");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true}))["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    fn wait_for(&mut self, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval(expr) != json!(true) {
            assert!(Instant::now() < deadline, "{what}: {}", self.eval("document.body.outerHTML.slice(0, 2000)"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the screenshot goes: `$RINGWAY_ARTIFACTS`, else `artifacts/` beside the build.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("RINGWAY_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/e2e-*: two levels up is the target directory.
        exe.ancestors().nth(3).unwrap().join("artifacts")
    });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn status_page_draws_live_charts_behind_the_token() {
    let origin = Upstream::echo("o");
    let gw = Gateway::start_with(
        &crate::single(&[origin.addr], "", ""),
        &ringway_tests::gateway::default_driver(),
        &["--admin-token", "s3cret-token"],
    );
    // The page and its scripts hold no data and come without the token; the API does not.
    let mut admin = Client::connect(gw.admin);
    let host = gw.admin.to_string();
    let page = admin.request("GET", "/", &[("Host", &host)], b"");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.header("content-security-policy").unwrap().contains("script-src 'self'"));
    assert!(page.text().contains("/assets/uplot.iife.min.js"));
    let lib = admin.request("GET", "/assets/uplot.iife.min.js", &[("Host", &host)], b"");
    assert_eq!(lib.status, 200);
    assert!(lib.text().contains("uPlot"));
    assert_eq!(admin.request("GET", "/admin/v1/stats", &[("Host", &host)], b"").status, 401);

    let mut b = Browser::start();
    let base = format!("http://{}/", gw.admin);
    // Without the token the page asks for it.
    b.call("Page.navigate", json!({"url": base}));
    b.wait_for(
        "document.body.dataset.error === 'unauthorized' && !document.getElementById('login').hidden",
        "login form",
    );

    // Traffic before the page opens, then with the token (in the fragment, never sent).
    let mut c = Client::connect(gw.addr);
    for i in 0..30 {
        assert_eq!(c.get(&format!("/a/{i}")).status, 200);
    }
    b.call("Page.navigate", json!({"url": format!("{base}#token=s3cret-token")}));
    b.wait_for("Number(document.body.dataset.calls) >= 30", "the page shows the first requests");
    let drawn = b.eval("document.querySelectorAll('.uplot canvas').length");
    assert!(drawn.as_u64().unwrap() >= 6, "charts drawn: {drawn}");
    assert!(b.eval("Number(document.body.dataset.charts)").as_u64().unwrap() >= 6);
    // The token left the address bar.
    assert_eq!(b.eval("location.hash"), json!(""));
    let first_points = b.eval("Number(document.getElementById('c-rps').dataset.points)").as_u64().unwrap();
    let refreshes = b.eval("Number(document.body.dataset.refreshes)").as_u64().unwrap();
    // The worker row and the revision are on the page.
    assert_eq!(b.eval("document.getElementById('workers').querySelectorAll('tr').length"), json!(3));
    assert!(b.eval("document.getElementById('health').textContent").as_str().unwrap().contains("healthy"));

    // More traffic over the next seconds: the charts follow.
    for s in 0..3 {
        for i in 0..40 {
            assert_eq!(c.get(&format!("/b/{s}/{i}")).status, 200);
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    b.wait_for("Number(document.body.dataset.calls) >= 150", "the page follows new requests");
    let later_points = b.eval("Number(document.getElementById('c-rps').dataset.points)").as_u64().unwrap();
    assert!(later_points > first_points, "points {first_points} -> {later_points}");
    assert!(b.eval("Number(document.body.dataset.refreshes)").as_u64().unwrap() > refreshes);

    let shot = b.call("Page.captureScreenshot", json!({"format": "png"}));
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let path = artifacts().join("status-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("status page screenshot: {}", path.display());
}
