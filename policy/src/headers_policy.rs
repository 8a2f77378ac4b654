//! `headers`: set, add and remove header fields on the request and the response.

use crate::context::Context;
use crate::error::ConfigErrors;
use crate::headers::{is_valid_header_name, is_valid_header_value, HeaderList};
use crate::http::ResponseHead;
use crate::seam::{Policy, RequestInfo, Verdict};
use crate::spec::{HeaderOpsSpec, HeadersPolicySpec};

/// Fields that carry message framing or connection state: a transform may not touch them.
const PROTECTED: &[&str] = &[
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Ops {
    remove: Vec<String>,
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
}

impl Ops {
    fn compile(spec: &HeaderOpsSpec, path: &str, errors: &mut ConfigErrors) -> Ops {
        let check_name = |kind: &str, name: &str, errors: &mut ConfigErrors| {
            let p = format!("{path}.{kind}.{name}");
            if !is_valid_header_name(name) {
                errors.push(p, "not a valid header name (token characters, no '_')");
                false
            } else if PROTECTED.contains(&name.to_ascii_lowercase().as_str()) {
                errors.push(p, "this header controls message framing and cannot be transformed");
                false
            } else {
                true
            }
        };
        let mut ops = Ops::default();
        for (i, name) in spec.remove.iter().enumerate() {
            if check_name("remove", name, errors) {
                ops.remove.push(name.clone());
            } else if let Some(last) = errors.0.last_mut() {
                last.path = format!("{path}.remove[{i}]");
            }
        }
        for (kind, map, out) in [("set", &spec.set, &mut ops.set), ("add", &spec.add, &mut ops.add)] {
            for (name, value) in map {
                let ok_name = check_name(kind, name, errors);
                if !is_valid_header_value(value.as_bytes()) {
                    errors.push(
                        format!("{path}.{kind}.{name}"),
                        "header value has a control character or surrounding white space",
                    );
                } else if ok_name {
                    out.push((name.clone(), value.clone()));
                }
            }
        }
        ops
    }

    fn apply<'a>(&'a self, headers: &mut HeaderList<'a>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.set(name.as_str(), value.as_bytes());
        }
        for (name, value) in &self.add {
            headers.push(name.as_str(), value.as_bytes());
        }
    }
}

/// The compiled `headers` policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadersPolicy {
    request: Ops,
    response: Ops,
}

impl HeadersPolicy {
    pub fn compile(spec: &HeadersPolicySpec, path: &str, errors: &mut ConfigErrors) -> Option<Self> {
        let before = errors.0.len();
        let request =
            spec.request.as_ref().map(|s| Ops::compile(s, &format!("{path}.request"), errors)).unwrap_or_default();
        let response =
            spec.response.as_ref().map(|s| Ops::compile(s, &format!("{path}.response"), errors)).unwrap_or_default();
        (errors.0.len() == before).then_some(HeadersPolicy { request, response })
    }
}

impl Policy for HeadersPolicy {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn priority(&self) -> u32 {
        1000
    }

    fn on_request<'a>(&'a self, _req: &RequestInfo<'_>, headers: &mut HeaderList<'a>, _cx: &mut Context) -> Verdict {
        self.request.apply(headers);
        Verdict::Continue
    }

    fn on_response<'a>(&'a self, head: &mut ResponseHead<'a>) {
        self.response.apply(&mut head.headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml_like: &[(&str, &str, &str)]) -> HeaderOpsSpec {
        let mut s = HeaderOpsSpec::default();
        for (kind, name, value) in yaml_like {
            match *kind {
                "set" => {
                    s.set.insert(name.to_string(), value.to_string());
                }
                "add" => {
                    s.add.insert(name.to_string(), value.to_string());
                }
                _ => s.remove.push(name.to_string()),
            }
        }
        s
    }

    #[test]
    fn remove_then_set_then_add() {
        let mut errors = ConfigErrors::default();
        let p = HeadersPolicy::compile(
            &HeadersPolicySpec {
                request: Some(spec(&[("remove", "x-secret", ""), ("set", "x-a", "1"), ("add", "x-b", "2")])),
                response: None,
            },
            "routes.r.policies.headers",
            &mut errors,
        )
        .expect("valid");
        let mut h = HeaderList::default();
        h.push("X-Secret", &b"s"[..]);
        h.push("x-a", &b"old"[..]);
        h.push("x-b", &b"old"[..]);
        p.request.apply(&mut h);
        assert_eq!(h.get("x-secret"), None);
        assert_eq!(h.get("x-a"), Some(&b"1"[..]));
        let b: Vec<_> = h.iter().filter(|x| x.name == "x-b").map(|x| x.value.to_vec()).collect();
        assert_eq!(b, vec![b"old".to_vec(), b"2".to_vec()]);
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let mut errors = ConfigErrors::default();
        let p = HeadersPolicy::compile(
            &HeadersPolicySpec {
                request: Some(spec(&[("set", "bad name", "v"), ("set", "content-length", "1")])),
                response: Some(spec(&[("add", "x-ok", "bad\nvalue"), ("remove", "x_y", "")])),
            },
            "p",
            &mut errors,
        );
        assert!(p.is_none());
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["p.request.set.bad name", "p.request.set.content-length", "p.response.remove[0]", "p.response.add.x-ok"]
        );
    }
}
