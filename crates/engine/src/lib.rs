//! Banter's own server side of Engine.IO v4 and Socket.IO v5.
//!
//! Two layers, as in the protocols:
//! - [`proto`]: the sans-IO core. Packet and payload codecs, WebSocket framing, the heartbeat,
//!   the assembly of binary packets. Pure functions and state machines over bytes and time.
//! - The runtime around it: [`Engine`] answers the protocol's HTTP requests and runs one task
//!   per session (reading, writing, heartbeat, upgrade, all in that task); [`socketio`] is the
//!   layer the application uses: namespaces, sockets, events with acks, rooms and broadcasts.
//!
//! The HTTP server is the application's (hyper): it routes the endpoint's requests to
//! [`socketio::SocketIo::handle`] (or [`Engine::handle`] for a bare Engine.IO server), and
//! serves HTTP/1.1 with upgrades so that WebSocket handshakes can take the connection over.

#![forbid(unsafe_code)]

pub mod config;
pub mod conformance;
mod driver;
mod engine;
mod outbox;
pub mod proto;
pub mod serve;
mod session;
pub mod socketio;
mod tcp;

pub use config::Config;
pub use engine::{Engine, Layer, LayerFactory, Message, ResponseBody};
pub use outbox::PushError;
pub use session::{CloseReason, Session, Sid, Transport};
pub use tcp::TcpConnection;
