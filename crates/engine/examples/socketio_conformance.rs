//! The Socket.IO server the official conformance suite (socketio/socket.io-protocol,
//! `test-suite/`) expects, at `/socket.io/`; see `banter_engine::conformance`.
//!
//! `cargo run -p banter-engine --example socketio_conformance -- [PORT]` (default 3000).

use banter_engine::conformance::socketio_server;
use banter_engine::serve::{not_found, serve};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let io = socketio_server();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("socket.io on http://{}/socket.io/", listener.local_addr()?);
    serve(listener, move |req| {
        let io = io.clone();
        async move {
            match req.uri().path() {
                "/socket.io" | "/socket.io/" => io.handle(req).await,
                _ => not_found(),
            }
        }
    })
    .await;
    Ok(())
}
