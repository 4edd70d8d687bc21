//! Assembles the service and serves it on a listener until shutdown. The stores are chosen here,
//! once: in-process by default (presence in memory, history in SQLite or in memory), Redis when a
//! Redis URL is set (and with it the engine's adapter to the other instances). Everything else is
//! the same code: the gateway on the engine, behind the HTTP layer.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::serve::ListenerExt;
use banter_engine::socketio::SocketIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::chat::{Change, History, LOBBY, Presence};
use crate::config::{Config, Transport};
use crate::gateway::{self, ChatContext, ChatSettings, Cluster, Gateway, RedisAdapter};
use crate::http::clients::AddressLimits;
use crate::http::routes::Readiness;
use crate::store::redis::{self, RedisStore};
use crate::store::{LocalStore, MemoryPresence};

/// How many published messages may wait for local delivery before the newest are dropped.
const MESSAGE_STREAM_BUFFER: usize = 65_536;

/// How many broadcasts (or presence changes) of other instances may wait for local delivery.
const OPS_STREAM_BUFFER: usize = 65_536;

/// Binary attachments one packet may announce (the chat takes none, and refuses them).
const MAX_ATTACHMENTS: usize = 10;

/// Serves the chat on an already bound listener until `shutdown` resolves, then stops accepting,
/// closes every Socket.IO connection (clients see a transport close and reconnect, elsewhere
/// when there is an elsewhere), and returns once connections are drained or the shutdown
/// timeout has passed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    crate::http::advice::at_startup(&config, listener.local_addr().ok());
    let io = SocketIo::new(engine_config(&config));
    // Presence changes, in version order, from the store to the announcements.
    let (changes_tx, changes) = mpsc::unbounded_channel::<Change>();
    match config.redis_url() {
        None => {
            let mut store = LocalStore::open(&config.store_options()).await?;
            let ctx = context(
                &config,
                Arc::new(MemoryPresence::publishing(changes_tx)),
                store.history.clone(),
            );
            let ns = io.namespace("/", Gateway::new(ctx.clone()));
            let readiness = readiness(&config, &ctx, None, store.health());
            crate::http::serve_metrics(&config, &readiness).await?;
            let router = crate::http::router(&config, io.clone(), readiness, &ctx.clients);
            let announce =
                gateway::announce_forever(changes, Arc::clone(&ns), config.announce_window());
            let local = gateway::local_forever(ctx, ns, store.committed.take());
            let background = tokio::spawn(async move {
                tokio::join!(announce, local);
            });
            let served = serve(listener, &config, router, io, shutdown, background, None).await;
            store.close().await;
            served
        }
        Some(url) => {
            let options = redis::RedisOptions {
                url,
                ca_file: config.redis_ca_file.clone(),
                cluster: config.redis_cluster,
            };
            let conn = redis::connect(&options).await?;
            let instance = redis::new_instance_id();
            let store = Arc::new(RedisStore::new(
                conn.conn.clone(),
                conn.health.clone(),
                instance.clone(),
                config.reconnect_grace_ms,
                config.history_len,
            ));
            store
                .heartbeat(LOBBY, config.instance_timeout_ms)
                .await
                .context("cannot register this instance in Redis")?;
            tracing::info!(instance, "joined the cluster");
            let ctx = context(&config, store.clone(), store.clone());
            let ns = io.namespace("/", Gateway::new(ctx.clone()));
            let subscribe = |channel: String, size: usize| {
                let pubsub = conn.pubsub.clone();
                async move {
                    pubsub
                        .subscribe(&channel, size)
                        .await
                        .with_context(|| format!("cannot subscribe to {channel}"))
                }
            };
            let messages = subscribe(redis::messages_channel(LOBBY), MESSAGE_STREAM_BUFFER).await?;
            let ops = subscribe(redis::ops_channel(LOBBY), OPS_STREAM_BUFFER).await?;
            let presence = subscribe(redis::presence_channel(LOBBY), OPS_STREAM_BUFFER).await?;
            io.set_adapter(Arc::new(RedisAdapter::start(
                conn.pubsub.clone(),
                redis::ops_channel(LOBBY),
                instance.clone(),
            )));
            let readiness = readiness(&config, &ctx, Some(conn.health.clone()), None);
            crate::http::serve_metrics(&config, &readiness).await?;
            let router = crate::http::router(&config, io.clone(), readiness, &ctx.clients);
            let background = tokio::spawn(gateway::cluster_forever(Cluster {
                ctx,
                io: io.clone(),
                ns,
                store: store.clone(),
                health: conn.health.clone(),
                config: config.clone(),
                instance,
                messages,
                ops,
                presence,
                changes_tx,
                changes,
            }));
            serve(
                listener,
                &config,
                router,
                io,
                shutdown,
                background,
                Some(store),
            )
            .await
        }
    }
}

fn readiness(
    config: &Config,
    ctx: &ChatContext,
    redis: Option<Arc<redis::RedisHealth>>,
    store: Option<Arc<crate::store::StoreHealth>>,
) -> Readiness {
    Readiness {
        redis,
        metrics_elsewhere: config.metrics_addr.is_some(),
        history: Some(ctx.history.clone()),
        trusted_proxies: config.effective_trusted_proxies(),
        store,
    }
}

fn context(config: &Config, presence: Arc<dyn Presence>, history: Arc<dyn History>) -> ChatContext {
    ChatContext {
        presence,
        history,
        settings: Arc::new(ChatSettings {
            limits: config.limits(),
            history_len: config.history_len,
            message_rate: config.message_rate,
            message_burst: config.message_burst,
            typing_rate: config.typing_rate,
            reconnect_grace: config.reconnect_grace(),
        }),
        message_order: Arc::new(tokio::sync::Mutex::new(())),
        clients: AddressLimits::new(config.address_bounds()),
    }
}

/// The engine's settings.
fn engine_config(config: &Config) -> banter_engine::Config {
    banter_engine::Config {
        ping_interval: config.ping_interval(),
        ping_timeout: config.ping_timeout(),
        // Validated: fits in usize.
        max_payload: usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX),
        polling: config.transports.contains(&Transport::Polling),
        websocket: config.transports.contains(&Transport::Websocket),
        connect_timeout: config.connect_timeout(),
        max_buffered_bytes: config.outbound_bound(),
        max_attachments: MAX_ATTACHMENTS,
        ..banter_engine::Config::default()
    }
}

async fn serve(
    listener: TcpListener,
    config: &Config,
    router: Router,
    io: SocketIo,
    shutdown: impl Future<Output = ()> + Send + 'static,
    background: tokio::task::JoinHandle<()>,
    store: Option<Arc<RedisStore>>,
) -> anyhow::Result<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stopped = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let header_timeout = config.header_timeout();
    let peers = crate::http::serve::PeerLimit {
        limits: AddressLimits::new(crate::config::net::AddressBounds {
            connect_rate: 0.0,
            connect_burst: 0,
            max_open: config.max_connections_per_ip,
        }),
        trusted: config.effective_trusted_proxies(),
    };
    let mut serving = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = crate::http::tls::server_config(cert, key)?;
            // TlsListener sets TCP_NODELAY itself, before the TLS handshake.
            let listener = crate::http::tls::TlsListener::new(listener, tls)?;
            tokio::spawn(crate::http::serve::serve(
                listener,
                router,
                header_timeout,
                peers,
                stopped,
            ))
        }
        _ => {
            // Chat frames are small and latency-bound: without TCP_NODELAY, Nagle's algorithm
            // held back-to-back frames to one client about 40 ms apart.
            let listener = listener.tap_io(|tcp| {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(%err, "could not set TCP_NODELAY");
                }
            });
            tokio::spawn(crate::http::serve::serve(
                listener,
                router,
                header_timeout,
                peers,
                stopped,
            ))
        }
    };

    tokio::select! {
        result = &mut serving => {
            background.abort();
            result.context("the server task failed")?;
            anyhow::bail!("the server stopped accepting connections");
        }
        () = shutdown => {}
    }
    tracing::info!("shutting down: no new connections; closing sockets");
    let _ = stop_tx.send(true);
    // The background duties (heartbeat, delivery of published messages, grace periods) end
    // first, and for good: a heartbeat landing after `retire` would undo it. Clients that miss
    // a message now recover it with `lastId` where they reconnect.
    background.abort();
    let _ = background.await;
    let drain = async {
        // Other instances take this one's people as dropped at once: they can reconnect there
        // and keep their place, instead of waiting for the heartbeat to lapse.
        if let Some(store) = &store
            && let Err(err) = store.retire(LOBBY).await
        {
            tracing::warn!(%err, "could not tell Redis that this instance is leaving");
        }
        // Every session's transport closes (never a Socket.IO disconnect, which would tell
        // clients not to reconnect); its sockets' disconnect handlers run first.
        io.close().await;
        serving.await
    };
    let drained = tokio::time::timeout(config.shutdown_timeout(), drain).await;
    match drained {
        Ok(result) => result.context("the server task failed")?,
        Err(_) => tracing::warn!(
            timeout_ms = config.shutdown_timeout_ms,
            "connections still open after the shutdown timeout; exiting anyway"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}
