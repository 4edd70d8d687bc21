//! A client that stops reading costs the server a bounded amount of memory: once more than
//! `max_buffered_bytes` wait for it, its session is closed (`DisconnectReason::TooSlow`), and
//! the clients that keep up lose nothing of the same broadcasts.

mod common;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use banter_engine::Config;
use banter_engine::socketio::{BoxFuture, DisconnectReason, Event, Handler, Socket, SocketIo};
use common::{Conn, Msg, TestServer, Ws, quiet_config};

/// What may wait for one client.
const MAX_BUFFERED: usize = 64 * 1024;
/// The text of each broadcast message.
const MESSAGE_BYTES: usize = 8 * 1024;
/// Messages per `flood`: well under the bound, so that a client that reads a batch before
/// asking for the next is never near it.
const BATCH: u64 = 4;
/// Batches before the test gives up on the stuck client being closed (`BATCH * MESSAGE_BYTES`
/// each: 64 MiB in all, far more than the socket buffers of a loopback connection hold).
const MAX_ROUNDS: u64 = 2_000;

type Disconnects = Arc<Mutex<Vec<(String, DisconnectReason)>>>;

/// Everyone joins `room`; `flood` with a round number broadcasts that round's batch of `chunk`
/// events to the room, numbered in sequence; disconnects are recorded.
struct Room {
    disconnects: Disconnects,
}

impl Handler for Room {
    fn connected(&self, socket: Socket) -> BoxFuture<()> {
        socket.join("room");
        Box::pin(std::future::ready(()))
    }

    fn event(&self, socket: Socket, event: Event) -> BoxFuture<()> {
        if event.name == "flood"
            && let Some(Ok(round)) = event.arg::<u64>(0)
        {
            let text = "x".repeat(MESSAGE_BYTES);
            for seq in round * BATCH..(round + 1) * BATCH {
                let _ = socket
                    .ns()
                    .broadcast()
                    .to("room")
                    .emit("chunk", &(seq, &text));
            }
        }
        Box::pin(std::future::ready(()))
    }

    fn disconnect(&self, socket: Socket, reason: DisconnectReason) -> BoxFuture<()> {
        self.disconnects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((socket.id().to_string(), reason));
        Box::pin(std::future::ready(()))
    }
}

/// Opens a WebSocket, joins `/`, returns it and its socket id.
async fn join(server: &TestServer, recv_buffer: Option<u32>) -> Result<(Ws, String)> {
    let url = server.ws_url(common::WEBSOCKET);
    let mut ws = match Ws::connect(server.addr(), &url, recv_buffer).await? {
        Ok(ws) => ws,
        Err(refusal) => anyhow::bail!("refused: {refusal:?}"),
    };
    common::open_packet(&ws.next_text().await?)?;
    ws.send_text("40").await?;
    let reply = ws.next_text().await?;
    let payload: serde_json::Value = serde_json::from_str(
        reply
            .strip_prefix("40")
            .with_context(|| format!("{reply:?}"))?,
    )?;
    Ok((ws, payload["sid"].as_str().context("a sid")?.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_the_others_get_everything() -> Result<()> {
    stuck_client_is_closed(Conn::Shared).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_when_the_session_task_writes_everything() -> Result<()> {
    stuck_client_is_closed(Conn::Task).await
}

async fn stuck_client_is_closed(conn: Conn) -> Result<()> {
    let disconnects = Disconnects::default();
    let io = SocketIo::new(Config {
        max_buffered_bytes: MAX_BUFFERED,
        ..quiet_config()
    });
    io.namespace(
        "/",
        Room {
            disconnects: Arc::clone(&disconnects),
        },
    );
    let server = TestServer::socketio_as(io, conn).await?;
    let reason_of = |sid: &str| {
        disconnects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(id, _)| id == sid)
            .map(|(_, reason)| *reason)
    };

    // A small receive buffer, so that the kernel holds little for it once it stops reading.
    let (mut stuck, stuck_sid) = join(&server, Some(4 * 1024)).await?;
    let (mut reader, reader_sid) = join(&server, None).await?;

    let mut next_seq = 0;
    let mut rounds = 0;
    while reason_of(&stuck_sid).is_none() {
        ensure!(
            rounds < MAX_ROUNDS,
            "the stuck client was not closed after {rounds} batches"
        );
        reader
            .send_text(&format!(r#"42["flood",{rounds}]"#))
            .await?;
        for _ in 0..BATCH {
            let text = reader.next_text().await?;
            let seq: u64 = text
                .strip_prefix(r#"42["chunk",["#)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("a chunk, not {:?}", &text[..text.len().min(40)]))?;
            ensure!(seq == next_seq, "expected chunk {next_seq}, got {seq}");
            ensure!(text.len() == MESSAGE_BYTES + 17 + seq.to_string().len());
            next_seq += 1;
        }
        rounds += 1;
    }
    ensure!(
        reason_of(&stuck_sid) == Some(DisconnectReason::TooSlow),
        "stuck client: {:?}",
        reason_of(&stuck_sid)
    );
    ensure!(
        reason_of(&reader_sid).is_none(),
        "the reader was disconnected: {:?}",
        reason_of(&reader_sid)
    );

    // The reader still gets what comes after.
    reader
        .send_text(&format!(r#"42["flood",{rounds}]"#))
        .await?;
    for _ in 0..BATCH {
        let text = reader.next_text().await?;
        ensure!(text.starts_with(&format!(r#"42["chunk",[{next_seq},"#)));
        next_seq += 1;
    }

    // The stuck client, reading at last, finds the first chunks (those already in flight), in
    // order, and then the end of the connection.
    let mut chunks = 0;
    loop {
        match stuck.next_within(Duration::from_secs(5)).await? {
            Msg::Closed(_) => break,
            Msg::Text(text) if text.starts_with(&format!(r#"42["chunk",[{chunks},"#)) => {
                chunks += 1;
            }
            Msg::Text(text) => anyhow::bail!(
                "stuck client: expected chunk {chunks}, got {:?}",
                &text[..text.len().min(40)]
            ),
            other => anyhow::bail!("stuck client: {other:?}"),
        }
    }
    ensure!(
        chunks < next_seq,
        "the stuck client got all {chunks} chunks"
    );
    eprintln!("stuck client closed after {rounds} batches; it had {chunks} chunks in flight");
    Ok(())
}
