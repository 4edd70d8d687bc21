//! Every case of the official Socket.IO conformance suite's "Socket.IO protocol" group
//! (socketio/socket.io-protocol, `test-suite/`), S1–S16 in `NODE.md`
//! section 3.2, against the suite's server (`conformance::socketio_server`) with its settings.
//!
//! As in the suite, the client never answers pings, so every connection lives about 500 ms:
//! each case is over well before that.

mod common;

use anyhow::{Result, ensure};
use common::{Msg, TestServer, keys};
use serde_json::Value;

/// S1–S4: a CONNECT is answered with exactly `{"sid"}` in the namespace, then the `auth` event
/// echoes the CONNECT's payload (`{}` when there was none).
async fn connects(connect: &str, reply_prefix: &str, auth: &str) -> Result<()> {
    let server = TestServer::socketio().await?;
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text(connect).await?;
    let reply = ws.next_text().await?;
    let payload = reply
        .strip_prefix(reply_prefix)
        .ok_or_else(|| anyhow::anyhow!("CONNECT reply {reply:?}"))?;
    let payload: Value = serde_json::from_str(payload)?;
    ensure!(keys(&payload) == ["sid"], "{reply:?}");
    ensure!(payload["sid"].is_string(), "{reply:?}");
    let msg = ws.next().await?;
    ensure!(msg == Msg::text(auth), "{msg:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_connect_to_the_main_namespace() -> Result<()> {
    connects("40", "40", r#"42["auth",{}]"#).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_connect_to_the_main_namespace_with_a_payload() -> Result<()> {
    connects(
        r#"40{"token":"123"}"#,
        "40",
        r#"42["auth",{"token":"123"}]"#,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_connect_to_a_custom_namespace() -> Result<()> {
    connects("40/custom,", "40/custom,", r#"42/custom,["auth",{}]"#).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_connect_to_a_custom_namespace_with_a_payload() -> Result<()> {
    connects(
        r#"40/custom,{"token":"abc"}"#,
        "40/custom,",
        r#"42/custom,["auth",{"token":"abc"}]"#,
    )
    .await
}

// S5: the request has no comma after the namespace; the refusal has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_connect_to_an_unknown_namespace_is_refused() -> Result<()> {
    let server = TestServer::socketio().await?;
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text("40/random").await?;
    let msg = ws.next().await?;
    ensure!(
        msg == Msg::text(r#"44/random,{"message":"Invalid namespace"}"#),
        "{msg:?}"
    );
    Ok(())
}

// S6
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_an_invalid_handshake_closes_the_connection() -> Result<()> {
    let server = TestServer::socketio().await?;
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text("4abc").await?;
    ws.assert_closed_within(common::WAIT).await
}

// S7: a client that sends nothing is closed (by the ping timeout here, at about 500 ms, before
// the 1 s connect timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_no_handshake_closes_the_connection() -> Result<()> {
    let server = TestServer::socketio().await?;
    let (mut ws, _) = server.open_ws().await?;
    ws.assert_closed_within(common::WAIT).await
}

// S8: DISCONNECT gets no reply, and the connection stays open with no namespace: the next
// message is the ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_disconnect_from_the_main_namespace() -> Result<()> {
    let server = TestServer::socketio().await?;
    let mut ws = server.socketio_client().await?;
    ws.send_text("41").await?;
    let msg = ws.next().await?;
    ensure!(msg == Msg::text("2"), "{msg:?}");
    Ok(())
}

// S9: all between the first ping (300 ms) and the ping timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_connect_then_disconnect_from_a_custom_namespace() -> Result<()> {
    let server = TestServer::socketio().await?;
    let mut ws = server.socketio_client().await?;
    ws.next().await?; // The ping; not answered, as in the suite.
    ws.send_text("40/custom").await?;
    ws.next().await?;
    ws.next().await?;
    ws.send_text("41/custom").await?;
    ws.send_text(r#"42["message","message to main namespace"]"#)
        .await?;
    let msg = ws.next().await?;
    ensure!(
        msg == Msg::text(r#"42["message-back","message to main namespace"]"#),
        "{msg:?}"
    );
    Ok(())
}

/// Sends `sent` (text, then binary attachments) on a joined connection and expects exactly
/// `expected` as the next messages that are not pings.
async fn exchange(sent: &[Msg], expected: &[Msg]) -> Result<()> {
    let server = TestServer::socketio().await?;
    let mut ws = server.socketio_client().await?;
    for msg in sent {
        match msg {
            Msg::Text(text) => ws.send_text(text).await?,
            Msg::Binary(data) => ws.send_binary(data).await?,
            Msg::Closed(_) => unreachable!("a test sends no close"),
        }
    }
    for (i, want) in expected.iter().enumerate() {
        let got = ws.next_skipping_pings().await?;
        ensure!(got == *want, "message {i}: expected {want:?}, got {got:?}");
    }
    Ok(())
}

// S10: compact JSON, key order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_plain_text_event() -> Result<()> {
    exchange(
        &[Msg::text(r#"42["message",1,"2",{"3":[true]}]"#)],
        &[Msg::text(r#"42["message-back",1,"2",{"3":[true]}]"#)],
    )
    .await
}

// S11: attachments as separate binary frames, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_event_with_binary_attachments() -> Result<()> {
    exchange(
        &[
            Msg::text(
                r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
            ),
            Msg::Binary(vec![1, 2, 3]),
            Msg::Binary(vec![4, 5, 6]),
        ],
        &[
            Msg::text(
                r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
            ),
            Msg::Binary(vec![1, 2, 3]),
            Msg::Binary(vec![4, 5, 6]),
        ],
    )
    .await
}

// S12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_event_with_an_ack() -> Result<()> {
    exchange(
        &[Msg::text(
            r#"42456["message-with-ack",1,"2",{"3":[false]}]"#,
        )],
        &[Msg::text(r#"43456[1,"2",{"3":[false]}]"#)],
    )
    .await
}

// S13
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_event_with_binary_attachments_and_an_ack() -> Result<()> {
    exchange(
        &[
            Msg::text(
                r#"452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
            ),
            Msg::Binary(vec![1, 2, 3]),
            Msg::Binary(vec![4, 5, 6]),
        ],
        &[
            Msg::text(r#"462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#),
            Msg::Binary(vec![1, 2, 3]),
            Msg::Binary(vec![4, 5, 6]),
        ],
    )
    .await
}

/// S14–S16: an invalid packet on a joined connection closes it, with nothing sent first.
async fn closes_upon(packet: &str) -> Result<()> {
    let server = TestServer::socketio().await?;
    let mut ws = server.socketio_client().await?;
    ws.send_text(packet).await?;
    ws.assert_closed_within(common::WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_unknown_packet_type_closes_the_connection() -> Result<()> {
    closes_upon("4abc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_invalid_payload_format_closes_the_connection() -> Result<()> {
    closes_upon("42{}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_invalid_ack_id_closes_the_connection() -> Result<()> {
    closes_upon(r#"42abc["message-with-ack",1,"2",{"3":[false]}]"#).await
}
