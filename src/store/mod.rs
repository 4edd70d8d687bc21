//! Where a single instance (no Redis) keeps its message history: in SQLite, in a data directory,
//! by default, or in memory (`--store memory`). With Redis, history lives in Redis
//! (`crate::cluster`) and nothing here is used.
//!
//! This module knows nothing of Socket.IO: the SQLite store hands committed messages to the
//! server as a stream (`CommittedStream`), and the server delivers them to the room's sockets.

mod recent;
pub mod schema;
mod sqlite;
pub mod tools;

use std::sync::Arc;

use anyhow::Context;

pub use sqlite::{Committed, CommittedStream, SqliteHistory, SqliteOptions, StoreHealth};

use crate::chat::{History, MemoryHistory};
use crate::config::{Command, Config, StoreKind};

/// The history a single instance uses, chosen once at start-up.
pub struct LocalStore {
    pub history: Arc<dyn History>,
    /// Committed messages for the server to deliver, in id order (SQLite only: with the
    /// in-memory store the sender's handler broadcasts).
    pub committed: Option<CommittedStream>,
    sqlite: Option<Arc<SqliteHistory>>,
}

impl LocalStore {
    /// Opens the store that `--store` names. SQLite's start-up (creating the directory,
    /// migrating, loading recent messages) runs on a blocking thread.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        match config.store {
            StoreKind::Memory => {
                tracing::info!("history in memory (lost when the process stops)");
                Ok(Self {
                    history: Arc::new(MemoryHistory::new(config.history_len)),
                    committed: None,
                    sqlite: None,
                })
            }
            StoreKind::Sqlite => {
                let options = SqliteOptions {
                    data_dir: config.data_dir.clone(),
                    recent_len: config.history_len,
                    retain_messages: config.retain_messages,
                    retain_age: config.retain_age(),
                    sync: config.sqlite_sync,
                };
                let (store, committed) =
                    tokio::task::spawn_blocking(move || SqliteHistory::open(&options))
                        .await
                        .context("the history store's start-up panicked")??;
                let store = Arc::new(store);
                Ok(Self {
                    history: store.clone(),
                    committed: Some(committed),
                    sqlite: Some(store),
                })
            }
        }
    }

    /// The SQLite store's health, for readiness; `None` for the in-memory store.
    pub fn health(&self) -> Option<Arc<StoreHealth>> {
        self.sqlite.as_ref().map(|s| s.health())
    }

    /// Commits what is queued and closes the database (nothing to do in memory).
    pub async fn close(&self) {
        if let Some(store) = &self.sqlite {
            store.close().await;
        }
    }
}

/// Runs a command of `banter` other than serving (`backup`, `export`).
pub fn run_command(command: &Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Backup { path } => {
            let report = tools::backup(&config.data_dir, path)?;
            tracing::info!(
                path = %report.path.display(),
                messages = report.messages,
                rooms = report.rooms,
                bytes = report.bytes,
                "backup written"
            );
        }
        Command::Export { room, out } => {
            let count = match out {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    tools::export(&config.data_dir, room, &mut std::io::BufWriter::new(file))?
                }
                None => tools::export(&config.data_dir, room, &mut std::io::stdout().lock())?,
            };
            tracing::info!(room, messages = count, "exported");
        }
    }
    Ok(())
}
