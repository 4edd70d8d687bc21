//! The engine's settings. Defaults are Node's.

use std::time::Duration;

/// Settings of an Engine.IO / Socket.IO server.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often the server pings each client (`pingInterval`).
    pub ping_interval: Duration,
    /// How long a client may take to answer a ping (`pingTimeout`).
    pub ping_timeout: Duration,
    /// Largest message a client may send, in bytes (`maxPayload`, Node's `maxHttpBufferSize`):
    /// a WebSocket message, or a long-polling POST body.
    pub max_payload: usize,
    /// How long a client has to complete an upgrade to WebSocket once it opened the WebSocket.
    pub upgrade_timeout: Duration,
    /// Whether clients may use HTTP long-polling.
    pub polling: bool,
    /// Whether clients may use WebSocket.
    pub websocket: bool,
    /// Socket.IO: how long a session may stay without joining any namespace (`connectTimeout`).
    pub connect_timeout: Duration,
    /// Bytes that may wait for one client; a client that falls further behind is closed.
    pub max_buffered_bytes: usize,
    /// Socket.IO: binary attachments one packet may announce.
    pub max_attachments: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            upgrade_timeout: Duration::from_millis(10_000),
            polling: true,
            websocket: true,
            connect_timeout: Duration::from_millis(45_000),
            max_buffered_bytes: 4 << 20,
            max_attachments: 10,
        }
    }
}
