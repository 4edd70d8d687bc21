//! Socket.IO behaviour of Node's server (socket.io 4.8) that the official suite does not check:
//! `NODE.md` section 5. First what our engine does as Node does; then, in
//! the last section, where it deliberately differs, each test saying how: there the tests pin
//! down our behaviour, not Node's.
//!
//! The suite's handlers (`conformance::Conformance`) serve most cases; acks the server asks for,
//! refusals and disconnects by the server use [`Probe`] and [`Refuse`], written here. Servers
//! here ping every 25 s unless a case is about time, so no ping comes between the packets.

mod common;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use banter_engine::Config;
use banter_engine::socketio::{
    BoxFuture, ConnectError, DisconnectReason, Event, Handler, Socket, SocketIo,
};
use bytes::Bytes;
use common::{Msg, POLLING, TestServer, Ws, conformance_io, keys, polling, quiet_config};
use serde_json::Value;
use serde_json::value::RawValue;

/// The suite's namespaces and handlers, without the suite's short heartbeat.
async fn quiet_server() -> Result<TestServer> {
    TestServer::socketio_with(conformance_io(quiet_config())).await
}

/// Sends a CONNECT for `nsp` (`""` for `/`) and reads the reply, which must be a successful
/// CONNECT with exactly `{"sid"}`; returns the socket's id.
async fn join(ws: &mut Ws, nsp: &str) -> Result<String> {
    let prefix = if nsp.is_empty() {
        "40".to_owned()
    } else {
        format!("40{nsp},")
    };
    ws.send_text(&prefix).await?;
    let reply = ws.next_text().await?;
    let payload: Value = serde_json::from_str(
        reply
            .strip_prefix(&prefix)
            .with_context(|| format!("CONNECT reply {reply:?}"))?,
    )?;
    ensure!(keys(&payload) == ["sid"], "{reply:?}");
    Ok(payload["sid"].as_str().context("a sid")?.to_owned())
}

/// A connection to the suite's handlers, joined to `/` (its `auth` event read).
async fn joined(server: &TestServer) -> Result<Ws> {
    let (mut ws, _) = server.open_ws().await?;
    join(&mut ws, "").await?;
    ensure!(ws.next().await? == Msg::text(r#"42["auth",{}]"#));
    Ok(ws)
}

/// The connection still works: an event is answered.
async fn still_echoes(ws: &mut Ws) -> Result<()> {
    ws.send_text(r#"42["message","still here"]"#).await?;
    let msg = ws.next().await?;
    ensure!(
        msg == Msg::text(r#"42["message-back","still here"]"#),
        "{msg:?}"
    );
    Ok(())
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap_or_else(|_| unreachable!("test JSON"))
}

/// A test handler for `/`:
/// - `ask` with an argument: asks the client `question` with it, with an ack, and reports the
///   answer's arguments in an `answered` event (or `unanswered` with why none came);
/// - `kick`: disconnects the socket from the namespace;
/// - `binary`: emits `binary` with two attachments, one nested.
struct Probe;

impl Handler for Probe {
    fn event(&self, socket: Socket, event: Event) -> BoxFuture<()> {
        match event.name.as_str() {
            "ask" => {
                let question: Value = match event.arg(0) {
                    Some(Ok(value)) => value,
                    _ => Value::Null,
                };
                // Asked apart from the event, so that several questions can wait at once.
                tokio::spawn(async move {
                    match socket
                        .emit_with_ack("question", &question, Duration::from_secs(2))
                        .await
                    {
                        Ok(answer) => {
                            let _ = socket.emit_raw("answered", &answer.args, &answer.attachments);
                        }
                        Err(err) => {
                            let _ = socket.emit("unanswered", &err.to_string());
                        }
                    }
                });
            }
            "kick" => socket.disconnect(),
            "binary" => {
                let args = [
                    raw(r#"{"_placeholder":true,"num":0}"#),
                    raw(r#"{"nested":[{"_placeholder":true,"num":1}]}"#),
                ];
                let attachments = [Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[4])];
                let _ = socket.emit_raw("binary", &args, &attachments);
            }
            _ => {}
        }
        Box::pin(std::future::ready(()))
    }
}

/// A namespace that refuses everyone, with a message and details.
struct Refuse;

impl Handler for Refuse {
    fn connect(
        &self,
        _socket: Socket,
        _auth: Option<Box<RawValue>>,
    ) -> BoxFuture<Result<(), ConnectError>> {
        Box::pin(std::future::ready(Err(ConnectError {
            message: "not authorized".into(),
            data: Some(serde_json::json!({ "reason": "probe" })),
        })))
    }

    fn event(&self, _socket: Socket, _event: Event) -> BoxFuture<()> {
        Box::pin(std::future::ready(()))
    }
}

async fn probe_server() -> Result<TestServer> {
    let io = SocketIo::new(quiet_config());
    io.namespace("/", Probe);
    io.namespace("/forbidden", Refuse);
    TestServer::socketio_with(io).await
}

/// Reads a `question` the server asked with an ack; returns its id and its argument's JSON.
async fn question(ws: &mut Ws) -> Result<(u64, String)> {
    let text = ws.next_text().await?;
    let rest = text
        .strip_prefix("42")
        .with_context(|| format!("an event, not {text:?}"))?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let id = rest[..digits]
        .parse()
        .with_context(|| format!("an ack id in {text:?}"))?;
    let args = rest[digits..]
        .strip_prefix(r#"["question","#)
        .and_then(|a| a.strip_suffix(']'))
        .with_context(|| format!("a question in {text:?}"))?;
    Ok((id, args.to_owned()))
}

/// 5.1: a CONNECT to an unknown namespace is refused, and the connection stays open: a CONNECT
/// after it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_namespace_is_refused_and_the_connection_stays_open() -> Result<()> {
    let server = quiet_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text("40/random,").await?;
    ensure!(ws.next().await? == Msg::text(r#"44/random,{"message":"Invalid namespace"}"#));
    join(&mut ws, "").await?;
    ensure!(ws.next().await? == Msg::text(r#"42["auth",{}]"#));
    Ok(())
}

/// 5.1: a handler's refusal is a CONNECT_ERROR with its message and data; the connection stays
/// open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_a_connect_error_and_the_connection_stays_open() -> Result<()> {
    let server = probe_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text("40/forbidden,").await?;
    let reply = ws.next_text().await?;
    let data: Value = serde_json::from_str(
        reply
            .strip_prefix("44/forbidden,")
            .with_context(|| format!("{reply:?}"))?,
    )?;
    ensure!(
        data == serde_json::json!({ "message": "not authorized", "data": { "reason": "probe" } }),
        "{reply:?}"
    );
    join(&mut ws, "").await?;
    Ok(())
}

/// 5.1: Node writes a refusal's `message` before its `data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_error_lists_message_then_data() -> Result<()> {
    let server = probe_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    ws.send_text("40/forbidden,").await?;
    let msg = ws.next().await?;
    ensure!(
        msg == Msg::text(r#"44/forbidden,{"message":"not authorized","data":{"reason":"probe"}}"#),
        "{msg:?}"
    );
    Ok(())
}

/// 5.1: the CONNECT reply is exactly `{"sid"}`, and the socket's id is new: neither the
/// Engine.IO session's nor that of the session's socket in another namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_ids_are_not_the_session_id() -> Result<()> {
    let server = quiet_server().await?;
    let (mut ws, open) = server.open_ws().await?;
    let main = join(&mut ws, "").await?;
    ws.next().await?;
    let custom = join(&mut ws, "/custom").await?;
    let session = open["sid"].as_str().unwrap_or_default();
    ensure!(
        main != session && custom != session && main != custom,
        "session {session}, sockets {main} and {custom}"
    );
    Ok(())
}

/// 5.3: a client's DISCONNECT gets no reply, the connection stays open, and the namespace can
/// be joined again, as a new socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnect_gets_no_reply_and_the_namespace_can_be_joined_again() -> Result<()> {
    let server = quiet_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    let first = join(&mut ws, "").await?;
    ws.next().await?;
    ws.send_text("41").await?;
    // The next message answers the next CONNECT: nothing answered the DISCONNECT. (Another
    // namespace, so that this does not depend on when the server has finished with `/`: see
    // `a_namespace_left_and_joined_again_at_once`.)
    join(&mut ws, "/custom").await?;
    ensure!(ws.next().await? == Msg::text(r#"42/custom,["auth",{}]"#));
    let second = join(&mut ws, "").await?;
    ensure!(first != second, "the same socket id twice: {first}");
    ensure!(ws.next().await? == Msg::text(r#"42["auth",{}]"#));
    still_echoes(&mut ws).await
}

/// 5.3: a namespace left and joined again in one breath (one POST here, so that the server
/// reads both packets at once) is joined again, as by Node, which forgets a socket as soon as
/// its DISCONNECT is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_left_and_joined_again_at_once() -> Result<()> {
    let server = quiet_server().await?;
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "40").await?;
    let packets = poll_packets(&server, &sid, 2).await?;
    ensure!(packets[1] == r#"42["auth",{}]"#, "{packets:?}");
    server.post(&polling(&sid), "41\x1e40").await?;
    let packets = poll_packets(&server, &sid, 2).await?;
    ensure!(
        packets[0].starts_with("40{") && packets[1] == r#"42["auth",{}]"#,
        "{packets:?}"
    );
    Ok(())
}

/// 5.3: packets count in the order they came, also those read together before the first is
/// handled: a CONNECT and a DISCONNECT in one POST leave the namespace (the DISCONNECT waits for
/// the connect before it; it was lost when it came before the socket existed), so that a later
/// CONNECT joins again rather than being a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_joined_and_left_at_once_is_left() -> Result<()> {
    let server = quiet_server().await?;
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "40\x1e41").await?;
    let packets = poll_packets(&server, &sid, 2).await?;
    ensure!(
        packets[0].starts_with("40{") && packets[1] == r#"42["auth",{}]"#,
        "{packets:?}"
    );
    server.post(&polling(&sid), "40").await?;
    let again = poll_packets(&server, &sid, 2).await?;
    ensure!(
        again[0].starts_with("40{") && again[1] == r#"42["auth",{}]"#,
        "{again:?}"
    );
    ensure!(again[0] != packets[0], "the same socket twice: {again:?}");
    server.post(&polling(&sid), r#"42["message","x"]"#).await?;
    let echoed = poll_packets(&server, &sid, 1).await?;
    ensure!(echoed == [r#"42["message-back","x"]"#], "{echoed:?}");
    Ok(())
}

/// Records why each socket disconnected, and the order of what the handler saw.
struct Recorder(Arc<Mutex<Vec<DisconnectReason>>>, Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn log(&self, what: String) {
        self.1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(what);
    }
}

impl Handler for Recorder {
    fn connected(&self, socket: Socket) -> BoxFuture<()> {
        self.log(format!("connected {}", socket.id()));
        Box::pin(std::future::ready(()))
    }

    fn event(&self, socket: Socket, event: Event) -> BoxFuture<()> {
        self.log(format!("{} from {}", event.name, socket.id()));
        Box::pin(std::future::ready(()))
    }

    fn disconnect(&self, socket: Socket, reason: DisconnectReason) -> BoxFuture<()> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reason);
        self.log(format!("left {}", socket.id()));
        Box::pin(std::future::ready(()))
    }
}

/// Waits until `log` has `count` entries; returns them.
async fn logged<T: Clone>(log: &Mutex<Vec<T>>, count: usize) -> Vec<T> {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let seen = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if seen.len() >= count || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 5.3: a client that leaves sends DISCONNECT and closes its connection, often in one read (a
/// polling payload here; python-socketio sends both together): its socket left on purpose, not
/// because the transport closed (Banter tells the others at once then, rather than after a grace
/// period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_read_with_the_close_is_the_clients_own() -> Result<()> {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let io = SocketIo::new(quiet_config());
    io.namespace("/", Recorder(Arc::clone(&reasons), Arc::default()));
    let server = TestServer::socketio_with(io).await?;
    for payload in ["41\x1e1", "41"] {
        reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let sid = server.open_polling().await?;
        server.post(&polling(&sid), "40").await?;
        let packets = poll_packets(&server, &sid, 1).await?;
        ensure!(packets[0].starts_with("40{"), "{packets:?}");
        server.post(&polling(&sid), payload).await?;
        let seen = logged(&reasons, 1).await;
        ensure!(
            seen == [DisconnectReason::ClientNamespaceDisconnect],
            "{payload:?}: {seen:?}"
        );
    }
    // Joined, left and closed in one read: left all the same.
    reasons
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "40\x1e41\x1e1").await?;
    let seen = logged(&reasons, 1).await;
    ensure!(
        seen == [DisconnectReason::ClientNamespaceDisconnect],
        "joined and left: {seen:?}"
    );
    Ok(())
}

/// 5.3: a namespace left and joined again, with an event, in one read: the old socket's
/// `disconnect` comes before the new socket's connect and event, as the packets came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_is_handled_before_what_came_after_it() -> Result<()> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let io = SocketIo::new(quiet_config());
    io.namespace("/", Recorder(Arc::default(), Arc::clone(&log)));
    let server = TestServer::socketio_with(io).await?;
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "40").await?;
    poll_packets(&server, &sid, 1).await?;
    server
        .post(&polling(&sid), "41\x1e40\x1e42[\"after\"]")
        .await?;
    let seen = logged(&log, 4).await;
    ensure!(seen.len() == 4, "{seen:?}");
    let first = seen[0].strip_prefix("connected ").context("connected")?;
    let second = seen[2]
        .strip_prefix("connected ")
        .context("connected again")?;
    ensure!(
        seen[1] == format!("left {first}") && seen[3] == format!("after from {second}"),
        "{seen:?}"
    );
    Ok(())
}

/// 5.3: two CONNECTs to one namespace in one read are a second CONNECT, as one sent after the
/// first was answered: the connection is closed (it made two sockets in one namespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connects_in_one_read_close_the_connection() -> Result<()> {
    let server = quiet_server().await?;
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "40\x1e40").await?;
    let mut answered = 0;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let res = server.get(&polling(&sid)).await?;
            if res.status == 400 && res.error_code() == Some(1) {
                return anyhow::Ok(());
            }
            ensure!(res.status == 200, "{res:?}");
            answered += res
                .text()
                .split('\x1e')
                .filter(|p| p.starts_with("40{"))
                .count();
        }
    })
    .await
    .context("the session stayed open after two CONNECTs")??;
    ensure!(answered <= 1, "{answered} CONNECTs answered");
    Ok(())
}

/// 5.3: the server's disconnect of a socket sends DISCONNECT and keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_disconnect_sends_disconnect_and_keeps_the_connection() -> Result<()> {
    let server = probe_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    join(&mut ws, "").await?;
    ws.send_text(r#"42["kick"]"#).await?;
    ensure!(ws.next().await? == Msg::text("41"));
    join(&mut ws, "").await?;
    Ok(())
}

/// 5.2: a session that joins no namespace within the connect timeout is closed; over
/// WebSocket the socket closes, nothing sent first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_timeout_closes_a_websocket_that_joins_nothing() -> Result<()> {
    let server = TestServer::socketio_with(conformance_io(Config {
        connect_timeout: Duration::from_millis(300),
        ..quiet_config()
    }))
    .await?;
    let opened = Instant::now();
    let (mut ws, _) = server.open_ws().await?;
    ws.assert_closed_within(Duration::from_secs(1)).await?;
    ensure!(
        opened.elapsed() >= Duration::from_millis(250),
        "closed after {:?}",
        opened.elapsed()
    );
    Ok(())
}

/// 5.2: over polling, the waiting GET gets a close packet, and the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_timeout_closes_a_polling_session_that_joins_nothing() -> Result<()> {
    let server = TestServer::socketio_with(conformance_io(Config {
        connect_timeout: Duration::from_millis(300),
        ..quiet_config()
    }))
    .await?;
    let sid = server.open_polling().await?;
    let res = server.get(&polling(&sid)).await?;
    ensure!(res.status == 200 && res.text() == "1", "{res:?}");
    server.assert_gone(&sid).await
}

/// 5.2: a session that joined in time is not closed by the connect timeout, even once it has
/// left every namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_timeout_spares_a_session_that_joined() -> Result<()> {
    let server = TestServer::socketio_with(conformance_io(Config {
        connect_timeout: Duration::from_millis(200),
        ..quiet_config()
    }))
    .await?;
    let mut ws = joined(&server).await?;
    ws.send_text("41").await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    join(&mut ws, "").await?;
    ensure!(ws.next().await? == Msg::text(r#"42["auth",{}]"#));
    still_echoes(&mut ws).await
}

/// 5.4 (and 5.1): a packet that breaks the protocol closes the whole connection, with nothing
/// sent first (no CONNECT_ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_the_connection() -> Result<()> {
    fn text(s: &'static str) -> Msg {
        Msg::Text(s.to_owned())
    }
    // (what, on a connection joined to `/`, what is sent)
    let cases = [
        ("unknown packet type", true, vec![text("4abc")]),
        ("packet type 7", true, vec![text("47")]),
        ("EVENT data not an array", true, vec![text("42{}")]),
        ("letters for an ack id", true, vec![text(r#"42abc["x"]"#)]),
        ("EVENT with no name", true, vec![text("42[]")]),
        ("EVENT name an object", true, vec![text(r#"42[{"a":1}]"#)]),
        (
            "reserved event name",
            true,
            vec![text(r#"42["disconnect"]"#)],
        ),
        ("DISCONNECT with data", true, vec![text(r#"41{"a":1}"#)]),
        ("an empty message", true, vec![text("4")]),
        ("no attachment count", true, vec![text(r#"45-["x"]"#)]),
        (
            "too many attachments",
            true,
            vec![text(r#"4511-["x",{"_placeholder":true,"num":0}]"#)],
        ),
        ("binary with no packet", true, vec![Msg::Binary(vec![1, 2])]),
        (
            "text while attachments are due",
            true,
            vec![
                text(r#"451-["message",{"_placeholder":true,"num":0}]"#),
                text(r#"42["message"]"#),
            ],
        ),
        (
            "CONNECT_ERROR from a client",
            true,
            vec![text(r#"44{"message":"x"}"#)],
        ),
        (
            "second CONNECT to a joined namespace",
            true,
            vec![text("40")],
        ),
        ("CONNECT data a string", false, vec![text(r#"40"abc""#)]),
        ("CONNECT data an array", false, vec![text("40[1]")]),
        ("CONNECT data null", false, vec![text("40null")]),
        ("CONNECT data not JSON", false, vec![text("40{bad")]),
        (
            "custom CONNECT data an array",
            false,
            vec![text("40/custom,[]")],
        ),
    ];
    let server = quiet_server().await?;
    for (what, joined_first, sent) in cases {
        let mut ws = if joined_first {
            joined(&server).await?
        } else {
            server.open_ws().await?.0
        };
        for msg in &sent {
            match msg {
                Msg::Text(t) => ws.send_text(t).await?,
                Msg::Binary(b) => ws.send_binary(b).await?,
                Msg::Closed(_) => bail!("not sent"),
            }
        }
        ws.assert_closed_within(Duration::from_millis(500))
            .await
            .with_context(|| what)?;
    }
    Ok(())
}

/// 5.4: an ACK without an id is valid, and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_without_an_id_is_ignored() -> Result<()> {
    let server = quiet_server().await?;
    let mut ws = joined(&server).await?;
    ws.send_text(r#"43["x"]"#).await?;
    still_echoes(&mut ws).await
}

/// 5.6: a client's event with an ack id is acknowledged with the same id, zero arguments
/// included, and ids of any size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_acks_carry_the_clients_id() -> Result<()> {
    let server = quiet_server().await?;
    let mut ws = joined(&server).await?;
    for (sent, expected) in [
        (r#"427["message-with-ack"]"#, "437[]"),
        (r#"420["message-with-ack","zero"]"#, r#"430["zero"]"#),
        (
            r#"42999999["message-with-ack",{"a":[1]}]"#,
            r#"43999999[{"a":[1]}]"#,
        ),
    ] {
        ws.send_text(sent).await?;
        let msg = ws.next().await?;
        ensure!(msg == Msg::text(expected), "{sent}: {msg:?}");
    }
    Ok(())
}

/// 5.6: the server's event with an ack is answered by the client's ACK with the same id, whose
/// arguments reach the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_acks_are_matched_by_id() -> Result<()> {
    let server = probe_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    join(&mut ws, "").await?;
    ws.send_text(r#"42["ask","what?"]"#).await?;
    let (id, arg) = question(&mut ws).await?;
    ensure!(arg == r#""what?""#, "{arg}");
    ws.send_text(&format!(r#"43{id}["answer",{{"n":1}}]"#))
        .await?;
    let msg = ws.next().await?;
    ensure!(
        msg == Msg::text(r#"42["answered","answer",{"n":1}]"#),
        "{msg:?}"
    );
    Ok(())
}

/// 5.6: acks may come in any order; an unknown id and a second ack for an id are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_acks_in_any_order_unknown_and_repeated_ids_ignored() -> Result<()> {
    let server = probe_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    join(&mut ws, "").await?;
    ws.send_text(r#"42["ask","a"]"#).await?;
    let (a, _) = question(&mut ws).await?;
    ws.send_text(r#"42["ask","b"]"#).await?;
    let (b, _) = question(&mut ws).await?;
    ensure!(a != b, "two questions with id {a}");
    ws.send_text(r#"43999["nobody asked"]"#).await?;
    ws.send_text(&format!(r#"43{b}["for b"]"#)).await?;
    ensure!(ws.next().await? == Msg::text(r#"42["answered","for b"]"#));
    ws.send_text(&format!(r#"43{a}["for a"]"#)).await?;
    ensure!(ws.next().await? == Msg::text(r#"42["answered","for a"]"#));
    ws.send_text(&format!(r#"43{b}["for b again"]"#)).await?;
    // Nothing came of the unknown or repeated acks: the next message answers a new question.
    ws.send_text(r#"42["ask","c"]"#).await?;
    let (c, arg) = question(&mut ws).await?;
    ensure!(arg == r#""c""#, "{arg}");
    ws.send_text(&format!(r#"43{c}["for c"]"#)).await?;
    ensure!(ws.next().await? == Msg::text(r#"42["answered","for c"]"#));
    Ok(())
}

/// 5.6: a BINARY_ACK is matched by id too, and its attachments reach the server with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_ack_is_matched_by_id() -> Result<()> {
    let server = probe_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    join(&mut ws, "").await?;
    ws.send_text(r#"42["ask","bytes?"]"#).await?;
    let (id, _) = question(&mut ws).await?;
    ws.send_text(&format!(r#"461-{id}[{{"_placeholder":true,"num":0}}]"#))
        .await?;
    ws.send_binary(&[9, 8, 7]).await?;
    let msg = ws.next().await?;
    ensure!(
        msg == Msg::text(r#"451-["answered",{"_placeholder":true,"num":0}]"#),
        "{msg:?}"
    );
    let bytes = ws.next().await?;
    ensure!(bytes == Msg::Binary(vec![9, 8, 7]), "{bytes:?}");
    Ok(())
}

/// 5 (encoding): the server's binary event is a BINARY_EVENT counting its attachments, with
/// the placeholders where the application put them, followed by one binary frame per
/// attachment, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_binary_events_over_websocket() -> Result<()> {
    let server = probe_server().await?;
    let (mut ws, _) = server.open_ws().await?;
    join(&mut ws, "").await?;
    ws.send_text(r#"42["binary"]"#).await?;
    for expected in [
        Msg::text(
            r#"452-["binary",{"_placeholder":true,"num":0},{"nested":[{"_placeholder":true,"num":1}]}]"#,
        ),
        Msg::Binary(vec![1, 2, 3]),
        Msg::Binary(vec![4]),
    ] {
        let msg = ws.next().await?;
        ensure!(msg == expected, "expected {expected:?}, got {msg:?}");
    }
    Ok(())
}

/// GETs until `count` packets have come (they may be split over several GETs); returns them.
async fn poll_packets(server: &TestServer, sid: &str, count: usize) -> Result<Vec<String>> {
    let mut packets = Vec::new();
    while packets.len() < count {
        let res = server.get(&polling(sid)).await?;
        ensure!(res.status == 200, "{res:?}");
        packets.extend(res.text().split('\x1e').map(str::to_owned));
    }
    Ok(packets)
}

/// 5 (encoding, polling): binary attachments travel as `b` + base64 packets after their
/// packet, in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_events_over_polling() -> Result<()> {
    let server = probe_server().await?;
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "40").await?;
    let reply = poll_packets(&server, &sid, 1).await?;
    ensure!(reply.len() == 1 && reply[0].starts_with("40{"), "{reply:?}");
    server.post(&polling(&sid), r#"42["binary"]"#).await?;
    let packets = poll_packets(&server, &sid, 3).await?;
    ensure!(
        packets
            == [
                r#"452-["binary",{"_placeholder":true,"num":0},{"nested":[{"_placeholder":true,"num":1}]}]"#,
                "bAQID",
                "bBA==",
            ],
        "{packets:?}"
    );

    // The other way, on the suite's server: the echo of an event with an attachment.
    let server = quiet_server().await?;
    let sid = server.open_polling().await?;
    server.post(&polling(&sid), "40").await?;
    let joined = poll_packets(&server, &sid, 2).await?;
    ensure!(joined[1] == r#"42["auth",{}]"#, "{joined:?}");
    server
        .post(
            &polling(&sid),
            "451-[\"message\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID",
        )
        .await?;
    let packets = poll_packets(&server, &sid, 2).await?;
    ensure!(
        packets
            == [
                r#"451-["message-back",{"_placeholder":true,"num":0}]"#,
                "bAQID"
            ],
        "{packets:?}"
    );
    Ok(())
}

/// 5.1: over polling, the CONNECT reply and the handler's first event come in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_polling() -> Result<()> {
    let server = quiet_server().await?;
    let res = server.get(POLLING).await?;
    let sid = common::open_packet(&res.text())?["sid"]
        .as_str()
        .context("a sid")?
        .to_owned();
    let res = server
        .post(&polling(&sid), r#"40/custom,{"token":"t"}"#)
        .await?;
    ensure!(res.text() == "ok", "{res:?}");
    let packets = poll_packets(&server, &sid, 2).await?;
    let payload: Value = serde_json::from_str(
        packets[0]
            .strip_prefix("40/custom,")
            .with_context(|| format!("{packets:?}"))?,
    )?;
    ensure!(keys(&payload) == ["sid"], "{packets:?}");
    ensure!(
        packets[1] == r#"42/custom,["auth",{"token":"t"}]"#,
        "{packets:?}"
    );
    Ok(())
}

// Deliberate differences from Node.

/// Differs from Node, which closes the connection for any packet to a namespace the client has
/// not joined: ours ignores an EVENT, an ACK or a DISCONNECT for such a namespace, and the
/// connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_for_a_namespace_not_joined_are_ignored() -> Result<()> {
    let server = quiet_server().await?;
    let mut ws = joined(&server).await?;
    for packet in [
        r#"42/custom,["message","x"]"#,
        r#"42/custom,1["message-with-ack","x"]"#,
        r#"43/custom,1["x"]"#,
        "41/custom,",
        r#"42/nowhere,["message","x"]"#,
    ] {
        ws.send_text(packet).await?;
    }
    still_echoes(&mut ws).await
}

/// Differs from Node, which holds a binary packet for as long as the connection lives while it
/// waits for the attachments: ours gives each attachment the ping timeout to come after the
/// packet or the attachment before it, then closes the connection (what is parked is bounded in
/// time, not only in bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_that_do_not_come_close_the_connection() -> Result<()> {
    let server = TestServer::socketio_with(conformance_io(Config {
        ping_timeout: Duration::from_millis(400),
        ..quiet_config()
    }))
    .await?;
    let mut ws = joined(&server).await?;
    // Slower in all than the timeout, each in time: the packet completes.
    let args = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#;
    ws.send_text(&format!(r#"452-["message",{args}]"#)).await?;
    for data in [[1u8], [2]] {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ws.send_binary(&data).await?;
    }
    let msg = ws.next().await?;
    ensure!(
        msg == Msg::Text(format!(r#"452-["message-back",{args}]"#)),
        "{msg:?}"
    );
    ensure!(ws.next().await? == Msg::Binary(vec![1]));
    ensure!(ws.next().await? == Msg::Binary(vec![2]));
    // One that never comes.
    let started = Instant::now();
    ws.send_text(r#"451-["message",{"_placeholder":true,"num":0}]"#)
        .await?;
    ws.assert_closed_within(Duration::from_secs(5)).await?;
    ensure!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before the timeout"
    );
    Ok(())
}

/// Differs from Node, which closes the connection when a placeholder points past the
/// attachments (or its `num` is not a number): ours passes the arguments and attachments to the
/// application as they came; the suite's echo sends them back as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_out_of_range_reach_the_application_raw() -> Result<()> {
    let server = quiet_server().await?;
    let mut ws = joined(&server).await?;
    for args in [
        r#"{"_placeholder":true,"num":5}"#,
        r#"{"_placeholder":true,"num":"0"}"#,
    ] {
        ws.send_text(&format!(r#"451-["message",{args}]"#)).await?;
        ws.send_binary(&[1]).await?;
        let msg = ws.next().await?;
        ensure!(
            msg == Msg::Text(format!(r#"451-["message-back",{args}]"#)),
            "{msg:?}"
        );
        ensure!(ws.next().await? == Msg::Binary(vec![1]));
    }
    Ok(())
}

/// Differs from Node, whose ack ids count per namespace, shared by its sockets (a second client
/// gets the ids after the first's): ours count per socket, so two sockets' first questions have
/// the same id, and each socket's ids go up by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_ack_ids_count_per_socket() -> Result<()> {
    let server = probe_server().await?;
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = server.open_ws().await?;
        join(&mut ws, "").await?;
        let mut mine = Vec::new();
        for n in 0..2 {
            ws.send_text(&format!(r#"42["ask",{n}]"#)).await?;
            mine.push(question(&mut ws).await?.0);
        }
        ids.push(mine);
        clients.push(ws);
    }
    ensure!(ids[0] == ids[1], "ids per client: {ids:?}");
    ensure!(ids[0][1] == ids[0][0] + 1, "ids per client: {ids:?}");
    Ok(())
}

/// Differs from Node, which takes a number as an event's name (`42[1]`): ours requires a
/// string, and closes the connection as for any unreadable packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_name_must_be_a_string() -> Result<()> {
    let server = quiet_server().await?;
    let mut ws = joined(&server).await?;
    ws.send_text(r#"42[1,"x"]"#).await?;
    ws.assert_closed_within(Duration::from_millis(500)).await
}

/// A client that sends thousands of events without waiting gets every ack, in order: the
/// session keeps reading after each batch it handled, whether or not its replies needed it to
/// wake up (on plain TCP they are written by the handler, and wake nobody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_events_gets_every_ack_in_order() -> Result<()> {
    const EVENTS: u64 = 3_000;
    let server = TestServer::socketio().await?;
    let mut ws = server.socketio_client().await?;
    for id in 0..EVENTS {
        ws.send_text(&format!(r#"42{id}["message-with-ack",{id}]"#))
            .await?;
    }
    for id in 0..EVENTS {
        let text = ws.next_text().await?;
        ensure!(text == format!("43{id}[{id}]"), "ack {id}: {text:?}");
    }
    Ok(())
}
