//! A fast HTTP/1.1 origin server: answers every request with `200` and a fixed-size body.
//!
//! One monoio runtime per thread, each with its own `SO_REUSEPORT` listener on the same
//! address. Connections are kept alive; request bodies (Content-Length or chunked) are read and
//! dropped; pipelined requests are answered in order.

use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use monoio::net::{ListenerOpts, TcpListener};

use crate::conn::{Conn, MAX_HEADERS};
use crate::http::{request_head, BodyDecoder, HeadInfo};

/// Options of the `origin` subcommand.
#[derive(Debug, Clone, Args)]
pub struct OriginArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Size of every response body in bytes.
    #[arg(long, default_value_t = 13)]
    pub body_size: usize,
    /// Delay before each response, in milliseconds (timer resolution 1 ms, rounded up).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Worker threads, each with its own runtime and listener.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Pre-built response bytes shared by the connections of one thread.
struct Responses {
    keep_alive: Rc<Vec<u8>>,
    /// The answer to a token introspection (`POST /introspect`): an active token.
    introspection: Rc<Vec<u8>>,
    close: Rc<Vec<u8>>,
    delay: Option<Duration>,
}

/// Builds a complete `200` response with the given connection header.
fn build_response(body_size: usize, connection: &str) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: ringway-perf\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {body_size}\r\nConnection: {connection}\r\n\r\n"
    );
    let mut out = Vec::with_capacity(head.len() + body_size);
    out.extend_from_slice(head.as_bytes());
    out.extend((0..body_size).map(|i| b'a' + (i % 26) as u8));
    out
}

/// Binds every thread's listener, prints `listening on ADDR`, then serves until killed.
pub fn run(args: &OriginArgs) -> Result<()> {
    let threads = args.threads.max(1);
    let mut addr = args.listen;
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let (ready_tx, ready_rx) = mpsc::channel();
        let args = args.clone();
        let handle = std::thread::Builder::new()
            .name(format!("origin-{i}"))
            .spawn(move || serve_thread(addr, &args, ready_tx))
            .context("spawning an origin thread")?;
        handles.push(handle);
        // The first listener fixes the port (port 0 picks one); the others share it.
        addr = ready_rx.recv().map_err(|_| anyhow!("origin thread {i} exited before binding"))??;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    for handle in handles {
        match handle.join() {
            Ok(res) => res?,
            Err(_) => bail!("an origin thread panicked"),
        }
    }
    Ok(())
}

/// Runs one runtime that binds its own listener, reports the bound address on `ready`, then
/// accepts and serves connections forever.
fn serve_thread(addr: SocketAddr, args: &OriginArgs, ready: mpsc::Sender<Result<SocketAddr>>) -> Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    let responses = Rc::new(Responses {
        keep_alive: Rc::new(build_response(args.body_size, "keep-alive")),
        introspection: Rc::new(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{INTROSPECTION}",
                INTROSPECTION.len()
            )
            .into_bytes(),
        ),
        close: Rc::new(build_response(args.body_size, "close")),
        delay: (args.delay_ms > 0).then(|| Duration::from_millis(args.delay_ms)),
    });
    rt.block_on(async move {
        let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
        let bound = TcpListener::bind_with_config(addr, &opts)
            .with_context(|| format!("binding {addr}"))
            .and_then(|l| Ok((l.local_addr()?, l)));
        let listener = match bound {
            Ok((local, listener)) => {
                let _ = ready.send(Ok(local));
                listener
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let _ = ready.send(Err(e));
                bail!(msg);
            }
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let responses = responses.clone();
                    monoio::spawn(async move {
                        // A broken client connection only ends that connection.
                        let _ = serve_conn(Conn::new(stream), &responses).await;
                    });
                }
                // Out of descriptors or similar: back off briefly instead of spinning.
                Err(_) => monoio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
}

/// Answers requests on one connection until the client closes or asks to close.
async fn serve_conn(mut conn: Conn, responses: &Responses) -> Result<()> {
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let continue_bytes = Rc::new(CONTINUE.to_vec());
    loop {
        let head = conn.read_head(parse_request).await?;
        let Some((info, introspection)) = head else {
            return Ok(());
        };
        let decoder = BodyDecoder::new(info.framing);
        if info.expect_continue && !decoder.is_done() && conn.pending().is_empty() {
            conn.write_all(continue_bytes.clone()).await?;
        }
        conn.skip_body(decoder).await?;
        if let Some(delay) = responses.delay {
            monoio::time::sleep(delay).await;
        }
        if introspection {
            conn.write_all(responses.introspection.clone()).await?;
        } else if info.keep_alive {
            conn.write_all(responses.keep_alive.clone()).await?;
        } else {
            conn.write_all(responses.close.clone()).await?;
            return Ok(());
        }
    }
}

/// What `/introspect` answers (a gateway's token introspection, for the benchmarks).
const INTROSPECTION: &str = r#"{"active":true,"client_id":"c00000000","scope":"read"}"#;

/// Parses a request head, and whether it asks `/introspect`; `Ok(None)` while incomplete.
fn parse_request(data: &[u8]) -> Result<Option<(usize, (HeadInfo, bool))>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => {
            let introspection = req.path.is_some_and(|p| p.starts_with("/introspect"));
            Ok(Some((len, (request_head(&req)?, introspection))))
        }
    }
}
