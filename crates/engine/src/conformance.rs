//! The servers the official conformance suites expect (socketio/engine.io-protocol and
//! socketio/socket.io-protocol, `test-suite/`), for the examples that run them and for this
//! crate's own tests of the same cases.
//!
//! - Engine.IO: a bare endpoint that echoes every message back ([`Echo`]), pinging every 300 ms
//!   with a 200 ms timeout ([`engine_config`]).
//! - Socket.IO: namespaces `/` and `/custom`, each emitting `auth` with the handshake's auth on
//!   connection; in `/`, `message` is answered with `message-back` and the same arguments, and
//!   `message-with-ack` is acknowledged with its arguments ([`Conformance`], [`socketio_config`]).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::socketio::{BoxFuture, ConnectError, Event, Handler, Socket, SocketIo};
use crate::{CloseReason, Config, Layer, LayerFactory, Message, Session};

/// The settings both suites assert: a 300 ms ping interval, a 200 ms timeout, Node's max
/// payload.
pub fn engine_config() -> Config {
    Config {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        ..Config::default()
    }
}

/// The Socket.IO suite's settings: those of [`engine_config`] and a 1 s connect timeout.
pub fn socketio_config() -> Config {
    Config {
        connect_timeout: Duration::from_millis(1_000),
        ..engine_config()
    }
}

/// Echoes every message of an Engine.IO session back to it.
pub struct Echo(Arc<Session>);

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

/// Makes an [`Echo`] per session.
pub struct EchoFactory;

impl LayerFactory for EchoFactory {
    type Layer = Echo;

    fn open(&self, session: Arc<Session>) -> Echo {
        Echo(session)
    }
}

/// The Socket.IO suite's namespace handler.
pub struct Conformance {
    /// Whether `message` and `message-with-ack` are answered (in `/`, not in `/custom`).
    pub echo: bool,
}

impl Handler for Conformance {
    fn connect(
        &self,
        socket: Socket,
        auth: Option<Box<RawValue>>,
    ) -> BoxFuture<Result<(), ConnectError>> {
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
        if self.echo {
            match event.name.as_str() {
                "message" => {
                    let _ = socket.emit_raw("message-back", &event.args, &event.attachments);
                }
                // Unlike the suite's Node handler, an event without an ack is not a crash.
                "message-with-ack" => {
                    if let Some(ack) = event.ack {
                        let _ = ack.send_raw(&event.args, &event.attachments);
                    }
                }
                _ => {}
            }
        }
        Box::pin(std::future::ready(()))
    }
}

/// A Socket.IO server set up as the suite expects.
pub fn socketio_server() -> SocketIo {
    let io = SocketIo::new(socketio_config());
    io.namespace("/", Conformance { echo: true });
    io.namespace("/custom", Conformance { echo: false });
    io
}
