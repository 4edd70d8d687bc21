//! Banter: a real-time chat server that speaks Socket.IO, a drop-in for the classic Node.js chat
//! example. See `ARCHITECTURE.md` for the map of this crate.

#![forbid(unsafe_code)]

pub mod advice;
pub mod chat;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod guard;
pub mod metrics;
pub mod platform;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use config::Config;
