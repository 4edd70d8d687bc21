//! Plain HTTP: the page, the official client bundle, health, and graceful shutdown.

mod common;

use anyhow::Result;
use common::{BanterProcess, RawPolling, TestClient, TestServer};
use rust_socketio::TransportType;
use serde_json::{Value, json};

#[tokio::test]
async fn serves_the_page_the_client_bundle_and_health() -> Result<()> {
    let server = TestServer::start().await?;
    let http = reqwest::Client::new();
    let dist =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/socket.io-client/dist");
    for file in [
        "socket.io.js",
        "socket.io.min.js",
        "socket.io.esm.min.js",
        "socket.io.js.map",
        "socket.io.min.js.map",
        "socket.io.esm.min.js.map",
    ] {
        let res = http
            .get(format!("{}/socket.io/{file}", server.url))
            .send()
            .await?;
        assert_eq!(res.status(), 200, "{file}");
        let ct = res.headers()["content-type"].to_str()?.to_owned();
        let expected = if file.ends_with(".map") {
            "application/json"
        } else {
            "application/javascript"
        };
        assert!(ct.starts_with(expected), "{file}: {ct}");
        let body = res.bytes().await?;
        assert_eq!(
            body.as_ref(),
            std::fs::read(dist.join(file))?.as_slice(),
            "{file}"
        );
    }
    let page = http.get(&server.url).send().await?;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()?
            .starts_with("text/html")
    );
    assert!(page.text().await?.contains("<html"));
    let health = http.get(format!("{}/healthz", server.url)).send().await?;
    assert_eq!(health.status(), 200);
    let missing = http.get(format!("{}/nope", server.url)).send().await?;
    assert_eq!(missing.status(), 404);
    Ok(())
}

#[tokio::test]
async fn the_transports_setting_is_enforced() -> Result<()> {
    let server = TestServer::with_args(&["--transports", "websocket"]).await?;
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/socket.io/?EIO=4&transport=polling", server.url))
        .send()
        .await?;
    assert_eq!(res.status(), 400);
    let mut ws = TestClient::connect(&server, TransportType::Websocket).await?;
    ws.join("alice").await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_sockets_and_returns() -> Result<()> {
    let server = TestServer::start().await?;
    let addr = server.addr;
    let mut ws = TestClient::connect(&server, TransportType::Websocket).await?;
    ws.join("alice").await?;
    let polling = RawPolling::connect(&server, None).await?;
    polling.emit("add user", serde_json::json!("bob")).await?;
    ws.expect("user joined").await?;
    // Drain what is queued (login), then hold a long-poll open across the shutdown.
    polling.poll().await?;
    let pending = tokio::spawn(async move { polling.poll().await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    tokio::time::timeout(std::time::Duration::from_secs(5), server.shutdown()).await??;
    // The long-poll was answered with an Engine.IO close packet ("1"), which makes a client
    // reconnect (unlike a Socket.IO disconnect, which would make it give up).
    let body = pending.await??;
    assert!(body.split('\u{1e}').any(|p| p == "1"), "{body:?}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}

#[tokio::test]
async fn the_page_carries_security_headers() -> Result<()> {
    let server = TestServer::start().await?;
    let res = reqwest::get(&server.url).await?;
    let h = res.headers();
    let csp = h["content-security-policy"].to_str()?;
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    Ok(())
}

#[tokio::test]
async fn foreign_origins_cannot_open_socket_io_connections() -> Result<()> {
    let server = TestServer::with_args(&["--allowed-origins", "https://app.example"]).await?;
    let http = reqwest::Client::new();
    let handshake = format!("{}/socket.io/?EIO=4&transport=polling", server.url);
    let status = |origin: Option<String>| {
        let mut req = http.get(&handshake);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        async move { Ok::<_, anyhow::Error>(req.send().await?.status()) }
    };
    // Not from a browser page, the server's own page, and a listed origin: allowed.
    assert_eq!(status(None).await?, 200);
    assert_eq!(status(Some(server.url.clone())).await?, 200);
    assert_eq!(status(Some("https://app.example".into())).await?, 200);
    // Another site's page: refused, over polling and over WebSocket.
    assert_eq!(status(Some("https://evil.example".into())).await?, 403);
    let refused = http
        .get(&handshake)
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert_eq!(
        refused.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert_eq!(
        refused.json::<Value>().await?,
        json!({"code": 4, "message": "origin not allowed"})
    );
    let ws = http
        .get(format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            server.url
        ))
        .header("origin", "https://evil.example")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await?;
    assert_eq!(ws.status(), 403);
    Ok(())
}

/// Behind a proxy that rewrites `Host`, Banter's own page is refused like a foreign one; the log
/// then says so, once, and names the setting. A foreign page with no proxy in sight gets the
/// refusal alone: there is nothing to advise.
#[tokio::test]
async fn a_page_refused_behind_a_host_rewriting_proxy_is_explained_once() -> Result<()> {
    let banter = BanterProcess::start_logged(&[], &[]).await?;
    let http = reqwest::Client::new();
    let handshake = format!("{}/socket.io/?EIO=4&transport=polling", banter.url);
    let foreign = http
        .get(&handshake)
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert_eq!(foreign.status(), 403);
    for _ in 0..3 {
        let rewritten = http
            .get(&handshake)
            .header("origin", "https://chat.example")
            .header("x-forwarded-host", "chat.example")
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await?;
        assert_eq!(rewritten.status(), 403, "advice, not a change of the check");
    }
    let advice = "set BANTER_ALLOWED_ORIGINS=https://chat.example";
    let log = banter
        .wait_for_log("the advice", |log| log.contains(advice))
        .await?;
    assert_eq!(log.matches(advice).count(), 1, "once per origin: {log}");
    assert!(log.contains("a proxy rewrote Host"), "{log}");
    assert!(
        !log.contains("BANTER_ALLOWED_ORIGINS=https://evil.example"),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn metrics_count_connections_joins_messages_and_refusals() -> Result<()> {
    let server = TestServer::start().await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    a.join("alice").await?;
    a.call("new message", serde_json::json!("counted")).await?;
    a.call("new message", serde_json::json!("")).await?;
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    // Other tests in this process count too: check presence and lower bounds.
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        value("banter_connections{transport=\"websocket\"}") >= 1.0,
        "{text}"
    );
    assert!(value("banter_joins_total") >= 1.0);
    assert!(value("banter_messages_accepted_total") >= 1.0);
    assert!(value("banter_refusals_total{code=\"empty\"}") >= 1.0);
    assert!(value("banter_message_seconds_count") >= 1.0);
    assert!(text.contains("# TYPE banter_message_seconds histogram"));
    Ok(())
}

#[tokio::test]
async fn connections_that_send_no_request_head_are_closed() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::with_args(&["--header-timeout-ms", "300"]).await?;
    let silent = tokio::net::TcpStream::connect(server.addr).await?;
    let mut partial = tokio::net::TcpStream::connect(server.addr).await?;
    partial
        .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        .await?;
    for (label, mut stream) in [("silent", silent), ("half a head", partial)] {
        let mut buf = Vec::new();
        // The server closes the connection (perhaps after a 408): the read ends. Without the
        // timeout it would wait for ever; 10 s is only this test's own bound.
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut buf),
        )
        .await;
        assert!(read.is_ok(), "{label}: still open");
    }
    // A well-behaved client is unaffected, also on a kept-alive connection used slowly.
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let res = http.get(format!("{}/healthz", server.url)).send().await?;
        assert_eq!(res.status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    server.shutdown().await
}
