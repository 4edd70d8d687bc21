//! Redis pub/sub on the self-healing connection: per-channel streams of what Redis pushes, and
//! the engine's adapter, which carries broadcasts to the other instances.
//!
//! The connection (a `ConnectionManager`, or a cluster connection) reconnects and re-subscribes
//! every channel by itself after a Redis restart. A failed publish is logged once per outage
//! (through `RedisHealth`) and dropped: local delivery has happened already, so people on the
//! same instance keep chatting while Redis is away.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use banter_engine::socketio::{Adapter, RemoteOp};
use redis::{FromRedisValue, PushInfo, PushKind};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::RedisHealth;
use super::conn::RedisConn;

/// Subscribed channels and where their messages go.
pub type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<Vec<u8>>>>>;

/// Routes a pub/sub message pushed by Redis to the stream of its channel.
pub fn push_sender(
    handlers: Handlers,
    health: Arc<RedisHealth>,
) -> impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Clone + Send + Sync + 'static {
    move |push: PushInfo| {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(chan), Some(payload)) = (data.next(), data.next()) else {
                    return Ok(());
                };
                let (Ok(chan), Ok(payload)) = (
                    String::from_redis_value(chan),
                    Vec::<u8>::from_redis_value(payload),
                ) else {
                    tracing::warn!("unreadable pub/sub message from Redis");
                    return Ok(());
                };
                let handlers = handlers.read().unwrap_or_else(PoisonError::into_inner);
                if let Some(tx) = handlers.get(&chan) {
                    match tx.try_send(payload) {
                        Ok(()) => {}
                        // This instance cannot keep up with the cluster's traffic: dropping is
                        // better than growing without bound, and clients catch up by `lastId`.
                        Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!(
                            channel = chan,
                            "falling behind the cluster's pub/sub traffic; a message was dropped"
                        ),
                        // Nobody listens any more: the instance is stopping.
                        Err(mpsc::error::TrySendError::Closed(_)) => tracing::debug!(
                            channel = chan,
                            "a pub/sub message arrived while stopping; not delivered"
                        ),
                    }
                }
            }
            PushKind::Disconnection => {
                let _ = health.observe::<()>(
                    "connection",
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the connection to Redis was closed",
                    ))),
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// Publishing and subscribing. Clones share the connection and the handlers.
#[derive(Clone)]
pub struct PubSub {
    conn: RedisConn,
    handlers: Handlers,
    health: Arc<RedisHealth>,
}

impl PubSub {
    pub fn new(conn: RedisConn, handlers: Handlers, health: Arc<RedisHealth>) -> Self {
        Self {
            conn,
            handlers,
            health,
        }
    }

    /// Subscribes to `chan`; its messages arrive on the returned stream, which holds at most
    /// `size` of them.
    pub async fn subscribe(
        &self,
        chan: &str,
        size: usize,
    ) -> redis::RedisResult<mpsc::Receiver<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(size);
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chan.to_owned(), tx);
        let result = self.conn.clone().subscribe(chan).await;
        self.health.observe("subscribe", result)?;
        Ok(rx)
    }

    /// Publishes several messages in one round trip, in order.
    async fn publish_all(&self, chan: &str, payloads: &[Vec<u8>]) {
        // While Redis is known to be away, skip it rather than wait for a timeout; the
        // heartbeat notices when it is back.
        if !self.health.is_up() {
            return;
        }
        let mut pipe = redis::pipe();
        for payload in payloads {
            pipe.cmd(self.conn.publish_command())
                .arg(chan)
                .arg(payload)
                .ignore();
        }
        let result: redis::RedisResult<()> = pipe.query_async(&mut self.conn.clone()).await;
        let _ = self.health.observe("publish", result);
    }
}

/// Broadcasts waiting to be published before more are dropped (and logged).
const ADAPTER_QUEUE: usize = 65_536;

/// What goes on the operations channel: who published it, and the operation.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The publishing instance, which has delivered locally already.
    i: String,
    op: RemoteOp,
}

/// The engine's adapter: hands broadcasts to a task that publishes them in order.
pub struct RedisAdapter {
    tx: mpsc::Sender<RemoteOp>,
}

impl Adapter for RedisAdapter {
    fn publish(&self, op: RemoteOp) {
        if let Err(err) = self.tx.try_send(op) {
            tracing::warn!(%err, "too many broadcasts waiting for Redis; one was not published");
        }
    }
}

impl RedisAdapter {
    /// The adapter, and the task that publishes on `chan` for as long as the adapter lives.
    pub fn start(pubsub: PubSub, chan: String, instance: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<RemoteOp>(ADAPTER_QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(op) = rx.recv().await {
                batch.clear();
                batch.push(op);
                while batch.len() < 256
                    && let Ok(op) = rx.try_recv()
                {
                    batch.push(op);
                }
                let payloads: Vec<Vec<u8>> = batch
                    .drain(..)
                    .filter_map(|op| {
                        serde_json::to_vec(&Envelope {
                            i: instance.clone(),
                            op,
                        })
                        .ok()
                    })
                    .collect();
                pubsub.publish_all(&chan, &payloads).await;
            }
        });
        Self { tx }
    }
}

/// An operation another instance published; `None` for this instance's own, or an unreadable
/// one.
pub fn parse_op(payload: &[u8], own_instance: &str) -> Option<RemoteOp> {
    match serde_json::from_slice::<Envelope>(payload) {
        Ok(envelope) if envelope.i == own_instance => None,
        Ok(envelope) => Some(envelope.op),
        Err(err) => {
            tracing::warn!(%err, "unreadable broadcast on the operations channel");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banter_engine::socketio::RemoteAction;

    #[test]
    fn operations_round_trip_and_our_own_are_skipped() {
        let op = RemoteOp {
            nsp: "/".into(),
            rooms: vec!["lobby".into()],
            except: vec!["abc".into()],
            action: RemoteAction::Emit {
                packet: r#"42["typing",{"username":"a"}]"#.into(),
                attachments: vec![],
            },
        };
        let payload = serde_json::to_vec(&Envelope {
            i: "one".into(),
            op: op.clone(),
        })
        .unwrap();
        assert_eq!(parse_op(&payload, "two"), Some(op));
        assert_eq!(parse_op(&payload, "one"), None);
        assert_eq!(parse_op(b"garbage", "two"), None);
    }
}
