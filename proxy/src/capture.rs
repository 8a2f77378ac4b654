//! Request and response capture for chosen routes (`capture` on a route): the headers as sent
//! upstream and as answered, with secrets redacted, and the first bytes of both bodies, added
//! to the request's access-log record (and so shipped with it).
//!
//! Only captured routes pay: a request on another route carries no capture state.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use ringway_policy::{is_valid_header_name, ConfigErrors};

/// Header fields whose values are always redacted.
pub const ALWAYS_REDACTED: [&str; 13] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "apikey",
    "api-key",
    "x-auth-token",
    "x-admin-token",
    "x-goog-api-key",
    "x-amz-security-token",
    "x-csrf-token",
    "x-xsrf-token",
];

/// The most body bytes kept per direction (escaped, a byte may take six in the log line).
pub const MAX_BYTES: u32 = 16 * 1024;

/// `capture` on a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// Body bytes kept per direction (default 4096, at most 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u32>,
    /// Keep the request body (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<bool>,
    /// Keep the response body (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<bool>,
    /// More header fields to redact, besides Authorization, Cookie, Set-Cookie and the API-key
    /// fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,
}

/// A checked capture rule.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRule {
    pub max_bytes: usize,
    pub request_body: bool,
    pub response_body: bool,
    /// Lower-case names, the defaults included.
    pub redact: Vec<String>,
}

impl CaptureRule {
    pub fn compile(spec: &CaptureSpec, path: &str, errors: &mut ConfigErrors) -> Option<Arc<CaptureRule>> {
        let before = errors.0.len();
        let max = spec.max_bytes.unwrap_or(4096);
        if max == 0 || max > MAX_BYTES {
            errors.push(format!("{path}.max_bytes"), format!("{max} is out of range: 1 to {MAX_BYTES}"));
        }
        let mut redact: Vec<String> = ALWAYS_REDACTED.iter().map(|s| s.to_string()).collect();
        for (i, n) in spec.redact_headers.iter().enumerate() {
            if !is_valid_header_name(n) {
                errors.push(format!("{path}.redact_headers[{i}]"), format!("{n:?} is not a header field name"));
            }
            redact.push(n.to_ascii_lowercase());
        }
        (errors.0.len() == before).then(|| {
            Arc::new(CaptureRule {
                max_bytes: max as usize,
                request_body: spec.request_body.unwrap_or(true),
                response_body: spec.response_body.unwrap_or(true),
                redact,
            })
        })
    }

    fn redacts(&self, name: &[u8]) -> bool {
        self.redact.iter().any(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// What one request captured so far.
#[derive(Debug)]
pub struct Captured {
    pub rule: Arc<CaptureRule>,
    /// `[["name","value"],...]`, redacted.
    request_headers: Vec<u8>,
    request_body: Vec<u8>,
    response_headers: Vec<u8>,
    response_body: Vec<u8>,
}

impl Captured {
    /// Starts with the request as sent upstream: `head` is its head (request line and fields),
    /// `body` what of its body is at hand.
    pub fn request(rule: &Arc<CaptureRule>, head: &[u8], body: &[u8]) -> Box<Captured> {
        let mut c = Captured {
            rule: rule.clone(),
            request_headers: Vec::new(),
            request_body: Vec::new(),
            response_headers: Vec::new(),
            response_body: Vec::new(),
        };
        fields_json(&mut c.request_headers, head, rule);
        if rule.request_body {
            c.request_body.extend_from_slice(&body[..body.len().min(rule.max_bytes)]);
        }
        Box::new(c)
    }

    /// The upstream's response head (status line and fields).
    pub fn response_head(&mut self, head: &[u8]) {
        self.response_headers.clear();
        fields_json(&mut self.response_headers, head, &self.rule);
    }

    /// Response body bytes on their way to the client (kept up to the cap).
    #[inline]
    pub fn response_body(&mut self, data: &[u8]) {
        let room = self.rule.max_bytes.saturating_sub(self.response_body.len());
        if self.rule.response_body && room > 0 {
            self.response_body.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// Appends `,"capture":{...}`; `bytes_in` and `bytes_out` are the bodies' whole sizes.
    pub fn write_json(&self, out: &mut Vec<u8>, bytes_in: u64, bytes_out: u64) {
        out.extend_from_slice(b",\"capture\":{");
        let request = self.rule.request_body.then_some((&self.request_body, bytes_in));
        push_side(out, "request", &self.request_headers, request);
        out.push(b',');
        let response = self.rule.response_body.then_some((&self.response_body, bytes_out));
        push_side(out, "response", &self.response_headers, response);
        out.push(b'}');
    }
}

/// `"{side}_headers":[...]`, then with a body `,"{side}_body":"...","{side}_body_truncated":b`
/// (`total` is the body's whole size).
fn push_side(out: &mut Vec<u8>, side: &str, headers: &[u8], body: Option<(&Vec<u8>, u64)>) {
    let field = |out: &mut Vec<u8>, name: &[u8]| {
        out.push(b'"');
        out.extend_from_slice(side.as_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(b"\":");
    };
    field(out, b"_headers");
    out.push(b'[');
    out.extend_from_slice(headers);
    out.push(b']');
    if let Some((bytes, total)) = body {
        out.push(b',');
        field(out, b"_body");
        crate::json::push_str(out, bytes);
        out.push(b',');
        field(out, b"_body_truncated");
        out.extend_from_slice(if total > bytes.len() as u64 { b"true" } else { b"false" });
    }
}

/// The fields of an HTTP/1 head (its first line skipped) as `["name","value"]` items,
/// comma-separated; redacted values read `[redacted]`.
fn fields_json(out: &mut Vec<u8>, head: &[u8], rule: &CaptureRule) {
    let mut first = true;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'[');
        crate::json::push_str(out, &name.to_ascii_lowercase());
        out.push(b',');
        if rule.redacts(name) {
            out.extend_from_slice(b"\"[redacted]\"");
        } else {
            crate::json::push_str(out, value);
        }
        out.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_listed_and_secrets_redacted() {
        let spec = CaptureSpec { redact_headers: vec!["X-Secret".into()], ..CaptureSpec::default() };
        let rule = CaptureRule::compile(&spec, "r", &mut ConfigErrors::default()).unwrap();
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nx-secret: s\r\nCookie: c=1\r\n\r\n";
        let c = Captured::request(&rule, head, b"hello");
        let mut out = Vec::new();
        c.write_json(&mut out, 5, 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#"["host","a"]"#), "{text}");
        assert!(text.contains(r#"["authorization","[redacted]"]"#), "{text}");
        assert!(text.contains(r#"["x-secret","[redacted]"]"#), "{text}");
        assert!(text.contains(r#"["cookie","[redacted]"]"#), "{text}");
        assert!(!text.contains("Bearer"));
        assert!(text.contains(r#""request_body":"hello","request_body_truncated":false"#), "{text}");
        let bad = CaptureSpec { max_bytes: Some(0), redact_headers: vec!["a b".into()], ..CaptureSpec::default() };
        let mut errors = ConfigErrors::default();
        assert!(CaptureRule::compile(&bad, "routes.r.capture", &mut errors).is_none());
        assert_eq!(errors.0.len(), 2);
    }
}
