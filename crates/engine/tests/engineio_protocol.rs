//! Every case of the official Engine.IO conformance suite (socketio/engine.io-protocol,
//! `test-suite/`), E1–E24 in `NODE.md` section 2, and the 16 cases of the
//! Socket.IO suite's "Engine.IO protocol" group, S-E1..S-E16 (section 3.1), which are the same
//! cases at `/socket.io/`, some of them cut short.
//!
//! Each case is written once, against a [`TestServer`], and run against the Engine.IO echo
//! (`eNN_…` tests) and, where the Socket.IO suite has it, against the Socket.IO server
//! (`seNN_…` tests). Timing cases run with the suites' own settings (ping every 300 ms, 200 ms
//! timeout).

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::{Msg, POLLING, TestServer, keys, open_packet, polling, websocket};
use serde_json::{Value, json};

/// Runs a case against the Engine.IO echo and, if named, against the Socket.IO server too.
macro_rules! cases {
    ($($case:ident => $engine:ident $(, $socketio:ident)?;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $engine() -> Result<()> {
            $case(&TestServer::engine().await?).await
        }
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $socketio() -> Result<()> {
                $case(&TestServer::socketio().await?).await
            }
        )?
    )*};
}

cases! {
    polling_handshake_opens_a_session => e01_polling_handshake_opens_a_session, se01_polling_handshake_opens_a_session;
    polling_handshake_fails_with_an_invalid_eio => e02_polling_handshake_fails_with_an_invalid_eio, se02_polling_handshake_fails_with_an_invalid_eio;
    polling_handshake_fails_with_an_invalid_transport => e03_polling_handshake_fails_with_an_invalid_transport, se03_polling_handshake_fails_with_an_invalid_transport;
    polling_handshake_fails_with_an_invalid_method => e04_polling_handshake_fails_with_an_invalid_method, se04_polling_handshake_fails_with_an_invalid_method;
    websocket_handshake_opens_a_session => e05_websocket_handshake_opens_a_session, se05_websocket_handshake_opens_a_session;
    websocket_handshake_fails_with_an_invalid_eio => e06_websocket_handshake_fails_with_an_invalid_eio, se06_websocket_handshake_fails_with_an_invalid_eio;
    websocket_handshake_fails_with_an_invalid_transport => e07_websocket_handshake_fails_with_an_invalid_transport, se07_websocket_handshake_fails_with_an_invalid_transport;
    polling_echoes_one_text_packet => e08_polling_echoes_one_text_packet;
    polling_echoes_several_text_packets => e09_polling_echoes_several_text_packets;
    polling_echoes_text_and_binary_packets => e10_polling_echoes_text_and_binary_packets;
    polling_closes_the_session_upon_an_invalid_packet => e11_polling_closes_the_session_upon_an_invalid_packet;
    polling_closes_the_session_upon_duplicate_polls => e12_polling_closes_the_session_upon_duplicate_polls;
    websocket_echoes_a_text_packet => e13_websocket_echoes_a_text_packet;
    websocket_echoes_a_binary_packet => e14_websocket_echoes_a_binary_packet;
    websocket_closes_the_session_upon_an_invalid_packet => e15_websocket_closes_the_session_upon_an_invalid_packet;
    polling_pings_and_takes_pongs => e16_polling_pings_and_takes_pongs, se08_polling_pings_and_takes_pongs;
    polling_closes_the_session_upon_ping_timeout => e17_polling_closes_the_session_upon_ping_timeout, se09_polling_closes_the_session_upon_ping_timeout;
    websocket_pings_and_takes_pongs => e18_websocket_pings_and_takes_pongs, se10_websocket_pings_and_takes_pongs;
    websocket_closes_the_session_upon_ping_timeout => e19_websocket_closes_the_session_upon_ping_timeout, se11_websocket_closes_the_session_upon_ping_timeout;
    polling_client_closes_the_session => e20_polling_client_closes_the_session, se12_polling_client_closes_the_session;
    websocket_client_closes_the_session => e21_websocket_client_closes_the_session, se13_websocket_client_closes_the_session;
    upgrade_from_polling_to_websocket => e22_upgrade_from_polling_to_websocket;
    upgrade_probe_and_upgrade_packet => se14_upgrade_probe_and_upgrade_packet;
    polling_after_upgrade_is_refused => e23_polling_after_upgrade_is_refused;
    polling_after_upgrade_is_refused_short => se15_polling_after_upgrade_is_refused;
    second_websocket_after_upgrade_is_closed => e24_second_websocket_after_upgrade_is_closed;
    second_websocket_after_upgrade_is_closed_short => se16_second_websocket_after_upgrade_is_closed;
}

/// The open packet's JSON has exactly the five keys, with the suite's values.
fn check_open(open: &Value, upgrades: Value) -> Result<()> {
    ensure!(
        keys(open)
            == [
                "maxPayload",
                "pingInterval",
                "pingTimeout",
                "sid",
                "upgrades"
            ],
        "open packet keys: {open}"
    );
    ensure!(open["sid"].is_string(), "sid: {open}");
    ensure!(open["upgrades"] == upgrades, "upgrades: {open}");
    ensure!(open["pingInterval"] == 300, "pingInterval: {open}");
    ensure!(open["pingTimeout"] == 200, "pingTimeout: {open}");
    ensure!(open["maxPayload"] == 1_000_000, "maxPayload: {open}");
    Ok(())
}

// E1 / S-E1
async fn polling_handshake_opens_a_session(server: &TestServer) -> Result<()> {
    let res = server.get(POLLING).await?;
    ensure!(res.status == 200, "{res:?}");
    // The whole body parses as one open packet: nothing may follow it.
    check_open(&open_packet(&res.text())?, json!(["websocket"]))
}

/// Requests the suites expect to be refused with a 400, whatever the body.
async fn all_refused(server: &TestServer, requests: &[(&str, &str)]) -> Result<()> {
    for (method, query) in requests {
        let res = server.request(method, query, &[], b"").await?;
        ensure!(res.status == 400, "{method} ?{query}: {res:?}");
    }
    Ok(())
}

// E2 / S-E2
async fn polling_handshake_fails_with_an_invalid_eio(server: &TestServer) -> Result<()> {
    all_refused(
        server,
        &[
            ("GET", "transport=polling"),
            ("GET", "EIO=abc&transport=polling"),
        ],
    )
    .await
}

// E3 / S-E3
async fn polling_handshake_fails_with_an_invalid_transport(server: &TestServer) -> Result<()> {
    all_refused(server, &[("GET", "EIO=4"), ("GET", "EIO=4&transport=abc")]).await
}

// E4 / S-E4
async fn polling_handshake_fails_with_an_invalid_method(server: &TestServer) -> Result<()> {
    all_refused(server, &[("POST", POLLING), ("PUT", POLLING)]).await
}

// E5 / S-E5
async fn websocket_handshake_opens_a_session(server: &TestServer) -> Result<()> {
    let (_ws, open) = server.open_ws().await?;
    check_open(&open, json!([]))
}

/// The suites open these WebSockets and assert nothing; what matters is that no session opens:
/// the handshake is refused, or the socket closes without an open packet.
async fn no_websocket_session(server: &TestServer, queries: &[&str]) -> Result<()> {
    for query in queries {
        match common::Ws::connect(server.addr(), &server.ws_url(query), None).await? {
            Err(_refused) => {}
            Ok(mut ws) => {
                let before = ws.closed_within(common::WAIT).await?;
                ensure!(before.is_empty(), "?{query}: {before:?}");
            }
        }
    }
    Ok(())
}

// E6 / S-E6
async fn websocket_handshake_fails_with_an_invalid_eio(server: &TestServer) -> Result<()> {
    no_websocket_session(
        server,
        &["transport=websocket", "EIO=abc&transport=websocket"],
    )
    .await
}

// E7 / S-E7
async fn websocket_handshake_fails_with_an_invalid_transport(server: &TestServer) -> Result<()> {
    no_websocket_session(server, &["EIO=4", "EIO=4&transport=abc"]).await
}

/// POSTs `payload` to a new polling session, then GETs: the POST must be answered `ok`, and the
/// GET with exactly `echo`.
async fn polling_echo(server: &TestServer, payload: &str, echo: &str) -> Result<()> {
    let sid = server.open_polling().await?;
    let res = server.post(&polling(&sid), payload).await?;
    ensure!(res.status == 200 && res.text() == "ok", "POST: {res:?}");
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 200 && res.text() == echo, "GET: {res:?}");
    Ok(())
}

// E8
async fn polling_echoes_one_text_packet(server: &TestServer) -> Result<()> {
    polling_echo(server, "4hello", "4hello").await
}

// E9
async fn polling_echoes_several_text_packets(server: &TestServer) -> Result<()> {
    let payload = "4test1\x1e4test2\x1e4test3";
    polling_echo(server, payload, payload).await
}

// E10: the binary message (01 02 03 04) comes back as binary, base64-encoded with padding.
async fn polling_echoes_text_and_binary_packets(server: &TestServer) -> Result<()> {
    let payload = "4hello\x1ebAQIDBA==";
    polling_echo(server, payload, payload).await
}

// E11: the suite does not check the POST's status (its assertion is swallowed); the session
// must be gone afterwards.
async fn polling_closes_the_session_upon_an_invalid_packet(server: &TestServer) -> Result<()> {
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "abc").await?;
    server.assert_gone(&sid).await
}

// E12
async fn polling_closes_the_session_upon_duplicate_polls(server: &TestServer) -> Result<()> {
    let sid = server.open_polling().await?;
    let first = server.start("GET", &polling(&sid), &[], b"").await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = server.get(&format!("{}&t=burst", polling(&sid))).await?;
    ensure!(
        second.status == 400 || second.status == 500,
        "second GET: {second:?}"
    );
    let first = first.response().await?;
    ensure!(
        first.status == 200 && first.text() == "1",
        "the first GET gets a close packet: {first:?}"
    );
    server.assert_gone(&sid).await
}

// E13
async fn websocket_echoes_a_text_packet(server: &TestServer) -> Result<()> {
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text("4hello").await?;
    ensure!(ws.next().await? == Msg::text("4hello"));
    Ok(())
}

// E14: binary frames carry the raw message, with no type prefix.
async fn websocket_echoes_a_binary_packet(server: &TestServer) -> Result<()> {
    let (mut ws, _) = server.open_ws().await?;
    ws.send_binary(&[1, 2, 3, 4]).await?;
    ensure!(ws.next().await? == Msg::Binary(vec![1, 2, 3, 4]));
    Ok(())
}

// E15
async fn websocket_closes_the_session_upon_an_invalid_packet(server: &TestServer) -> Result<()> {
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text("abc").await?;
    ws.assert_closed_within(common::WAIT).await
}

// E16 / S-E8: three pings, each alone in a GET response, each answered by a POSTed pong.
async fn polling_pings_and_takes_pongs(server: &TestServer) -> Result<()> {
    let sid = server.open_polling().await?;
    for round in 0..3 {
        let res = server.get(&polling(&sid)).await?;
        ensure!(
            res.status == 200 && res.text() == "2",
            "ping {round}: {res:?}"
        );
        let res = server.post(&polling(&sid), "3").await?;
        ensure!(res.status == 200, "pong {round}: {res:?}");
    }
    Ok(())
}

// E17 / S-E9: exactly ping interval + ping timeout after the handshake, the session is gone.
async fn polling_closes_the_session_upon_ping_timeout(server: &TestServer) -> Result<()> {
    let sid = server.open_polling().await?;
    tokio::time::sleep(Duration::from_millis(300 + 200)).await;
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 400, "{res:?}");
    Ok(())
}

// E18 / S-E10
async fn websocket_pings_and_takes_pongs(server: &TestServer) -> Result<()> {
    let (mut ws, _) = server.open_ws().await?;
    for round in 0..3 {
        let msg = ws.next().await?;
        ensure!(msg == Msg::text("2"), "ping {round}: {msg:?}");
        ws.send_text("3").await?;
    }
    Ok(())
}

// E19 / S-E11: a client that never answers is closed (the suite allows 5 s; with these
// settings it happens at about 500 ms).
async fn websocket_closes_the_session_upon_ping_timeout(server: &TestServer) -> Result<()> {
    let (mut ws, _) = server.open_ws().await?;
    ws.assert_closed_within(Duration::from_secs(5)).await
}

// E20 / S-E12: a close packet POSTed while a GET waits: the GET gets a noop, and the session is
// gone. (The suite sends both at once; the GET is given a moment to be the one waiting, which is
// the case the suite means.)
async fn polling_client_closes_the_session(server: &TestServer) -> Result<()> {
    let sid = server.open_polling().await?;
    let get = server.start("GET", &polling(&sid), &[], b"").await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.post(&polling(&sid), "1").await?;
    let res = get.response().await?;
    ensure!(
        res.status == 200 && res.text() == "6",
        "pending GET: {res:?}"
    );
    server.assert_gone(&sid).await
}

// E21 / S-E13
async fn websocket_client_closes_the_session(server: &TestServer) -> Result<()> {
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text("1").await?;
    ws.closed_within(common::WAIT).await?;
    Ok(())
}

// E22
async fn upgrade_from_polling_to_websocket(server: &TestServer) -> Result<()> {
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    ws.send_text("2probe").await?;
    ensure!(ws.next().await? == Msg::text("3probe"));
    // While the upgrade is under way, a GET is answered with a noop.
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 200 && res.text() == "6", "GET: {res:?}");
    ws.send_text("5").await?;
    ws.send_text("4hello").await?;
    // Nothing else (no buffered packet, no ping) comes first.
    let msg = ws.next().await?;
    ensure!(msg == Msg::text("4hello"), "{msg:?}");
    Ok(())
}

// S-E14: E22 up to the probe.
async fn upgrade_probe_and_upgrade_packet(server: &TestServer) -> Result<()> {
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    ws.send_text("2probe").await?;
    ensure!(ws.next().await? == Msg::text("3probe"));
    ws.send_text("5").await?;
    Ok(())
}

/// Upgrades a polling session the way E23 and E24 do: `2probe` and `5` at once. The `3probe`
/// is read before going on, as the suite relies on it having arrived.
async fn quick_upgrade(server: &TestServer) -> Result<(String, common::Ws)> {
    let sid = server.open_polling().await?;
    let mut ws = server.ws(&websocket(&sid)).await?;
    ws.send_text("2probe").await?;
    ws.send_text("5").await?;
    ensure!(ws.next().await? == Msg::text("3probe"));
    Ok((sid, ws))
}

/// After the upgrade, the WebSocket echoes, and nothing else comes first.
async fn still_echoes(ws: &mut common::Ws) -> Result<()> {
    ws.send_text("4hello").await?;
    let msg = ws.next().await?;
    ensure!(msg == Msg::text("4hello"), "{msg:?}");
    Ok(())
}

// E23
async fn polling_after_upgrade_is_refused(server: &TestServer) -> Result<()> {
    let (sid, mut ws) = quick_upgrade(server).await?;
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 400, "{res:?}");
    still_echoes(&mut ws).await
}

// S-E15: E23 without the echo.
async fn polling_after_upgrade_is_refused_short(server: &TestServer) -> Result<()> {
    let (sid, _ws) = quick_upgrade(server).await?;
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 400, "{res:?}");
    Ok(())
}

/// A second WebSocket with the sid of an upgraded session closes (refused, or closed after the
/// 101), without a packet.
async fn second_websocket_closes(server: &TestServer, sid: &str) -> Result<()> {
    let url = server.ws_url(&websocket(sid));
    if let Ok(mut second) = common::Ws::connect(server.addr(), &url, None).await? {
        let before = second.closed_within(common::WAIT).await?;
        ensure!(before.is_empty(), "second WebSocket got {before:?}");
    }
    Ok(())
}

// E24
async fn second_websocket_after_upgrade_is_closed(server: &TestServer) -> Result<()> {
    let (sid, mut ws) = quick_upgrade(server).await?;
    second_websocket_closes(server, &sid).await?;
    still_echoes(&mut ws).await
}

// S-E16: E24 without the echo.
async fn second_websocket_after_upgrade_is_closed_short(server: &TestServer) -> Result<()> {
    let (sid, _ws) = quick_upgrade(server).await?;
    second_websocket_closes(server, &sid).await
}
