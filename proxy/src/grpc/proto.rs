//! Service descriptions uploaded through the admin API (`protos/{id}`): a binary
//! `FileDescriptorSet` (base64) or `.proto` sources with their imports, compiled in-process.
//! `google/api/annotations.proto`, `google/api/http.proto` and the well-known types are built
//! in, so neither form needs to carry them.
//!
//! Compiled on the admin thread when a change is validated, never on a worker: the pool of
//! descriptors, and each service's `google.api.http` bindings with their path templates parsed.
//! A bad upload is refused with the compiler's message and `file:line:column`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use base64::Engine;
use prost::Message;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MethodDescriptor, Value};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use ringway_policy::ConfigErrors;
use serde::{Deserialize, Serialize};

use super::template::Template;

/// `protos.{id}`: exactly one of the two forms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtoSpec {
    /// A binary `FileDescriptorSet` in base64 (`protoc --include_imports -o`, `buf build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_set: Option<String>,
    /// `.proto` sources by path (`"demo/v1/echo.proto": "syntax = ..."`), imports included.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// A compiled service description.
#[derive(Debug)]
pub struct Proto {
    pub pool: DescriptorPool,
    /// Each service's `google.api.http` bindings, by the service's full name.
    pub bindings: HashMap<String, Vec<Arc<Binding>>>,
}

/// One HTTP binding of a method (its rule, or one of its `additional_bindings`).
#[derive(Debug)]
pub struct Binding {
    pub method: MethodDescriptor,
    /// The HTTP method, upper-case (`GET`, ... or a custom rule's kind).
    pub verb: String,
    pub template: Arc<Template>,
    /// Each variable's field, in the order of the template's variables.
    pub vars: Vec<Vec<FieldDescriptor>>,
    pub body: Body,
    /// `response_body`: the answer is this field of the response message.
    pub response_body: Option<FieldDescriptor>,
}

/// Where the request message comes from besides the path.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body: the other fields come from the query string.
    None,
    /// `body: "*"`: the whole message is the body (the query string fills nothing).
    Whole,
    /// `body: "field"`: that field is the body; the others come from the query string.
    Field(FieldDescriptor),
}

const HTTP_PROTO: &str = include_str!("protos/google/api/http.proto");
const ANNOTATIONS_PROTO: &str = include_str!("protos/google/api/annotations.proto");

/// `google/api/*.proto` from the binary.
struct Builtin;

impl FileResolver for Builtin {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match name {
            "google/api/http.proto" => File::from_source(name, HTTP_PROTO),
            "google/api/annotations.proto" => File::from_source(name, ANNOTATIONS_PROTO),
            _ => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Uploaded sources.
struct Sources(BTreeMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(src) => File::from_source(name, src),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The built-in files, compiled once: what every upload starts from.
static BASE: LazyLock<DescriptorPool> = LazyLock::new(|| {
    let mut c = protox::Compiler::with_file_resolver({
        let mut chain = ChainFileResolver::new();
        chain.add(Builtin);
        chain.add(GoogleFileResolver::new());
        chain
    });
    c.include_imports(true);
    let wkt = DescriptorPool::global();
    let names: Vec<String> = wkt.files().map(|f| f.name().to_string()).collect();
    let opened = c.open_files(["google/api/annotations.proto"].iter().copied().map(String::from).chain(names));
    match opened {
        Ok(c) => c.descriptor_pool(),
        // Built-in sources that do not compile are a defect of this build, seen by its tests.
        Err(_) => DescriptorPool::global(),
    }
});

/// Compiles `protos.{id}`; `None` with the problems in `errors`.
pub fn compile(id: &str, spec: &ProtoSpec, errors: &mut ConfigErrors) -> Option<Proto> {
    let at = format!("protos.{id}");
    let pool = match (&spec.descriptor_set, spec.files.is_empty()) {
        (Some(_), false) | (None, true) => {
            errors.push(&at, "give either descriptor_set (base64 of a FileDescriptorSet) or files (.proto sources)");
            return None;
        }
        (Some(b64), true) => from_descriptor_set(b64).map_err(|e| errors.push(format!("{at}.descriptor_set"), e)),
        (None, false) => from_sources(&spec.files).map_err(|e| errors.push(format!("{at}.files"), e)),
    }
    .ok()?;
    let bindings = bindings(&pool).map_err(|e| errors.push(&at, e)).ok()?;
    Some(Proto { pool, bindings })
}

fn from_descriptor_set(b64: &str) -> Result<DescriptorPool, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| format!("not base64: {e}"))?;
    // Read as raw descriptors (custom options such as google.api.http are extensions, which
    // only a reflective decode keeps).
    let set = prost_types::FileDescriptorSet::decode(bytes.as_slice())
        .map_err(|e| format!("not a binary FileDescriptorSet: {e}"))?;
    if set.file.is_empty() {
        return Err("the descriptor set holds no file".into());
    }
    let mut pool = BASE.clone();
    pool.decode_file_descriptor_set(bytes.as_slice()).map_err(|e| format!("{e} (compile it with its imports)"))?;
    Ok(pool)
}

fn from_sources(files: &BTreeMap<String, String>) -> Result<DescriptorPool, String> {
    for name in files.keys() {
        if !name.ends_with(".proto") || name.starts_with('/') || name.split('/').any(|p| p.is_empty() || p == "..") {
            return Err(format!("{name:?} is not a relative path to a .proto file"));
        }
    }
    let mut chain = ChainFileResolver::new();
    chain.add(Sources(files.clone()));
    chain.add(Builtin);
    chain.add(GoogleFileResolver::new());
    let mut c = protox::Compiler::with_file_resolver(chain);
    c.include_imports(true);
    if let Err(e) = c.open_files(files.keys()) {
        return Err(describe(&e, files));
    }
    let mut pool = BASE.clone();
    pool.decode_file_descriptor_set(c.encode_file_descriptor_set().as_slice()).map_err(|e| e.to_string())?;
    Ok(pool)
}

/// The compiler's message with where it points: `file:line:column: message`.
fn describe(e: &protox::Error, files: &BTreeMap<String, String>) -> String {
    use miette::Diagnostic;
    let message = e.to_string();
    let Some(file) = e.file() else { return message };
    let offset = e.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    match (offset, files.get(file)) {
        (Some(o), Some(src)) => {
            let before = &src[..o.min(src.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{file}:{line}:{column}: {message}")
        }
        _ => format!("{file}: {message}"),
    }
}

/// Every annotated method's bindings, by service.
fn bindings(pool: &DescriptorPool) -> Result<HashMap<String, Vec<Arc<Binding>>>, String> {
    let mut out: HashMap<String, Vec<Arc<Binding>>> = HashMap::new();
    let Some(http) = pool.get_extension_by_name("google.api.http") else { return Ok(out) };
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&http).into_owned() else { continue };
            let list = out.entry(service.full_name().to_string()).or_default();
            let at = method.full_name().to_string();
            add_rule(&method, &rule, list).map_err(|e| format!("method {at}: {e}"))?;
            if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").map(|v| v.into_owned()) {
                for m in more {
                    if let Value::Message(r) = m {
                        add_rule(&method, &r, list).map_err(|e| format!("method {at}: {e}"))?;
                    }
                }
            }
        }
    }
    Ok(out)
}

fn text(rule: &prost_reflect::DynamicMessage, name: &str) -> String {
    match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn add_rule(
    method: &MethodDescriptor,
    rule: &prost_reflect::DynamicMessage,
    list: &mut Vec<Arc<Binding>>,
) -> Result<(), String> {
    let mut pattern = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            pattern = Some((verb.to_ascii_uppercase(), text(rule, verb)));
        }
    }
    if rule.has_field_by_name("custom") {
        if let Some(Value::Message(c)) = rule.get_field_by_name("custom").map(|v| v.into_owned()) {
            pattern = Some((text(&c, "kind").to_ascii_uppercase(), text(&c, "path")));
        }
    }
    let Some((verb, path)) = pattern else { return Err("an http rule without a pattern".into()) };
    let template = Template::parse(&path).map_err(|e| format!("path {path:?}: {e}"))?;
    let b = binding(method, verb, Arc::new(template), &text(rule, "body"), &text(rule, "response_body"))?;
    list.push(Arc::new(b));
    Ok(())
}

/// One binding of `method`: the template's variables and the body and response fields named
/// as an `HttpRule` names them (`body` empty: none, `*`: the whole message).
pub fn binding(
    method: &MethodDescriptor,
    verb: String,
    template: Arc<Template>,
    body: &str,
    response_body: &str,
) -> Result<Binding, String> {
    let input = method.input();
    let mut vars = Vec::with_capacity(template.vars.len());
    for v in &template.vars {
        vars.push(field_path(&input, &v.field).map_err(|e| format!("path {:?}: {e}", template.to_string()))?);
    }
    let body = match body {
        "" => Body::None,
        "*" => Body::Whole,
        f => Body::Field(
            input.get_field_by_name(f).ok_or_else(|| format!("body {f:?} is no field of {}", input.full_name()))?,
        ),
    };
    let response_body = match response_body {
        "" => None,
        f => Some(
            method
                .output()
                .get_field_by_name(f)
                .ok_or_else(|| format!("response_body {f:?} is no field of {}", method.output().full_name()))?,
        ),
    };
    Ok(Binding { method: method.clone(), verb, template, vars, body, response_body })
}

/// The fields a dotted path names, from `message` down; every step but the last a message.
pub fn field_path(message: &prost_reflect::MessageDescriptor, path: &[String]) -> Result<Vec<FieldDescriptor>, String> {
    let mut out = Vec::with_capacity(path.len());
    let mut m = message.clone();
    for (i, name) in path.iter().enumerate() {
        let f = m
            .get_field_by_name(name)
            .or_else(|| m.get_field_by_json_name(name))
            .ok_or_else(|| format!("{} has no field {name:?}", m.full_name()))?;
        if i + 1 < path.len() {
            match f.kind() {
                Kind::Message(next) if !f.is_list() && !f.is_map() => m = next,
                _ => return Err(format!("{name:?} is not a message field")),
            }
        }
        out.push(f);
    }
    Ok(out)
}

impl Proto {
    /// The method `name` of `service` (full names).
    pub fn method(&self, service: &str, name: &str) -> Option<MethodDescriptor> {
        self.pool.get_service_by_name(service)?.methods().find(|m| m.name() == name)
    }

    /// What `GET /admin/v1/protos/{id}` shows besides the upload: services and methods.
    pub fn summary(&self) -> serde_json::Value {
        let services: Vec<serde_json::Value> = self
            .pool
            .services()
            .filter(|s| !s.full_name().starts_with("google."))
            .map(|s| {
                let methods: Vec<serde_json::Value> = s
                    .methods()
                    .map(|m| {
                        let http: Vec<String> = self
                            .bindings
                            .get(s.full_name())
                            .into_iter()
                            .flatten()
                            .filter(|b| b.method == m)
                            .map(|b| format!("{} {}", b.verb, b.template))
                            .collect();
                        serde_json::json!({
                            "name": m.name(),
                            "input": m.input().full_name(),
                            "output": m.output().full_name(),
                            "client_streaming": m.is_client_streaming(),
                            "server_streaming": m.is_server_streaming(),
                            "http": http,
                        })
                    })
                    .collect();
                serde_json::json!({"name": s.full_name(), "methods": methods})
            })
            .collect();
        serde_json::json!({ "services": services })
    }
}
