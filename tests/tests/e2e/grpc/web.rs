//! gRPC-Web through the gateway, frames built by hand: binary and `-text` bodies over HTTP/1.1
//! (and HTTP/2), the answer's messages and then the trailer frame with the call's status.

use base64::Engine;
use ringway_tests::{Client, Gateway};

use super::{origin, upstream};

/// A length-prefixed message.
fn frame(flag: u8, m: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    out.extend_from_slice(m);
    out
}

/// The frames of a gRPC-Web body: (flag, bytes).
fn frames(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= body.len() {
        let n = u32::from_be_bytes([body[i + 1], body[i + 2], body[i + 3], body[i + 4]]) as usize;
        out.push((body[i], body[i + 5..i + 5 + n].to_vec()));
        i += 5 + n;
    }
    assert_eq!(i, body.len(), "whole frames");
    out
}

/// A protobuf string field (field 1 or another), as the messages here need.
fn string_field(num: u8, s: &str) -> Vec<u8> {
    let mut out = vec![(num << 3) | 2, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

#[test]
fn grpc_web_calls_become_grpc_calls_with_their_trailers_in_the_body() {
    let o = origin();
    let cfg = format!(
        "upstreams:\n{}routes:\n  echo:\n    paths: [\"/demo.v1.Echo/*\"]\n    upstream: g\n",
        upstream("g", o.port)
    );
    let gw = Gateway::start(&cfg);
    let web = |path: &str, ct: &str, body: &[u8]| {
        Client::connect(gw.addr).request("POST", path, &[("content-type", ct), ("x-grpc-web", "1")], body)
    };

    // Unary, binary frames.
    let r = web("/demo.v1.Echo/Get", "application/grpc-web+proto", &frame(0, &string_field(1, "7")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/grpc-web+proto"));
    assert_eq!(r.header("x-served-by"), Some("echo"), "the answer's metadata as header fields");
    let f = frames(&r.body);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].0, 0);
    assert!(f[0].1.windows(10).any(|w| w == b"title of 7"), "the item: {:?}", f[0].1);
    assert_eq!(f[1].0, 0x80, "then the trailer frame");
    let trailer = String::from_utf8(f[1].1.clone()).unwrap();
    assert!(trailer.contains("grpc-status: 0\r\n") && trailer.contains("x-trailer: done\r\n"), "{trailer}");

    // Server streaming, as base64 text (the request in two padded pieces, as browsers write).
    let list = [&[0x0a, 1, b's'][..], &[0x10, 3]].concat();
    let framed = frame(0, &list);
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = format!("{}{}", b64.encode(&framed[..4]), b64.encode(&framed[4..]));
    let r = web("/demo.v1.Echo/List", "application/grpc-web-text", text.as_bytes());
    assert_eq!(r.header("content-type"), Some("application/grpc-web-text+proto"));
    let decoded: Vec<u8> = {
        // Each write of the gateway is a padded piece of its own.
        let mut out = Vec::new();
        let mut rest: &[u8] = &r.body;
        while !rest.is_empty() {
            let mut end = rest.iter().position(|b| *b == b'=').unwrap_or(rest.len());
            while end < rest.len() && rest[end] == b'=' {
                end += 1;
            }
            out.extend(b64.decode(&rest[..end]).unwrap());
            rest = &rest[end..];
        }
        out
    };
    let f = frames(&decoded);
    assert_eq!(f.iter().filter(|(flag, _)| *flag == 0).count(), 3, "three messages: {f:?}");
    assert!(String::from_utf8_lossy(&f[3].1).contains("grpc-status: 0"));

    // A failed call (trailers-only from the origin): its status and details in the trailer
    // frame, never an empty one.
    let r = web("/demo.v1.Echo/Fail", "application/grpc-web+proto", &frame(0, &[0x08, 9]));
    let f = frames(&r.body);
    assert_eq!(f.len(), 1, "{f:?}");
    let trailer = String::from_utf8_lossy(&f[0].1).to_string();
    assert!(trailer.contains("grpc-status: 9\r\n"), "{trailer}");
    assert!(trailer.contains("grpc-message: failed on purpose"), "{trailer}");
    assert!(trailer.contains("grpc-status-details-bin: "), "{trailer}");

    // Over HTTP/2 as well.
    let dir = ringway_tests::gateway::scratch_dir();
    let req = dir.join("web.bin");
    std::fs::write(&req, frame(0, &string_field(1, "h2"))).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-H", "content-type: application/grpc-web+proto", "--data-binary"])
        .arg(format!("@{}", req.display()))
        .arg(format!("http://{}/demo.v1.Echo/Get", gw.addr))
        .output()
        .unwrap();
    let f = frames(&out.stdout);
    assert!(f[0].1.windows(11).any(|w| w == b"title of h2"), "{f:?}");
    assert!(String::from_utf8_lossy(&f[1].1).contains("grpc-status: 0"));
}
