//! Scale-out over Redis: pub/sub for broadcasts across instances, and the cluster-wide stores.
//!
//! With `--redis-url`, every instance shares one Redis: broadcasts cross instances through the
//! engine's adapter over Redis pub/sub (`pubsub.rs`), and presence, sessions and history live in
//! Redis (`store.rs`), so that counts, users, nicknames and message ids are the same whichever
//! instance a client is on.
//!
//! Redis faults are survived, not fatal: one `ConnectionManager` reconnects with backoff and
//! re-subscribes every channel by itself; a failed publish is logged and local delivery goes on,
//! so people on the same instance keep chatting while Redis is away.

mod conn;
mod pubsub;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion};

pub use conn::RedisConn;
pub use pubsub::PubSub;
pub use store::{
    Published, RedisStore, messages_channel, ops_channel, parse_change, parse_published,
    presence_channel,
};

/// How long one Redis command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// How many times start-up tries to reach Redis (one second apart) before giving up.
const STARTUP_ATTEMPTS: u32 = 15;

/// Settings of the Redis connection.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` (TLS), with user and password if needed.
    pub url: String,
    /// A PEM file of CA certificates to trust for TLS instead of the built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// A Redis Cluster: `url` lists seed nodes, comma separated; pub/sub is sharded.
    pub cluster: bool,
}

/// Whether Redis answers, as seen by this instance. Transitions are logged once each, at WARN
/// when Redis is lost and at INFO when it is back.
#[derive(Debug, Default)]
pub struct RedisHealth {
    down: AtomicBool,
    /// The last failure was a command that took too long (a stalled or unresponsive Redis), not a
    /// refused or dropped connection: what was sent may still run.
    stalled: AtomicBool,
    reconnects: AtomicU64,
}

impl RedisHealth {
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Whether Redis is away because its last command timed out (it may still run it), rather
    /// than because the connection is refused or broken.
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// How many times Redis came back after being lost.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub fn observe<T>(&self, what: &str, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        match &result {
            Ok(_) => {
                self.stalled.store(false, Ordering::Relaxed);
                if self.down.swap(false, Ordering::Relaxed) {
                    let n = self.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(reconnects = n, "Redis is reachable again");
                }
            }
            Err(err) => {
                self.stalled.store(err.is_timeout(), Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%err, what, "Redis is unreachable; local chat goes on, cross-instance delivery is paused");
                } else {
                    tracing::debug!(%err, what, "Redis still unreachable");
                }
            }
        }
        result
    }
}

/// An open connection to Redis, and its pub/sub, which shares it.
pub struct RedisConnection {
    pub conn: RedisConn,
    pub pubsub: PubSub,
    pub health: Arc<RedisHealth>,
}

/// Connects to Redis (retrying for a while at start-up), in RESP3 so that pub/sub messages
/// arrive on the same multiplexed connection as commands.
pub async fn connect(options: &RedisOptions) -> anyhow::Result<RedisConnection> {
    // rustls needs one process-wide crypto provider; more than one crate feature could offer
    // one, so choose it here. An error only means one was installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root_cert = match &options.ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read the Redis CA file {}", path.display()))?,
        ),
        None => None,
    };
    let health = Arc::new(RedisHealth::default());
    let handlers = pubsub::Handlers::default();
    let push = pubsub::push_sender(handlers.clone(), health.clone());

    let mut attempt = 0;
    let conn = loop {
        attempt += 1;
        let result = if options.cluster {
            connect_cluster(&options.url, root_cert.clone(), push.clone()).await
        } else {
            connect_single(&options.url, root_cert.clone(), push.clone()).await
        };
        match result {
            Ok(conn) => break conn,
            Err(err) if attempt < STARTUP_ATTEMPTS => {
                tracing::warn!(
                    err = format!("{err:#}"),
                    attempt,
                    "cannot reach Redis yet; retrying"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err.context("cannot reach Redis")),
        }
    };
    tracing::info!(cluster = options.cluster, "connected to Redis");
    Ok(RedisConnection {
        pubsub: PubSub::new(conn.clone(), handlers, health.clone()),
        conn,
        health,
    })
}

/// One Redis server, in RESP3 so that pub/sub messages arrive on the multiplexed connection.
async fn connect_single(
    url: &str,
    root_cert: Option<Vec<u8>>,
    push: impl redis::aio::AsyncPushSender + Clone,
) -> anyhow::Result<RedisConn> {
    let info = url
        .into_connection_info()
        .context("the Redis URL is not valid")?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    let client = match root_cert {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        )
        .context("cannot set up TLS for Redis")?,
        None => redis::Client::open(info).context("cannot set up the Redis client")?,
    };
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_max_delay(MAX_RECONNECT_DELAY)
        .set_push_sender(push)
        .set_automatic_resubscription();
    Ok(RedisConn::Single(
        ConnectionManager::new_with_config(client, config).await?,
    ))
}

/// A Redis Cluster from its seed nodes (comma separated URLs).
async fn connect_cluster(
    urls: &str,
    root_cert: Option<Vec<u8>>,
    push: impl redis::aio::AsyncPushSender + Clone,
) -> anyhow::Result<RedisConn> {
    let nodes: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
        .use_protocol(ProtocolVersion::RESP3)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .push_sender(push);
    if let Some(pem) = root_cert {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
    }
    let client = builder
        .build()
        .context("the Redis Cluster URLs are not valid")?;
    Ok(RedisConn::Cluster(client.get_async_connection().await?))
}

/// A random id for this instance, to tell in Redis which instance holds which connection.
pub fn new_instance_id() -> String {
    let bits: u64 = rand::random();
    format!("{bits:016x}")
}
