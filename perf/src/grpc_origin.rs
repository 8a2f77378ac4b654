//! A gRPC origin for the gRPC benchmarks: HTTP/2 with prior knowledge, every call answered
//! with the same small message (a `demo.v1.Item`: id "7", title "title of 7", copies 3) and
//! `grpc-status: 0` in trailers, whatever the method. On one thread (tokio's current-thread
//! runtime: this is the load's origin, never part of the gateway).

use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;

#[derive(Debug, clap::Args)]
pub struct GrpcOriginArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9002")]
    pub listen: SocketAddr,
}

/// The answer's one message, framed.
fn answer() -> Bytes {
    let mut item = vec![0x0a, 1, b'7', 0x1a, 10];
    item.extend_from_slice(b"title of 7");
    item.extend_from_slice(&[0x20, 3]);
    let mut framed = vec![0];
    framed.extend_from_slice(&(item.len() as u32).to_be_bytes());
    framed.extend_from_slice(&item);
    Bytes::from(framed)
}

pub fn run(args: &GrpcOriginArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("grpc origin listening on {}", listener.local_addr()?);
        let body = answer();
        loop {
            let (socket, _) = listener.accept().await?;
            let _ = socket.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let body = body.clone();
                    tokio::spawn(async move {
                        let mut recv = req.into_body();
                        while let Some(Ok(d)) = recv.data().await {
                            let _ = recv.flow_control().release_capacity(d.len());
                        }
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap_or_default();
                        let Ok(mut send) = respond.send_response(head, false) else { return };
                        let _ = send.send_data(body, false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    })
}
