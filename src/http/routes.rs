//! Plain HTTP routes: the chat page, the official client bundle, and health.
//!
//! Everything is embedded in the binary at build time, so a deployment is one file.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::chat::{History, LOBBY};
use crate::config::net::TrustedProxies;
use crate::store::StoreHealth;
use crate::store::redis::RedisHealth;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");
const FAVICON_SVG: &str = include_str!("../../web/favicon.svg");

/// The official socket.io-client bundle (see `build.rs`), served where Node's server serves it.
macro_rules! client_file {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/client/", $name)).as_slice()
    };
}

const CLIENT_FILES: &[(&str, &[u8])] = &[
    ("/socket.io/socket.io.js", client_file!("socket.io.js")),
    (
        "/socket.io/socket.io.js.map",
        client_file!("socket.io.js.map"),
    ),
    (
        "/socket.io/socket.io.min.js",
        client_file!("socket.io.min.js"),
    ),
    (
        "/socket.io/socket.io.min.js.map",
        client_file!("socket.io.min.js.map"),
    ),
    (
        "/socket.io/socket.io.esm.min.js",
        client_file!("socket.io.esm.min.js"),
    ),
    (
        "/socket.io/socket.io.esm.min.js.map",
        client_file!("socket.io.esm.min.js.map"),
    ),
    (
        "/socket.io/socket.io.msgpack.min.js",
        client_file!("socket.io.msgpack.min.js"),
    ),
    (
        "/socket.io/socket.io.msgpack.min.js.map",
        client_file!("socket.io.msgpack.min.js.map"),
    ),
];

/// The version of the embedded client, as its package.json says.
pub const CLIENT_VERSION: &str = env!("BANTER_CLIENT_VERSION");

/// Routes that do not involve Socket.IO. The Engine.IO endpoint takes every other path under
/// `/socket.io/`, so the bundle's exact paths are routed here, and win.
pub fn routes(readiness: Readiness) -> Router {
    let mut router = Router::new()
        .route("/", get(|| page(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/index.html",
            get(|| page(INDEX_HTML, "text/html; charset=utf-8")),
        )
        .route(
            "/app.js",
            get(|| page(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/style.css",
            get(|| page(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route("/favicon.svg", get(|| page(FAVICON_SVG, "image/svg+xml")))
        // Browsers ask for it whatever the page links; an SVG body is fine for them.
        .route("/favicon.ico", get(|| page(FAVICON_SVG, "image/svg+xml")))
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get({
                let readiness = readiness.clone();
                move || readyz(readiness.clone())
            }),
        );
    if !readiness.metrics_elsewhere {
        router = router.merge(metrics_routes(readiness));
    }
    for &(path, body) in CLIENT_FILES {
        router = router.route(path, get(move || client_file(path, body)));
    }
    router
}

/// Our own page: revalidated on every load, so a new deployment shows at once.
async fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The client bundle: versioned by the client release, so an ETag lets browsers keep it.
async fn client_file(path: &'static str, body: &'static [u8]) -> Response {
    let content_type = if path.ends_with(".map") {
        "application/json"
    } else {
        "application/javascript; charset=utf-8"
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{CLIENT_VERSION}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// What `/readyz` reports on.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Present when the instance uses Redis.
    pub redis: Option<Arc<RedisHealth>>,
    /// `/metrics` is served on a port of its own (`--metrics-addr`), not with the chat.
    pub metrics_elsewhere: bool,
    /// The chat's history, whose size `/metrics` reports.
    pub history: Option<Arc<dyn History>>,
    /// The proxies whose forwarding headers are believed, which `/readyz` reports so that an
    /// operator can check them through the proxy itself.
    pub trusted_proxies: TrustedProxies,
    /// Present when a single instance keeps its history in SQLite: whether it accepts writes.
    pub store: Option<Arc<StoreHealth>>,
}

/// `GET /metrics` in the Prometheus text format.
pub fn metrics_routes(readiness: Readiness) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let readiness = readiness.clone();
            async move {
                let history = match &readiness.history {
                    // Unknown while Redis is out of reach: the line is left out, not made up.
                    Some(history) => history.len(LOBBY).await.ok(),
                    None => None,
                };
                let body = crate::ops::metrics::METRICS.render(readiness.redis.as_deref(), history);
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    )
}

/// Readiness: serving, Redis reachable where it is used, and the SQLite history accepting writes
/// where it is used. A load balancer sends new clients elsewhere while this says 503; existing
/// clients keep chatting locally (with Redis), or are refused messages (`unavailable`, SQLite).
async fn readyz(readiness: Readiness) -> Response {
    let (status, redis) = match &readiness.redis {
        None => (StatusCode::OK, "not used"),
        Some(health) if health.is_up() => (StatusCode::OK, "up"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "down"),
    };
    let (store, store_up) = match (&readiness.redis, &readiness.store) {
        (Some(_), _) => ("redis", None),
        (None, Some(health)) => ("sqlite", Some(health.is_up())),
        (None, None) => ("memory", None),
    };
    let status = match store_up {
        Some(false) => StatusCode::SERVICE_UNAVAILABLE,
        _ => status,
    };
    let ready = status == StatusCode::OK;
    let reconnects = readiness.redis.as_ref().map(|h| h.reconnects());
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "status": if ready { "ready" } else { "not ready" },
            "redis": redis,
            "redisReconnects": reconnects,
            "history": store,
            "historyWritable": store_up,
            "trustedProxies": {
                "source": readiness.trusted_proxies.source().as_str(),
                "networks": readiness
                    .trusted_proxies
                    .nets()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            },
        })),
    )
        .into_response()
}

/// Liveness: the process is up and serving HTTP.
async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({ "status": "ok" })),
    )
}
