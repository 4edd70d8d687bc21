//! Redis pub/sub on the self-healing connection: per-channel streams of what Redis pushes, and
//! publishing in order.
//!
//! The connection (a `ConnectionManager`, or a cluster connection) reconnects and re-subscribes
//! every channel by itself after a Redis restart. A failed publish is logged once per outage
//! (through `RedisHealth`) and dropped: local delivery has happened already, so people on the
//! same instance keep chatting while Redis is away.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use redis::{FromRedisValue, PushInfo, PushKind};
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
    pub async fn publish_all(&self, chan: &str, payloads: &[Vec<u8>]) {
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
