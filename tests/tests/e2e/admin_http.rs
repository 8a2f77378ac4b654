//! The admin API's HTTP server with clients that pipeline, half-close or send bodies in pieces.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use ringway_tests::gateway::{default_driver, scratch_dir};
use ringway_tests::{Client, Gateway};

fn empty() -> Gateway {
    Gateway::start_in(scratch_dir(), None, &default_driver(), &[]).unwrap_or_else(|(s, log)| panic!("{s:?}\n{log}"))
}

#[test]
fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let gw = empty();
    let mut s = TcpStream::connect(gw.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = r#"{"x-test": {}}"#;
    s.write_all(
        format!(
            "PUT /admin/v1/global_policies HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            gw.admin,
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    // An unknown policy name: refused, and the refusal arrives.
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");
    assert!(got.contains("invalid_config"), "{got:?}");
}

#[test]
fn pipelined_requests_are_answered_in_order_and_bodies_may_arrive_in_pieces() {
    let gw = empty();
    let a = gw.admin;
    let put = |body: &str| {
        format!(
            "PUT /admin/v1/upstreams/u HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let one = put(r#"{"targets": [{"addr": "127.0.0.1:1"}]}"#);
    let two = put(r#"{"targets": [{"addr": "127.0.0.1:2"}]}"#);
    let get = format!("GET /admin/v1/upstreams/u HTTP/1.1\r\nHost: {a}\r\n\r\n");
    let mut c = Client::connect(a);
    c.send(format!("{one}{two}{get}").as_bytes());
    assert_eq!(c.read_response(false).status, 201);
    assert_eq!(c.read_response(false).status, 200);
    let r = c.read_response(false);
    assert_eq!(r.json()["targets"][0]["addr"], "127.0.0.1:2");
    // A body split across writes, with pauses, on the same connection.
    let three = put(r#"{"targets": [{"addr": "127.0.0.1:3"}]}"#);
    let (head, body) = three.split_at(three.find("\r\n\r\n").unwrap() + 4);
    c.send(head.as_bytes());
    for piece in body.as_bytes().chunks(7) {
        std::thread::sleep(Duration::from_millis(20));
        c.send(piece);
    }
    assert_eq!(c.read_response(false).status, 200);
    let r = c.request("GET", "/admin/v1/upstreams/u", &[("Host", &a.to_string())], b"");
    assert_eq!(r.json()["targets"][0]["addr"], "127.0.0.1:3");
}
