//! A gRPC call from an HTTP/2 client to an HTTP/2 upstream: routed, checked by the policies
//! and balanced as any request, then one attempt (a call's messages are not kept for another)
//! relayed both ways at once by [`crate::grpc::relay`], under the call's `grpc-timeout`.
//!
//! Hot path.

use std::rc::Rc;

use monoio::time::Instant;

use super::Plan;
use crate::grpc::relay::{relay, Ended};
use crate::record::End;
use crate::resilience::attempt::{Attempt, Failed};
use crate::respond::{Failure, Phase, ProxyError};
use crate::session::h2::GrpcCall;
use crate::session::Conn;
use crate::stream::Stream;
use crate::worker::Worker;

/// Relays the call whose upstream request head is `out`. The stream ends with it.
pub(super) async fn pass(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    plan: &mut Plan<'_>,
    out: Vec<u8>,
    call: GrpcCall,
) -> bool {
    let upstream = plan.upstream;
    let addr = upstream.targets[plan.target];
    let started = Instant::now();
    conn.rec.upstream_started = Some(started);
    conn.rec.attempts = 1;
    let settings = &upstream.resilience;
    let attempt = Attempt::start(
        &plan.lb,
        &upstream.lb,
        plan.target,
        &upstream.health,
        settings,
        worker.ctx.id,
        plan.trial,
        started,
    );
    plan.trial = false;
    let end = conn.down.body_done();
    let opened = async {
        let Stream::H2(mut up) = crate::h2::client::stream(worker, addr, upstream).await? else {
            return Err(ProxyError::UpstreamProtocol("the upstream does not speak HTTP/2"));
        };
        match up.open_call(&out, end).await {
            Ok((response, send)) => Ok((up, response, send)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(ProxyError::UpstreamTimeout),
            Err(_) => Err(ProxyError::UpstreamSend),
        }
    };
    let opened = match call.deadline {
        Some(d) => monoio::time::timeout_at(d, opened).await.unwrap_or(Err(ProxyError::UpstreamTimeout)),
        None => opened.await,
    };
    let (_up, response, send) = match opened {
        Ok(o) => o,
        Err(e) => {
            let how = match e {
                ProxyError::UpstreamTimeout | ProxyError::UpstreamConnectTimeout => Failed::Timeout,
                _ => Failed::Connect,
            };
            attempt.failed(how);
            let f = Failure::at(e, Phase::Connect, addr, false);
            conn.rec.failed(&f);
            let reply = e.reply();
            conn.down.write_reply(&reply, plan.request_id.as_bytes(), true, None, None, &worker.spares);
            if conn.down.flush(worker).await.is_err() {
                conn.rec.unsent();
            }
            conn.upstream_buf = out;
            return false;
        }
    };
    conn.rec.connects += 1;
    let Some(halves) = conn.down.h2_halves() else { return false };
    let (ended, moved) = relay(halves, send, response, call.deadline).await;
    let now = Instant::now();
    conn.rec.bytes_in = moved.bytes_in;
    conn.rec.bytes_out = moved.bytes_out;
    conn.rec.upstream_head = moved.head_at.map(|t| t.duration_since(started));
    conn.rec.upstream_last = Some(now.duration_since(started));
    match ended {
        Ended::Answered { status, grpc_status } => {
            conn.rec.status = status;
            // UNAVAILABLE from the upstream is a failure of it, for health and the breaker.
            let broke = grpc_status == Some(crate::grpc::code::UNAVAILABLE);
            attempt.ended(status, now.duration_since(started), broke);
        }
        Ended::ClientGone => {
            conn.rec.status = 200;
            conn.rec.cut(End::ClientAbort, "client_closed");
            attempt.ended(200, now.duration_since(started), false);
        }
        Ended::UpstreamBroke => {
            conn.rec.failed(&Failure::at(ProxyError::UpstreamSend, Phase::ResponseBody, addr, false));
            attempt.failed(Failed::Reset);
        }
        Ended::Deadline => {
            conn.rec.failed(&Failure::at(ProxyError::UpstreamTimeout, Phase::ResponseBody, addr, false));
            attempt.ended(504, now.duration_since(started), false);
        }
    }
    conn.upstream_buf = out;
    false
}
