//! What the SQLite history does when its disk or file fails: a clear refusal at start, or
//! `unavailable` for messages while it lasts (never an ack for a message it did not store),
//! and recovery once it clears.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use banter::store::schema::DB_FILE;
use common::{Exited, TestClient, TestServer, TmpfsMount, run_banter};
use rust_socketio::TransportType;
use serde_json::{Value, json};

/// Longest a refused start-up may take: the wait for a lock held elsewhere is 5 s.
const START_REFUSAL: Duration = Duration::from_secs(20);

async fn refused_start(data_dir: &Path) -> Result<Exited> {
    let dir = data_dir.display().to_string();
    let exited = run_banter(&["--data-dir", &dir], START_REFUSAL).await?;
    ensure!(
        !exited.status.success(),
        "banter started on a bad data directory: {}",
        exited.stderr
    );
    Ok(exited)
}

fn assert_says(exited: &Exited, words: &str) {
    assert!(
        exited.stderr.contains(words),
        "expected {words:?} in the error; stderr was:\n{}",
        exited.stderr
    );
}

#[tokio::test]
async fn a_data_directory_that_cannot_be_created_is_refused_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory")?;
    let exited = refused_start(&file.join("data")).await?;
    assert_says(&exited, "cannot create the data directory");
    Ok(())
}

#[tokio::test]
async fn a_read_only_data_directory_is_refused_at_start() -> Result<()> {
    // As root, permissions do not stop a write: a read-only file system does.
    let Some(mount) = TmpfsMount::new(256, true)? else {
        return Ok(());
    };
    let exited = refused_start(&mount.path).await?;
    assert_says(&exited, "cannot write in the data directory");
    assert_says(&exited, "Read-only file system");
    Ok(())
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(DB_FILE), vec![0xAB_u8; 16 * 1024])?;
    let exited = refused_start(dir.path()).await?;
    assert_says(&exited, "is not a SQLite database, or it is damaged");
    Ok(())
}

#[tokio::test]
async fn a_damaged_database_is_refused_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().display().to_string();
    let server =
        TestServer::with_args(&["--data-dir", &data_dir, "--message-burst", "100"]).await?;
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    alice.join("alice").await?;
    for i in 0..50 {
        alice
            .call("new message", json!(format!("{i} {}", "x".repeat(500))))
            .await?;
    }
    alice.disconnect().await?;
    server.shutdown().await?;
    // Keep the first page (the header, the schema), overwrite the rest.
    let path = dir.path().join(DB_FILE);
    let mut bytes = std::fs::read(&path)?;
    ensure!(
        bytes.len() > 8192,
        "the database is only {} bytes",
        bytes.len()
    );
    bytes[4096..].fill(0x5A);
    std::fs::write(&path, bytes)?;
    let exited = refused_start(dir.path()).await?;
    assert_says(&exited, "is damaged");
    Ok(())
}

#[tokio::test]
async fn a_database_locked_by_another_process_is_refused_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE))?;
    conn.execute_batch(
        "CREATE TABLE elsewhere (x); BEGIN EXCLUSIVE; INSERT INTO elsewhere VALUES (1);",
    )?;
    let exited = refused_start(dir.path()).await?;
    assert_says(&exited, "is locked by another process");
    conn.execute_batch("COMMIT")?;
    Ok(())
}

#[tokio::test]
async fn a_second_banter_on_the_same_data_directory_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().display().to_string();
    let _first = common::BanterProcess::start(&["--data-dir", &data_dir]).await?;
    let exited = refused_start(dir.path()).await?;
    assert_says(
        &exited,
        "another Banter process is using the data directory",
    );
    Ok(())
}

/// Sends `text` with an ack: `Ok(Some(id))` when stored, `Ok(None)` when refused as unavailable.
async fn send(client: &TestClient, text: &str) -> Result<Option<u64>> {
    let ack = client.call("new message", json!(text)).await?;
    if let Some(id) = ack["id"].as_u64() {
        return Ok(Some(id));
    }
    ensure!(
        ack["error"]["code"] == "unavailable",
        "unexpected answer {ack}"
    );
    Ok(None)
}

/// Every `new message` id that `client` has received so far.
async fn received_ids(client: &mut TestClient) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(300), client.expect("new message"))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("quiet")))
    {
        ids.extend(m["id"].as_u64());
    }
    ids
}

fn history_ids(login: &Value) -> Vec<u64> {
    login["history"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_full_disk_refuses_messages_until_space_is_back_and_acks_only_what_it_stored()
-> Result<()> {
    let Some(mount) = TmpfsMount::new(1024, false)? else {
        return Ok(());
    };
    let data_dir = mount.path.join("data").display().to_string();
    let args = [
        "--data-dir",
        &data_dir,
        "--message-burst",
        "1000",
        "--message-rate",
        "1000",
    ];
    let server = TestServer::with_args(&args).await?;
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut bob = TestClient::connect(&server, TransportType::Websocket).await?;
    alice.join("alice").await?;
    bob.join("bob").await?;
    let mut acked = Vec::new();
    for i in 0..3 {
        acked.push(
            send(&alice, &format!("before {i}"))
                .await?
                .context("refused")?,
        );
    }

    let filler = mount.fill()?;
    let mut refused = 0;
    for i in 0..50 {
        match send(&alice, &format!("full {i} {}", "y".repeat(1_000))).await? {
            Some(id) => acked.push(id),
            None => refused += 1,
        }
        if refused >= 3 {
            break;
        }
    }
    assert!(refused >= 3, "nothing was refused on a full disk");
    let ready = reqwest::get(format!("{}/readyz", server.url)).await?;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await?;
    assert_eq!(ready["history"], "sqlite");
    assert_eq!(ready["historyWritable"], false);

    std::fs::remove_file(&filler)?;
    let mut back = None;
    for _ in 0..20 {
        if let Some(id) = send(&alice, "space again").await? {
            back = Some(id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acked.push(back.context("messages still refused once space was back")?);
    let ready = reqwest::get(format!("{}/readyz", server.url)).await?;
    assert_eq!(ready.status(), 200);

    // Bob received exactly the stored messages, in order; nothing refused reached him.
    assert_eq!(received_ids(&mut bob).await, acked);
    alice.disconnect().await?;
    bob.disconnect().await?;
    server.shutdown().await?;

    let server = TestServer::with_args(&args).await?;
    let mut carol = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = carol.join("carol").await?;
    assert_eq!(history_ids(&login), acked, "the history is what was acked");
    Ok(())
}

#[tokio::test]
async fn a_lock_taken_while_serving_refuses_messages_until_it_is_released() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().display().to_string();
    let server = TestServer::with_args(&["--data-dir", &data_dir]).await?;
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    alice.join("alice").await?;
    let first = send(&alice, "before").await?.context("refused")?;

    let other = rusqlite::Connection::open(dir.path().join(DB_FILE))?;
    other.execute_batch("BEGIN IMMEDIATE; DELETE FROM messages WHERE 0;")?;
    assert_eq!(send(&alice, "while locked").await?, None);
    other.execute_batch("COMMIT")?;
    let after = send(&alice, "after").await?.context("still refused")?;
    assert!(after > first);

    let mut bob = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = bob.join("bob").await?;
    assert_eq!(history_ids(&login), [first, after]);
    Ok(())
}
