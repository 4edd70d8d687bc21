//! The socketioxide-redis `Driver`, on a self-healing Redis connection.
//!
//! socketioxide-redis's own `redis` driver sits on a plain multiplexed connection: after a Redis
//! restart it never reconnects, and since its publish error returns before local delivery, every
//! broadcast fails from then on, local ones included. This driver differs in two ways:
//! - it runs on a `ConnectionManager` that reconnects and re-subscribes every channel itself;
//! - a failed publish is logged (once per outage, through `RedisHealth`) and reported as sent,
//!   so the adapter still delivers to this instance's own sockets.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use redis::{FromRedisValue, PushInfo, PushKind};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

use super::RedisHealth;
use super::conn::RedisConn;

/// Subscribed channels and where their messages go.
pub type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

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
                let handlers = handlers.read().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = handlers.get(&chan)
                    && let Err(err) = tx.try_send((chan, payload))
                {
                    // A full stream means this instance cannot keep up with the cluster's
                    // traffic; dropping is better than growing without bound.
                    tracing::warn!(%err, "a pub/sub stream is full; message dropped");
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

/// The adapter's pub/sub transport. Clones share the connection and the handlers.
#[derive(Clone)]
pub struct ResilientDriver {
    conn: RedisConn,
    handlers: Handlers,
    health: Arc<RedisHealth>,
}

impl ResilientDriver {
    pub fn new(conn: RedisConn, handlers: Handlers, health: Arc<RedisHealth>) -> Self {
        Self {
            conn,
            handlers,
            health,
        }
    }
}

/// The driver's error: a Redis error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DriverError(#[from] redis::RedisError);

impl Driver for ResilientDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        // While Redis is known to be away, skip it rather than hold local delivery up for a
        // timeout; the heartbeat notices when it is back.
        if !self.health.is_up() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<redis::Value> = redis::cmd(conn.publish_command())
            .arg(chan)
            .arg(val)
            .query_async(&mut conn)
            .await;
        // Not an error for the adapter: see the module comment.
        let _ = self.health.observe("publish", result);
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(chan.clone(), tx);
        let result = self.conn.clone().subscribe(&chan).await;
        self.health.observe("subscribe", result)?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&chan);
        // Unsubscribing happens at shutdown; with Redis away there is nothing to undo.
        if !self.health.is_up() {
            return Ok(());
        }
        let result = self.conn.clone().unsubscribe(&chan).await;
        self.health.observe("unsubscribe", result)?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<(String, u16)> = redis::cmd("PUBSUB")
            .arg(conn.numsub_command())
            .arg(chan)
            .query_async(&mut conn)
            .await;
        let (_, count) = self.health.observe("num_serv", result)?;
        Ok(count)
    }
}
