//! A bare Engine.IO server that echoes every message back, at `/engine.io/`: the server the
//! official Engine.IO conformance suite (socketio/engine.io-protocol, `test-suite/`) expects.
//!
//! `cargo run -p banter-engine --example engineio_echo -- [PORT]` (default 3000).

use banter_engine::Engine;
use banter_engine::conformance::{EchoFactory, engine_config};
use banter_engine::serve::{not_found, serve};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let engine = Engine::new(engine_config(), EchoFactory);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "engine.io echo on http://{}/engine.io/",
        listener.local_addr()?
    );
    serve(listener, move |req| {
        let engine = engine.clone();
        async move {
            match req.uri().path() {
                "/engine.io" | "/engine.io/" => engine.handle(req).await,
                _ => not_found(),
            }
        }
    })
    .await;
    Ok(())
}
