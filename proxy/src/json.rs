//! JSON text written by hand on the request path (the access log's lines, captures).

use crate::record::HEX;

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

/// Whether `v` goes into a JSON string as it is: eight bytes at a time (the last word
/// overlapping the one before, a short string read as one word), each word checked for a byte
/// below 0x20, at or above 0x7f, a quote or a backslash with a few word operations.
#[inline]
pub(crate) fn is_plain(v: &[u8]) -> bool {
    let len = v.len();
    let bad = if len >= 8 {
        let word = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("eight bytes"));
        let mut bad = unplain(word(len - 8));
        let mut i = 0;
        while i + 8 < len {
            bad |= unplain(word(i));
            i += 8;
        }
        bad
    } else if len >= 4 {
        let half = |i: usize| u64::from(u32::from_le_bytes(v[i..i + 4].try_into().expect("four bytes")));
        unplain(half(0) | half(len - 4) << 32)
    } else if len > 0 {
        // Three bytes that cover the string, the rest a plain byte.
        const PAD: u64 = 0x6161_6161_6100_0000;
        unplain(u64::from(v[0]) | u64::from(v[len / 2]) << 8 | u64::from(v[len - 1]) << 16 | PAD)
    } else {
        0
    };
    bad == 0
}

/// Non-zero when a byte of `x` is not plain (the high bit of some byte set). Exact for the
/// question asked (whether any byte is): a borrow can only mark a byte above one that is.
#[inline(always)]
fn unplain(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A zero byte of `v`.
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    // Bytes below 0x20 (valid for bytes below 0x80: the others are caught by `x & HIGH`).
    let below = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    below
        | (x & HIGH)
        | zero(x ^ (ONES * 0x7f))
        | zero(x ^ (ONES * u64::from(b'"')))
        | zero(x ^ (ONES * u64::from(b'\\')))
}

/// A byte a JSON string holds as it is: printable ASCII but the quote and the backslash.
#[inline]
fn plain(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) & (b != b'"') & (b != b'\\')
}

#[cold]
fn push_escaped(out: &mut Vec<u8>, v: &[u8]) {
    let start = out.len();
    out.resize(start + escaped_max(v), 0);
    let n = write_escaped(&mut out[start..], v);
    out.truncate(start + n);
}

/// The most bytes `v` takes as an escaped JSON string, quotes included.
fn escaped_max(v: &[u8]) -> usize {
    6 * v.len() + 2
}

/// Writes `v` as an escaped JSON string, quotes included, at the start of `out` (at least
/// [`escaped_max`] long); gives the bytes written.
#[cold]
pub(crate) fn write_escaped(out: &mut [u8], v: &[u8]) -> usize {
    let mut n = 0;
    let mut put = |s: &[u8]| {
        out[n..n + s.len()].copy_from_slice(s);
        n += s.len();
    };
    put(b"\"");
    let mut rest = v;
    // Runs of plain bytes are copied whole; only the rare byte that needs escaping is written
    // on its own.
    while let Some(i) = rest.iter().position(|&b| !plain(b)) {
        put(&rest[..i]);
        match rest[i] {
            b'"' => put(b"\\\""),
            b'\\' => put(b"\\\\"),
            b => put(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]),
        }
        rest = &rest[i + 1..];
    }
    put(rest);
    put(b"\"");
    n
}
