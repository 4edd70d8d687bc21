//! Assembles the service (page, client bundle, health, Socket.IO) and serves it on a listener
//! until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::serve::ListenerExt;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, TransportType};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::chat::{MemoryHistory, MemoryPresence};
use crate::config::{Config, Transport};
use crate::socket::{self, ChatContext, ChatSettings};
use crate::web;

/// The HTTP service and the Socket.IO handle that controls its connections.
pub struct App {
    pub router: Router,
    pub io: SocketIo,
    pub ctx: ChatContext,
}

/// Builds the whole service from the configuration, without serving it.
pub fn app(config: &Config) -> anyhow::Result<App> {
    config.validate()?;
    let max_payload = usize::try_from(config.max_payload_bytes)?;
    let ctx = ChatContext {
        presence: Arc::new(MemoryPresence::default()),
        history: Arc::new(MemoryHistory::new(config.history_len)),
        settings: Arc::new(settings(config)),
        message_order: Arc::new(tokio::sync::Mutex::new(())),
    };
    let builder = SocketIo::builder()
        .ping_interval(config.ping_interval())
        .ping_timeout(config.ping_timeout())
        .max_payload(config.max_payload_bytes)
        // The Engine.IO max payload only governs polling; WebSocket frames have their own caps.
        .ws_max_message_size(max_payload)
        .ws_max_frame_size(max_payload)
        .with_state(ctx.clone());
    let polling = config.transports.contains(&Transport::Polling);
    let websocket = config.transports.contains(&Transport::Websocket);
    let builder = match (polling, websocket) {
        (true, false) => builder.transports([TransportType::Polling]),
        (false, true) => builder.transports([TransportType::Websocket]),
        _ => builder.transports([TransportType::Polling, TransportType::Websocket]),
    };
    let (socket_io, io) = builder.build_svc();
    io.ns(
        "/",
        socket::on_connect::<LocalAdapter>.with(socket::on_connecting::<LocalAdapter>),
    );

    // Our exact routes first; everything else (the Engine.IO endpoint under /socket.io/, and
    // the 404s) goes to the Socket.IO service.
    let mut router = web::routes().fallback_service(socket_io);
    if !websocket {
        router = router.layer(axum::middleware::from_fn(web::no_upgrade_offer));
    }
    let router = router.layer(TraceLayer::new_for_http());
    Ok(App { router, io, ctx })
}

fn settings(config: &Config) -> ChatSettings {
    ChatSettings {
        limits: config.limits(),
        history_len: config.history_len,
        message_rate: config.message_rate,
        message_burst: config.message_burst,
        typing_rate: config.typing_rate,
        reconnect_grace: config.reconnect_grace(),
    }
}

/// Serves the chat on an already bound listener until `shutdown` resolves, then stops accepting,
/// closes every Socket.IO connection (clients see a transport close and reconnect, elsewhere
/// when there is an elsewhere), and returns once connections are drained or the shutdown
/// timeout has passed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let App { router, io, ctx } = app(&config)?;
    let reaper = tokio::spawn(reap_forever(ctx, io.clone(), reap_interval(&config)));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // Chat frames are small and latency-bound: without TCP_NODELAY, Nagle's algorithm held
    // back-to-back frames to one client about 40 ms apart.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let mut serving = tokio::spawn(serve.into_future());

    tokio::select! {
        result = &mut serving => {
            return result.context("the server task failed")?.context("the server failed");
        }
        () = shutdown => {}
    }
    tracing::info!("shutting down: no new connections; closing sockets");
    let _ = stop_tx.send(true);
    let drain = async {
        io.close().await;
        serving.await
    };
    match tokio::time::timeout(config.shutdown_timeout(), drain).await {
        Ok(result) => result
            .context("the server task failed")?
            .context("the server failed")?,
        Err(_) => tracing::warn!(
            timeout_ms = config.shutdown_timeout_ms,
            "connections still open after the shutdown timeout; exiting anyway"
        ),
    }
    reaper.abort();
    tracing::info!("stopped");
    Ok(())
}

/// How often grace periods are checked: often enough that "left" comes within a small fraction of
/// the grace period after it ends, and never more than twice a second.
fn reap_interval(config: &Config) -> Duration {
    (config.reconnect_grace() / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// Ends grace periods, for as long as the server runs.
async fn reap_forever<A: Adapter>(ctx: ChatContext, io: SocketIo<A>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        socket::reap(&ctx, &io).await;
    }
}
