//! Access-log records as OTLP logs (`log_shipping.format: otlp`): the shipper thread turns a
//! batch of the log's JSON lines into one `ExportLogsServiceRequest`, off the workers. Each
//! record becomes a `LogRecord` with its time, trace id and every field as an attribute (the
//! HTTP semantic-convention names where one exists, `ringway.*` otherwise).

use prost::Message;
use serde_json::Value;

use crate::otlp::{self, AnyValue, KeyValue, LogRecord};

/// The attribute name of an access-log field.
fn attribute(field: &str) -> String {
    match field {
        "method" => "http.request.method".into(),
        "path" => "url.path".into(),
        "status" => "http.response.status_code".into(),
        "host" => "server.address".into(),
        "client_ip" => "client.address".into(),
        "request_id" => "http.request.id".into(),
        other => format!("ringway.{other}"),
    }
}

fn value(v: &Value) -> Option<AnyValue> {
    let value = match v {
        Value::String(s) => otlp::Value::String(s.clone()),
        Value::Bool(b) => otlp::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => otlp::Value::Int(i),
            None => otlp::Value::Double(n.as_f64()?),
        },
        Value::Null => return None,
        other => otlp::Value::String(other.to_string()),
    };
    Some(AnyValue { value: Some(value) })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` as Unix nanoseconds.
pub fn rfc3339_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut nanos = 0i64;
    if b.get(19) == Some(&b'.') {
        let frac: String = s[20..].chars().take_while(char::is_ascii_digit).collect();
        let digits = frac.len().min(9);
        nanos = frac[..digits].parse::<i64>().ok()? * 10i64.pow((9 - digits) as u32);
    }
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok()?.checked_mul(1_000_000_000)?.checked_add(nanos as u64)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// One JSON line as a log record (`None`: not a JSON object).
fn record(line: &[u8], observed: u64) -> Option<LogRecord> {
    let Value::Object(fields) = serde_json::from_slice(line).ok()? else { return None };
    let mut r = LogRecord {
        time_unix_nano: 0,
        severity_number: otlp::SEVERITY_INFO,
        severity_text: "INFO".into(),
        body: None,
        attributes: Vec::with_capacity(fields.len()),
        flags: 0,
        trace_id: Vec::new(),
        span_id: Vec::new(),
        observed_time_unix_nano: observed,
        event_name: "ringway.access".into(),
    };
    let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or("");
    let status = fields.get("status").and_then(Value::as_u64).map_or_else(|| "-".to_string(), |s| s.to_string());
    r.body =
        Some(AnyValue { value: Some(otlp::Value::String(format!("{} {} {}", text("method"), text("path"), status))) });
    for (k, v) in &fields {
        match k.as_str() {
            "ts" => r.time_unix_nano = v.as_str().and_then(rfc3339_ns).unwrap_or(observed),
            "trace_id" => r.trace_id = v.as_str().and_then(unhex).filter(|t| t.len() == 16).unwrap_or_default(),
            _ => {
                if let Some(value) = value(v) {
                    r.attributes.push(KeyValue { key: attribute(k), value: Some(value) });
                }
            }
        }
    }
    Some(r)
}

/// A batch of JSON lines (in chunks of whole lines) as one OTLP logs export request, encoded.
pub fn encode(batch: &[Vec<u8>], service: &str, node: &str) -> Vec<u8> {
    let observed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let log_records = batch
        .iter()
        .flat_map(|c| c.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty())
        .filter_map(|l| record(l, observed))
        .collect();
    let req = otlp::ExportLogsServiceRequest {
        resource_logs: vec![otlp::ResourceLogs {
            resource: Some(otlp::resource(service, node)),
            scope_logs: vec![otlp::ScopeLogs { scope: Some(otlp::scope()), log_records }],
        }],
    };
    req.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_unix_nanoseconds() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(rfc3339_ns("2026-12-01T02:30:15.250Z"), Some(1_796_092_215_250_000_000));
        assert_eq!(rfc3339_ns("2000-02-29T00:00:00Z"), Some(951_782_400_000_000_000));
        assert_eq!(rfc3339_ns("not a time"), None);
    }

    #[test]
    fn a_line_becomes_a_record_with_its_fields() {
        let line = br#"{"ts":"1970-01-01T00:00:01.000Z","method":"GET","path":"/a","status":200,"route":"r","upstream":null,"duration_ms":1.5,"trace_id":"0af7651916cd43dd8448eb211c80319c"}"#;
        let r = record(line, 7).unwrap();
        assert_eq!(r.time_unix_nano, 1_000_000_000);
        assert_eq!(r.observed_time_unix_nano, 7);
        assert_eq!(r.trace_id.len(), 16);
        let keys: Vec<&str> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        assert!(keys.contains(&"http.request.method") && keys.contains(&"ringway.route"), "{keys:?}");
        assert!(!keys.contains(&"ringway.upstream"), "nulls are left out");
        assert!(record(b"[1]", 0).is_none());
    }
}
