//! The request target and the one canonical form of its path that routing, policies, cache
//! keys and the forwarded request all use.
//!
//! A target is the origin form (`/path?query`) or the absolute form
//! (`http://authority/path?query`, RFC 9112 3.2.2). Its path is then put in canonical form
//! under a [`PathNormalization`]:
//!
//! - percent-encoded unreserved characters (ALPHA, DIGIT, `-._~`) are decoded and every other
//!   escape is written with upper-case hex (RFC 3986 6.2.2);
//! - `%2F` is kept inside its segment, refused, or decoded to `/` (`escaped_slashes`);
//! - `//` becomes `/` (`merge_slashes`);
//! - `.` and `..` segments, `%2E` spellings included, are resolved (RFC 3986 5.2.4) or refused
//!   (`dot_segments`); a `..` above the root is always refused;
//! - backslashes, NUL, `%5C` and `%00` are always refused.
//!
//! Routing then looks the path up by its [`routing_key`]: without a trailing slash
//! (`trailing_slash: ignore`) and without `;` parameters (`semicolons: ignore`), so that
//! `/login/` and `/login;x` select the route `/login` selects. The forwarded path keeps them.
//!
//! Hot path: a path already in canonical form costs one scan and no allocation; a copy is
//! made only when something changes.

use std::borrow::Cow;

use ringway_policy::{DotSegments, EscapedSlashes, PathNormalization, Semicolons, TrailingSlash};

use crate::h1::head::HeadError;

/// A request target split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The authority of an absolute-form target (`host[:port]`), which replaces Host.
    pub authority: Option<&'a str>,
    /// The path as sent, starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Splits a request target in origin or absolute form (`http` or `https` only). The
/// asterisk form (`OPTIONS *`) and the authority form (`CONNECT`) are refused.
pub fn parse_target(target: &str) -> Result<Target<'_>, HeadError> {
    if target.contains('#') {
        return Err(HeadError::Bad("fragment in request target"));
    }
    let (authority, rest) = if target.starts_with('/') {
        (None, target)
    } else {
        let bad = HeadError::Bad("request target must be a path starting with '/' or an absolute http(s) URI");
        let (scheme, after) = target.split_once("://").ok_or(bad)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(bad);
        }
        let end = after.find(['/', '?']).unwrap_or(after.len());
        if end == 0 {
            return Err(HeadError::Bad("absolute request target without a host"));
        }
        (Some(&after[..end]), &after[end..])
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    // `http://host` and `http://host?q` ask for the root.
    let path = if path.is_empty() { "/" } else { path };
    Ok(Target { authority, path, query })
}

/// The canonical form of `path` (which starts with `/`) under `o`: borrowed when `path` is
/// already canonical, else a copy. Errors name what was refused.
pub fn canonical<'p>(path: &'p str, o: &PathNormalization) -> Result<Cow<'p, str>, HeadError> {
    if is_canonical(path.as_bytes(), o) {
        Ok(Cow::Borrowed(path))
    } else {
        rewrite(path.as_bytes(), o).map(Cow::Owned)
    }
}

/// What routing looks up for a canonical `path`: without its `;` parameters
/// (`semicolons: ignore`) and without a trailing slash (`trailing_slash: ignore`). Borrowed
/// unless parameters are removed.
pub fn routing_key<'p>(path: &'p str, o: &PathNormalization) -> Cow<'p, str> {
    let mut key = Cow::Borrowed(path);
    if o.semicolons == Semicolons::Ignore && memchr::memchr(b';', path.as_bytes()).is_some() {
        let mut k = String::with_capacity(path.len());
        let mut segs = path[1..].split('/').peekable();
        while let Some(seg) = segs.next() {
            let name = seg.split(';').next().unwrap_or("");
            // A segment of parameters only, as in `/;x/a`, would leave `//`.
            if name.is_empty() && !seg.is_empty() && segs.peek().is_some() && o.merge_slashes {
                continue;
            }
            k.push('/');
            k.push_str(name);
        }
        key = Cow::Owned(k);
    }
    if o.trailing_slash == TrailingSlash::Ignore && key.len() > 1 && key.ends_with('/') {
        key = match key {
            Cow::Borrowed(k) => Cow::Borrowed(&k[..k.len() - 1]),
            Cow::Owned(mut k) => {
                k.pop();
                Cow::Owned(k)
            }
        };
    }
    key
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn is_upper_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'A'..=b'F').contains(&c)
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// Whether a segment is `.` or `..` (before its `;` parameters when they are ignored).
fn dot_kind(seg: &[u8], o: &PathNormalization) -> Option<bool> {
    let name = match o.semicolons {
        Semicolons::Ignore => seg.split(|c| *c == b';').next().unwrap_or(seg),
        _ => seg,
    };
    match name {
        b"." => Some(false),
        b".." => Some(true),
        _ => None,
    }
}

/// One scan: true when nothing in `b` would change or be refused.
fn is_canonical(b: &[u8], o: &PathNormalization) -> bool {
    let segment_ok = |seg: &[u8], last: bool| {
        if seg.is_empty() {
            last || !o.merge_slashes
        } else {
            // A segment that starts with '.' is the only kind that can be a dot segment.
            seg[0] != b'.' || dot_kind(seg, o).is_none()
        }
    };
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut start = 1;
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'/' => {
                if !segment_ok(&b[start..i], false) {
                    return false;
                }
                start = i + 1;
            }
            b'%' => {
                let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else { return false };
                if !is_upper_hex(h) || !is_upper_hex(l) {
                    return false;
                }
                let v = (hex_val(h) << 4) | hex_val(l);
                if is_unreserved(v) || v == 0 || v == b'\\' || (v == b'/' && o.escaped_slashes != EscapedSlashes::Keep)
                {
                    return false;
                }
                i += 2;
            }
            b'\\' | 0 => return false,
            b';' if o.semicolons == Semicolons::Reject => return false,
            _ => {}
        }
        i += 1;
    }
    segment_ok(&b[start..], true)
}

/// The full canonicalisation, for a path the scan did not pass.
fn rewrite(b: &[u8], o: &PathNormalization) -> Result<String, HeadError> {
    if b.first() != Some(&b'/') {
        return Err(HeadError::Bad("request target must be a path starting with '/'"));
    }
    // Escapes first: a decoded `%2F` is a separator and a decoded `%2E` a dot from here on.
    let mut d = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\\' => return Err(HeadError::Bad("backslash in path")),
            0 => return Err(HeadError::Bad("NUL in path")),
            b';' if o.semicolons == Semicolons::Reject => {
                return Err(HeadError::Bad("';' in path refused (path_normalization.semicolons: reject)"))
            }
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(HeadError::Bad("truncated percent-encoding in path"))?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(HeadError::Bad("malformed percent-encoding in path"));
                }
                let v = (hex_val(hex[0]) << 4) | hex_val(hex[1]);
                match v {
                    0 => return Err(HeadError::Bad("encoded NUL (%00) in path")),
                    b'\\' => return Err(HeadError::Bad("encoded backslash (%5C) in path")),
                    b'/' => match o.escaped_slashes {
                        EscapedSlashes::Keep => d.extend_from_slice(b"%2F"),
                        EscapedSlashes::Reject => {
                            return Err(HeadError::Bad(
                                "encoded slash (%2F) in path refused (path_normalization.escaped_slashes: reject)",
                            ))
                        }
                        EscapedSlashes::Decode => d.push(b'/'),
                    },
                    v if is_unreserved(v) => d.push(v),
                    _ => {
                        d.push(b'%');
                        d.push(hex[0].to_ascii_uppercase());
                        d.push(hex[1].to_ascii_uppercase());
                    }
                }
                i += 3;
                continue;
            }
            _ => d.push(c),
        }
        i += 1;
    }
    // Then segments: merge empty ones, resolve dot segments (RFC 3986 5.2.4).
    let mut out: Vec<u8> = Vec::with_capacity(d.len());
    let mut segs = d[1..].split(|c| *c == b'/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        if seg.is_empty() && !last && o.merge_slashes {
            continue;
        }
        if let Some(up) = dot_kind(seg, o) {
            if o.dot_segments == DotSegments::Reject {
                return Err(HeadError::Bad("dot segment in path refused (path_normalization.dot_segments: reject)"));
            }
            if up {
                let Some(cut) = out.iter().rposition(|c| *c == b'/') else {
                    return Err(HeadError::Bad("dot segments climb above the root of the path"));
                };
                out.truncate(cut);
            }
            if last {
                out.push(b'/');
            }
            continue;
        }
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was decoded and every other byte copied from a `str`.
    String::from_utf8(out).map_err(|_| HeadError::Bad("invalid path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PathNormalization {
        PathNormalization::default()
    }

    fn canon(p: &str, o: &PathNormalization) -> Result<String, HeadError> {
        canonical(p, o).map(|c| c.into_owned())
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a%20b", "/projects/group%2Fproject", "/a;x", "/.well-known/x", "/a..b/.c"] {
            assert!(matches!(canonical(p, &opts()), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn defaults() {
        let o = opts();
        let cases = [
            ("/l%6fgin", "/login"),
            ("/%7Euser/%41%2d%5F", "/~user/A-_"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("//a", "/a"),
            ("/a//b///c", "/a/b/c"),
            ("///", "/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/.", "/a/"),
            ("/.", "/"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/..;x/b", "/b"),
            ("/a/%2E/", "/a/"),
            ("/a%2F..%2Fb", "/a%2F..%2Fb"),
            ("/a/b/../../c", "/c"),
        ];
        for (p, want) in cases {
            assert_eq!(canon(p, &o).as_deref(), Ok(want), "{p}");
        }
        for bad in ["/..", "/a/../..", "/%2e%2e/x", "/a\\b", "/a%5cb", "/a%5C", "/a%00", "/%zz", "/%2", "/a%"] {
            assert!(canonical(bad, &o).is_err(), "{bad}");
        }
    }

    #[test]
    fn options() {
        let o = PathNormalization { merge_slashes: false, ..opts() };
        assert_eq!(canon("/a//b", &o).as_deref(), Ok("/a//b"));
        assert_eq!(canon("/a//../b", &o).as_deref(), Ok("/a/b"));
        let o = PathNormalization { dot_segments: DotSegments::Reject, ..opts() };
        for bad in ["/a/./b", "/a/../b", "/a/%2E%2E/b", "/a/..;x/b"] {
            assert!(canonical(bad, &o).is_err(), "{bad}");
        }
        assert_eq!(canon("/a/..b", &o).as_deref(), Ok("/a/..b"));
        let o = PathNormalization { escaped_slashes: EscapedSlashes::Reject, ..opts() };
        assert!(canonical("/a%2Fb", &o).is_err());
        assert!(canonical("/a%2fb", &o).is_err());
        let o = PathNormalization { escaped_slashes: EscapedSlashes::Decode, ..opts() };
        assert_eq!(canon("/a%2Fb", &o).as_deref(), Ok("/a/b"));
        assert_eq!(canon("/a%2F%2Fb", &o).as_deref(), Ok("/a/b"));
        assert_eq!(canon("/a/b%2F..%2Fc", &o).as_deref(), Ok("/a/c"));
        assert!(canonical("/a%2F..%2F..%2F..", &o).is_err());
        let o = PathNormalization { semicolons: Semicolons::Reject, ..opts() };
        assert!(canonical("/login;x", &o).is_err());
        let o = PathNormalization { semicolons: Semicolons::Literal, ..opts() };
        assert_eq!(canon("/a/..;x/b", &o).as_deref(), Ok("/a/..;x/b"));
    }

    #[test]
    fn routing_keys() {
        let o = opts();
        let key = |p: &str, o: &PathNormalization| routing_key(p, o).into_owned();
        assert_eq!(key("/login/", &o), "/login");
        assert_eq!(key("/login;x", &o), "/login");
        assert_eq!(key("/a;x/b;y=1/", &o), "/a/b");
        assert_eq!(key("/;x/login", &o), "/login");
        assert_eq!(key("/a/;x", &o), "/a");
        assert_eq!(key("/", &o), "/");
        assert!(matches!(routing_key("/a/b/", &o), Cow::Borrowed("/a/b")));
        let strict =
            PathNormalization { trailing_slash: TrailingSlash::Strict, semicolons: Semicolons::Literal, ..opts() };
        assert_eq!(key("/login/", &strict), "/login/");
        assert_eq!(key("/login;x", &strict), "/login;x");
    }

    #[test]
    fn targets() {
        let t = |s| parse_target(s).map(|t| (t.authority, t.path, t.query));
        assert_eq!(t("/a/b?x=1"), Ok((None, "/a/b", Some("x=1"))));
        assert_eq!(t("/"), Ok((None, "/", None)));
        assert_eq!(t("http://api.example.com:8080/x?y"), Ok((Some("api.example.com:8080"), "/x", Some("y"))));
        assert_eq!(t("HTTPS://h"), Ok((Some("h"), "/", None)));
        assert_eq!(t("http://h?q"), Ok((Some("h"), "/", Some("q"))));
        for bad in ["a", "*", "h:80", "ftp://h/x", "http:///x", "/a#f", "http://h/a#f"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
