//! A bare Engine.IO server that echoes every message back, at `/engine.io/`: the server the
//! official Engine.IO conformance suite (socketio/engine.io-protocol, `test-suite/`) expects.
//!
//! `cargo run -p banter-engine --example engineio_echo -- [PORT]` (default 3000).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use banter_engine::{CloseReason, Config, Engine, Layer, LayerFactory, Message, Session};

struct Echo(Arc<Session>);

impl Layer for Echo {
    fn message(&mut self, message: Message) -> Result<(), CloseReason> {
        // A client too far behind is being closed already; nothing to add.
        let _ = match message {
            Message::Text(text) => {
                let mut packet = Vec::with_capacity(text.len() + 1);
                packet.push(b'4');
                packet.extend_from_slice(&text);
                self.0.send_text(&packet)
            }
            Message::Binary(data) => self.0.send_binary(&data),
        };
        Ok(())
    }

    fn poll_work(&mut self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }

    fn accepting(&self) -> bool {
        true
    }

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn on_timer(&mut self, _: Instant) -> Option<CloseReason> {
        None
    }

    fn close(&mut self, _: CloseReason) {}
}

struct EchoFactory;

impl LayerFactory for EchoFactory {
    type Layer = Echo;

    fn open(&self, session: Arc<Session>) -> Echo {
        Echo(session)
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    // The suite's expectations: a 300 ms ping interval, a 200 ms timeout, Node's max payload.
    let config = Config {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        ..Config::default()
    };
    let engine = Engine::new(config, EchoFactory);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "engine.io echo on http://{}/engine.io/",
        listener.local_addr()?
    );
    banter_engine::serve::serve(listener, move |req| {
        let engine = engine.clone();
        async move {
            let path = req.uri().path();
            if path == "/engine.io" || path == "/engine.io/" {
                engine.handle(req).await
            } else {
                banter_engine::serve::not_found()
            }
        }
    })
    .await;
    Ok(())
}
