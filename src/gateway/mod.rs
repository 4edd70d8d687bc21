//! The chat's side of the engine: the Socket.IO handlers of the chat's namespace, each
//! validating its input, calling the chat domain, and answering with an ack, an
//! `error message`, or a broadcast; and the delivery of messages the store published.
//!
//! The engine runs a connection's handlers one at a time, in the order its events came, and its
//! `disconnect` after all of them: an event right after `add user` sees the join, and a join
//! cannot finish after the disconnect that should undo it. A handler never panics on client
//! input: every argument is read as a raw JSON value and checked here.

mod announce;
mod cluster;
mod conn;
mod delivery;
mod handlers;
pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use banter_engine::socketio::{BoxFuture, ConnectError, DisconnectReason, Event, Handler, Socket};
use serde_json::value::RawValue;

pub use announce::announce_forever;
pub use cluster::{Cluster, RedisAdapter, cluster_forever};
pub use delivery::{LocalMember, deliver_published, local_forever, local_members, reap_interval};
use delivery::{MAX_BATCH, Pacer, deliver_batch};
pub use handlers::reap;

use crate::chat::{History, Limits, Presence};
use crate::http::clients::AddressLimits;

/// Settings of the chat that handlers need.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    pub limits: Limits,
    pub history_len: usize,
    pub message_rate: f64,
    pub message_burst: u32,
    pub typing_rate: f64,
    pub reconnect_grace: Duration,
}

/// What every handler shares: the stores and the settings. Cheap to clone.
#[derive(Clone)]
pub struct ChatContext {
    pub presence: Arc<dyn Presence>,
    pub history: Arc<dyn History>,
    pub settings: Arc<ChatSettings>,
    /// Held from assigning a message's id to handing it to the broadcast, so that every client
    /// receives a room's messages in id order. Without it, two senders' messages could be
    /// broadcast in the opposite order of their ids, and a client that reconnects with the
    /// greater id as `lastId` would never get the other one.
    pub message_order: Arc<tokio::sync::Mutex<()>>,
    /// The per-address bounds on connections.
    pub clients: Arc<AddressLimits>,
}

/// The chat's namespace handler.
pub struct Gateway {
    ctx: ChatContext,
}

impl Gateway {
    pub fn new(ctx: ChatContext) -> Self {
        Self { ctx }
    }
}

impl Handler for Gateway {
    fn connect(
        &self,
        socket: Socket,
        auth: Option<Box<RawValue>>,
    ) -> BoxFuture<Result<(), ConnectError>> {
        let result = handlers::connect(&self.ctx, &socket, auth.as_deref());
        Box::pin(std::future::ready(result))
    }

    fn event(&self, socket: Socket, event: Event) -> BoxFuture<()> {
        Box::pin(handlers::event(self.ctx.clone(), socket, event))
    }

    fn disconnect(&self, socket: Socket, reason: DisconnectReason) -> BoxFuture<()> {
        Box::pin(handlers::disconnect(self.ctx.clone(), socket, reason))
    }
}
