//! HTTP-level protections: security headers on every response, and the origin check that keeps
//! other sites' pages from opening Socket.IO connections with a visitor's browser (cross-site
//! WebSocket hijacking).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The page's Content-Security-Policy: only our own scripts, styles and connections; no inline
/// code, no plugins, no framing. The page is written to pass it (no inline script or style).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the security headers to every response.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    response
}

/// Which page origins may open Socket.IO connections.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    /// Exact origins (`https://chat.example.com`), or `*` for any.
    pub list: Arc<Vec<String>>,
}

impl AllowedOrigins {
    /// Same-origin requests are always allowed; others only when listed. A request without an
    /// `Origin` header is not from a browser page (browsers send it on every WebSocket and
    /// cross-origin request), so there is no visitor to protect.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self
            .list
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }
}

/// Bounds the time a request with a body (a long-polling POST) may take, body included. The
/// header timeout stops once the head is in, and the engine reads a POST's body without a
/// deadline: a client announcing a large body and sending a byte now and then would hold the
/// connection for as long as it liked. (Long-poll GETs wait for data by design; they have no
/// body and are bounded by the heartbeat.)
pub async fn bound_request_time(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == axum::http::Method::GET {
        return next.run(request).await;
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::debug!("a request body took too long; closing");
            let mut response =
                (StatusCode::REQUEST_TIMEOUT, "request body too slow\n").into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// Whether a request is for the Engine.IO endpoint. The engine answers `/socket.io` as well as
/// everything under `/socket.io/` (socket.io-client with `addTrailingSlash: false` uses the
/// former), so every check on that endpoint must cover both.
pub fn is_engine_path(path: &str) -> bool {
    path == "/socket.io" || path.starts_with("/socket.io/")
}

/// Refuses Socket.IO requests from pages of origins that are not allowed: 403, with Engine.IO's
/// error body (code 4, with the reason as its message) as Node's server gives it.
pub async fn check_origin(
    axum::extract::State(allowed): axum::extract::State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    if is_engine_path(request.uri().path()) {
        let headers = request.headers();
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !allowed.allows(origin, host) {
            tracing::info!(origin, "refused a Socket.IO request from a foreign origin");
            if let Some(origin) = origin {
                crate::http::advice::refused_origin(origin, host, headers);
            }
            // Node's server refuses a request that `allowRequest` denies in the same shape.
            return (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"code":4,"message":"origin not allowed"}"#,
            )
                .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_listed_or_no_origin() {
        let none = AllowedOrigins::default();
        assert!(none.allows(None, Some("chat.example:3000")));
        assert!(none.allows(Some("http://chat.example:3000"), Some("chat.example:3000")));
        assert!(none.allows(Some("https://Chat.Example"), Some("chat.example")));
        assert!(!none.allows(Some("https://evil.example"), Some("chat.example")));
        assert!(!none.allows(Some("null"), Some("chat.example")));
        assert!(!none.allows(Some("http://chat.example:3000"), None));
        let listed = AllowedOrigins {
            list: Arc::new(vec!["https://app.example".into()]),
        };
        assert!(listed.allows(Some("https://app.example"), Some("api.example")));
        assert!(!listed.allows(Some("https://other.example"), Some("api.example")));
        let any = AllowedOrigins {
            list: Arc::new(vec!["*".into()]),
        };
        assert!(any.allows(Some("https://other.example"), Some("api.example")));
    }

    #[test]
    fn the_engine_path_with_and_without_the_trailing_slash() {
        assert!(is_engine_path("/socket.io"));
        assert!(is_engine_path("/socket.io/"));
        assert!(is_engine_path("/socket.io/socket.io.js"));
        assert!(!is_engine_path("/socket.iox"));
        assert!(!is_engine_path("/"));
    }
}
