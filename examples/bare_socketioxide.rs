//! The smallest Socket.IO server socketioxide allows: an axum router with the Socket.IO layer and
//! an empty default namespace, nothing of Banter's. It exists to measure the library's own memory
//! per idle connection, the floor under Banter's figure (docs/performance.md):
//!
//! ```sh
//! cargo build --release --example bare_socketioxide
//! PORT=0 target/release/examples/bare_socketioxide &
//! target/release/banter-bench idle --url http://127.0.0.1:NNNNN --server-pid $! --clients 5000 --no-join
//! ```
//!
//! `WS_READ_BUFFER_BYTES` (default: tungstenite's 128 KiB) sets the WebSocket read buffer, as
//! Banter sets it to 1 KiB.

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let mut builder = SocketIo::builder();
    if let Some(bytes) = std::env::var("WS_READ_BUFFER_BYTES")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        builder = builder.ws_read_buffer_size(bytes);
    }
    let (layer, io) = builder.build_layer();
    io.ns("/", async |_socket: SocketRef| {});
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
