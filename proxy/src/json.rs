//! JSON text written by hand on the request path (the access log's lines, captures).

use crate::record::push_hex;

/// Appends `v` as a JSON string: quotes, backslashes, control characters and bytes outside
/// ASCII are escaped, so any input gives valid JSON.
#[inline]
pub fn push_str(out: &mut Vec<u8>, v: &[u8]) {
    if is_plain(v) {
        // The common case (ids, methods, hosts, paths): one copy between the quotes.
        out.reserve(v.len() + 2);
        out.push(b'"');
        out.extend_from_slice(v);
        out.push(b'"');
    } else {
        push_escaped(out, v);
    }
}

/// Whether `v` goes into a JSON string as it is. Every byte is looked at (no early exit), so
/// the check runs many bytes per step.
#[inline]
fn is_plain(v: &[u8]) -> bool {
    v.iter().fold(0u8, |bad, &b| bad | u8::from(!plain(b))) == 0
}

/// A byte a JSON string holds as it is: printable ASCII but the quote and the backslash.
#[inline]
fn plain(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) & (b != b'"') & (b != b'\\')
}

#[cold]
fn push_escaped(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    let mut rest = v;
    // Runs of plain bytes are copied whole; only the rare byte that needs escaping is written
    // on its own.
    while let Some(i) = rest.iter().position(|&b| !plain(b)) {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => {
                out.extend_from_slice(b"\\u00");
                push_hex(out, &[b]);
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}
