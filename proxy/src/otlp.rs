//! The part of the OpenTelemetry protocol (OTLP v1) the gateway sends, with the field numbers
//! and types of the `opentelemetry-proto` definitions: log export requests as prost messages
//! (only the fields the gateway fills are declared; a receiver reads the rest as absent), and
//! a writer ([`pb`]) the trace exporter uses to write spans without building messages first.

use prost::Message;

/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeLogs {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

/// `Span.kind`.
pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;
/// `Span.flags`: whether the parent is remote is known (0x100), and it is (0x200).
pub const FLAG_PARENT_KNOWN: u32 = 0x100;
pub const FLAG_PARENT_REMOTE: u32 = 0x200;

/// `Status.code`: 0 unset, 1 ok, 2 error.
pub const STATUS_ERROR: i32 = 2;

/// `opentelemetry.proto.logs.v1.LogRecord`.
#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    #[prost(string, tag = "3")]
    pub severity_text: String,
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed32, tag = "8")]
    pub flags: u32,
    #[prost(bytes = "vec", tag = "9")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "10")]
    pub span_id: Vec<u8>,
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
    #[prost(string, tag = "12")]
    pub event_name: String,
}

/// `SeverityNumber.SEVERITY_NUMBER_INFO`.
pub const SEVERITY_INFO: i32 = 9;

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
}

/// An attribute with a string value.
pub fn text(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::String(v.into())) }) }
}

/// An attribute with an integer value.
pub fn int(key: &str, v: i64) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::Int(v)) }) }
}

/// The resource every export names: the service and the node.
pub fn resource(service: &str, node: &str) -> Resource {
    Resource {
        attributes: vec![text("service.name", service), text("host.name", node), text("service.instance.id", node)],
    }
}

/// The instrumentation scope: the gateway itself.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope { name: "ringway".into(), version: env!("CARGO_PKG_VERSION").into() }
}

/// This machine's name (`host.name`), or `unknown`.
pub fn node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    if rc == 0 && len > 0 {
        String::from_utf8_lossy(&buf[..len]).into_owned()
    } else {
        "unknown".into()
    }
}

/// A protobuf writer for the trace export, field by field into one buffer (a nested message is
/// written in place, then its length put in front of it).
pub mod pb {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, u64::from(field) << 3 | u64::from(wire));
    }

    /// A length-delimited field of raw bytes.
    pub fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        key(out, field, 2);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }

    pub fn string(out: &mut Vec<u8>, field: u32, v: &str) {
        bytes(out, field, v.as_bytes());
    }

    /// A varint field (int32, int64 and enums).
    pub fn int(out: &mut Vec<u8>, field: u32, v: i64) {
        key(out, field, 0);
        varint(out, v as u64);
    }

    pub fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
        key(out, field, 5);
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A message field: what `body` writes, with its length in front.
    pub fn nested(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
        key(out, field, 2);
        let start = out.len();
        body(out);
        let len = (out.len() - start) as u64;
        let mut n = [0u8; 10];
        let mut i = 0;
        let mut v = len;
        while v >= 0x80 {
            n[i] = v as u8 | 0x80;
            v >>= 7;
            i += 1;
        }
        n[i] = v as u8;
        out.splice(start..start, n[..=i].iter().copied());
    }

    /// A `KeyValue` with a string value, as field `field` (attributes).
    pub fn attr_str(out: &mut Vec<u8>, field: u32, k: &str, v: &str) {
        nested(out, field, |o| {
            string(o, 1, k);
            nested(o, 2, |o| string(o, 1, v));
        });
    }

    /// A `KeyValue` with an integer value.
    pub fn attr_int(out: &mut Vec<u8>, field: u32, k: &str, v: i64) {
        nested(out, field, |o| {
            string(o, 1, k);
            nested(o, 2, |o| int(o, 3, v));
        });
    }

    /// `Span.status = 15`: an error with `message`.
    pub fn status_error(out: &mut Vec<u8>, message: &str) {
        nested(out, 15, |o| {
            if !message.is_empty() {
                string(o, 2, message);
            }
            int(o, 3, i64::from(super::STATUS_ERROR));
        });
    }
}
