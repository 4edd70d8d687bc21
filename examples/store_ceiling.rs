//! The history store's own ceiling: how many messages per second it accepts (acks) when many
//! senders append as fast as their acks come back, with no network and no fan-out in the way.
//!
//! ```sh
//! cargo run --release --example store_ceiling -- --senders 50 --seconds 5
//! cargo run --release --example store_ceiling -- --senders 50 --seconds 5 --store memory
//! ```
//!
//! Each sender keeps one message in flight, as a client that waits for its ack does. SQLite
//! goes to a new directory under `--dir` (default: the system's temporary directory), removed
//! afterwards. Prints one JSON line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use banter::chat::{History, LOBBY};
use banter::config::{StoreKind, SyncMode};
use banter::store::MemoryHistory;
use banter::store::{SqliteHistory, SqliteOptions};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Concurrent senders, one message in flight each.
    #[arg(long, default_value_t = 50)]
    senders: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// Where the SQLite data directory is made.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// When a commit is synced (as --sqlite-sync).
    #[arg(long, value_enum, default_value_t = SyncMode::Full)]
    sync: SyncMode,
    /// Characters per message.
    #[arg(long, default_value_t = 60)]
    chars: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let parent = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let mut groups = None;
    let history: Arc<dyn History> = match args.store {
        StoreKind::Memory => Arc::new(MemoryHistory::new(100)),
        StoreKind::Sqlite => {
            let options = SqliteOptions {
                data_dir: parent.path().join("data"),
                recent_len: 100,
                retain_messages: 10_000,
                retain_age: None,
                sync: args.sync,
            };
            let (store, mut committed) =
                tokio::task::spawn_blocking(move || SqliteHistory::open(&options)).await??;
            // Stands in for the delivery task: counts the committed groups.
            groups = Some(tokio::spawn(async move {
                let (mut count, mut messages) = (0_u64, 0_u64);
                while let Some(group) = committed.recv().await {
                    count += 1;
                    messages += group.len() as u64;
                }
                (count, messages)
            }));
            Arc::new(store)
        }
    };
    let text = "x".repeat(args.chars);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for s in 0..args.senders {
        let history = history.clone();
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            let sender = format!("s{s}");
            let mut latencies_us = Vec::new();
            while Instant::now() < end {
                let sent = Instant::now();
                history
                    .append(LOBBY, &sender, &sender, &text)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                latencies_us.push(sent.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latencies_us)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(history);
    let (groups, grouped) = match groups {
        Some(task) => task.await.context("group counter")?,
        None => (0, 0),
    };
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let accepted = latencies.len();
    println!(
        "{}",
        serde_json::json!({
            "store": format!("{:?}", args.store).to_lowercase(),
            "senders": args.senders,
            "seconds": elapsed,
            "accepted": accepted,
            "accepted_per_s": (accepted as f64 / elapsed).round(),
            "ack_p50_us": pct(0.5),
            "ack_p99_us": pct(0.99),
            "commits": groups,
            "messages_per_commit": if groups > 0 { grouped as f64 / groups as f64 } else { 0.0 },
        })
    );
    Ok(())
}
