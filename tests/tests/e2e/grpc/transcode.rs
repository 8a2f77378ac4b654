//! HTTP/JSON to gRPC: a proto uploaded through the admin API (sources with imports, or a
//! descriptor set), routes that call one method or every annotated one, and the JSON mapping
//! both ways against the grpcio origin.

use base64::Engine;
use ringway_tests::{Client, Gateway};
use serde_json::{json, Value};

use super::{call, origin, upstream, Origin};

fn sources() -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc/protos/");
    let mut files = serde_json::Map::new();
    for f in ["demo/v1/echo.proto", "demo/v1/types.proto"] {
        files.insert(f.into(), Value::String(std::fs::read_to_string(format!("{dir}{f}")).unwrap()));
    }
    json!({ "files": files })
}

fn put(gw: &Gateway, path: &str, body: &Value) -> ringway_tests::Response {
    gw.admin("PUT", path, Some(&body.to_string()))
}

/// The gateway with the proto as sources and the test's routes.
fn published(o: &Origin) -> Gateway {
    let gw = Gateway::start(&format!("upstreams:\n{}routes: {{}}\n", upstream("g", o.port)));
    assert_eq!(put(&gw, "/admin/v1/protos/demo", &sources()).status, 201);
    let routes = [
        (
            "rest",
            json!({"paths": ["/v1/*"], "upstream": "g", "max_body_bytes": 256,
            "grpc_transcode": {"proto": "demo", "service": "demo.v1.Echo", "from_annotations": true,
                               "metadata_headers": ["x-meta-color"]}}),
        ),
        (
            "get",
            json!({"paths": ["/get"], "methods": ["POST"], "upstream": "g",
            "grpc_transcode": {"proto": "demo", "service": "demo.v1.Echo", "method": "Get",
                               "emit_defaults": true, "proto_names": true}}),
        ),
        (
            "lenient",
            json!({"paths": ["/lenient"], "methods": ["POST"], "upstream": "g",
            "grpc_transcode": {"proto": "demo", "service": "demo.v1.Echo", "method": "Get", "unknown_fields": "ignore"}}),
        ),
        (
            "explicit",
            json!({"paths": ["/things/*"], "upstream": "g",
            "grpc_transcode": {"proto": "demo", "service": "demo.v1.Echo", "method": "Create",
                               "http": {"path": "/things/{shelf}/new", "body": "item"}}}),
        ),
        (
            "lines",
            json!({"paths": ["/lines"], "upstream": "g",
            "grpc_transcode": {"proto": "demo", "service": "demo.v1.Echo", "method": "List", "stream": "ndjson"}}),
        ),
    ];
    for (id, r) in routes {
        let a = put(&gw, &format!("/admin/v1/routes/{id}"), &r);
        assert_eq!(a.status, 201, "{id}: {}", a.text());
    }
    gw
}

/// Calls the origin has taken (`Get` and `Create`), as it says.
fn origin_calls(gw: &Gateway, o: &Origin) -> i64 {
    let _ = gw;
    let direct = format!("127.0.0.1:{}", o.port).parse().unwrap();
    let seen = call(direct, o, "cancelled", "");
    seen["copies"].as_i64().unwrap_or(0)
}

#[test]
fn protos_are_checked_at_write_and_routes_only_publish_methods_they_have() {
    let o = origin();
    let gw = Gateway::start(&format!(
        "upstreams:\n{}  plain:\n    targets:\n      - addr: \"127.0.0.1:{}\"\nroutes: {{}}\n",
        upstream("g", o.port),
        o.port
    ));

    // Sources with their imports; annotations.proto and the well-known types are built in.
    let r = put(&gw, "/admin/v1/protos/demo", &sources());
    assert_eq!(r.status, 201, "{}", r.text());
    let shown = gw.admin("GET", "/admin/v1/protos/demo", None).json();
    let get = &shown["services"][0]["methods"][0];
    assert_eq!((shown["services"][0]["name"].as_str(), get["name"].as_str()), (Some("demo.v1.Echo"), Some("Get")));
    assert_eq!(get["http"], json!(["GET /v1/items/{id}", "GET /v1/shelves/{shelf}/items/{id}"]));

    // A syntax error: the compiler's message with file:line:column, nothing stored.
    let mut broken = sources();
    let types =
        broken["files"]["demo/v1/types.proto"].as_str().unwrap().replace("int64 copies = 4;", "int64 copies = 4");
    broken["files"]["demo/v1/types.proto"] = Value::String(types);
    let r = put(&gw, "/admin/v1/protos/broken", &broken);
    assert_eq!(r.status, 400, "{}", r.text());
    let problem = &r.json()["problems"][0];
    assert_eq!(problem["path"], "protos.broken.files");
    assert!(problem["message"].as_str().unwrap().starts_with("demo/v1/types.proto:18:3: "), "{problem}");
    // An import nobody uploaded.
    let mut missing = sources();
    missing["files"].as_object_mut().unwrap().remove("demo/v1/types.proto");
    let r = put(&gw, "/admin/v1/protos/missing", &missing);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("demo/v1/echo.proto:7:1: import 'demo/v1/types.proto' not found"), "{}", r.text());
    assert_eq!(gw.admin("GET", "/admin/v1/protos/broken", None).status, 404);

    // A descriptor set compiled elsewhere, with its imports; without them it is refused.
    let set = std::fs::read(&o.descriptors).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&set);
    assert_eq!(put(&gw, "/admin/v1/protos/compiled", &json!({"descriptor_set": b64})).status, 201);
    let shown = gw.admin("GET", "/admin/v1/protos/compiled", None).json();
    assert_eq!(shown["form"], "descriptor_set");
    assert_eq!(shown["services"][0]["methods"][3]["http"], json!(["GET /v1/shelves/{shelf}/items"]));
    let lone = std::env::temp_dir().join(format!("lone-{}.pb", std::process::id()));
    let made = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", &format!("-I{}/grpc/protos", env!("CARGO_MANIFEST_DIR"))])
        .arg(format!("-I{}/../proxy/src/grpc/protos", env!("CARGO_MANIFEST_DIR")))
        .arg(format!("--descriptor_set_out={}", lone.display()))
        .arg("demo/v1/types.proto")
        .status()
        .unwrap();
    assert!(made.success());
    let alone = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&lone).unwrap());
    let _ = std::fs::remove_file(&lone);
    let r = put(&gw, "/admin/v1/protos/alone", &json!({"descriptor_set": alone}));
    assert_eq!(r.status, 201, "its one import (timestamp.proto) is built in: {}", r.text());
    for (body, says) in [
        (json!({"descriptor_set": "%%%"}), "not base64"),
        (json!({"descriptor_set": b64, "files": {"a.proto": "syntax = \"proto3\";"}}), "either"),
        (json!({}), "either"),
        (json!({"files": {"../a.proto": "syntax = \"proto3\";"}}), "not a relative path"),
    ] {
        let r = put(&gw, "/admin/v1/protos/bad", &body);
        assert_eq!(r.status, 400);
        assert!(r.text().contains(says), "{}: {}", body, r.text());
    }

    // Routes only publish what exists, over an upstream that speaks gRPC.
    let route = |t: Value, up: &str| json!({"paths": ["/x"], "upstream": up, "grpc_transcode": t});
    for (t, up, says) in [
        (json!({"proto": "nope", "service": "demo.v1.Echo", "method": "Get"}), "g", "no proto with id"),
        (json!({"proto": "demo", "service": "demo.v1.Nope", "method": "Get"}), "g", "no service"),
        (json!({"proto": "demo", "service": "demo.v1.Echo", "method": "Gte"}), "g", "has no method \\\"Gte\\\""),
        (json!({"proto": "demo", "service": "demo.v1.Echo", "method": "Collect"}), "g", "takes a stream"),
        (json!({"proto": "demo", "service": "demo.v1.Echo"}), "g", "either method"),
        (json!({"proto": "demo", "service": "demo.v1.Echo", "method": "Get", "stream": "xml"}), "g", "array or ndjson"),
        (json!({"proto": "demo", "service": "demo.v1.Echo", "method": "Get"}), "plain", "protocol h2c or h2"),
        (
            json!({"proto": "demo", "service": "demo.v1.Echo", "method": "Get", "http": {"path": "/x/{colour}"}}),
            "g",
            "has no field \\\"colour\\\"",
        ),
        (
            json!({"proto": "demo", "service": "demo.v1.Echo", "method": "Get", "http": {"path": "x/{id}"}}),
            "g",
            "starts with '/'",
        ),
    ] {
        let r = put(&gw, "/admin/v1/routes/x", &route(t.clone(), up));
        assert_eq!(r.status, 400, "{t}");
        assert!(r.text().contains(says), "{t}: {}", r.text());
    }
    let ok = route(json!({"proto": "demo", "service": "demo.v1.Echo", "method": "Get"}), "g");
    assert_eq!(put(&gw, "/admin/v1/routes/x", &ok).status, 201);

    // A proto in use cannot go, nor lose what a route calls.
    let r = gw.admin("DELETE", "/admin/v1/protos/demo", None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("used by route(s) x"));
    let mut without_get = sources();
    let echo = without_get["files"]["demo/v1/echo.proto"].as_str().unwrap().replace("rpc Get(", "rpc Fetch(");
    without_get["files"]["demo/v1/echo.proto"] = Value::String(echo);
    let r = put(&gw, "/admin/v1/protos/demo", &without_get);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("route x calls what this proto lacks"), "{}", r.text());
    assert_eq!(gw.admin("GET", "/admin/v1/protos/demo", None).json()["used_by"], json!(["x"]));
    assert_eq!(gw.admin("DELETE", "/admin/v1/routes/x", None).status, 200);
    assert_eq!(gw.admin("DELETE", "/admin/v1/protos/demo", None).status, 200);
}

#[test]
fn json_calls_map_onto_methods_by_their_bindings_and_back() {
    let o = origin();
    let gw = published(&o);
    let mut c = Client::connect(gw.addr);

    // Path variables and repeated query parameters; int64 as a string, enums by name,
    // json_name, a timestamp; request metadata in, response metadata (and trailers) out.
    let r = c.request("GET", "/v1/items/42?verbose=true&limit=7&fields=x&fields=y", &[("x-meta-color", "red")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"id": "42", "title": "title of 42", "copies": "7", "kind": "BOOK", "tags": ["x", "y"],
               "added": "2023-11-14T22:13:20Z", "label": "shown", "attrs": {"verbose": "true", "auth": ""}})
    );
    assert_eq!(r.header("x-echo-color"), Some("red"), "a metadata header passed");
    assert_eq!(r.header("x-served-by"), Some("echo"));
    assert_eq!(r.header("x-trailer"), Some("done"));
    // An additional binding.
    let r = c.get("/v1/shelves/s1/items/9");
    assert_eq!((r.json()["shelf"].as_str(), r.json()["id"].as_str()), (Some("s1"), Some("9")));
    // A body field, and the rest from the path.
    let r = c.request(
        "POST",
        "/v1/shelves/s2/items",
        &[],
        br#"{"title": "t", "copies": "12", "kind": "MAP", "added": "2024-01-01T00:00:00Z"}"#,
    );
    assert_eq!(
        r.json(),
        json!({"id": "new-", "shelf": "s2", "title": "t", "copies": "12", "kind": "MAP", "added": "2024-01-01T00:00:00Z"})
    );
    // The whole body, a multi-segment variable (`{id=items/*}`), int64 given as a number.
    let r = c.request("PATCH", "/v1/items/items/5", &[], br#"{"title": "old", "copies": 3, "label": "l"}"#);
    assert_eq!(r.json(), json!({"id": "items/5", "title": "old (updated)", "copies": "3", "label": "l"}));
    // Options: defaults written, proto field names.
    let r = c.request("POST", "/get", &[], br#"{"id": "d"}"#);
    let v = r.json();
    assert_eq!((v["display_name"].as_str(), v["shelf"].as_str()), (Some("shown"), Some("")), "{v}");
    assert!(v.get("label").is_none());

    // An explicit mapping on the route: a path variable, a body field, the query for the rest.
    let r = c.request("POST", "/things/s7/new?request_id=r1", &[], br#"{"title": "e"}"#);
    assert_eq!(r.json(), json!({"id": "new-r1", "shelf": "s7", "title": "e"}), "{}", r.text());
    assert_eq!(Client::connect(gw.addr).request("POST", "/things/s7/old", &[], b"{}").status, 404);

    // Server streaming: a JSON array, or NDJSON.
    let r = c.get("/v1/shelves/s3/items?count=3");
    assert_eq!(
        r.json(),
        json!([{"id": "s3-0", "shelf": "s3"}, {"id": "s3-1", "shelf": "s3", "copies": "1"}, {"id": "s3-2", "shelf": "s3", "copies": "2"}])
    );
    let r = Client::connect(gw.addr).request("POST", "/lines", &[], br#"{"shelf": "n", "count": 2}"#);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.text(), "{\"id\":\"n-0\",\"shelf\":\"n\"}\n{\"id\":\"n-1\",\"shelf\":\"n\",\"copies\":\"1\"}\n");
    let r = Client::connect(gw.addr).get("/v1/shelves/e/items?count=0");
    assert_eq!(r.json(), json!([]));

    // A failed call: its status as HTTP, google.rpc.Status with typed details.
    let r = Client::connect(gw.addr).get("/v1/fail/5");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"code": 5, "status": "NOT_FOUND", "message": "failed on purpose: é",
               "details": [{"@type": "type.googleapis.com/demo.v1.ErrorDetail", "reason": "REQUESTED", "field": "code"}]})
    );
    for (code, status) in [(7, 403), (8, 429), (14, 503), (16, 401), (3, 400), (13, 500)] {
        assert_eq!(Client::connect(gw.addr).get(&format!("/v1/fail/{code}")).status, status, "code {code}");
    }

    // Bad input never reaches the upstream: 400 naming the field.
    let before = origin_calls(&gw, &o);
    let bad = |method: &str, target: &str, body: &[u8]| {
        let r = Client::connect(gw.addr).request(method, target, &[], body);
        (r.status, r.json())
    };
    let (s, v) = bad("POST", "/v1/shelves/s/items", b"{\"title\": ");
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_argument")), "malformed JSON: {v}");
    let (s, v) = bad("POST", "/v1/shelves/s/items", br#"{"copies": "many"}"#);
    assert_eq!((s, v["field"].as_str()), (400, Some("item.copies")), "{v}");
    let (s, v) = bad("POST", "/v1/shelves/s/items", br#"{"title": "t", "colour": "red"}"#);
    assert_eq!((s, v["field"].as_str()), (400, Some("item.colour")), "an unknown field: {v}");
    let (s, v) = bad("POST", "/v1/shelves/s/items", br#"{"kind": "SPOON"}"#);
    assert_eq!((s, v["field"].as_str()), (400, Some("item.kind")), "{v}");
    let (s, v) = bad("GET", "/v1/fail/abc", b"");
    assert_eq!((s, v["field"].as_str()), (400, Some("code")), "a bad path variable: {v}");
    let (s, v) = bad("GET", "/v1/items/1?limit=ten", b"");
    assert_eq!((s, v["field"].as_str()), (400, Some("limit")), "{v}");
    let (s, v) = bad("GET", "/v1/items/1?colour=red", b"");
    assert_eq!((s, v["field"].as_str()), (400, Some("colour")), "an unknown query parameter: {v}");
    let big = format!("{{\"title\": \"{}\"}}", "x".repeat(300));
    let (s, _) = bad("POST", "/v1/shelves/s/items", big.as_bytes());
    assert_eq!(s, 413, "over the route's body limit");
    let (s, v) = bad("DELETE", "/v1/items/1", b"");
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")), "no binding: {v}");
    assert_eq!(origin_calls(&gw, &o), before, "none of these reached the origin");
    // Where unknown fields are ignored, they are.
    let r = Client::connect(gw.addr).request("POST", "/lenient", &[], br#"{"id": "l", "colour": "red"}"#);
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some("l")));
}

#[test]
fn a_replaced_proto_rolls_out_without_dropping_calls_in_flight_and_rolls_back_with_its_revision() {
    let o = origin();
    let gw = published(&o);
    let addr = gw.addr;
    let slow = std::thread::spawn(move || Client::connect(addr).get("/v1/slow?millis=1500"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = gw.admin("GET", "/admin/v1/revisions", None).json()["revision"].as_u64().unwrap();
    // A new method with a binding, published by replacing the proto.
    let mut more = sources();
    let echo = more["files"]["demo/v1/echo.proto"].as_str().unwrap().replace(
        "rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty);",
        "rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty) { option (google.api.http) = { get: \"/v1/ping\" }; }",
    );
    more["files"]["demo/v1/echo.proto"] = Value::String(echo);
    let r = put(&gw, "/admin/v1/protos/demo", &more);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = Client::connect(gw.addr).get("/v1/ping");
    assert_eq!((r.status, r.text().as_str()), (200, "{}"));
    let done = slow.join().unwrap();
    assert_eq!((done.status, done.json()["id"].as_str()), (200, Some("slow")), "the call in flight finished");
    // Rolled back with its revision: the binding is gone again.
    let r = gw.admin("POST", &format!("/admin/v1/revisions/{before}/rollback"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Client::connect(gw.addr).get("/v1/ping").status, 404);
    assert_eq!(Client::connect(gw.addr).get("/v1/items/1").status, 200);
}
