//! Assembles the service (page, client bundle, health, Socket.IO) and serves it on a listener
//! until shutdown. The stores and the broadcast adapter are chosen here, once: in-process by
//! default (the history in SQLite or in memory, `crate::store`), Redis when a Redis URL is set.
//! Everything else is the same code.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::any;
use axum::serve::ListenerExt;
use banter_engine::socketio::{Namespace, SocketIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower_http::trace::TraceLayer;

use crate::chat::{Change, History, LOBBY, MemoryPresence, Presence};
use crate::clients::{self, AddressLimits};
use crate::cluster::{self, RedisAdapter, RedisStore};
use crate::config::{Config, Transport};
use crate::gateway::{self, ChatContext, ChatSettings, Gateway};
use crate::guard;
use crate::store::{CommittedStream, LocalStore};
use crate::web::{self, Readiness};

/// How often an instance tells Redis it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// How many published messages may wait for local delivery before the newest are dropped.
const MESSAGE_STREAM_BUFFER: usize = 65_536;

/// How many broadcasts of other instances may wait for local delivery.
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
    crate::advice::at_startup(&config, listener.local_addr().ok());
    let io = SocketIo::new(engine_config(&config));
    // Presence changes, in version order, from the store to the announcements.
    let (changes_tx, changes) = mpsc::unbounded_channel::<Change>();
    match config.redis_url() {
        None => {
            let mut store = LocalStore::open(&config).await?;
            let ctx = context(
                &config,
                Arc::new(MemoryPresence::publishing(changes_tx)),
                store.history.clone(),
            );
            let ns = io.namespace("/", Gateway::new(ctx.clone()));
            let readiness = Readiness {
                redis: None,
                metrics_elsewhere: config.metrics_addr.is_some(),
                history: Some(ctx.history.clone()),
                trusted_proxies: config.effective_trusted_proxies(),
                store: store.health(),
            };
            serve_metrics(&config, &readiness).await?;
            let router = router(&config, io.clone(), readiness, &ctx.clients);
            let announce = gateway::announce_forever(changes, Arc::clone(&ns), config.announce_window());
            let local = local_forever(ctx, ns, reap_interval(&config), store.committed.take());
            let background = tokio::spawn(async move {
                tokio::join!(announce, local);
            });
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
            let ns = io.namespace("/", Gateway::new(ctx.clone()));
            let messages = redis
                .pubsub
                .subscribe(&cluster::messages_channel(LOBBY), MESSAGE_STREAM_BUFFER)
                .await
                .context("cannot subscribe to the message channel")?;
            let ops = redis
                .pubsub
                .subscribe(&cluster::ops_channel(LOBBY), OPS_STREAM_BUFFER)
                .await
                .context("cannot subscribe to the broadcast channel")?;
            let presence = redis
                .pubsub
                .subscribe(&cluster::presence_channel(LOBBY), OPS_STREAM_BUFFER)
                .await
                .context("cannot subscribe to the presence channel")?;
            io.set_adapter(Arc::new(RedisAdapter::start(
                redis.pubsub.clone(),
                cluster::ops_channel(LOBBY),
                instance.clone(),
            )));
            let readiness = Readiness {
                redis: Some(redis.health.clone()),
                metrics_elsewhere: config.metrics_addr.is_some(),
                history: Some(ctx.history.clone()),
                trusted_proxies: config.effective_trusted_proxies(),
                store: None,
            };
            serve_metrics(&config, &readiness).await?;
            let router = router(&config, io.clone(), readiness, &ctx.clients);
            let background = tokio::spawn(cluster_forever(Cluster {
                ctx,
                io: io.clone(),
                ns,
                store: store.clone(),
                health: redis.health.clone(),
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

/// Our exact routes first; the Engine.IO endpoint is `/socket.io` and everything under
/// `/socket.io/` but the client bundle's files.
fn router(
    config: &Config,
    io: SocketIo,
    readiness: Readiness,
    limits: &Arc<AddressLimits>,
) -> Router {
    let engine = any(move |mut request: Request| {
        let io = io.clone();
        async move {
            // The engine keeps a session's handshake extensions for the session's life: only
            // what the chat reads stays (the client), with hyper's upgrade, which the engine
            // takes. ConnectInfo, route parameters and the rest would cost every connection.
            let extensions = request.extensions_mut();
            let mut kept = axum::http::Extensions::new();
            if let Some(client) = extensions.remove::<clients::Client>() {
                kept.insert(client);
            }
            if let Some(upgrade) = extensions.remove::<hyper::upgrade::OnUpgrade>() {
                kept.insert(upgrade);
            }
            *extensions = kept;
            io.handle(request).await.map(Body::new)
        }
    });
    let router = web::routes(readiness)
        .route("/socket.io", engine.clone())
        .route("/socket.io/", engine.clone())
        .route("/socket.io/{*rest}", engine);
    let allowed = guard::AllowedOrigins {
        list: Arc::new(config.allowed_origins.clone()),
    };
    let clients = Arc::new(clients::ClientPolicy {
        trusted: config.effective_trusted_proxies(),
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
    let peers = crate::serve::PeerLimit {
        limits: AddressLimits::new(clients::AddressBounds {
            connect_rate: 0.0,
            connect_burst: 0,
            max_open: config.max_connections_per_ip,
        }),
        trusted: config.effective_trusted_proxies(),
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

/// How often grace periods are checked: often enough that "left" comes within a small fraction of
/// the grace period after it ends, and never more than twice a second.
fn reap_interval(config: &Config) -> Duration {
    (config.reconnect_grace() / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// A single instance's duties, for as long as it runs: end grace periods, and deliver the
/// messages that the store committed (SQLite), in the order it committed them.
async fn local_forever(
    ctx: ChatContext,
    ns: Arc<Namespace>,
    every: Duration,
    committed: Option<CommittedStream>,
) {
    let reap = async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            gateway::reap(&ctx).await;
        }
    };
    match committed {
        Some(committed) => {
            tokio::join!(reap, deliver_committed(ns, committed));
        }
        None => reap.await,
    }
}

/// The delivery hook of the SQLite store: each committed message goes to this instance's
/// sockets in its room (except the sender), group after group, so every client receives a
/// room's messages in id order. The sender's ack comes from the store itself, after the commit.
async fn deliver_committed(ns: Arc<Namespace>, mut committed: CommittedStream) {
    while let Some(group) = committed.recv().await {
        for c in &group {
            gateway::deliver_published(&ns, &c.room, &c.sender, &c.message);
        }
    }
}

/// What an instance of a cluster runs in the background.
struct Cluster {
    ctx: ChatContext,
    io: SocketIo,
    ns: Arc<Namespace>,
    store: Arc<RedisStore>,
    health: Arc<cluster::RedisHealth>,
    config: Config,
    instance: String,
    messages: mpsc::Receiver<Vec<u8>>,
    ops: mpsc::Receiver<Vec<u8>>,
    presence: mpsc::Receiver<Vec<u8>>,
    changes_tx: mpsc::UnboundedSender<Change>,
    changes: mpsc::UnboundedReceiver<Change>,
}

/// An instance's duties in a cluster, for as long as it runs: deliver published messages and
/// presence changes in order, carry out other instances' broadcasts, heart-beat, end grace
/// periods, and put its people back when Redis lost them.
async fn cluster_forever(cluster: Cluster) {
    let Cluster {
        ctx,
        io,
        ns,
        store,
        health,
        config,
        instance,
        mut messages,
        mut ops,
        mut presence,
        changes_tx,
        changes,
    } = cluster;
    let announce = gateway::announce_forever(changes, Arc::clone(&ns), config.announce_window());
    let presence = async move {
        while let Some(payload) = presence.recv().await {
            match cluster::parse_change(&payload) {
                Some(change) => {
                    let _ = changes_tx.send(change);
                }
                None => tracing::warn!("unreadable change on the presence channel"),
            }
        }
        tracing::error!("the presence channel closed; announcements stop here");
    };
    let deliver = {
        let ns = Arc::clone(&ns);
        async move {
            while let Some(payload) = messages.recv().await {
                match cluster::parse_published(&payload) {
                    Some(p) => gateway::deliver_published(&ns, LOBBY, &p.sender, &p.message),
                    None => tracing::warn!("unreadable message on the message channel"),
                }
            }
            tracing::error!("the message channel closed; cross-instance messages stop here");
        }
    };
    let remote = async move {
        while let Some(payload) = ops.recv().await {
            if let Some(op) = cluster::parse_op(&payload, &instance) {
                io.apply_remote(&op);
            }
        }
        tracing::error!("the broadcast channel closed; cross-instance broadcasts stop here");
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
                _ = reap_ticks.tick() => gateway::reap(&ctx).await,
                _ = beat_ticks.tick() => {
                    let unknown = store.heartbeat(LOBBY, config.instance_timeout_ms).await;
                    must_restore |= matches!(unknown, Ok(true));
                    // Back from an outage: what happened meanwhile was not recorded.
                    must_restore |= health.reconnects() != outages_seen;
                    outages_seen = health.reconnects();
                    if must_restore {
                        must_restore = !restore_members(&store, &ns).await;
                    }
                }
            }
        }
    };
    tokio::join!(deliver, remote, presence, announce, duties);
}

/// Puts this instance's people back into Redis after it lost them. False when Redis failed
/// meanwhile (the caller tries again).
async fn restore_members(store: &RedisStore, ns: &Arc<Namespace>) -> bool {
    let members = gateway::local_members(ns);
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
