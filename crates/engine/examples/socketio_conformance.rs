//! The Socket.IO server the official conformance suite (socketio/socket.io-protocol,
//! `test-suite/`) expects, at `/socket.io/`: namespaces `/` and `/custom`, each echoing the
//! handshake's `auth` on connection; `message` answered with `message-back` and the same
//! arguments; `message-with-ack` acknowledged with its arguments.
//!
//! `cargo run -p banter-engine --example socketio_conformance -- [PORT]` (default 3000).

use std::time::Duration;

use banter_engine::Config;
use banter_engine::socketio::{BoxFuture, Event, Handler, Socket, SocketIo};
use serde_json::value::RawValue;

struct Conformance;

impl Handler for Conformance {
    fn connect(
        &self,
        socket: Socket,
        auth: Option<Box<RawValue>>,
    ) -> BoxFuture<Result<(), banter_engine::socketio::ConnectError>> {
        // Node's `socket.handshake.auth` is `{}` when the client sent none.
        let auth = auth.map_or_else(|| "{}".to_owned(), |a| a.get().to_owned());
        let _ = socket.set_data(auth);
        Box::pin(std::future::ready(Ok(())))
    }

    fn connected(&self, socket: Socket) -> BoxFuture<()> {
        let auth = socket
            .data::<String>()
            .cloned()
            .unwrap_or_else(|| "{}".into());
        if let Ok(auth) = RawValue::from_string(auth) {
            let _ = socket.emit_raw("auth", &[auth], &[]);
        }
        Box::pin(std::future::ready(()))
    }

    fn event(&self, socket: Socket, event: Event) -> BoxFuture<()> {
        match event.name.as_str() {
            "message" => {
                let _ = socket.emit_raw("message-back", &event.args, &event.attachments);
            }
            "message-with-ack" => {
                if let Some(ack) = event.ack {
                    let _ = ack.send_raw(&event.args, &event.attachments);
                }
            }
            _ => {}
        }
        Box::pin(std::future::ready(()))
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let config = Config {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(1_000),
        max_payload: 1_000_000,
        ..Config::default()
    };
    let io = SocketIo::new(config);
    io.namespace("/", Conformance);
    io.namespace("/custom", Conformance);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("socket.io on http://{}/socket.io/", listener.local_addr()?);
    banter_engine::serve::serve(listener, move |req| {
        let io = io.clone();
        async move {
            let path = req.uri().path();
            if path == "/socket.io" || path == "/socket.io/" {
                io.handle(req).await
            } else {
                banter_engine::serve::not_found()
            }
        }
    })
    .await;
    Ok(())
}
