//! Engine.IO behaviour of Node's server (engine.io 6.6) that no official suite checks:
//! `NODE.md` section 4. First what our engine does as Node does; then, in
//! the last section, where it deliberately differs, each test saying how: there the tests pin
//! down our behaviour, not Node's.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use banter_engine::Config;
use banter_engine::conformance::engine_config;
use common::{Msg, POLLING, TestServer, WEBSOCKET, polling, websocket};

/// 4.1: every refused request is a 400 with Node's JSON body for its situation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_carry_nodes_error_codes() -> Result<()> {
    let cases: &[(&str, &str, i64, &str)] = &[
        // Transport missing, unknown.
        ("GET", "EIO=4", 0, "Transport unknown"),
        ("GET", "EIO=4&transport=abc", 0, "Transport unknown"),
        ("POST", "EIO=4&transport=flash", 0, "Transport unknown"),
        // A sid that never existed, or cannot be one.
        (
            "GET",
            "EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA",
            1,
            "Session ID unknown",
        ),
        (
            "POST",
            "EIO=4&transport=polling&sid=nope",
            1,
            "Session ID unknown",
        ),
        // A handshake by anything but GET.
        ("POST", POLLING, 2, "Bad handshake method"),
        ("PUT", POLLING, 2, "Bad handshake method"),
        ("DELETE", POLLING, 2, "Bad handshake method"),
        // A protocol version other than 4, or none.
        (
            "GET",
            "transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            "GET",
            "EIO=3&transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            "GET",
            "EIO=abc&transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            "GET",
            "EIO=5&transport=polling",
            5,
            "Unsupported protocol version",
        ),
        // A WebSocket handshake that is not an upgrade request.
        ("GET", WEBSOCKET, 3, "Bad request"),
    ];
    let server = TestServer::engine().await?;
    for (method, query, code, message) in cases {
        let res = server.request(method, query, &[], b"").await?;
        let expected = format!(r#"{{"code":{code},"message":"{message}"}}"#);
        ensure!(
            res.status == 400 && res.text() == expected,
            "{method} ?{query}: expected 400 {expected}, got {res:?}"
        );
        ensure!(
            res.header("content-type") == Some("application/json"),
            "{method} ?{query}: content type {:?}",
            res.header("content-type")
        );
    }
    Ok(())
}

/// 4.1: a HEAD handshake is refused with the same status (and, being HEAD, no body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_handshake_is_refused() -> Result<()> {
    let server = TestServer::engine().await?;
    let res = server.request("HEAD", POLLING, &[], b"").await?;
    ensure!(res.status == 400 && res.body.is_empty(), "{res:?}");
    Ok(())
}

/// 4.1: a WebSocket handshake for an unknown sid, or with an unknown transport, is refused
/// before the 101. (Node's refusal body is the plain message; ours is the JSON error body.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshakes_for_unknown_sessions_are_refused() -> Result<()> {
    let server = TestServer::engine().await?;
    for (query, code) in [
        (websocket("AAAAAAAAAAAAAAAAAAAA"), 1),
        ("EIO=4&transport=abc".to_owned(), 0),
    ] {
        match common::Ws::connect(server.addr(), &server.ws_url(&query), None).await? {
            Ok(_) => anyhow::bail!("?{query}: the handshake was accepted"),
            Err(refusal) => ensure!(
                refusal.status == 400 && refusal.body.contains(&format!(r#""code":{code}"#)),
                "?{query}: {refusal:?}"
            ),
        }
    }
    Ok(())
}

/// Upgrades a new polling session to WebSocket (probe, then upgrade); returns its sid and the
/// WebSocket.
async fn upgraded(server: &TestServer) -> Result<(String, common::Ws)> {
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    ws.send_text("2probe").await?;
    ensure!(ws.next().await? == Msg::text("3probe"));
    ws.send_text("5").await?;
    Ok((sid, ws))
}

/// 4.1, 4.4 step 8: after the upgrade, polling GETs and POSTs are refused with code 3, and the
/// session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_after_an_upgrade_is_a_bad_request_and_the_session_lives() -> Result<()> {
    let server = TestServer::engine().await?;
    let (sid, mut ws) = upgraded(&server).await?;
    // The upgrade is done once the WebSocket echoes.
    ws.send_text("4ready").await?;
    ensure!(ws.next().await? == Msg::text("4ready"));
    for res in [
        server.get(&polling(&sid)).await?,
        server.post(&polling(&sid), "4hello").await?,
    ] {
        ensure!(res.status == 400 && res.error_code() == Some(3), "{res:?}");
    }
    ws.send_text("4still").await?;
    ensure!(ws.next().await? == Msg::text("4still"));
    Ok(())
}

/// 4.1: a polling request for a session that opened over WebSocket is refused with code 3;
/// the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_on_a_websocket_session_is_a_bad_request() -> Result<()> {
    let server = TestServer::engine().await?;
    let (mut ws, open) = server.open_ws().await?;
    let sid = open["sid"].as_str().unwrap_or_default();
    let res = server.get(&polling(sid)).await?;
    ensure!(res.status == 400 && res.error_code() == Some(3), "{res:?}");
    ws.send_text("4hello").await?;
    ensure!(ws.next().await? == Msg::text("4hello"));
    Ok(())
}

/// 4.1: a request on a known session with a protocol version other than 4 (or none) is refused
/// with code 3, over polling and as a WebSocket upgrade (before the 101); the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_another_protocol_version_on_a_session_is_a_bad_request() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    for eio in ["EIO=3&", "", "EIO=5&", "EIO=abc&"] {
        let query = format!("{eio}transport=polling&sid={sid}");
        for res in [
            server.get(&query).await?,
            server.post(&query, "4lost").await?,
        ] {
            ensure!(
                res.status == 400 && res.error_code() == Some(3),
                "?{query}: {res:?}"
            );
        }
        let query = format!("{eio}transport=websocket&sid={sid}");
        match common::Ws::connect(server.addr(), &server.ws_url(&query), None).await? {
            Ok(_) => anyhow::bail!("?{query}: the upgrade was accepted"),
            Err(refusal) => ensure!(
                refusal.status == 400 && refusal.body.contains(r#""code":3"#),
                "?{query}: {refusal:?}"
            ),
        }
    }
    // Nothing of the refused requests reached the session, and it still works.
    let res = server.post(&polling(&sid), "4hello").await?;
    ensure!(res.status == 200 && res.text() == "ok", "{res:?}");
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.text() == "4hello", "{res:?}");
    Ok(())
}

/// 4.3: a POST while another is still being received is refused with 400, and the session is
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_post_is_refused_and_closes_the_session() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    // The first POST announces 10 bytes and sends 6.
    let _first = server
        .start(
            "POST",
            &polling(&sid),
            &[("Content-Length", "10")],
            b"4hello",
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = server.post(&polling(&sid), "4again").await?;
    ensure!(second.status == 400, "{second:?}");
    server.assert_gone(&sid).await
}

/// 4.3: a POST body over the max payload is refused with 413 and closes the session, whether
/// its length is announced or found while reading; exactly the max payload is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_are_bounded_by_the_max_payload() -> Result<()> {
    const MAX: usize = 1_000;
    let server = TestServer::engine_with(Config {
        max_payload: MAX,
        ..engine_config()
    })
    .await?;
    let body = |len: usize| format!("4{}", "a".repeat(len - 1));

    // Exactly the max: accepted, and echoed.
    let sid = server.open_polling().await?;
    let res = server.post(&polling(&sid), &body(MAX)).await?;
    ensure!(res.status == 200 && res.text() == "ok", "{res:?}");
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.text() == body(MAX), "the echo of {MAX} bytes: {res:?}");

    // One byte more, announced by Content-Length.
    let sid = server.open_polling().await?;
    let res = server.post(&polling(&sid), &body(MAX + 1)).await?;
    ensure!(res.status == 413, "announced: {res:?}");
    server.assert_gone(&sid).await?;

    // One byte more, in chunks with no length announced.
    let sid = server.open_polling().await?;
    let over = body(MAX + 1);
    let mut chunked = Vec::new();
    for part in [&over[..600], &over[600..]] {
        chunked.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let res = server
        .request(
            "POST",
            &polling(&sid),
            &[("Transfer-Encoding", "chunked")],
            &chunked,
        )
        .await?;
    ensure!(res.status == 413, "chunked: {res:?}");
    server.assert_gone(&sid).await
}

/// 4.3: binary data travels base64-encoded in text payloads; a binary POST is refused with 400
/// and closes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_octet_stream_post_is_refused_and_closes_the_session() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let res = server
        .request(
            "POST",
            &polling(&sid),
            &[("Content-Type", "application/octet-stream")],
            &[1, 2, 3, 4],
        )
        .await?;
    ensure!(res.status == 400, "{res:?}");
    server.assert_gone(&sid).await
}

/// 4.3: a GET whose client went away before it was answered closes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_get_closes_the_session() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let get = server.start("GET", &polling(&sid), &[], b"").await?;
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(get);
    tokio::time::sleep(Duration::from_millis(30)).await;
    server.assert_gone(&sid).await
}

/// 4.3: answers carry Node's headers: a GET's payload is plain text and not cached, a POST is
/// answered `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_answers_carry_nodes_headers() -> Result<()> {
    let server = TestServer::engine().await?;
    let handshake = server.get(POLLING).await?;
    let sid = common::open_packet(&handshake.text())?["sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let post = server.post(&polling(&sid), "4hello").await?;
    let get = server.get(&polling(&sid)).await?;
    for res in [&handshake, &get] {
        ensure!(
            res.header("content-type") == Some("text/plain; charset=UTF-8")
                && res.header("cache-control") == Some("no-store"),
            "{res:?}: {:?}",
            res.headers
        );
    }
    ensure!(
        post.text() == "ok"
            && post.header("content-type") == Some("text/html")
            && post.header("cache-control") == Some("no-store"),
        "{post:?}: {:?}",
        post.headers
    );
    Ok(())
}

/// 4.5: a ping from the client is against protocol 4 and closes the session: over polling the
/// waiting GET gets a close packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ping_closes_a_polling_session() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let get = server.start("GET", &polling(&sid), &[], b"").await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.post(&polling(&sid), "2").await?;
    let res = get.response().await?;
    ensure!(res.status == 200 && res.text() == "1", "{res:?}");
    server.assert_gone(&sid).await
}

/// 4.5: a ping from the client closes a WebSocket session, `2probe` included (a WebSocket
/// session has nothing to probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ping_closes_a_websocket_session() -> Result<()> {
    let server = TestServer::engine().await?;
    for ping in ["2", "2probe"] {
        let (mut ws, _) = server.open_ws().await?;
        ws.send_text(ping).await?;
        ws.assert_closed_within(Duration::from_millis(250))
            .await
            .map_err(|e| e.context(ping))?;
    }
    Ok(())
}

/// 4.7: an unreadable text frame is a parse error and closes the session at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_websocket_packets_close_the_session() -> Result<()> {
    let server = TestServer::engine().await?;
    for packet in ["", "abc", "7", "x4hello"] {
        let (mut ws, _) = server.open_ws().await?;
        ws.send_text(packet).await?;
        ws.assert_closed_within(Duration::from_millis(250))
            .await
            .map_err(|e| e.context(format!("{packet:?}")))?;
    }
    Ok(())
}

/// 4.7: a WebSocket message over the max payload closes the connection with 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_over_the_max_payload_closes_with_1009() -> Result<()> {
    const MAX: usize = 1_000;
    let server = TestServer::engine_with(Config {
        max_payload: MAX,
        ..engine_config()
    })
    .await?;
    let (mut ws, _) = server.open_ws().await?;
    let exact = format!("4{}", "a".repeat(MAX - 1));
    ws.send_text(&exact).await?;
    ensure!(ws.next().await? == Msg::Text(exact), "exactly the max");
    ws.send_text(&format!("4{}", "a".repeat(MAX))).await?;
    let msg = ws.next().await?;
    ensure!(msg == Msg::Closed(Some(1009)), "{msg:?}");
    Ok(())
}

/// 4.5: a ping not answered in time closes the session, and a GET waiting then gets a close
/// packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_timeout_answers_the_waiting_get_with_a_close_packet() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let ping = server.get(&polling(&sid)).await?;
    ensure!(ping.text() == "2", "{ping:?}");
    let started = Instant::now();
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 200 && res.text() == "1", "{res:?}");
    // Held until the timeout, 200 ms after the ping.
    ensure!(
        started.elapsed() >= Duration::from_millis(100),
        "answered after {:?}",
        started.elapsed()
    );
    server.assert_gone(&sid).await
}

/// 4.5: while a pong is due, the first other packet from the client gives it a fresh timeout.
/// (A 400 ms timeout here, so that the margins are wide.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_while_a_pong_is_due_refreshes_the_timeout_once() -> Result<()> {
    let server = TestServer::engine_with(Config {
        ping_timeout: Duration::from_millis(400),
        ..engine_config()
    })
    .await?;
    let (mut ws, _) = server.open_ws().await?;
    ensure!(ws.next().await? == Msg::text("2"));
    let ping = Instant::now();
    // Activity 200 ms after the ping: the pong is now due 600 ms after it, not 400.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send_text("4first").await?;
    ensure!(ws.next().await? == Msg::text("4first"));
    tokio::time::sleep_until((ping + Duration::from_millis(500)).into()).await;
    ws.send_text("4second").await?;
    ensure!(
        ws.next().await? == Msg::text("4second"),
        "alive past the first timeout"
    );
    // The second packet did not refresh it again: closed at about 600 ms, not 900.
    ws.assert_closed_within(Duration::from_millis(250)).await?;
    ensure!(
        ping.elapsed() < Duration::from_millis(800),
        "closed {:?} after the ping",
        ping.elapsed()
    );
    Ok(())
}

/// 4.4 step 3: packets queued while the upgrade was under way (and no GET took them) go out on
/// the WebSocket right after `5`, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_queued_during_an_upgrade_go_out_on_the_websocket() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    ws.send_text("2probe").await?;
    ensure!(ws.next().await? == Msg::text("3probe"));
    // The echoes of these are queued: no GET is waiting.
    let res = server
        .post(&polling(&sid), "4buffered-1\x1e4buffered-2")
        .await?;
    ensure!(res.status == 200, "{res:?}");
    ws.send_text("5").await?;
    ensure!(ws.next().await? == Msg::text("4buffered-1"));
    ensure!(ws.next().await? == Msg::text("4buffered-2"));
    ws.send_text("4hello").await?;
    ensure!(ws.next().await? == Msg::text("4hello"));
    Ok(())
}

/// 4.4 step 6: `5` with no probe before it completes the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_packet_without_a_probe_upgrades() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    ws.send_text("5").await?;
    ws.send_text("4hello").await?;
    ensure!(ws.next().await? == Msg::text("4hello"));
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 400 && res.error_code() == Some(3), "{res:?}");
    Ok(())
}

/// 4.4 step 5: a first packet on the probe other than `2probe` or `5` ends the probe; polling
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_probe_is_closed_and_polling_goes_on() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    ws.send_text("4hello").await?;
    // With a close frame, as Node's server closes it.
    let msg = ws.next().await?;
    ensure!(msg == Msg::Closed(Some(1000)), "{msg:?}");
    server.assert_polling_echo(&sid, "4still polling").await
}

/// 4.2: a second WebSocket while an upgrade is under way is closed; the first one completes
/// the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_websocket_during_an_upgrade_is_closed() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    ws.send_text("2probe").await?;
    ensure!(ws.next().await? == Msg::text("3probe"));
    // Accepted and closed with a close frame, as Node's does: not a bare end of the stream
    // (which a client reports as an abnormal closure, 1006).
    let Ok(mut second) =
        common::Ws::connect(server.addr(), &server.ws_url(&websocket(&sid)), None).await?
    else {
        anyhow::bail!("the second WebSocket was refused");
    };
    let msg = second.next().await?;
    ensure!(msg == Msg::Closed(Some(1000)), "{msg:?}");
    ws.send_text("5").await?;
    ws.send_text("4hello").await?;
    ensure!(ws.next().await? == Msg::text("4hello"));
    Ok(())
}

/// RFC 6455 5.5.1: the server answers a client's close frame with its code, as Node's `ws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_code_is_echoed() -> Result<()> {
    let server = TestServer::engine().await?;
    for code in [1000, 1001, 4000] {
        let (mut ws, _) = server.open_ws().await?;
        ws.close_with(code).await?;
        let msg = ws.next().await?;
        ensure!(msg == Msg::Closed(Some(code)), "{code}: {msg:?}");
    }
    Ok(())
}

/// RFC 6455 4.2.1: a handshake whose `Sec-WebSocket-Key` is not 16 bytes in base64 is refused
/// with 400, as by Node's `ws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_with_a_bad_key_is_refused() -> Result<()> {
    let server = TestServer::engine().await?;
    let good = "dGhlIHNhbXBsZSBub25jZQ==";
    let long = "A".repeat(200);
    for key in [
        good,
        "",
        "x",
        "not base64 !!",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZ!==",
        long.as_str(),
    ] {
        let res = server
            .request(
                "GET",
                common::WEBSOCKET,
                &[
                    ("Connection", "Upgrade"),
                    ("Upgrade", "websocket"),
                    ("Sec-WebSocket-Version", "13"),
                    ("Sec-WebSocket-Key", key),
                ],
                b"",
            )
            .await?;
        if key == good {
            ensure!(res.status == 101, "{key:?}: {res:?}");
        } else {
            ensure!(
                res.status == 400 && res.error_code() == Some(3),
                "{key:?}: {res:?}"
            );
        }
    }
    Ok(())
}

/// RFC 6455 4.2.2: a client that offers subprotocols gets the first back, as from Node's `ws`
/// (a client that gets none fails the connection); an offer that is not a list of tokens is
/// refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_offered_subprotocol_is_chosen() -> Result<()> {
    let server = TestServer::engine().await?;
    for (offer, status, chosen) in [
        (None, 101, None),
        (Some("chat, superchat"), 101, Some("chat")),
        (Some("superchat"), 101, Some("superchat")),
        (Some("chat, two words"), 400, None),
        (Some(""), 400, None),
    ] {
        let mut headers = vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        if let Some(offer) = offer {
            headers.push(("Sec-WebSocket-Protocol", offer));
        }
        let res = server
            .request("GET", common::WEBSOCKET, &headers, b"")
            .await?;
        ensure!(res.status == status, "{offer:?}: {res:?}");
        ensure!(
            res.header("sec-websocket-protocol") == chosen,
            "{offer:?}: {res:?}"
        );
    }
    Ok(())
}

/// 4.4 step 7: a probe not completed within the upgrade timeout is closed; polling goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_not_completed_in_time_is_abandoned() -> Result<()> {
    let server = TestServer::engine_with(Config {
        upgrade_timeout: Duration::from_millis(200),
        ..common::quiet_config()
    })
    .await?;
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    let opened = Instant::now();
    ws.send_text("2probe").await?;
    ensure!(ws.next().await? == Msg::text("3probe"));
    let msg = ws.next_within(Duration::from_secs(1)).await?;
    ensure!(msg == Msg::Closed(Some(1000)), "{msg:?}");
    ensure!(
        opened.elapsed() >= Duration::from_millis(150),
        "closed after {:?}",
        opened.elapsed()
    );
    server.assert_polling_echo(&sid, "4still polling").await
}

// Deliberate differences from Node.

/// Differs from Node, which answers `200 ok` to a payload with an unreadable packet (after
/// handling the packets before it): ours refuses the whole payload with 400 and handles none of
/// it. Both end the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_with_an_unreadable_packet_is_refused_and_ends_the_session() -> Result<()> {
    let server = TestServer::engine().await?;
    for payload in [
        "abc",
        "4ok\x1exyz\x1e4after",
        "4a\x1e",
        "\x1e",
        "b!!!not base64",
    ] {
        let sid = server.open_polling().await?;
        let res = server.post(&polling(&sid), payload).await?;
        ensure!(
            res.status == 400 && res.error_code() == Some(3),
            "{payload:?}: {res:?}"
        );
        server.assert_gone(&sid).await?;
    }
    Ok(())
}

/// Differs from Node, which reads an empty POST body as one invalid packet and closes the
/// session: ours takes it as no packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_post_is_accepted_and_ignored() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let res = server.post(&polling(&sid), "").await?;
    ensure!(res.status == 200 && res.text() == "ok", "{res:?}");
    server.assert_polling_echo(&sid, "4hello").await
}

/// Differs from Node, which ignores a close packet over WebSocket (the session then ends by
/// ping timeout): ours ends the session at once, well before the first ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_packet_over_websocket_ends_the_session_at_once() -> Result<()> {
    let server = TestServer::engine().await?;
    let (mut ws, open) = server.open_ws().await?;
    let sid = open["sid"].as_str().unwrap_or_default().to_owned();
    let sent = Instant::now();
    ws.send_text("1").await?;
    // With the WebSocket's closing handshake (RFC 6455 7.1.2), not a bare end of the stream.
    let msg = ws.next_within(Duration::from_millis(250)).await?;
    ensure!(msg == Msg::Closed(Some(1000)), "{msg:?}");
    ensure!(
        sent.elapsed() < Duration::from_millis(250),
        "{:?}",
        sent.elapsed()
    );
    server.assert_gone(&sid).await
}

/// Differs from Node, whose second GET gets a 400 with an empty body: ours carries the JSON
/// error body (code 3). As in Node, the first GET gets a close packet and the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_get_is_refused_with_the_json_error_body() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let first = server.start("GET", &polling(&sid), &[], b"").await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = server.get(&polling(&sid)).await?;
    ensure!(
        second.status == 400 && second.text() == r#"{"code":3,"message":"Bad request"}"#,
        "{second:?}"
    );
    let first = first.response().await?;
    ensure!(first.text() == "1", "{first:?}");
    server.assert_gone(&sid).await
}

/// Differs from Node, which completes the 101 and then writes its refusal into the upgraded
/// socket: ours refuses a WebSocket handshake with a bad or missing EIO with a 400 before the
/// 101, with the JSON error body (code 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_with_a_bad_eio_is_refused_before_the_101() -> Result<()> {
    let server = TestServer::engine().await?;
    for query in [
        "transport=websocket",
        "EIO=abc&transport=websocket",
        "EIO=3&transport=websocket",
    ] {
        match common::Ws::connect(server.addr(), &server.ws_url(query), None).await? {
            Ok(_) => anyhow::bail!("?{query}: the handshake was accepted"),
            Err(refusal) => ensure!(
                refusal.status == 400
                    && refusal.body == r#"{"code":5,"message":"Unsupported protocol version"}"#,
                "?{query}: {refusal:?}"
            ),
        }
    }
    Ok(())
}

/// Differs from Node, which removes a session as soon as the client POSTs a close packet: ours
/// keeps it for a moment (500 ms) so that a GET already on its way gets the noop, as it would
/// have had it been waiting (this makes E20 pass whichever of its two requests comes first).
/// Afterwards the sid is unknown, as in Node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_just_after_a_posted_close_packet_gets_the_noop() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let res = server.post(&polling(&sid), "1").await?;
    ensure!(res.status == 200 && res.text() == "ok", "{res:?}");
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 200 && res.text() == "6", "{res:?}");
    server.assert_gone(&sid).await?;

    // With no GET coming, the session is gone once the moment has passed.
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "1").await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.assert_gone(&sid).await
}

/// Differs from Node, which answers a polling request with a method other than GET or POST on
/// a known session with a 500 and an empty body: ours refuses it with 400 code 3. As in Node,
/// the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_method_on_a_session_is_a_bad_request() -> Result<()> {
    let server = TestServer::engine().await?;
    let sid = server.open_polling().await?;
    let res = server.request("PUT", &polling(&sid), &[], b"4x").await?;
    ensure!(res.status == 400 && res.error_code() == Some(3), "{res:?}");
    server.post(&polling(&sid), "4hello").await?;
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.text() == "4hello", "{res:?}");
    Ok(())
}
