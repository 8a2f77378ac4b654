//! HTTP/JSON calls as gRPC calls: the route's `grpc_transcode` (which method of which uploaded
//! proto, from the route's own paths or from the methods' `google.api.http` bindings), the
//! request message built from the path's variables, the query string and the JSON body, and
//! the answer's messages and status turned back into JSON, per the proto3 JSON mapping.
//!
//! No I/O here ([`crate::forward`] makes the call). Input that does not fit the method is
//! refused before anything reaches the upstream, with the path of the field at fault.

use std::sync::Arc;

use base64::Engine;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, SerializeOptions,
    Value,
};
use ringway_policy::ConfigErrors;
use serde::{Deserialize, Serialize};

use super::proto::{self, field_path, Binding, Body, Proto};
use super::template::Template;

/// `grpc_transcode` on a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeSpec {
    /// The id of a proto (`protos/{id}`).
    pub proto: String,
    /// The service's full name (`pkg.Service`).
    pub service: String,
    /// The method every request of the route calls (its body is the whole request message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Calls the method whose `google.api.http` binding matches the request instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_annotations: bool,
    /// How a server-streaming answer comes: `array` (one JSON array, the default) or `ndjson`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Fields of the JSON body (and query parameters) the message does not have: `reject`
    /// (400, the default) or `ignore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_fields: Option<String>,
    /// Fields at their default value are written in answers (default: left out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emit_defaults: bool,
    /// Answers name fields as the proto does (default: lowerCamelCase, or `json_name`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proto_names: bool,
    /// Request header fields passed to the upstream as metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata_headers: Vec<String>,
    /// With `method`: how the request makes the message, as a `google.api.http` rule would
    /// say it (default: the whole body is the message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRuleSpec>,
}

/// An explicit mapping of a route's requests onto its method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRuleSpec {
    /// A path template (`/v1/items/{id}`); its variables fill the fields they name.
    pub path: String,
    /// `*` (the whole message is the body, the default), a field's name (that field is the
    /// body, the query string fills the others) or `""` (no body: the query string fills all).
    #[serde(default = "star")]
    pub body: String,
    /// A field of the response message to answer with instead of the whole message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub response_body: String,
}

fn star() -> String {
    "*".into()
}

/// A compiled [`HttpRuleSpec`].
#[derive(Debug)]
pub struct Rule {
    pub template: Arc<Template>,
    pub body: String,
    pub response_body: String,
}

/// A route's compiled `grpc_transcode`.
#[derive(Debug)]
pub struct Transcode {
    pub proto: String,
    pub service: String,
    pub method: Option<String>,
    pub ndjson: bool,
    pub deny_unknown: bool,
    pub emit_defaults: bool,
    pub proto_names: bool,
    /// Lower-case.
    pub metadata_headers: Vec<String>,
    pub rule: Option<Rule>,
}

impl Transcode {
    pub fn compile(spec: &TranscodeSpec, at: &str, errors: &mut ConfigErrors) -> Option<Transcode> {
        let before = errors.0.len();
        match (&spec.method, spec.from_annotations) {
            (Some(_), true) | (None, false) => {
                errors.push(at, "give either method (one method for the route's paths) or from_annotations: true")
            }
            _ => {}
        }
        let ndjson = match spec.stream.as_deref() {
            None | Some("array") => false,
            Some("ndjson") => true,
            Some(other) => {
                errors.push(format!("{at}.stream"), format!("{other:?}: use array or ndjson"));
                false
            }
        };
        let deny_unknown = match spec.unknown_fields.as_deref() {
            None | Some("reject") => true,
            Some("ignore") => false,
            Some(other) => {
                errors.push(format!("{at}.unknown_fields"), format!("{other:?}: use reject or ignore"));
                true
            }
        };
        for (i, h) in spec.metadata_headers.iter().enumerate() {
            if !ringway_policy::is_valid_header_name(h) || h.to_ascii_lowercase().starts_with("grpc-") {
                errors.push(format!("{at}.metadata_headers[{i}]"), format!("{h:?} cannot be passed as metadata"));
            }
        }
        let rule = spec.http.as_ref().and_then(|h| {
            if spec.method.is_none() {
                errors.push(format!("{at}.http"), "an explicit mapping goes with method");
            }
            match Template::parse(&h.path) {
                Ok(t) => {
                    Some(Rule { template: Arc::new(t), body: h.body.clone(), response_body: h.response_body.clone() })
                }
                Err(e) => {
                    errors.push(format!("{at}.http.path"), format!("{:?}: {e}", h.path));
                    None
                }
            }
        });
        (errors.0.len() == before).then(|| Transcode {
            proto: spec.proto.clone(),
            service: spec.service.clone(),
            method: spec.method.clone(),
            ndjson,
            deny_unknown,
            emit_defaults: spec.emit_defaults,
            proto_names: spec.proto_names,
            metadata_headers: spec.metadata_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            rule,
        })
    }

    /// Whether `proto` has what the route calls: `Err` says what is missing.
    pub fn check(&self, proto: &Proto) -> Result<(), String> {
        let Some(service) = proto.pool.get_service_by_name(&self.service) else {
            return Err(format!("the proto has no service {:?}", self.service));
        };
        let unusable = |m: &MethodDescriptor| m.is_client_streaming();
        match &self.method {
            Some(name) => match service.methods().find(|m| m.name() == name) {
                None => Err(format!("service {} has no method {name:?}", self.service)),
                Some(m) if unusable(&m) => Err(format!("{name} takes a stream of messages: JSON cannot call it")),
                Some(m) => match &self.rule {
                    Some(r) => self.bind(&m, r).map(|_| ()).map_err(|e| format!("http: {e}")),
                    None => Ok(()),
                },
            },
            None => match proto.bindings.get(&self.service) {
                Some(b) if b.iter().any(|b| !unusable(&b.method)) => Ok(()),
                _ => Err(format!("no method of {} has a google.api.http binding", self.service)),
            },
        }
    }

    /// What a request calls: the route's method, or the binding its method and path match
    /// (the most specific one). `None`: no binding matches.
    pub fn resolve(&self, proto: &Proto, verb: &str, path: &str) -> Option<Resolved> {
        if let Some(name) = &self.method {
            let method = proto.method(&self.service, name)?;
            let Some(rule) = &self.rule else { return Some(Resolved { method, binding: None, values: Vec::new() }) };
            let values = rule.template.matches(path)?;
            // Built per call against the proto as it stands (checked when either was written).
            let binding = Arc::new(self.bind(&method, rule).ok()?);
            return Some(Resolved { method, binding: Some(binding), values });
        }
        let mut best: Option<(usize, &Arc<Binding>, Vec<String>)> = None;
        for b in proto.bindings.get(&self.service)? {
            if b.verb != verb || b.method.is_client_streaming() {
                continue;
            }
            if let Some(values) = b.template.matches(path) {
                let score = b.template.specificity();
                if best.as_ref().is_none_or(|(s, ..)| score > *s) {
                    best = Some((score, b, values));
                }
            }
        }
        best.map(|(_, b, values)| Resolved { method: b.method.clone(), binding: Some(b.clone()), values })
    }
}

impl Transcode {
    fn bind(&self, method: &MethodDescriptor, rule: &Rule) -> Result<Binding, String> {
        proto::binding(method, String::new(), rule.template.clone(), &rule.body, &rule.response_body)
    }
}

/// The method a request calls, and what its path gave.
pub struct Resolved {
    pub method: MethodDescriptor,
    pub binding: Option<Arc<Binding>>,
    /// The template's variables' values.
    pub values: Vec<String>,
}

/// Input that does not make the request message: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> BadInput {
    BadInput { field: field.into(), message: message.into() }
}

impl Resolved {
    /// The gRPC path (`/pkg.Service/Method`).
    pub fn path(&self) -> String {
        format!("/{}/{}", self.method.parent_service().full_name(), self.method.name())
    }

    /// The request message, encoded: the body (all of it, or the binding's body field), the
    /// path's variables and, for fields the body does not hold, the query string.
    pub fn request(&self, query: Option<&str>, body: &[u8], deny_unknown: bool) -> Result<Vec<u8>, BadInput> {
        let input = self.method.input();
        let rule = self.binding.as_ref().map_or(Body::Whole, |b| b.body.clone());
        let empty = body.iter().all(u8::is_ascii_whitespace);
        let mut msg = match (&rule, empty) {
            (Body::None, false) => return Err(bad("", "this method takes no request body")),
            (Body::None, true) | (_, true) => DynamicMessage::new(input.clone()),
            (Body::Whole, false) => from_json(&input, body, deny_unknown, "")?,
            (Body::Field(f), false) => {
                let mut m = DynamicMessage::new(input.clone());
                let value = match f.kind() {
                    Kind::Message(sub) if !f.is_list() && !f.is_map() => {
                        Value::Message(from_json(&sub, body, deny_unknown, f.json_name())?)
                    }
                    _ => {
                        // A scalar or repeated body field: read as the field of a message.
                        let mut wrapped = Vec::with_capacity(body.len() + f.json_name().len() + 6);
                        wrapped.extend_from_slice(format!("{{\"{}\":", f.json_name()).as_bytes());
                        wrapped.extend_from_slice(body);
                        wrapped.push(b'}');
                        from_json(&input, &wrapped, deny_unknown, "")?.get_field(f).into_owned()
                    }
                };
                m.set_field(f, value);
                m
            }
        };
        if let Some(b) = &self.binding {
            for (fields, value) in b.vars.iter().zip(&self.values) {
                let name = dotted(fields);
                set_text(&mut msg, fields, value).map_err(|e| bad(&name, e))?;
            }
        }
        if !matches!(rule, Body::Whole) {
            for (k, v) in query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(pair) {
                let path: Vec<String> = k.split('.').map(str::to_string).collect();
                let fields = match field_path(&input, &path) {
                    Ok(f) => f,
                    Err(_) if !deny_unknown => continue,
                    Err(e) => return Err(bad(&k, format!("unknown query parameter: {e}"))),
                };
                if let (Body::Field(b), Some(first)) = (&rule, fields.first()) {
                    if first == b {
                        return Err(bad(&k, "this field comes from the body"));
                    }
                }
                set_text(&mut msg, &fields, &v).map_err(|e| bad(&k, e))?;
            }
        }
        Ok(msg.encode_to_vec())
    }
}

fn dotted(fields: &[FieldDescriptor]) -> String {
    fields.iter().map(|f| f.json_name()).collect::<Vec<_>>().join(".")
}

fn pair(p: &str) -> (String, String) {
    let (k, v) = p.split_once('=').unwrap_or((p, ""));
    let dec = |s: &str| super::template::decode(&s.replace('+', " "));
    (dec(k), dec(v))
}

/// A message from JSON, the path of the field at fault on failure (under `prefix`).
fn from_json(
    desc: &MessageDescriptor,
    json: &[u8],
    deny_unknown: bool,
    prefix: &str,
) -> Result<DynamicMessage, BadInput> {
    let mut track = serde_path_to_error::Track::new();
    let mut de = serde_json::Deserializer::from_slice(json);
    let opts = DeserializeOptions::new().deny_unknown_fields(deny_unknown);
    let r = DynamicMessage::deserialize_with_options(
        desc.clone(),
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
        &opts,
    )
    .and_then(|m| de.end().map(|_| m));
    r.map_err(|e| {
        let inner = track.path().to_string();
        let mut inner = if inner == "." { String::new() } else { inner };
        // An unknown field is named by the message, not the path (which ends at its parent).
        let message = e.to_string();
        if let Some(name) = message.strip_prefix("unrecognized field name '").and_then(|r| r.split('\'').next()) {
            inner = if inner.is_empty() { name.to_string() } else { format!("{inner}.{name}") };
        }
        let field = match (prefix.is_empty(), inner.is_empty()) {
            (true, _) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        bad(field, message)
    })
}

/// Sets the field `fields` names (a path from the message down) from text: a path variable's
/// or a query parameter's value (repeated fields take one more value each time).
fn set_text(msg: &mut DynamicMessage, fields: &[FieldDescriptor], text: &str) -> Result<(), String> {
    let (last, parents) = fields.split_last().ok_or("no field")?;
    let mut m = msg;
    for f in parents {
        let v = m.get_field_mut(f);
        let Value::Message(next) = v else { return Err(format!("{} is not a message", f.name())) };
        m = next;
    }
    let value = scalar(last, text)?;
    if last.is_list() {
        if let Value::List(list) = m.get_field_mut(last) {
            list.push(value);
        }
    } else if last.is_map() {
        return Err("a map field cannot be set from the path or the query".into());
    } else {
        m.set_field(last, value);
    }
    Ok(())
}

fn scalar(f: &FieldDescriptor, t: &str) -> Result<Value, String> {
    let num = |what: &str| format!("{t:?} is not {what}");
    Ok(match f.kind() {
        Kind::String => Value::String(t.to_string()),
        Kind::Bytes => {
            let engines = [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE];
            let bytes = engines.iter().find_map(|e| e.decode(t).ok()).ok_or_else(|| num("base64"))?;
            Value::Bytes(bytes.into())
        }
        Kind::Bool => match t {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(num("true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(t.parse().map_err(|_| num("a 32-bit integer"))?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(t.parse().map_err(|_| num("a 64-bit integer"))?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(t.parse().map_err(|_| num("an unsigned 32-bit integer"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(t.parse().map_err(|_| num("an unsigned 64-bit integer"))?),
        Kind::Float => Value::F32(t.parse().map_err(|_| num("a number"))?),
        Kind::Double => Value::F64(t.parse().map_err(|_| num("a number"))?),
        Kind::Enum(e) => match e.get_value_by_name(t) {
            Some(v) => Value::EnumNumber(v.number()),
            None => Value::EnumNumber(t.parse().map_err(|_| format!("{t:?} is no value of {}", e.full_name()))?),
        },
        // Well-known types written as one JSON string (a timestamp, a duration, a wrapper).
        Kind::Message(m) => {
            let json = serde_json::Value::String(t.to_string());
            Value::Message(DynamicMessage::deserialize(m, json).map_err(|e| e.to_string())?)
        }
    })
}

/// How answers are written.
pub fn serialize_options(t: &Transcode) -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(!t.emit_defaults).use_proto_field_name(t.proto_names)
}

/// One response message (its bytes) as JSON, or the binding's `response_body` field of it.
pub fn response_json(
    method: &MethodDescriptor,
    binding: Option<&Binding>,
    bytes: &[u8],
    opts: &SerializeOptions,
) -> Result<Vec<u8>, String> {
    let msg = DynamicMessage::decode(method.output(), bytes).map_err(|e| format!("the upstream's answer: {e}"))?;
    let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
    let mut ser = serde_json::Serializer::new(&mut out);
    match binding.and_then(|b| b.response_body.as_ref()) {
        None => msg.serialize_with_options(&mut ser, opts).map_err(|e| e.to_string())?,
        Some(f) => {
            let mut whole = Vec::new();
            msg.serialize_with_options(
                &mut serde_json::Serializer::new(&mut whole),
                &opts.clone().skip_default_fields(false),
            )
            .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&whole).map_err(|e| e.to_string())?;
            let name = if v.get(f.name()).is_some() { f.name() } else { f.json_name() };
            serde_json::to_writer(&mut out, v.get(name).unwrap_or(&serde_json::Value::Null))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

/// google.rpc.Status, as the details come in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The JSON body of a failed call: google.rpc.Status (`code`, `message`, `details` with each
/// detail written as its type, when the proto knows it, with `@type`).
pub fn status_json(
    code: u32,
    message: &str,
    details_bin: Option<&[u8]>,
    pool: &prost_reflect::DescriptorPool,
) -> Vec<u8> {
    let mut details = Vec::new();
    let status = details_bin
        .and_then(|b| {
            let t = std::str::from_utf8(b).ok()?.trim_end_matches('=');
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(t).ok()
        })
        .and_then(|raw| RpcStatus::decode(raw.as_slice()).ok());
    if let Some(s) = &status {
        for any in &s.details {
            let name = any.type_url.rsplit('/').next().unwrap_or("");
            let known =
                pool.get_message_by_name(name).and_then(|d| DynamicMessage::decode(d, any.value.as_slice()).ok());
            let mut v = match known.and_then(|m| serde_json::to_value(&m).ok()) {
                Some(serde_json::Value::Object(o)) => serde_json::Value::Object(o),
                _ => serde_json::json!({ "value": base64::engine::general_purpose::STANDARD.encode(&any.value) }),
            };
            if let serde_json::Value::Object(o) = &mut v {
                o.insert("@type".into(), serde_json::Value::String(any.type_url.clone()));
            }
            details.push(v);
        }
    }
    let message = status.as_ref().filter(|s| !s.message.is_empty()).map_or(message, |s| s.message.as_str());
    let body = serde_json::json!({
        "code": code,
        "status": super::code_name(code),
        "message": message,
        "details": details,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}
