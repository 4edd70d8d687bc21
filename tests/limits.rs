//! Per-address bounds on connections, and the forwarding headers of trusted proxies, over real
//! HTTP against a real server.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{BanterProcess, TestServer};
use serde_json::Value;

/// One Engine.IO polling handshake, optionally as if forwarded by a proxy.
async fn handshake(
    http: &reqwest::Client,
    server: &TestServer,
    forwarded_for: Option<&str>,
) -> Result<reqwest::Response> {
    let mut req = http.get(format!("{}/socket.io/?EIO=4&transport=polling", server.url));
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    Ok(req.send().await?)
}

/// The session id of a successful handshake.
async fn session(res: reqwest::Response) -> Result<String> {
    anyhow::ensure!(res.status() == 200, "handshake: {}", res.status());
    let body = res.text().await?;
    let open: Value = serde_json::from_str(body.strip_prefix('0').context("open packet")?)?;
    Ok(open["sid"].as_str().context("sid")?.to_owned())
}

/// Sends the Socket.IO connect for a polling session and returns the server's answer to it
/// (`40{...}` or `44{...}`), skipping the Engine.IO ping the server sends first.
async fn socket_connect(http: &reqwest::Client, server: &TestServer, sid: &str) -> Result<String> {
    let endpoint = format!(
        "{}/socket.io/?EIO=4&transport=polling&sid={sid}",
        server.url
    );
    let posted = http.post(&endpoint).body("40").send().await?.status();
    anyhow::ensure!(posted == 200, "connect POST: {posted}");
    for _ in 0..3 {
        let body = http.get(&endpoint).send().await?.text().await?;
        if let Some(answer) = body.split('\x1e').find(|p| p.starts_with('4')) {
            return Ok(answer.to_owned());
        }
    }
    bail!("no answer to the Socket.IO connect")
}

async fn metrics(http: &reqwest::Client, server: &TestServer) -> Result<String> {
    Ok(http
        .get(format!("{}/metrics", server.url))
        .send()
        .await?
        .text()
        .await?)
}

#[tokio::test]
async fn new_connections_per_address_are_rate_limited_with_429() -> Result<()> {
    let server = TestServer::with_args(&[
        "--connect-rate-per-ip",
        "0.5",
        "--connect-burst-per-ip",
        "3",
    ])
    .await?;
    let http = reqwest::Client::new();
    // The page and the client bundle under /socket.io/ are not sessions and are not counted.
    for _ in 0..5 {
        let res = http
            .get(format!("{}/socket.io/socket.io.min.js", server.url))
            .send()
            .await?;
        assert_eq!(res.status(), 200);
    }
    let mut sids = Vec::new();
    for _ in 0..3 {
        sids.push(session(handshake(&http, &server, None).await?).await?);
    }
    let refused = handshake(&http, &server, None).await?;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=3).contains(&retry_after), "retry-after {retry_after}");
    let text = refused.text().await?;
    assert!(text.contains("too many new connections"), "{text}");
    // Sessions already open go on: requests that carry a sid are not handshakes.
    let answer = socket_connect(&http, &server, &sids[0]).await?;
    assert!(answer.starts_with("40{"), "{answer}");
    let m = metrics(&http, &server).await?;
    assert!(
        m.contains("banter_connections_refused_total{reason=\"rate\"} 1"),
        "{m}"
    );
    server.shutdown().await
}

#[tokio::test]
async fn open_connections_per_address_are_capped() -> Result<()> {
    let server = TestServer::with_args(&[
        "--connect-rate-per-ip",
        "0",
        "--max-connections-per-ip",
        "2",
    ])
    .await?;
    let http = reqwest::Client::new();
    // Three sessions are started before any connects, so the third passes the handshake and is
    // refused by the Socket.IO connect instead, with a reason the client can show.
    let mut sids = Vec::new();
    for _ in 0..3 {
        sids.push(session(handshake(&http, &server, None).await?).await?);
    }
    for sid in &sids[..2] {
        let answer = socket_connect(&http, &server, sid).await?;
        assert!(answer.starts_with("40{"), "{answer}");
    }
    let answer = socket_connect(&http, &server, &sids[2]).await?;
    assert!(
        answer.starts_with("44{") && answer.contains("too many open connections"),
        "{answer}"
    );
    // With two open, a new session is refused at the handshake already.
    let refused = handshake(&http, &server, None).await?;
    assert_eq!(refused.status(), 429);
    assert!(refused.text().await?.contains("too many open connections"));

    // When one closes, its place is free again.
    let endpoint = format!(
        "{}/socket.io/?EIO=4&transport=polling&sid={}",
        server.url, sids[0]
    );
    http.post(&endpoint).body("1").send().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let res = handshake(&http, &server, None).await?;
        if res.status() == 200 {
            let sid = session(res).await?;
            let answer = socket_connect(&http, &server, &sid).await?;
            assert!(answer.starts_with("40{"), "{answer}");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the closed connection's place was not freed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = metrics(&http, &server).await?;
    let refused_open = m
        .lines()
        .find_map(|l| l.strip_prefix("banter_connections_refused_total{reason=\"open\"} "))
        .context("no open refusals metric")?
        .parse::<u64>()?;
    assert!(refused_open >= 2, "{m}");
    server.shutdown().await
}

#[tokio::test]
async fn forwarded_for_names_the_client_only_behind_trusted_proxies() -> Result<()> {
    let strict = [
        "--connect-rate-per-ip",
        "0.001",
        "--connect-burst-per-ip",
        "1",
    ];
    let http = reqwest::Client::new();

    let trusted =
        TestServer::with_args(&[&strict[..], &["--trusted-proxies", "127.0.0.1"]].concat()).await?;
    // Two clients behind the proxy each have their own budget.
    assert_eq!(
        handshake(&http, &trusted, Some("1.1.1.1")).await?.status(),
        200
    );
    assert_eq!(
        handshake(&http, &trusted, Some("2.2.2.2")).await?.status(),
        200
    );
    assert_eq!(
        handshake(&http, &trusted, Some("1.1.1.1")).await?.status(),
        429
    );
    // A client that writes its own X-Forwarded-For: the proxy appends the real address, and
    // that is the one counted.
    assert_eq!(
        handshake(&http, &trusted, Some("1.1.1.1, 3.3.3.3"))
            .await?
            .status(),
        200
    );
    trusted.shutdown().await?;

    // Without trusted proxies the header is the client's own word and is ignored: every
    // request here comes from 127.0.0.1.
    let untrusted = TestServer::with_args(&strict).await?;
    assert_eq!(
        handshake(&http, &untrusted, Some("1.1.1.1"))
            .await?
            .status(),
        200
    );
    assert_eq!(
        handshake(&http, &untrusted, Some("2.2.2.2"))
            .await?
            .status(),
        429
    );
    untrusted.shutdown().await
}

/// `/readyz`'s word on the trusted proxies: where the list came from, and the list.
async fn trusted_proxies(
    http: &reqwest::Client,
    server: &TestServer,
) -> Result<(String, Vec<String>)> {
    let ready: Value = http
        .get(format!("{}/readyz", server.url))
        .send()
        .await?
        .json()
        .await?;
    let trusted = &ready["trustedProxies"];
    let source = trusted["source"].as_str().context("source")?.to_owned();
    let networks = trusted["networks"]
        .as_array()
        .context("networks")?
        .iter()
        .map(|n| n.as_str().map(str::to_owned).context("a network"))
        .collect::<Result<_>>()?;
    Ok((source, networks))
}

/// One counter's value in the Prometheus text.
fn counter(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

const UNTRUSTED_WARNING: &str = "carry X-Forwarded-For, but 127.0.0.1 is not a trusted proxy";

#[tokio::test]
async fn an_untrusted_proxy_is_reported_once_with_the_setting_to_change() -> Result<()> {
    let banter = BanterProcess::start_logged(&[], &[]).await?;
    let server = banter.server();
    let http = reqwest::Client::new();
    banter
        .wait_for_log("the start-up line on trusted proxies", |log| {
            log.contains("trusting no proxy (BANTER_TRUSTED_PROXIES is unset)")
        })
        .await?;
    assert_eq!(
        trusted_proxies(&http, &server).await?,
        ("unset".to_owned(), vec![])
    );
    for client in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        session(handshake(&http, &server, Some(client)).await?).await?;
        let page = http.get(&server.url).header("x-forwarded-for", client);
        assert_eq!(page.send().await?.status(), 200);
    }
    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(
        counter(&metrics, "banter_untrusted_forwarded_total"),
        Some(6)
    );
    let log = banter
        .wait_for_log("the warning", |log| log.contains(UNTRUSTED_WARNING))
        .await?;
    assert!(
        log.contains("set BANTER_TRUSTED_PROXIES=127.0.0.1"),
        "{log}"
    );
    assert_eq!(log.matches(UNTRUSTED_WARNING).count(), 1, "once: {log}");
    Ok(())
}

#[tokio::test]
async fn on_app_service_the_front_end_is_trusted_unless_the_setting_says_otherwise() -> Result<()> {
    let app_service = [
        ("WEBSITE_SITE_NAME", "banter-chat"),
        ("WEBSITE_INSTANCE_ID", "0a1b2c3d4e"),
    ];
    let strict = [
        "--connect-rate-per-ip",
        "0.001",
        "--connect-burst-per-ip",
        "1",
    ];
    let http = reqwest::Client::new();

    // Not set: the front end's ranges (loopback among them) are trusted, and each client behind
    // it has its own budget.
    let banter = BanterProcess::start_logged(&strict, &app_service).await?;
    let server = banter.server();
    let (source, networks) = trusted_proxies(&http, &server).await?;
    assert_eq!(source, "azure-app-service-default");
    for net in ["10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8"] {
        assert!(networks.iter().any(|n| n == net), "{net} in {networks:?}");
    }
    let statuses = [
        handshake(&http, &server, Some("1.1.1.1:50001"))
            .await?
            .status(),
        handshake(&http, &server, Some("2.2.2.2:50002"))
            .await?
            .status(),
        handshake(&http, &server, Some("1.1.1.1:50003"))
            .await?
            .status(),
    ];
    assert_eq!(statuses, [200, 200, 429], "per forwarded client");
    let log = banter
        .wait_for_log("the App Service line", |log| {
            log.contains("on Azure App Service (app banter-chat)")
        })
        .await?;
    assert!(!log.contains("carry X-Forwarded-For"), "{log}");
    drop(banter);

    // Set, to nothing or to something else: the setting wins. (An empty variable is what
    // `az webapp config appsettings set ... BANTER_TRUSTED_PROXIES=` gives.)
    for (value, expected) in [
        ("", vec![]),
        ("none", vec![]),
        ("10.9.9.9", vec!["10.9.9.9"]),
    ] {
        let env = [&app_service[..], &[("BANTER_TRUSTED_PROXIES", value)]].concat();
        let banter = BanterProcess::start_logged(&strict, &env).await?;
        let server = banter.server();
        assert_eq!(
            trusted_proxies(&http, &server).await?,
            (
                "setting".to_owned(),
                expected.iter().map(|s| (*s).to_owned()).collect()
            ),
            "BANTER_TRUSTED_PROXIES={value:?}"
        );
        // Every request now counts as 127.0.0.1, whatever it says.
        assert_eq!(
            handshake(&http, &server, Some("1.1.1.1")).await?.status(),
            200
        );
        assert_eq!(
            handshake(&http, &server, Some("2.2.2.2")).await?.status(),
            429,
            "BANTER_TRUSTED_PROXIES={value:?}"
        );
        banter
            .wait_for_log("the warning", |log| log.contains(UNTRUSTED_WARNING))
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn https_behind_a_trusted_proxy_gets_strict_transport_security() -> Result<()> {
    let http = reqwest::Client::new();
    let hsts = |res: &reqwest::Response| res.headers().contains_key("strict-transport-security");

    let trusted = TestServer::with_args(&["--trusted-proxies", "127.0.0.0/8"]).await?;
    let res = http
        .get(&trusted.url)
        .header("x-forwarded-proto", "https")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let res = http.get(&trusted.url).send().await?;
    assert!(!hsts(&res), "plain HTTP: no HSTS");
    trusted.shutdown().await?;

    let untrusted = TestServer::start().await?;
    let res = http
        .get(&untrusted.url)
        .header("x-forwarded-proto", "https")
        .send()
        .await?;
    assert!(!hsts(&res), "X-Forwarded-Proto from anyone is not believed");
    untrusted.shutdown().await
}

#[tokio::test]
async fn the_engine_path_without_a_trailing_slash_is_guarded_too() -> Result<()> {
    let server = TestServer::with_args(&[
        "--connect-rate-per-ip",
        "0.001",
        "--connect-burst-per-ip",
        "2",
    ])
    .await?;
    let http = reqwest::Client::new();
    let bare = format!("{}/socket.io?EIO=4&transport=polling", server.url);
    let foreign = http
        .get(&bare)
        .header("origin", "https://evil.example")
        .send()
        .await?;
    // (A refused attempt still takes its token: the burst of 2 is one refused, one served.)
    assert_eq!(foreign.status(), 403, "the origin check covers /socket.io");
    assert_eq!(http.get(&bare).send().await?.status(), 200);
    assert_eq!(
        http.get(&bare).send().await?.status(),
        429,
        "the per-address rate covers /socket.io"
    );
    server.shutdown().await
}

#[tokio::test]
async fn tcp_connections_per_peer_address_are_capped() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let server = TestServer::with_args(&["--max-connections-per-ip", "3"]).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(server.addr).await?);
    }
    // The fourth is closed at once, before it sends anything.
    let mut fourth = tokio::net::TcpStream::connect(server.addr).await?;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection was not closed: {read:?}"
    );
    // When one closes, its place is free again.
    held.pop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let res = reqwest::Client::new()
            .get(format!("{}/healthz", server.url))
            .send()
            .await;
        if res.is_ok_and(|r| r.status() == 200) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no connection accepted after one closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    server.shutdown().await
}

#[tokio::test]
async fn a_request_body_that_trickles_is_cut_off() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::with_args(&["--ping-timeout-ms", "500"]).await?;
    let http = reqwest::Client::new();
    let sid = session(handshake(&http, &server, None).await?).await?;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await?;
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: text/plain\r\nContent-Length: 900000\r\n\r\n4"
    );
    slow.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is still open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    server.shutdown().await
}
