//! Where a single instance (no Redis) keeps its message history: in SQLite, in a data directory,
//! by default, or in memory (`--store memory`). With Redis, history lives in Redis
//! (`crate::store::redis`) and nothing here is used.
//!
//! This module knows nothing of Socket.IO: both stores hand each stored message to the server as
//! a stream (`CommittedStream`), in id order, and the server's one delivery task broadcasts them
//! to the room's sockets.

mod recent;
pub mod redis;
pub mod schema;
mod sqlite;
pub mod tools;

use std::sync::Arc;

use anyhow::Context;

pub use sqlite::{SqliteHistory, SqliteOptions, StoreHealth};

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use tokio::sync::mpsc;

use crate::chat::{History, StoredMessage};

pub use memory::{MemoryHistory, MemoryPresence};
pub mod memory;

/// A stored message on its way to the room's sockets on this instance.
#[derive(Debug, Clone)]
pub struct Committed {
    pub room: String,
    /// The sending connection, which does not get its own message back.
    pub sender: String,
    pub message: StoredMessage,
}

/// Stored messages, in groups, in id order: the server delivers them to local sockets.
pub type CommittedStream = mpsc::Receiver<Vec<Committed>>;

/// Groups of stored messages that may wait for the delivery task before the store waits for it
/// (and, with it, the senders).
const MAX_QUEUED_DELIVERIES: usize = 1_024;

/// When a SQLite commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// Every commit is synced before its messages are acked: an acked message survives a
    /// crash of the process and a power cut of the host.
    Full,
    /// Commits are synced at checkpoints only: an acked message survives a crash of the
    /// process (kill -9), but the last commits before a power cut or a crash of the host may be
    /// lost (never half-written).
    Normal,
}

/// Where a single instance keeps its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Memory,
}

/// What the history of a single instance is kept in, and how (from the settings).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub kind: StoreKind,
    pub data_dir: PathBuf,
    /// Messages sent on join, and kept in memory for it.
    pub history_len: usize,
    pub retain_messages: u64,
    pub retain_age: Option<Duration>,
    pub sync: SyncMode,
}

/// The history a single instance uses, chosen once at start-up.
pub struct LocalStore {
    pub history: Arc<dyn History>,
    /// Stored messages for the server to deliver, in id order.
    pub committed: Option<CommittedStream>,
    sqlite: Option<Arc<SqliteHistory>>,
}

impl LocalStore {
    /// Opens the store that `--store` names. SQLite's start-up (creating the directory,
    /// migrating, loading recent messages) runs on a blocking thread.
    pub async fn open(options: &StoreOptions) -> anyhow::Result<Self> {
        match options.kind {
            StoreKind::Memory => {
                tracing::info!("history in memory (lost when the process stops)");
                let (history, committed) = MemoryHistory::publishing(options.history_len);
                Ok(Self {
                    history: Arc::new(history),
                    committed: Some(committed),
                    sqlite: None,
                })
            }
            StoreKind::Sqlite => {
                let options = SqliteOptions {
                    data_dir: options.data_dir.clone(),
                    recent_len: options.history_len,
                    retain_messages: options.retain_messages,
                    retain_age: options.retain_age,
                    sync: options.sync,
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
