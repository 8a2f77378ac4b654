//! HTTP path templates of `google.api.http` rules: `/v1/{name=shelves/*}/books/{id}:publish`.
//!
//! Grammar (google/api/http.proto): `Template = "/" Segments [ Verb ]`, `Segments = Segment {
//! "/" Segment }`, `Segment = "*" | "**" | LITERAL | Variable`, `Variable = "{" FieldPath [ "="
//! Segments ] "}"`, `Verb = ":" LITERAL`. A variable without a pattern matches one segment;
//! `**` matches the rest of the path and may only come last.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: every remaining segment (none included).
    Rest,
}

/// A variable: a field path and the segments it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// The field path, split at dots (`book.name` is `["book", "name"]`).
    pub field: Vec<String>,
    start: usize,
    end: usize,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
    pub vars: Vec<Var>,
    verb: Option<String>,
    text: String,
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn literal_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'{' | b'}' | b'*' | b'?' | b'#'))
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let rest = text.strip_prefix('/').ok_or("a path template starts with '/'")?;
        // The verb follows the last segment (a ':' inside a variable's braces is not one).
        let (body, verb) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('}') && !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(v) = verb {
            if !literal_ok(v) {
                return Err(format!("bad verb {v:?}"));
            }
        }
        let mut t = Template { segs: Vec::new(), vars: Vec::new(), verb: verb.map(str::to_string), text: text.into() };
        let mut s = body;
        while !s.is_empty() {
            if let Some(inner) = s.strip_prefix('{') {
                let close = inner.find('}').ok_or("a variable is not closed with '}'")?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (&inner[..close], "*"),
                };
                let field: Vec<String> = field.split('.').map(str::to_string).collect();
                if field.iter().any(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')) {
                    return Err(format!("bad field path {:?} in a variable", &inner[..close]));
                }
                let start = t.segs.len();
                for p in pattern.split('/') {
                    t.segs.push(Self::segment(p)?);
                }
                t.vars.push(Var { field, start, end: t.segs.len() });
                s = &inner[close + 1..];
            } else {
                let end = s.find('/').unwrap_or(s.len());
                t.segs.push(Self::segment(&s[..end])?);
                s = &s[end..];
            }
            match s.strip_prefix('/') {
                Some(r) if !r.is_empty() => s = r,
                Some(_) => return Err("a path template does not end with '/'".into()),
                None if s.is_empty() => {}
                None => return Err(format!("unexpected {s:?}")),
            }
        }
        if let Some(i) = t.segs.iter().position(|s| *s == Seg::Rest) {
            if i + 1 != t.segs.len() {
                return Err("'**' may only be the last segment".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(v) = t.vars.iter().find(|v| !seen.insert(v.field.clone())) {
            return Err(format!("variable {} appears twice", v.field.join(".")));
        }
        Ok(t)
    }

    fn segment(p: &str) -> Result<Seg, String> {
        Ok(match p {
            "*" => Seg::One,
            "**" => Seg::Rest,
            l if literal_ok(l) => Seg::Lit(l.to_string()),
            other => return Err(format!("bad segment {other:?}")),
        })
    }

    /// Whether `path` (no query) matches; the variables' values, percent-decoded, in the
    /// order of [`Template::vars`].
    pub fn matches(&self, path: &str) -> Option<Vec<String>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(v) => path.strip_suffix(v.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
        // Where each template segment's match starts in `parts`.
        let mut at = Vec::with_capacity(self.segs.len() + 1);
        let mut i = 0;
        for s in &self.segs {
            at.push(i);
            match s {
                Seg::Lit(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    i += 1;
                }
                Seg::One => {
                    if parts.get(i).is_none_or(|p| p.is_empty()) {
                        return None;
                    }
                    i += 1;
                }
                Seg::Rest => i = parts.len(),
            }
        }
        at.push(i);
        if i != parts.len() {
            return None;
        }
        let values = self.vars.iter().map(|v| {
            let segs = &parts[at[v.start]..at[v.end]];
            segs.iter().map(|s| decode(s)).collect::<Vec<_>>().join("/")
        });
        Some(values.collect())
    }

    /// Literal segments before the first wildcard: how specific the template is (a request
    /// that two bindings match goes to the more specific).
    pub fn specificity(&self) -> usize {
        self.segs.iter().filter(|s| matches!(s, Seg::Lit(_))).count() * 4
            + self.segs.iter().filter(|s| **s == Seg::One).count() * 2
            + usize::from(self.verb.is_some())
    }
}

/// Percent-decoding (`+` stays itself in a path).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_match_as_google_api_http_defines() {
        let t = Template::parse("/v1/{name=shelves/*}/books/{book.id}:publish").unwrap();
        assert_eq!(t.vars.len(), 2);
        assert_eq!(t.vars[1].field, vec!["book", "id"]);
        assert_eq!(t.matches("/v1/shelves/s1/books/b%201:publish"), Some(vec!["shelves/s1".into(), "b 1".into()]));
        assert_eq!(t.matches("/v1/shelves/s1/books/b1"), None, "the verb is required");
        assert_eq!(t.matches("/v1/shelves/books/b1:publish"), None);
        let t = Template::parse("/v1/items/{id}").unwrap();
        assert_eq!(t.matches("/v1/items/7"), Some(vec!["7".into()]));
        assert_eq!(t.matches("/v1/items/7/x"), None);
        assert_eq!(t.matches("/v1/items/"), None, "an empty segment matches no variable");
        let t = Template::parse("/v1/{path=files/**}").unwrap();
        assert_eq!(t.matches("/v1/files/a/b/c"), Some(vec!["files/a/b/c".into()]));
        assert_eq!(t.matches("/v1/files"), Some(vec!["files".into()]));
        for bad in ["v1/x", "/v1/{id", "/v1/**/x", "/v1/{a}/{a}", "/v1/{a-b}", "/v1/x/", "/v1/{x}:"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Template::parse("/v1/items/{id}").unwrap().specificity()
                > Template::parse("/v1/*/{id}").unwrap().specificity()
        );
    }
}
