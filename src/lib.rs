//! Banter: a real-time chat server that speaks Socket.IO, a drop-in for the classic Node.js chat
//! example. See `ARCHITECTURE.md` for the map of this crate.
//!
//! Modules, from the bottom up (each uses only those above it in this list):
//! - `chat`: the domain (names, limits, presence and history rules, announcements, error codes);
//! - `ops`: metrics, logging, the shutdown signal;
//! - `store`: presence and history in memory, in SQLite, in Redis;
//! - `config`: every setting;
//! - `http`: the accept loop, TLS, security headers and origin, client addresses and bounds, the
//!   plain routes;
//! - `gateway`: the chat's side of the Socket.IO engine (`banter_engine`): handlers, per-connection
//!   state, announcements, delivery of messages, local and across instances;
//! - `server`: assembles them and serves; `commands`: `backup` and `export`.

#![forbid(unsafe_code)]

pub mod chat;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod http;
pub mod ops;
pub mod server;
pub mod store;

pub use config::Config;
