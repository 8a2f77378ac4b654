//! Request and response heads as policies and the cache see them, whatever protocol carried
//! them (HTTP/1 today; HTTP/2 maps its pseudo-headers onto the same fields).

use crate::headers::HeaderList;

/// The protocol a head arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    Http2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
            Version::Http2 => "HTTP/2",
        }
    }
}

/// One header field as the client sent it: the name as spelled, the raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'h> {
    pub name: &'h str,
    pub value: &'h [u8],
}

/// A request head: what the client asked for, after the codec checked it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'h> {
    pub method: &'h str,
    /// The authority the request names (the absolute-form authority or `:authority`, else
    /// `Host`), port included, as sent; `None` only for an HTTP/1.0 request without `Host`.
    pub authority: Option<&'h [u8]>,
    /// The authority's host without its port, lower-cased (what routing reads).
    pub host: &'h str,
    /// The canonical path (before a route's `strip_prefix`).
    pub path: &'h str,
    pub query: Option<&'h str>,
    pub version: Version,
    /// Every header field, in the order received (for HTTP/1, `Host` replaced by the
    /// absolute-form authority when there is one).
    pub fields: &'h [Field<'h>],
}

impl<'h> RequestHead<'h> {
    /// The first value of field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'h [u8]> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name)).map(|f| f.value)
    }

    /// Every value of field `name`, in order.
    pub fn headers<'n>(&self, name: &'n str) -> impl Iterator<Item = &'h [u8]> + 'n
    where
        'h: 'n,
    {
        self.fields.iter().filter(move |f| f.name.eq_ignore_ascii_case(name)).map(|f| f.value)
    }
}

/// A response head on its way to the client (the upstream's, a stored one, or a reply of the
/// gateway's), with the header list policies may edit. Framing fields are not in the list: the
/// client's protocol writes its own.
#[derive(Debug)]
pub struct ResponseHead<'h> {
    /// Fixed once the head exists: the framing and the request record follow from it.
    status: u16,
    /// The reason phrase the upstream sent (HTTP/1 only; `None` for the standard one).
    pub reason: Option<&'h str>,
    /// The protocol the response came with (the gateway's own answers: the client's).
    pub version: Version,
    pub headers: HeaderList<'h>,
}

/// `GET /` to host `h`, with no fields (for tests).
#[cfg(test)]
pub(crate) const EXAMPLE: RequestHead<'static> = RequestHead {
    method: "GET",
    authority: Some(b"h"),
    host: "h",
    path: "/",
    query: None,
    version: Version::Http11,
    fields: &[],
};

impl<'h> ResponseHead<'h> {
    pub fn new(status: u16, reason: Option<&'h str>, version: Version, headers: HeaderList<'h>) -> Self {
        ResponseHead { status, reason, version, headers }
    }

    pub fn status(&self) -> u16 {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookups_ignore_case_and_keep_order() {
        let fields = [
            Field { name: "Accept", value: b"a" },
            Field { name: "X-Tag", value: b"1" },
            Field { name: "x-tag", value: b"2" },
        ];
        let head = RequestHead {
            method: "GET",
            authority: Some(b"h:80"),
            host: "h",
            path: "/",
            query: None,
            version: Version::Http11,
            fields: &fields,
        };
        assert_eq!(head.header("x-TAG"), Some(&b"1"[..]));
        assert_eq!(head.headers("X-TAG").collect::<Vec<_>>(), [&b"1"[..], &b"2"[..]]);
        assert_eq!(head.header("missing"), None);
    }
}
