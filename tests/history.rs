//! The durable history of a single instance (SQLite in a temporary data directory), through real
//! clients: restarts, `lastId` across them, retention, migrations.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use banter::store::schema;
use common::{TestClient, TestServer};
use rust_socketio::TransportType;
use serde_json::{Value, json};

async fn start(dir: &Path, extra: &[&str]) -> Result<TestServer> {
    let dir = dir.display().to_string();
    let mut args = vec!["--data-dir", dir.as_str()];
    args.extend_from_slice(extra);
    TestServer::with_args(&args).await
}

fn ids(history: &Value) -> Vec<u64> {
    history
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// The ids stored in the lobby, read from the file as another process would.
fn stored_ids(dir: &Path) -> Result<Vec<u64>> {
    let conn = rusqlite::Connection::open(dir.join(schema::DB_FILE))?;
    let mut select = conn.prepare("SELECT id FROM messages WHERE room = 'lobby' ORDER BY id")?;
    let ids = select
        .query_map([], |row| row.get::<_, i64>(0))?
        .map(|id| Ok(u64::try_from(id?)?))
        .collect::<Result<Vec<u64>>>()?;
    Ok(ids)
}

#[tokio::test]
async fn history_and_ids_survive_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), &[]).await?;
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    alice.join("alice").await?;
    let mut sent = Vec::new();
    for i in 0..5 {
        let ack = alice.call("new message", json!(format!("m{i}"))).await?;
        sent.push(ack["id"].as_u64().context("id")?);
    }
    alice.disconnect().await?;
    server.shutdown().await?;

    let server = start(dir.path(), &[]).await?;
    let mut bob = TestClient::connect(&server, TransportType::Polling).await?;
    let login = bob.join("bob").await?;
    assert_eq!(ids(&login["history"]), sent);
    assert_eq!(login["history"][4]["message"], "m4");
    assert_eq!(login["history"][4]["username"], "alice");
    assert_eq!(login["historyComplete"], true);
    let ack = bob.call("new message", json!("after")).await?;
    assert!(ack["id"].as_u64().context("id")? > sent[4]);
    Ok(())
}

#[tokio::test]
async fn last_id_across_a_restart_gets_exactly_what_was_missed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), &[]).await?;
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut bob = TestClient::connect(&server, TransportType::Websocket).await?;
    alice.join("alice").await?;
    bob.join("bob").await?;
    bob.emit("new message", json!("seen")).await?;
    let last_id = alice.expect("new message").await?["id"]
        .as_u64()
        .context("id")?;
    alice.disconnect().await?;
    let mut missed = Vec::new();
    for text in ["one", "two"] {
        missed.push(bob.call("new message", json!(text)).await?["id"].clone());
    }
    bob.disconnect().await?;
    server.shutdown().await?;

    let server = start(dir.path(), &[]).await?;
    let bob = TestClient::connect(&server, TransportType::Websocket).await?;
    bob.call("add user", json!("bob")).await?;
    missed.push(bob.call("new message", json!("three")).await?["id"].clone());
    let back = TestClient::connect(&server, TransportType::Polling).await?;
    let login = back
        .call("add user", json!({"username": "alice", "lastId": last_id}))
        .await?;
    let got: Vec<Value> = login["history"]
        .as_array()
        .context("history")?
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(got, missed);
    assert_eq!(login["historyComplete"], true);
    Ok(())
}

#[tokio::test]
async fn retention_bounds_the_database_and_says_what_was_lost() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let args = [
        "--history-len",
        "3",
        "--retain-messages",
        "5",
        "--message-burst",
        "50",
    ];
    let server = start(dir.path(), &args).await?;
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    alice.join("alice").await?;
    let mut sent = Vec::new();
    for i in 0..12 {
        let ack = alice.call("new message", json!(format!("m{i}"))).await?;
        sent.push(ack["id"].as_u64().context("id")?);
    }
    // The writer deletes the excess between commits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stored_ids(dir.path())?.len() > 5 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_ids(dir.path())?, sent[7..]);
    server.shutdown().await?;

    let server = start(dir.path(), &args).await?;
    let c = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = c
        .call("add user", json!({"username": "carol", "lastId": sent[8]}))
        .await?;
    assert_eq!(ids(&login["history"]), sent[9..]);
    assert_eq!(login["historyComplete"], true);
    let d = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = d
        .call("add user", json!({"username": "dave", "lastId": sent[4]}))
        .await?;
    assert_eq!(ids(&login["history"]), sent[9..]);
    assert_eq!(login["historyComplete"], false, "m5 and m6 were deleted");
    Ok(())
}

#[tokio::test]
async fn a_database_made_by_schema_version_1_is_migrated_and_served() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // What the first version of the store wrote: its schema, then messages as it stored them.
    let old: Vec<u64>;
    {
        let conn = rusqlite::Connection::open(dir.path().join(schema::DB_FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        schema::create_at_version(&conn, 1)?;
        let now_ms = banter::chat::now_millis() + 1;
        old = (0..3).map(|i| (now_ms + i) * 1_000).collect();
        for (i, id) in old.iter().enumerate() {
            conn.execute(
                "INSERT INTO messages (room, id, ts, username, message) VALUES ('lobby', ?1, ?2, 'old', ?3)",
                rusqlite::params![i64::try_from(*id)?, i64::try_from(id / 1_000)?, format!("v1 #{i}")],
            )?;
        }
    }
    let server = start(dir.path(), &[]).await?;
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = alice.join("alice").await?;
    assert_eq!(ids(&login["history"]), old);
    assert_eq!(login["history"][2]["message"], "v1 #2");
    let back = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = back
        .call("add user", json!({"username": "bob", "lastId": old[0]}))
        .await?;
    assert_eq!(ids(&login["history"]), old[1..]);
    assert_eq!(login["historyComplete"], true);
    let ack = alice.call("new message", json!("v2")).await?;
    assert!(ack["id"].as_u64().context("id")? > old[2]);
    server.shutdown().await?;

    let conn = rusqlite::Connection::open(dir.path().join(schema::DB_FILE))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    assert_eq!(version, schema::SCHEMA_VERSION);
    Ok(())
}

/// Reads a JSON lines export.
fn parse_lines(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

#[tokio::test]
async fn a_backup_of_a_live_database_while_messages_flow_is_consistent_and_restores() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data").display().to_string();
    let rate = ["--message-rate", "10000", "--message-burst", "10000"];
    let server =
        common::BanterProcess::start(&[&["--data-dir", &data_dir][..], &rate].concat()).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let server = server.server();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut client = TestClient::connect(&server, TransportType::Websocket).await?;
                client.join(&format!("sender{s}")).await?;
                let mut acked = Vec::new();
                // Bounded, in case the test fails before it says stop.
                for i in 0..20_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let ack = client
                        .call("new message", json!(format!("{s}/{i}")))
                        .await?;
                    acked.push(ack["id"].as_u64().context("refused")?);
                }
                anyhow::Ok(acked)
            })
        })
        .collect();
    // Two backups while the senders send.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut backups = Vec::new();
    for n in 0..2 {
        let path = dir.path().join(format!("backup-{n}.db"));
        let path_arg = path.display().to_string();
        let exited = common::run_banter(
            &["--data-dir", &data_dir, "backup", &path_arg],
            Duration::from_secs(30),
        )
        .await?;
        anyhow::ensure!(exited.status.success(), "backup failed: {}", exited.stderr);
        assert!(
            exited.stderr.contains("backup written"),
            "{}",
            exited.stderr
        );
        backups.push(path);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await??);
    }
    acked.sort_unstable();

    for path in &backups {
        // A snapshot as of one commit: exactly the acked messages up to its newest, none missing.
        let conn = rusqlite::Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!(mode, "delete", "a single self-contained file");
        let mut select = conn.prepare("SELECT id FROM messages ORDER BY id")?;
        let copied = select
            .query_map([], |row| row.get::<_, i64>(0))?
            .map(|id| Ok(u64::try_from(id?)?))
            .collect::<Result<Vec<u64>>>()?;
        let newest = *copied.last().context("an empty backup")?;
        let expected: Vec<u64> = acked.iter().copied().filter(|id| *id <= newest).collect();
        assert_eq!(copied, expected);
        assert!(copied.len() < acked.len(), "taken while messages flowed");
    }

    // The last backup, put in a new data directory, is a working history.
    let restored = tempfile::tempdir()?;
    std::fs::copy(&backups[1], restored.path().join(schema::DB_FILE))?;
    const HISTORY_LEN: usize = 1000;
    let server = start(
        restored.path(),
        &["--history-len", &HISTORY_LEN.to_string()],
    )
    .await?;
    let mut reader = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = reader.join("reader").await?;
    let stored = stored_ids(restored.path())?;
    assert!(!stored.is_empty());
    // A join gets the newest --history-len of them: the backup may hold more (a fast machine
    // sends more than a thousand before the second backup).
    let newest = &stored[stored.len().saturating_sub(HISTORY_LEN)..];
    assert_eq!(ids(&login["history"]), newest);
    Ok(())
}

#[tokio::test]
async fn export_writes_a_rooms_history_as_json_lines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), &[]).await?;
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    alice.join("alice").await?;
    let mut acked = Vec::new();
    for text in ["one", "two \"quoted\"", "three\nlines"] {
        acked.push(alice.call("new message", json!(text)).await?);
    }
    let data_dir = dir.path().display().to_string();
    // While the server runs, to standard output.
    let exited = common::run_banter(
        &["--data-dir", &data_dir, "export"],
        Duration::from_secs(30),
    )
    .await?;
    anyhow::ensure!(exited.status.success(), "export failed: {}", exited.stderr);
    let lines = parse_lines(&exited.stdout)?;
    assert_eq!(lines.len(), 3);
    for (line, ack) in lines.iter().zip(&acked) {
        assert_eq!(line["id"], ack["id"]);
        assert_eq!(line["ts"], ack["ts"]);
        assert_eq!(line["username"], "alice");
    }
    assert_eq!(lines[2]["message"], "three\nlines");
    server.shutdown().await?;

    // Stopped, to a file; another room is empty.
    let out = dir.path().join("lobby.jsonl");
    let out_arg = out.display().to_string();
    let exited = common::run_banter(
        &[
            "--data-dir",
            &data_dir,
            "export",
            "--room",
            "lobby",
            "--out",
            &out_arg,
        ],
        Duration::from_secs(30),
    )
    .await?;
    anyhow::ensure!(exited.status.success(), "export failed: {}", exited.stderr);
    assert_eq!(parse_lines(&std::fs::read_to_string(&out)?)?, lines);
    let exited = common::run_banter(
        &["--data-dir", &data_dir, "export", "--room", "elsewhere"],
        Duration::from_secs(30),
    )
    .await?;
    assert!(exited.status.success() && exited.stdout.is_empty());

    // No database: said plainly.
    let empty = tempfile::tempdir()?;
    let empty_arg = empty.path().display().to_string();
    let exited = common::run_banter(
        &["--data-dir", &empty_arg, "export"],
        Duration::from_secs(30),
    )
    .await?;
    assert!(!exited.status.success());
    assert!(
        exited.stderr.contains("there is no history database"),
        "{}",
        exited.stderr
    );
    Ok(())
}

#[tokio::test]
async fn after_kill_9_every_acked_message_is_in_the_history_in_order_once() -> Result<()> {
    kill_9_under_load("full").await
}

/// Synced at checkpoints only, a commit is in the operating system's cache when it is acked:
/// that survives the process, which is what kill -9 takes.
#[tokio::test]
async fn with_sqlite_sync_normal_too_every_acked_message_survives_kill_9() -> Result<()> {
    kill_9_under_load("normal").await
}

async fn kill_9_under_load(sync: &str) -> Result<()> {
    const SENDERS: usize = 8;
    const MOST_PER_SENDER: usize = 1_000;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().display().to_string();
    let args = [
        "--sqlite-sync",
        sync,
        "--data-dir",
        &data_dir,
        "--message-rate",
        "100000",
        "--message-burst",
        "100000",
        "--history-len",
        "10000",
    ];
    let mut server = common::BanterProcess::start(&args).await?;
    let acked_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let server = server.server();
            let acked_count = acked_count.clone();
            tokio::spawn(async move {
                let mut client = TestClient::connect(&server, TransportType::Websocket).await?;
                client.join(&format!("sender{s}")).await?;
                let mut acked = Vec::new();
                for i in 0..MOST_PER_SENDER {
                    // Sends until the server is gone: the ack then never comes.
                    let Ok(ack) = client.call("new message", json!(format!("{s}/{i}"))).await
                    else {
                        break;
                    };
                    let Some(id) = ack["id"].as_u64() else {
                        anyhow::bail!("refused: {ack}");
                    };
                    acked.push((id, format!("{s}/{i}")));
                    acked_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                anyhow::Ok(acked)
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked_count.load(std::sync::atomic::Ordering::Relaxed) < 2_000 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "too few messages acked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9().await?;
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await??);
    }
    let total = acked.len();
    assert!(
        total < SENDERS * MOST_PER_SENDER,
        "the server was killed while they were sending"
    );

    let server = common::BanterProcess::start(&args).await?;
    let mut reader = TestClient::connect(&server.server(), TransportType::Websocket).await?;
    let login = reader.join("reader").await?;
    let history = login["history"].as_array().context("history")?;
    let stored: Vec<(u64, String)> = history
        .iter()
        .map(|m| {
            Ok((
                m["id"].as_u64().context("id")?,
                m["message"].as_str().context("text")?.to_owned(),
            ))
        })
        .collect::<Result<_>>()?;
    assert!(
        stored.windows(2).all(|w| w[0].0 < w[1].0),
        "history in id order, no id twice"
    );
    let mut texts: Vec<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), stored.len(), "no message stored twice");
    // Committed but not yet acked when the process died: may be there. Acked: must be.
    let stored_set: std::collections::HashSet<&(u64, String)> = stored.iter().collect();
    let lost: Vec<_> = acked.iter().filter(|m| !stored_set.contains(m)).collect();
    assert!(
        lost.is_empty(),
        "{} of {total} acked messages lost: {lost:?}",
        lost.len()
    );
    eprintln!(
        "{total} messages acked before kill -9; {} stored",
        stored.len()
    );
    Ok(())
}

/// `banter export | head`: a reader that stops early ends the export quietly, as other command
/// line tools do, not with "Broken pipe" and a failure.
#[tokio::test]
async fn an_export_whose_reader_stops_early_ends_quietly() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), &[]).await?;
    server.shutdown().await?;
    // More than a pipe holds (64 KiB), written straight into the database.
    let mut conn = rusqlite::Connection::open(dir.path().join(schema::DB_FILE))?;
    let insert = conn.transaction()?;
    for id in 1..=5_000i64 {
        insert.execute(
            "INSERT INTO messages (room, id, ts, username, message) VALUES ('lobby', ?1, ?1, 'bob', 'a line of the export')",
            [id],
        )?;
    }
    insert.commit()?;
    drop(conn);
    let mut export = tokio::process::Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(["--data-dir", &dir.path().display().to_string(), "export"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = export.stdout.take().context("stdout")?;
    let mut first = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut first)
        .await?;
    assert!(first.contains("\"id\":1"), "{first}");
    // The reader goes away (dropped with the BufReader above).
    let exited = tokio::time::timeout(Duration::from_secs(30), export.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&exited.stderr);
    assert!(exited.status.success(), "{:?}: {stderr}", exited.status);
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    Ok(())
}
