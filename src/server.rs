//! Assembles the service (page, client bundle, health, Socket.IO) and serves it on a listener
//! until shutdown. The adapter and the stores are chosen here, once: in-process by default (the
//! history in SQLite or in memory, `crate::store`), Redis when a Redis URL is set. Everything
//! else is the same code, generic over the adapter.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::serve::ListenerExt;
use futures::StreamExt;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::handler::ConnectHandler;
use socketioxide::{ParserConfig, SocketIo, SocketIoBuilder, TransportType};
use socketioxide_redis::drivers::Driver;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::chat::{Announcer, History, LOBBY, MemoryPresence, Presence};
use crate::clients::{self, AddressLimits};
use crate::cluster::{self, RedisStore, ResilientDriver};
use crate::config::{Config, Transport};
use crate::guard;
use crate::socket::{self, ChatContext, ChatSettings};
use crate::store::{CommittedStream, LocalStore};
use crate::web::{self, Readiness};

/// The Socket.IO adapter used with Redis.
type RedisAdapter = CustomRedisAdapter<socketioxide::adapter::Emitter, ResilientDriver>;

/// How often an instance tells Redis it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

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
    match config.redis_url() {
        None => {
            let mut store = LocalStore::open(&config).await?;
            let ctx = context(
                &config,
                Arc::new(MemoryPresence::default()),
                store.history.clone(),
            );
            let (svc, io) = socket_io(&config).with_state(ctx.clone()).build_svc();
            io.ns(
                "/",
                socket::on_connect::<LocalAdapter>.with(socket::on_connecting::<LocalAdapter>),
            );
            let readiness = Readiness {
                redis: None,
                metrics_elsewhere: config.metrics_addr.is_some(),
                history: Some(ctx.history.clone()),
                store: store.health(),
            };
            serve_metrics(&config, &readiness).await?;
            let router = router(&config, svc, readiness, &ctx.clients);
            let background = tokio::spawn(local_forever(
                ctx,
                io.clone(),
                reap_interval(&config),
                store.committed.take(),
            ));
            let served = serve(listener, &config, router, io, shutdown, background, None).await;
            store.close().await;
            served
        }
        Some(url) => {
            let options = cluster::RedisOptions {
                url,
                ca_file: config.redis_ca_file.clone(),
                cluster: config.redis_cluster,
            };
            let redis = cluster::connect(&options).await?;
            let instance = cluster::new_instance_id();
            let store = Arc::new(RedisStore::new(
                redis.conn.clone(),
                redis.health.clone(),
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
            let adapter = RedisAdapterCtr::new_with_driver(
                redis.driver.clone(),
                RedisAdapterConfig::new().with_prefix("banter-socket.io"),
            );
            let (svc, io) = socket_io(&config)
                .with_adapter::<RedisAdapter>(adapter)
                .with_state(ctx.clone())
                .build_svc();
            io.ns(
                "/",
                socket::on_connect::<RedisAdapter>.with(socket::on_connecting::<RedisAdapter>),
            )
            .await
            .context("cannot set up the Redis adapter")?;
            let messages = redis
                .driver
                .subscribe(cluster::messages_channel(LOBBY), MESSAGE_STREAM_BUFFER)
                .await
                .context("cannot subscribe to the message channel")?;
            let readiness = Readiness {
                redis: Some(redis.health.clone()),
                metrics_elsewhere: config.metrics_addr.is_some(),
                history: Some(ctx.history.clone()),
                store: None,
            };
            serve_metrics(&config, &readiness).await?;
            let router = router(&config, svc, readiness, &ctx.clients);
            let background = tokio::spawn(cluster_forever(
                ctx,
                io.clone(),
                store.clone(),
                redis.health.clone(),
                config.clone(),
                messages,
            ));
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

/// With `--metrics-addr`, serves `/metrics` there, for as long as the process runs.
async fn serve_metrics(config: &Config, readiness: &Readiness) -> anyhow::Result<()> {
    let Some(addr) = config.metrics_addr else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tracing::info!(%addr, "metrics on their own port");
    let routes = web::metrics_routes(readiness.clone());
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, routes).await {
            tracing::error!(%err, "the metrics server failed");
        }
    });
    Ok(())
}

/// How many published messages may wait for local delivery before the newest are dropped.
const MESSAGE_STREAM_BUFFER: usize = 65_536;

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
        announcer: Arc::new(Announcer::new(config.announce_window())),
        announce_turn: Arc::new(tokio::sync::Mutex::new(())),
    }
}

/// The initial read buffer of each WebSocket connection.
const WS_READ_BUFFER_BYTES: usize = 1_024;

/// Binary attachments one packet may announce (the chat sends none).
const MAX_ATTACHMENTS: usize = 10;

/// The Socket.IO settings shared by both adapters.
fn socket_io(config: &Config) -> SocketIoBuilder {
    // Validated: fits in usize.
    let max_payload = usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX);
    let builder = SocketIo::builder()
        .ping_interval(config.ping_interval())
        .ping_timeout(config.ping_timeout())
        .max_payload(config.max_payload_bytes)
        // socketioxide's default of 128 dropped packets to clients that were merely busy for a
        // moment under fan-out load (measured with banter-bench).
        .max_buffer_size(config.max_buffer_packets)
        // tungstenite allocates this much per connection up front (4 KiB by default), and grows
        // it for a larger frame; chat frames are a few hundred bytes.
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        // The Engine.IO max payload only governs polling; WebSocket frames have their own caps.
        .ws_max_message_size(max_payload)
        .ws_max_frame_size(max_payload)
        // The chat uses no binary attachments. socketioxide's defaults (10 MB, 10,000
        // attachments, held up to a minute) let one connection park 10 MB of pending
        // attachments (the hostile-client suite measured 80 MiB for 8 connections).
        .with_parser(
            ParserConfig::common()
                .max_incoming_binary_buf_size(max_payload)
                .max_incoming_binaries(MAX_ATTACHMENTS)
                .packet_completion_timeout(config.ping_timeout()),
        )
        // A session that never connects to the namespace is dropped as soon as one that stops
        // answering the heartbeat would be (45 s by default, as in Node), not later.
        .connect_timeout(config.ping_interval() + config.ping_timeout());
    match transports(config) {
        (true, false) => builder.transports([TransportType::Polling]),
        (false, true) => builder.transports([TransportType::Websocket]),
        _ => builder.transports([TransportType::Polling, TransportType::Websocket]),
    }
}

fn transports(config: &Config) -> (bool, bool) {
    (
        config.transports.contains(&Transport::Polling),
        config.transports.contains(&Transport::Websocket),
    )
}

/// Our exact routes first; everything else (the Engine.IO endpoint under /socket.io/, and the
/// 404s) goes to the Socket.IO service.
fn router<S>(
    config: &Config,
    socket_io: S,
    readiness: Readiness,
    limits: &Arc<AddressLimits>,
) -> Router
where
    S: tower::Service<axum::extract::Request, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let mut router = web::routes(readiness).fallback_service(socket_io);
    if !transports(config).1 {
        router = router.layer(axum::middleware::from_fn(web::no_upgrade_offer));
    }
    let allowed = guard::AllowedOrigins {
        list: Arc::new(config.allowed_origins.clone()),
    };
    let clients = Arc::new(clients::ClientPolicy {
        trusted: clients::TrustedProxies::new(config.trusted_proxies.clone()),
        limits: Arc::clone(limits),
        own_tls: config.tls_cert.is_some(),
    });
    router
        .layer(axum::middleware::from_fn_with_state(
            allowed,
            guard::check_origin,
        ))
        .layer(axum::middleware::from_fn_with_state(
            config.ping_timeout(),
            guard::bound_request_time,
        ))
        .layer(axum::middleware::from_fn_with_state(
            clients,
            clients::identify,
        ))
        .layer(axum::middleware::from_fn(guard::security_headers))
        // A 503 from /readyz during a Redis outage is an answer, not a fault of the server: one
        // ERROR line per load-balancer probe would bury the WARN that says what happened.
        .layer(
            TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
}

async fn serve<A: Adapter>(
    listener: TcpListener,
    config: &Config,
    router: Router,
    io: SocketIo<A>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    background: tokio::task::JoinHandle<()>,
    store: Option<Arc<RedisStore>>,
) -> anyhow::Result<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stopped = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let header_timeout = config.header_timeout();
    let peers = crate::serve::PeerLimit {
        limits: AddressLimits::new(clients::AddressBounds {
            connect_rate: 0.0,
            connect_burst: 0,
            max_open: config.max_connections_per_ip,
        }),
        trusted: clients::TrustedProxies::new(config.trusted_proxies.clone()),
    };
    let mut serving = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = crate::tls::server_config(cert, key)?;
            // TlsListener sets TCP_NODELAY itself, before the TLS handshake.
            let listener = crate::tls::TlsListener::new(listener, tls)?;
            tokio::spawn(crate::serve::serve(
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
            tokio::spawn(crate::serve::serve(
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
    // first, and for good: a heartbeat landing after `retire` would undo it, and delivery on a
    // closed namespace is pointless. Clients that miss a message now recover it with `lastId`
    // where they reconnect.
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

/// How often grace periods are checked: often enough that "left" comes within a small fraction of
/// the grace period after it ends, and never more than twice a second.
fn reap_interval(config: &Config) -> Duration {
    (config.reconnect_grace() / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// A single instance's duties, for as long as it runs: end grace periods, and deliver the
/// messages that the store committed (SQLite), in the order it committed them.
async fn local_forever<A: Adapter>(
    ctx: ChatContext,
    io: SocketIo<A>,
    every: Duration,
    committed: Option<CommittedStream>,
) {
    let reap = {
        let io = io.clone();
        async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                socket::reap(&ctx, &io).await;
            }
        }
    };
    match committed {
        Some(committed) => {
            tokio::join!(reap, deliver_committed(io, committed));
        }
        None => reap.await,
    }
}

/// The delivery hook of the SQLite store: each committed message goes to this instance's
/// sockets in its room (except the sender), group after group, so every client receives a
/// room's messages in id order. The sender's ack comes from the store itself, after the commit.
async fn deliver_committed<A: Adapter>(io: SocketIo<A>, mut committed: CommittedStream) {
    while let Some(group) = committed.recv().await {
        for c in &group {
            socket::deliver_published(&io, &c.room, &c.sender, &c.message).await;
        }
    }
}

/// An instance's duties in a cluster, for as long as it runs: deliver published messages in
/// order, heart-beat, end grace periods, and put its people back when Redis lost them.
async fn cluster_forever<A: Adapter>(
    ctx: ChatContext,
    io: SocketIo<A>,
    store: Arc<RedisStore>,
    health: Arc<cluster::RedisHealth>,
    config: Config,
    mut messages: socketioxide_redis::drivers::MessageStream<socketioxide_redis::drivers::ChanItem>,
) {
    let deliver = {
        let io = io.clone();
        async move {
            while let Some((_, payload)) = messages.next().await {
                match cluster::parse_published(&payload) {
                    Some(p) => socket::deliver_published(&io, LOBBY, &p.sender, &p.message).await,
                    None => tracing::warn!("unreadable message on the message channel"),
                }
            }
            tracing::error!("the message channel closed; cross-instance messages stop here");
        }
    };
    let duties = async move {
        let mut reap_ticks = tokio::time::interval(reap_interval(&config));
        reap_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat_ticks = tokio::time::interval(HEARTBEAT_EVERY);
        beat_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut must_restore = false;
        let mut outages_seen = health.reconnects();
        loop {
            tokio::select! {
                _ = reap_ticks.tick() => socket::reap(&ctx, &io).await,
                _ = beat_ticks.tick() => {
                    let unknown = store.heartbeat(LOBBY, config.instance_timeout_ms).await;
                    must_restore |= matches!(unknown, Ok(true));
                    // Back from an outage: what happened meanwhile was not recorded.
                    must_restore |= health.reconnects() != outages_seen;
                    outages_seen = health.reconnects();
                    if must_restore {
                        must_restore = !restore_members(&store, &io).await;
                    }
                }
            }
        }
    };
    tokio::join!(deliver, duties);
}

/// Puts this instance's people back into Redis after it lost them. False when Redis failed
/// meanwhile (the caller tries again).
async fn restore_members<A: Adapter>(store: &RedisStore, io: &SocketIo<A>) -> bool {
    let members = socket::local_members(io);
    let mut restored = 0;
    for m in &members {
        match store
            .register(m.room, &m.conn, &m.username, &m.session)
            .await
        {
            Ok(true) => restored += 1,
            Ok(false) => {
                tracing::warn!("a nickname was taken by someone else while Redis was away")
            }
            Err(err) => {
                tracing::warn!(%err, "could not restore presence; will retry");
                return false;
            }
        }
    }
    let live: Vec<String> = members.iter().map(|m| m.conn.clone()).collect();
    match store.reconcile(LOBBY, &live).await {
        Ok(0) => {}
        Ok(dropped) => tracing::info!(
            dropped,
            "people who left during the outage now start their grace period"
        ),
        Err(err) => {
            tracing::warn!(%err, "could not reconcile presence; will retry");
            return false;
        }
    }
    tracing::info!(
        restored,
        of = members.len(),
        "restored this instance's people in Redis"
    );
    true
}
