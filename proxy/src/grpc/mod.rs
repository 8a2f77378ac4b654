//! gRPC at the gateway: calls from HTTP/2 clients relayed to HTTP/2 upstreams with both
//! directions flowing at once ([`relay`]), and the gateway's own answers to a gRPC call given
//! as gRPC statuses (HTTP 200, `grpc-status` and `grpc-message` in a trailers-only answer).
//!
//! What a call's status means in HTTP terms goes both ways here: an answer of the gateway's
//! (a policy's refusal, an unreachable upstream) becomes a gRPC code ([`code_of_http`]); the
//! table is gRPC's own where it has one, with the gateway's deadlines and limits named as the
//! codes clients retry on.

use std::time::Duration;

pub mod proto;
pub mod relay;
pub mod template;
pub mod transcode;

/// gRPC status codes the gateway produces (google.rpc.Code).
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// The gRPC code for an answer of the gateway's with HTTP status `status`.
pub fn code_of_http(status: u16) -> u32 {
    match status {
        413 => code::RESOURCE_EXHAUSTED,
        400 | 411 | 414 | 431 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 | 405 => code::UNIMPLEMENTED,
        408 | 504 => code::DEADLINE_EXCEEDED,
        409 => code::FAILED_PRECONDITION,
        429 => code::RESOURCE_EXHAUSTED,
        421 | 502 | 503 => code::UNAVAILABLE,
        s if s < 400 => code::OK,
        s if s < 500 => code::FAILED_PRECONDITION,
        _ => code::INTERNAL,
    }
}

/// The HTTP status for a gRPC code (the table of google/rpc/code.proto, as HTTP/JSON APIs
/// answer).
pub fn http_of_code(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// The name of a gRPC code, as the JSON mapping of google.rpc.Code writes it.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit, H M S m u n).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The message of one of the gateway's JSON error bodies (`{"error": .., "message": ..}`), or
/// the body as text.
pub fn message_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Error {
        message: String,
    }
    match serde_json::from_slice::<Error>(body) {
        Ok(e) => e.message,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// `grpc-message` is percent-encoded (everything outside printable ASCII, and `%`).
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reverse of [`encode_message`] (bad escapes are kept as they are).
pub fn decode_message(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            let hex = std::str::from_utf8(&v[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What kind of gRPC request a `content-type` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/grpc` (and `+proto`, `+json`...).
    Grpc,
    /// `application/grpc-web` (binary frames).
    Web,
    /// `application/grpc-web-text` (the frames in base64).
    WebText,
}

impl Kind {
    pub fn of_content_type(v: &[u8]) -> Option<Kind> {
        let rest = v.strip_prefix(b"application/grpc")?;
        let kind = if let Some(r) = rest.strip_prefix(b"-web-text") {
            (Kind::WebText, r)
        } else if let Some(r) = rest.strip_prefix(b"-web") {
            (Kind::Web, r)
        } else {
            (Kind::Grpc, rest)
        };
        matches!(kind.1.first(), None | Some(b'+' | b';')).then_some(kind.0)
    }
}

/// Appends one length-prefixed message (`compressed`: its flag) to `out`.
pub fn frame(out: &mut Vec<u8>, message: &[u8], flag: u8) {
    out.push(flag);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
}

/// The next whole length-prefixed message in `buf[*pos..]`: its flag byte and its bytes.
/// `Ok(None)`: not all of it is here yet.
pub fn next_frame<'b>(buf: &'b [u8], pos: &mut usize, max: usize) -> Result<Option<(u8, &'b [u8])>, &'static str> {
    let rest = &buf[*pos..];
    if rest.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
    if len > max {
        return Err("a message exceeds the size limit");
    }
    if rest.len() < 5 + len {
        return Ok(None);
    }
    *pos += 5 + len;
    Ok(Some((rest[0], &rest[5..5 + len])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_messages_and_content_types_read_as_grpc_defines_them() {
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"123456789S"), None, "nine digits");
        assert_eq!(parse_timeout(b"m"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(encode_message("no route: 100%\n"), "no route: 100%25%0A");
        assert_eq!(decode_message(b"no route: 100%25%0A"), "no route: 100%\n");
        assert_eq!(decode_message(b"50%"), "50%");
        assert_eq!(Kind::of_content_type(b"application/grpc"), Some(Kind::Grpc));
        assert_eq!(Kind::of_content_type(b"application/grpc+proto"), Some(Kind::Grpc));
        assert_eq!(Kind::of_content_type(b"application/grpc-web+proto"), Some(Kind::Web));
        assert_eq!(Kind::of_content_type(b"application/grpc-web-text"), Some(Kind::WebText));
        assert_eq!(Kind::of_content_type(b"application/grpcx"), None);
        assert_eq!(Kind::of_content_type(b"application/json"), None);
        let mut out = Vec::new();
        frame(&mut out, b"abc", 0);
        frame(&mut out, b"", 0x80);
        let mut pos = 0;
        assert_eq!(next_frame(&out, &mut pos, 10), Ok(Some((0, &b"abc"[..]))));
        assert_eq!(next_frame(&out, &mut pos, 10), Ok(Some((0x80, &b""[..]))));
        assert_eq!(next_frame(&out, &mut pos, 10), Ok(None));
        assert!(next_frame(&out, &mut 0, 2).is_err());
        assert_eq!(code_of_http(429), code::RESOURCE_EXHAUSTED);
        assert_eq!(code_of_http(404), code::UNIMPLEMENTED);
        assert_eq!(http_of_code(code::NOT_FOUND), 404);
    }
}
