//! Certificates as a resource: validated at write (400 naming the reason), the key never shown
//! or stored in plaintext, expiry in the status and the metrics, and rotation under load with
//! no failed request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{cert_body, gateway, names_of, trusting, Pki, Seen, Tls};

#[test]
fn uploads_are_validated_and_the_key_is_never_shown_nor_stored_in_plaintext() {
    let (gw, _up) = gateway(&[]);
    let pki = Pki::new("test ca");
    let leaf = pki.leaf(&["api.example.test", "*.apps.example.test"]);
    let other = pki.leaf(&["other.example.test"]);

    // The key of another certificate.
    let mut wrong = cert_body(&leaf, &["api.example.test"], "");
    wrong = wrong.replace(&serde_json::to_string(&leaf.key).unwrap(), &serde_json::to_string(&other.key).unwrap());
    let r = gw.admin("PUT", "/admin/v1/certificates/api", Some(&wrong));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("certificates.api.key") && r.text().contains("does not match"), "{}", r.text());

    // A name the certificate does not have.
    let r = gw.admin("PUT", "/admin/v1/certificates/api", Some(&cert_body(&leaf, &["evil.example.test"], "")));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("certificates.api.snis[0]"), "{}", r.text());

    // Not PEM; no key; expired.
    let r = gw.admin("PUT", "/admin/v1/certificates/api", Some(r#"{"cert": "hello", "key": "x"}"#));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("certificates.api.cert"), "{}", r.text());
    let no_key = format!(r#"{{"cert": {}}}"#, serde_json::to_string(&leaf.cert).unwrap());
    let r = gw.admin("PUT", "/admin/v1/certificates/api", Some(&no_key));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("certificates.api.key"), "{}", r.text());
    let mut p = rcgen::CertificateParams::new(vec!["old.example.test".to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = pki.sign(p);
    let r = gw.admin("PUT", "/admin/v1/certificates/old", Some(&cert_body(&expired, &[], "")));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("expired"), "{}", r.text());
    assert_eq!(gw.admin("GET", "/admin/v1/certificates", None).json()["items"], serde_json::json!([]));

    // A good one: its names default to the certificate's.
    let r = gw.admin("PUT", "/admin/v1/certificates/api", Some(&cert_body(&leaf, &[], r#""default": true"#)));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["value"]["snis"], serde_json::json!([]));
    let key_line = leaf.key.lines().nth(1).unwrap().to_string();
    for path in
        ["/admin/v1/certificates/api", "/admin/v1/certificates", "/admin/v1/config", "/admin/v1/config?format=yaml"]
    {
        let r = gw.admin("GET", path, None);
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.text().contains(&key_line) && !r.text().contains("key_sealed"), "{path}: {}", r.text());
        assert!(r.text().contains("BEGIN CERTIFICATE"), "{path} shows the chain");
    }
    assert!(!gw.store_holds(key_line.as_bytes()), "the key is stored sealed");

    // Two certificates never claim one name; two defaults are refused.
    let dup = pki.leaf(&["api.example.test"]);
    let r = gw.admin("PUT", "/admin/v1/certificates/dup", Some(&cert_body(&dup, &[], "")));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("served by certificate \\\"api\\\""), "{}", r.text());
    let r = gw.admin("PUT", "/admin/v1/certificates/other", Some(&cert_body(&other, &[], r#""default": true"#)));
    assert_eq!(r.status, 400, "{}", r.text());

    // The exported document goes back as it is: the key is kept.
    let export = gw.admin("GET", "/admin/v1/config", None).text();
    let r = gw.admin("PUT", "/admin/v1/config", Some(&export));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut c = Tls::connect(
        gw.tls.unwrap(),
        Some("x.apps.example.test"),
        trusting(Arc::default(), None, &[&rustls::version::TLS13]),
    )
    .expect("the kept key still serves");
    assert_eq!(c.get("/k", "x.apps.example.test").unwrap().0, 200);

    // Status and metrics tell when it expires.
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    let certs = status["tls"]["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["id"], "api");
    let not_after = certs[0]["not_after"].as_i64().unwrap();
    assert!(not_after > 1_700_000_000, "{status}");
    let metrics = gw.admin("GET", "/metrics", None).text();
    assert!(
        metrics.contains(&format!("ringway_certificate_expiry_timestamp_seconds{{certificate=\"api\"}} {not_after}")),
        "{metrics}"
    );

    // Deleted: no certificate serves.
    assert_eq!(gw.admin("DELETE", "/admin/v1/certificates/api", None).status, 200);
    assert!(Tls::connect(
        gw.tls.unwrap(),
        Some("api.example.test"),
        trusting(Arc::default(), None, &[&rustls::version::TLS13])
    )
    .is_err());
}

#[test]
fn a_certificate_replaced_under_load_fails_no_request_and_new_handshakes_use_it() {
    let (gw, _up) = gateway(&[]);
    let tls = gw.tls.unwrap();
    let pki = Pki::new("test ca");
    let first = pki.leaf(&["rotate.example.test"]);
    let r = gw.admin("PUT", "/admin/v1/certificates/r", Some(&cert_body(&first, &[], "")));
    assert_eq!(r.status, 201, "{}", r.text());

    // A connection kept alive across every rotation.
    let mut kept =
        Tls::connect(tls, Some("rotate.example.test"), trusting(Arc::default(), None, &[&rustls::version::TLS13]))
            .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let config = trusting(Arc::default(), None, &[&rustls::version::TLS13, &rustls::version::TLS12]);
                    let r = Tls::connect(tls, Some("rotate.example.test"), config)
                        .and_then(|mut c| c.get("/load", "rotate.example.test"));
                    match r {
                        Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let mut last = first;
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        last = pki.leaf(&["rotate.example.test"]);
        let r = gw.admin("PUT", "/admin/v1/certificates/r", Some(&cert_body(&last, &[], "")));
        assert_eq!(r.status, 200, "rotation {i}: {}", r.text());
        assert_eq!(
            kept.get(&format!("/kept/{i}"), "rotate.example.test").unwrap().0,
            200,
            "the kept connection lives on"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed ({} succeeded)", ok.load(Ordering::Relaxed));
    assert!(ok.load(Ordering::Relaxed) > 20, "load ran: {}", ok.load(Ordering::Relaxed));

    // A new handshake gets the last certificate.
    let seen = Arc::new(Seen::default());
    Tls::connect(tls, Some("rotate.example.test"), trusting(seen.clone(), None, &[&rustls::version::TLS13])).unwrap();
    assert_eq!(seen.0.lock().unwrap().clone().unwrap(), last.der);
    assert_eq!(names_of(&last.der), vec!["rotate.example.test"]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_tls_listener_moves_with_the_document_and_open_connections_stay() {
    let up = ringway_tests::Upstream::echo("o");
    let gw = ringway_tests::Gateway::start(&crate::single(&[up.addr], "", ""));
    let pki = Pki::new("ca");
    let r = gw.admin(
        "PUT",
        "/admin/v1/certificates/m",
        Some(&cert_body(&pki.leaf(&["m.example.test"]), &[], r#""default": true"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(gw.admin("GET", "/admin/v1/status", None).json()["tls"]["listen"].is_null(), "no TLS listener yet");
    let connect = |port: u16| {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Tls::connect(addr, Some("m.example.test"), trusting(Arc::default(), None, &[&rustls::version::TLS13]))
    };
    let set = |listen: &str| {
        let mut cfg = gw.admin("GET", "/admin/v1/config", None).json();
        cfg["tls"] = serde_json::json!({"listen": listen});
        gw.admin("PUT", "/admin/v1/config", Some(&cfg.to_string()))
    };
    let first = free_port();
    let r = set(&format!("127.0.0.1:{first}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    assert_eq!(status["tls"]["listen"], format!("127.0.0.1:{first}"));
    let mut kept = connect(first).expect("listening on the document's address");
    assert_eq!(kept.get("/1", "m.example.test").unwrap().0, 200);

    let second = free_port();
    let r = set(&format!("127.0.0.1:{second}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(connect(second).unwrap().get("/2", "m.example.test").unwrap().0, 200);
    assert!(connect(first).is_err(), "the old address no longer accepts");
    assert_eq!(kept.get("/3", "m.example.test").unwrap().0, 200, "a connection made before stays");

    // An address that cannot be bound is refused, and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let r = set(&taken.local_addr().unwrap().to_string());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("tls.listen: cannot listen on"), "{}", r.text());
    assert_eq!(gw.admin("GET", "/admin/v1/status", None).json()["tls"]["listen"], format!("127.0.0.1:{second}"));
    let r = set("not an address");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(connect(second).unwrap().get("/4", "m.example.test").unwrap().0, 200);

    // With --tls-listen, the document may not move it.
    let (pinned, _up) = super::gateway(&[]);
    let mut cfg = pinned.admin("GET", "/admin/v1/config", None).json();
    cfg["tls"] = serde_json::json!({"listen": "127.0.0.1:0"});
    let r = pinned.admin("PUT", "/admin/v1/config", Some(&cfg.to_string()));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("--tls-listen"), "{}", r.text());
}
