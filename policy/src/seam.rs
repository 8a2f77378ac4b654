//! The `Policy` seam: what a policy sees of a request and of a response, what it answers, and
//! the trait every policy implements.

use crate::calls::Outbound;
use crate::consumer::Consumers;
use crate::context::Context;
use crate::headers::HeaderList;
use crate::http::{RequestHead, ResponseHead};
use std::fmt::Debug;
use std::net::IpAddr;

/// What a policy sees of a request (after routing, before the upstream is chosen).
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'r> {
    /// The request head as the client sent it (the list a policy edits is what goes upstream,
    /// which may hold fewer fields).
    pub head: &'r RequestHead<'r>,
    pub client_ip: IpAddr,
    /// The id of the route that matched.
    pub route_id: &'r str,
    /// The node's consumers, as of the snapshot serving the request.
    pub consumers: &'r Consumers,
    /// The subject of the client certificate the TLS handshake verified (mutual TLS).
    pub client_cert: Option<&'r str>,
}

/// A response produced by a policy (or by the engine for an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON error body `{"error": code, "message": message}`.
    pub fn json_error(status: u16, code: &str, message: &str) -> Self {
        let body =
            format!("{{\"error\":{},\"message\":{},\"status\":{status}}}", json_string(code), json_string(message));
        Reply { status, headers: vec![("content-type".into(), "application/json".into())], body: body.into_bytes() }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A policy's answer on the request side.
#[derive(Debug)]
pub enum Verdict {
    /// Go on to the next policy, then the upstream.
    Continue,
    /// Answer the client now; later policies and the upstream are skipped.
    Respond(Reply),
    /// Make this call, then plan the request again with its answer in
    /// [`Context::answer`](crate::Context): the policy that asked resumes from it. Policies
    /// that ran before it must leave nothing behind (the identity band asks; the limits, which
    /// spend, run after it).
    Call(Outbound),
}

/// One step of the per-request chain. Every hook has a default that does nothing.
pub trait Policy: Send + Sync + Debug {
    /// The name used in configuration.
    fn name(&self) -> &'static str;

    /// Higher runs earlier on the request side and later on the response side. Bands:
    /// address rules 3100, identity 3000, authorization 2600, limits 2000, cache 1500,
    /// transforms 1000.
    fn priority(&self) -> u32;

    /// Runs after routing, before the upstream request is written. `headers` are the
    /// request headers that will be sent upstream (hop-by-hop fields already removed);
    /// edits borrow from `self` or from the request. Returns whether to go on.
    fn on_request<'a>(&'a self, _req: &RequestInfo<'_>, _headers: &mut HeaderList<'a>, _cx: &mut Context) -> Verdict {
        Verdict::Continue
    }

    /// Runs once the upstream response head is read (or a reply was produced), before it is
    /// written to the client. `head.headers` are the response headers that will be sent.
    fn on_response<'a>(&'a self, _head: &mut ResponseHead<'a>) {}

    /// Whether [`Policy::on_complete`] does anything (a chain skips the calls otherwise).
    fn completes(&self) -> bool {
        false
    }

    /// Runs once when the request ends, however it ended, with the status the client got (0:
    /// none was sent).
    fn on_complete(&self, _cx: &Context, _status: u16) {}
}
