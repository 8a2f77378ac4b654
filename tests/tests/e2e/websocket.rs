//! WebSocket through the gateway: an upgrade on a route that allows it passes the route's
//! policies, is forwarded, and once the upstream switches both sides are spliced (text,
//! binary, ping, close, large frames), over plaintext and TLS; elsewhere the upgrade is not
//! forwarded; an idle tunnel is closed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringway_tests::Gateway;
use tungstenite::{Message, WebSocket};

/// A WebSocket echo server: every data message comes back, pings are answered.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(s) else { return };
                while let Ok(m) = ws.read() {
                    let data = matches!(m, Message::Text(_) | Message::Binary(_));
                    if data && ws.send(m).is_err() {
                        return;
                    }
                    let _ = ws.flush();
                }
            });
        }
    });
    addr
}

fn config(up: SocketAddr, route_extra: &str) -> String {
    format!(
        "upstreams:\n  ws:\n    targets:\n      - addr: \"{up}\"\nroutes:\n  chat:\n    paths: [\"/chat\"]\n    upstream: ws\n{route_extra}\n  plain:\n    paths: [\"/plain\"]\n    upstream: ws\n"
    )
}

fn open(addr: SocketAddr, path: &str) -> Result<WebSocket<TcpStream>, Box<tungstenite::Error>> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tungstenite::client(format!("ws://{addr}{path}"), s).map(|(ws, _)| ws).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => Box::new(e),
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking socket"),
    })
}

/// The status and body of an answer that did not switch protocols.
fn refusal(r: Result<WebSocket<TcpStream>, Box<tungstenite::Error>>) -> (u16, Vec<u8>) {
    match r.map(|_| ()).map_err(|e| *e) {
        Err(tungstenite::Error::Http(r)) => (r.status().as_u16(), r.body().clone().unwrap_or_default()),
        other => panic!("{other:?}"),
    }
}

fn exchange<S: std::io::Read + std::io::Write>(ws: &mut WebSocket<S>) {
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello"));
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big), "a 1 MB frame comes back whole");
    ws.send(Message::Ping(b"p1".to_vec().into())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p1"),
        other => panic!("{other:?}"),
    }
    for i in 0..50 {
        ws.send(Message::text(format!("m{i}"))).unwrap();
    }
    for i in 0..50 {
        assert_eq!(ws.read().unwrap(), Message::text(format!("m{i}")), "in order");
    }
    ws.close(None).unwrap();
    match ws.read() {
        Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {}
        Ok(other) => panic!("{other:?}"),
        Err(e) => panic!("{e}"),
    }
}

fn websocket_is_spliced_both_ways_where_the_route_allows_it(driver: &str) {
    let up = echo_server();
    let gw = Gateway::start_with(&config(up, "    websocket: true"), driver, &[]);
    let mut ws = open(gw.addr, "/chat").expect("upgraded");
    exchange(&mut ws);

    // Elsewhere the upgrade is not forwarded: the upstream hears a plain GET and refuses it.
    assert_ne!(refusal(open(gw.addr, "/plain")).0, 101);
    // The tunnel is counted once both sides have closed.
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.admin("GET", "/metrics", None).text().contains("route=\"chat\",method=\"GET\",status=\"101\"} 1") {
        assert!(Instant::now() < deadline, "the tunnel is counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn an_idle_tunnel_is_closed(driver: &str) {
    let up = echo_server();
    let gw = Gateway::start_with(&config(up, "    websocket: {idle_timeout: 400ms}"), driver, &[]);
    let mut ws = open(gw.addr, "/chat").unwrap();
    ws.send(Message::text("x")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("x"));
    let start = Instant::now();
    let r = ws.read();
    assert!(r.is_err(), "{r:?}");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(5), "{waited:?}");
}

crate::both_drivers!(websocket_is_spliced_both_ways_where_the_route_allows_it, an_idle_tunnel_is_closed);

#[test]
fn an_upgrade_is_authorised_by_the_route_policies_and_refusals_are_relayed() {
    let up = echo_server();
    let refusing = ringway_tests::Upstream::start("r", |_| ringway_tests::Reply::Full(403, vec![], b"no".to_vec()));
    let cfg = format!(
        "upstreams:\n  ws:\n    targets:\n      - addr: \"{up}\"\n  r:\n    targets:\n      - addr: \"{}\"\nroutes:\n  guarded:\n    paths: [\"/guarded\"]\n    upstream: ws\n    websocket: true\n    policies:\n      ip_restriction: {{deny: [\"127.0.0.0/8\"]}}\n  refused:\n    paths: [\"/refused\"]\n    upstream: r\n    websocket: true\n",
        refusing.addr
    );
    let gw = Gateway::start(&cfg);
    assert_eq!(refusal(open(gw.addr, "/guarded")).0, 403);
    assert_eq!(refusal(open(gw.addr, "/refused")), (403, b"no".to_vec()));
    assert!(refusing.requests().iter().all(|r| r.header("upgrade") == Some("websocket")));
}

#[test]
fn websocket_runs_over_tls() {
    use crate::tls::{cert_body, trusting, Pki};
    let up = echo_server();
    let gw = Gateway::start_with(
        &config(up, "    websocket: true"),
        &crate::default_driver(),
        &["--tls-listen", "127.0.0.1:0"],
    );
    let pki = Pki::new("ca");
    let r = gw.admin("PUT", "/admin/v1/certificates/ws", Some(&cert_body(&pki.leaf(&["ws.example.test"]), &[], "")));
    assert_eq!(r.status, 201, "{}", r.text());
    let tls = gw.tls.unwrap();
    let config = trusting(Arc::default(), None, &[&rustls::version::TLS13]);
    let conn = rustls::ClientConnection::new(config, "ws.example.test".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(tls).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stream = rustls::StreamOwned::new(conn, sock);
    let (mut ws, resp) = tungstenite::client("wss://ws.example.test/chat", stream).expect("upgraded over TLS");
    assert_eq!(resp.status(), 101);
    exchange(&mut ws);
}
