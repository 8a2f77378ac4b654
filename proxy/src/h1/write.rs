//! Writers of HTTP/1 heads and the chunked coding: status and request lines, header fields,
//! framing fields, chunks, numbers. Sans I/O; they append to a buffer the caller sends.
//!
//! Hot path: allocation-free beyond the buffer's own growth.

use super::head::BodyKind;

/// The canonical reason phrase of a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends a status line.
pub fn push_status_line(out: &mut Vec<u8>, status: u16, reason_phrase: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_dec(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a header line.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a chunk of the chunked coding (`size CRLF data CRLF`) to `out`.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in lower-case hex.
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut v = n;
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Appends `n` in decimal.
pub fn push_dec(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut tmp = [0u8; 20];
    out.extend_from_slice(format_dec(n, &mut tmp));
}

/// `n` in decimal, written at the end of `buf`: two digits per step from a table.
pub fn format_dec(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut i = buf.len();
    let mut v = n;
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    &buf[i..]
}

/// Appends a request line for HTTP/1.1: `method path[?query] HTTP/1.1`.
pub fn push_request_line(out: &mut Vec<u8>, method: &str, path: &str, query: Option<&str>) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Appends the framing field of a body sent as `body`: `content-length`, or
/// `transfer-encoding` with `codings` before `chunked` (a body of unknown length is sent
/// chunked). Nothing for no body, or for a body that runs until close (HTTP/1.0 peers).
pub fn push_framing(out: &mut Vec<u8>, body: BodyKind, codings: &[u8], http10: bool) {
    match body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_dec(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked | BodyKind::UntilClose if !http10 => {
            out.extend_from_slice(b"transfer-encoding: ");
            if !codings.is_empty() {
                out.extend_from_slice(codings);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"chunked\r\n")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formatting() {
        for n in [0u64, 7, 10, 99, 100, 101, 999, 1000, 65_536, 1_000_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_dec(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn numbers() {
        let mut v = Vec::new();
        push_hex(&mut v, 0);
        v.push(b' ');
        push_hex(&mut v, 0x1a2b);
        v.push(b' ');
        push_dec(&mut v, 0);
        v.push(b' ');
        push_dec(&mut v, u64::MAX);
        assert_eq!(v, b"0 1a2b 0 18446744073709551615");
        let mut c = Vec::new();
        encode_chunk(&mut c, b"hello");
        encode_chunk(&mut c, b"");
        assert_eq!(c, b"5\r\nhello\r\n");
    }
}
