//! The header list a policy edits: borrowed from the request buffer or the compiled config.

use std::borrow::Cow;

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: Cow<'a, str>,
    pub value: Cow<'a, [u8]>,
}

/// An ordered list of header fields; names compare case-insensitively.
#[derive(Debug, Default)]
pub struct HeaderList<'a> {
    entries: Vec<Header<'a>>,
}

impl<'a> HeaderList<'a> {
    pub fn with_capacity(n: usize) -> Self {
        Self { entries: Vec::with_capacity(n) }
    }

    /// Reuses an emptied list's allocation for a new lifetime.
    pub fn recycle<'b>(self) -> HeaderList<'b> {
        let mut entries = self.entries;
        entries.clear();
        // An empty vector holds no borrowed data, so its allocation can carry a new
        // lifetime; `collect` into the same layout reuses the buffer in place.
        HeaderList { entries: entries.into_iter().map(|_| unreachable!()).collect() }
    }

    pub fn push(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        self.entries.push(Header { name: name.into(), value: value.into() });
    }

    /// Removes every field called `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// Replaces every field called `name` with one field.
    pub fn set(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        let name = name.into();
        self.remove(&name);
        self.entries.push(Header { name, value: value.into() });
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| &*h.value)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header<'a>> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// RFC 9110 token characters, without `_` (refused at the edge, see EDGE-DEFENCES).
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'`' | b'|' | b'~'
                )
        })
}

/// Visible characters, spaces and tabs; no CR, LF or NUL; no leading or trailing white space.
pub fn is_valid_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        && !value.first().is_some_and(|b| *b == b' ' || *b == b'\t')
        && !value.last().is_some_and(|b| *b == b' ' || *b == b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_all_case_insensitively() {
        let mut h = HeaderList::default();
        h.push("X-A", &b"1"[..]);
        h.push("x-a", &b"2"[..]);
        h.push("Other", &b"o"[..]);
        h.set("X-a", &b"3"[..]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("x-A"), Some(&b"3"[..]));
    }

    #[test]
    fn recycle_keeps_capacity() {
        let mut h: HeaderList<'static> = HeaderList::with_capacity(16);
        h.push("a", &b"b"[..]);
        let cap = h.entries.capacity();
        let r: HeaderList<'_> = h.recycle();
        assert!(r.is_empty());
        assert_eq!(r.entries.capacity(), cap);
    }

    #[test]
    fn names_and_values() {
        assert!(is_valid_header_name("X-Request-Id"));
        assert!(!is_valid_header_name("x_forwarded"));
        assert!(!is_valid_header_name("a b"));
        assert!(is_valid_header_value(b"a b"));
        assert!(!is_valid_header_value(b"a\r\nb"));
        assert!(!is_valid_header_value(b"a\0"));
    }
}
