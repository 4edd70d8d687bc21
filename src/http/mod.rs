//! Everything HTTP: the accept loop with its header timeout, built-in TLS, security headers and
//! the origin check, who each request comes from and the per-address bounds, the plain routes
//! (page, client bundle, health, metrics), the start-up and traffic advice about settings, and
//! the router that puts them in front of the Socket.IO engine.

pub mod advice;
pub mod clients;
pub mod guard;
pub mod routes;
pub mod serve;
pub mod tls;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::any;
use banter_engine::socketio::SocketIo;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::config::net::Client;
use clients::AddressLimits;
use routes::Readiness;

/// Our exact routes first; the Engine.IO endpoint is `/socket.io` and everything under
/// `/socket.io/` but the client bundle's files.
pub fn router(
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
            if let Some(client) = extensions.remove::<Client>() {
                kept.insert(client);
            }
            if let Some(upgrade) = extensions.remove::<hyper::upgrade::OnUpgrade>() {
                kept.insert(upgrade);
            }
            *extensions = kept;
            io.handle(request).await.map(Body::new)
        }
    });
    let router = routes::routes(readiness)
        .route("/socket.io", engine.clone())
        .route("/socket.io/", engine.clone())
        .route("/socket.io/{*rest}", engine);
    let allowed = guard::AllowedOrigins {
        list: Arc::new(
            config
                .allowed_origins
                .iter()
                .filter(|o| !o.is_empty())
                .cloned()
                .collect(),
        ),
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

/// With `--metrics-addr`, serves `/metrics` there, for as long as the process runs.
pub async fn serve_metrics(config: &Config, readiness: &Readiness) -> anyhow::Result<()> {
    let Some(addr) = config.metrics_addr else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tracing::info!(%addr, "metrics on their own port");
    let routes = routes::metrics_routes(readiness.clone());
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, routes).await {
            tracing::error!(%err, "the metrics server failed");
        }
    });
    Ok(())
}
