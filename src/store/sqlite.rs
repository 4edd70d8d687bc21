//! The SQLite history: a `History` whose appends are committed to disk before they are acked,
//! in groups, by one writer thread.
//!
//! Handlers send append requests over a channel. The writer takes everything queued (up to
//! `MAX_BATCH`), gives the messages their ids in order, inserts them in one transaction and
//! commits (one fsync for the group), then hands the group to the delivery stream, in id order,
//! and answers each request. Under load, requests pile up while a commit runs and the next
//! commit takes them all: durability costs one fsync per group, not per message.
//!
//! Reads never touch the disk: the newest messages of each room are kept in memory (`Recent`),
//! loaded at start and updated after each commit.
//!
//! Retention (a count and an age per room) is the writer's too: between groups it deletes the
//! oldest messages, at most `PRUNE_CHUNK` per transaction, so that catching up on a large excess
//! (after lowering a limit, or after days stopped) never stalls the chat.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::recent::{Recent, RoomRecent};
use super::schema::{self, DB_FILE};
use crate::chat::{
    Appended, ChatError, History, HistoryPage, IDS_PER_MILLI, StoreFuture, StoredMessage, next_id,
    now_millis,
};
use crate::store::{Committed, CommittedStream, SyncMode};

/// Most messages committed in one transaction: bounds the wait of the first one in a group.
const MAX_BATCH: usize = 1_024;

/// Appends that may wait for the writer; a handler beyond this waits for a place.
const MAX_QUEUED_APPENDS: usize = 16_384;

/// At start, how long to wait for a lock held by another process before saying so.
const START_LOCK_WAIT: Duration = Duration::from_secs(5);

/// While serving, how long a commit waits for a lock held by another process before the group
/// is refused (`unavailable`). Appends queue behind it meanwhile.
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Most messages one retention step deletes (in its own transaction).
const PRUNE_CHUNK: u64 = 500;

/// How often an idle writer checks the age limit; also the longest that an excess below
/// `PRUNE_CHUNK` waits under constant load, and the pause after a failed retention step.
const RETAIN_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The file in the data directory that one Banter process holds locked while it uses it.
const LOCK_FILE: &str = "banter.lock";

/// Where and how much to keep.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub data_dir: PathBuf,
    /// Messages per room kept in memory and sent on join (`--history-len`).
    pub recent_len: usize,
    /// Messages kept per room on disk; older ones are deleted.
    pub retain_messages: u64,
    /// Messages older than this are deleted; `None` keeps them (the count still bounds them).
    pub retain_age: Option<Duration>,
    /// When a commit is synced to disk.
    pub sync: SyncMode,
}

/// Whether the last commit worked, for readiness and for logging an outage once.
#[derive(Debug)]
pub struct StoreHealth {
    up: AtomicBool,
}

impl StoreHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

struct Append {
    room: String,
    sender: String,
    username: String,
    message: String,
    reply: oneshot::Sender<Result<StoredMessage, ChatError>>,
    /// The request's place in the queue, given back once it is answered.
    _place: OwnedSemaphorePermit,
}

enum Request {
    Append(Append),
    /// Finish what is queued, checkpoint, close the file.
    Close,
}

/// The SQLite-backed `History`.
pub struct SqliteHistory {
    requests: std_mpsc::Sender<Request>,
    places: Arc<Semaphore>,
    recent: Arc<Recent>,
    health: Arc<StoreHealth>,
    path: PathBuf,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SqliteHistory {
    /// Opens (creating if needed) the database in the data directory, migrates it, loads the
    /// recent messages and starts the writer. Blocking: call it off the async workers. Returns
    /// the store and the stream of committed messages that the caller must deliver.
    pub fn open(options: &SqliteOptions) -> anyhow::Result<(Self, CommittedStream)> {
        let dir = &options.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let lock = hold_directory(dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = schema::open(&path, true, START_LOCK_WAIT, options.sync)
            .map_err(|err| schema::explain(&path, &err))
            .context("cannot open the history database")?;
        schema::migrate(&path, &mut conn)?;
        let loaded = load(&conn, options.recent_len)
            .map_err(|err| schema::explain(&path, &err))
            .context("cannot read the history database")?;
        conn.busy_timeout(WRITE_LOCK_WAIT)?;

        let recent = Arc::new(Recent::new(options.recent_len, loaded.default_floor));
        let mut rooms = HashMap::new();
        let mut total = 0;
        for (room, state) in loaded.rooms {
            total += state.retained;
            recent.load(&room, state.recent);
            rooms.insert(
                room,
                RoomState {
                    last_id: state.last_id,
                    retained: state.retained,
                    oldest: state.oldest,
                    has_row: true,
                },
            );
        }
        tracing::info!(path = %path.display(), messages = total, "history in SQLite");

        let health = Arc::new(StoreHealth {
            up: AtomicBool::new(true),
        });
        let (requests, queue) = std_mpsc::channel();
        let (delivery, committed) = mpsc::channel(super::MAX_QUEUED_DELIVERIES);
        let writer = Writer {
            conn,
            path: path.clone(),
            retain_messages: options.retain_messages,
            retain_age: options.retain_age,
            last_prune: Instant::now(),
            retention_paused_until: None,
            default_floor: loaded.default_floor,
            rooms,
            recent: recent.clone(),
            delivery,
            health: health.clone(),
            _lock: lock,
        };
        let thread = std::thread::Builder::new()
            .name("banter-store".into())
            .spawn(move || writer.run(queue))
            .context("cannot start the history writer thread")?;
        Ok((
            Self {
                requests,
                places: Arc::new(Semaphore::new(MAX_QUEUED_APPENDS)),
                recent,
                health,
                path,
                writer: Mutex::new(Some(thread)),
            },
            committed,
        ))
    }

    pub fn health(&self) -> Arc<StoreHealth> {
        self.health.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits what is queued, closes the database and waits for the writer to finish. Appends
    /// after this fail with `unavailable`.
    pub async fn close(&self) {
        let _ = self.requests.send(Request::Close);
        let thread = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Holds the data directory's lock file for as long as the returned file is open: two Banter
/// processes writing one database would each give out ids the other does not know.
fn hold_directory(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot write in the data directory {} (is it writable by this user, and is \
                 there space on its disk?)",
                dir.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another Banter process is using the data directory {}: give each instance its \
             own, or use Redis to run several (docs/scaling.md)",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

impl History for SqliteHistory {
    fn append<'a>(
        &'a self,
        room: &'a str,
        sender: &'a str,
        username: &'a str,
        message: &'a str,
    ) -> StoreFuture<'a, Appended> {
        Box::pin(async move {
            let place = self
                .places
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ChatError::unavailable())?;
            let (reply, answer) = oneshot::channel();
            let request = Request::Append(Append {
                room: room.to_owned(),
                sender: sender.to_owned(),
                username: username.to_owned(),
                message: message.to_owned(),
                reply,
                _place: place,
            });
            self.requests
                .send(request)
                .map_err(|_| ChatError::unavailable())?;
            let message = answer.await.map_err(|_| ChatError::unavailable())??;
            Ok(Appended {
                message,
                published: true,
                stored: true,
            })
        })
    }

    fn page<'a>(
        &'a self,
        room: &'a str,
        last_id: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, HistoryPage> {
        let page = self.recent.page(room, last_id, limit);
        Box::pin(async move { Ok(page) })
    }

    fn len<'a>(&'a self, room: &'a str) -> StoreFuture<'a, usize> {
        let len = self.recent.len(room);
        Box::pin(async move { Ok(len) })
    }

    /// The writer hands committed messages to the delivery stream in id order.
    fn publishes(&self) -> bool {
        true
    }
}

/// What the database holds, as read at start.
struct Loaded {
    default_floor: u64,
    rooms: Vec<(String, LoadedRoom)>,
}

struct LoadedRoom {
    recent: RoomRecent,
    last_id: u64,
    retained: u64,
    oldest: Option<u64>,
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn load(conn: &Connection, recent_len: usize) -> rusqlite::Result<Loaded> {
    let created_ms: i64 = conn.query_row(
        "SELECT value FROM meta WHERE key = 'created_ms'",
        [],
        |row| row.get(0),
    )?;
    let default_floor = to_u64(created_ms).saturating_mul(IDS_PER_MILLI);
    let floors: Vec<(String, i64)> = conn
        .prepare("SELECT room, floor FROM rooms")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut newest = conn.prepare(
        "SELECT id, ts, username, message FROM messages WHERE room = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let mut rooms = Vec::new();
    for (room, floor) in floors {
        let floor = to_u64(floor).max(default_floor);
        let mut rows: Vec<StoredMessage> = newest
            .query_map(params![room, to_i64(recent_len as u64 + 1)], |row| {
                Ok(StoredMessage {
                    id: to_u64(row.get(0)?),
                    ts: to_u64(row.get(1)?),
                    username: row.get(2)?,
                    message: row.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        // Retention may have deleted every message: the floor is then the last id given.
        let last_id = rows.first().map_or(floor, |m| m.id.max(floor));
        let older = (rows.len() > recent_len)
            .then(|| rows.pop().map(|m| m.id))
            .flatten();
        rows.reverse();
        let (retained, oldest): (i64, Option<i64>) = conn.query_row(
            "SELECT count(*), min(id) FROM messages WHERE room = ?1",
            [&room],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        rooms.push((
            room,
            LoadedRoom {
                recent: RoomRecent {
                    messages: rows.into(),
                    floor,
                    older,
                },
                last_id,
                retained: to_u64(retained),
                oldest: oldest.map(to_u64),
            },
        ));
    }
    Ok(Loaded {
        default_floor,
        rooms,
    })
}

/// The writer thread's own state.
struct Writer {
    conn: Connection,
    path: PathBuf,
    retain_messages: u64,
    retain_age: Option<Duration>,
    /// When the last retention step ran.
    last_prune: Instant,
    /// After a failed retention step, none until then (the disk may be full: deleting needs
    /// room in the WAL too).
    retention_paused_until: Option<Instant>,
    default_floor: u64,
    rooms: HashMap<String, RoomState>,
    recent: Arc<Recent>,
    delivery: mpsc::Sender<Vec<Committed>>,
    health: Arc<StoreHealth>,
    /// The data directory's lock, released when the writer ends.
    _lock: File,
}

struct RoomState {
    /// The last id given in the room (committed or not: ids never go backwards).
    last_id: u64,
    /// Messages stored.
    retained: u64,
    /// The oldest stored id.
    oldest: Option<u64>,
    /// The room has its row in `rooms`.
    has_row: bool,
}

/// What one retention step is to delete in a room: ids up to this one.
fn prune_bound(
    conn: &Connection,
    room: &str,
    excess: u64,
    age_cutoff: Option<u64>,
) -> rusqlite::Result<Option<u64>> {
    let mut bound = None;
    if excess > 0 {
        let offset = to_i64(excess.min(PRUNE_CHUNK) - 1);
        let by_count: i64 = conn
            .prepare_cached(
                "SELECT id FROM messages WHERE room = ?1 ORDER BY id LIMIT 1 OFFSET ?2",
            )?
            .query_row(params![room, offset], |row| row.get(0))?;
        bound = Some(to_u64(by_count));
    }
    if let Some(cutoff) = age_cutoff {
        // Ids are at least the sending time × 1000, so an id below the cutoff's is older than
        // the cutoff; the primary key finds them without reading the rows.
        let by_age: Option<i64> = conn
            .prepare_cached(
                "SELECT max(id) FROM (SELECT id FROM messages WHERE room = ?1 AND id < ?2 \
                 ORDER BY id LIMIT ?3)",
            )?
            .query_row(params![room, to_i64(cutoff), to_i64(PRUNE_CHUNK)], |row| {
                row.get(0)
            })?;
        bound = bound.max(by_age.map(to_u64));
    }
    Ok(bound)
}

impl Writer {
    fn run(mut self, queue: std_mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(MAX_BATCH);
        let mut closing = false;
        while !closing {
            // Idle: retention gets the time, one step at a time, between arrivals.
            let wait = match self.retention_due() {
                true => Duration::ZERO,
                false => RETAIN_CHECK_EVERY,
            };
            match queue.recv_timeout(wait) {
                Ok(Request::Append(append)) => group.push(append),
                Ok(Request::Close) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    self.retain_step();
                    continue;
                }
            }
            while group.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(Request::Append(append)) => group.push(append),
                    Ok(Request::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(std::mem::take(&mut group));
            // Under constant load the queue is never empty: a step now and then, or at once
            // when the excess is a whole chunk, keeps the rooms within their limits.
            if self.retention_due()
                && (self.last_prune.elapsed() >= RETAIN_CHECK_EVERY || self.excess_is_large())
            {
                self.retain_step();
            }
        }
        // Leave a single file behind: the WAL folded into the database.
        if let Err(err) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(%err, "could not checkpoint the history database on close");
        }
        tracing::info!("history database closed");
    }

    /// Gives the group its ids, commits it, then delivers and acks it; or refuses all of it.
    fn commit(&mut self, group: Vec<Append>) {
        let now = now_millis();
        let mut committed = Vec::with_capacity(group.len());
        for append in &group {
            let room = self.rooms.entry(append.room.clone()).or_insert(RoomState {
                last_id: self.default_floor,
                retained: 0,
                oldest: None,
                has_row: false,
            });
            let id = next_id(room.last_id, now);
            room.last_id = id;
            committed.push(Committed {
                room: append.room.clone(),
                sender: append.sender.clone(),
                message: StoredMessage {
                    id,
                    ts: now,
                    username: append.username.clone(),
                    message: append.message.clone(),
                },
            });
        }
        match self.write(&committed) {
            Ok(()) => {
                if !self.health.up.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), "the history database accepts messages again");
                }
                // The window first: a client joining from now on either finds a message there
                // or, being subscribed already, receives it from the delivery below.
                for c in &committed {
                    self.recent.push(&c.room, [c.message.clone()]);
                    if let Some(room) = self.rooms.get_mut(&c.room) {
                        room.retained += 1;
                        room.oldest.get_or_insert(c.message.id);
                        room.has_row = true;
                    }
                }
                let acks: Vec<StoredMessage> =
                    committed.iter().map(|c| c.message.clone()).collect();
                // Blocks while the delivery task is this far behind: commits then slow down to
                // its pace instead of queueing without bound. An error means the server is
                // stopping and delivers nothing more.
                let _ = self.delivery.blocking_send(committed);
                for (append, message) in group.into_iter().zip(acks) {
                    let _ = append.reply.send(Ok(message));
                }
            }
            Err(err) => {
                if self.health.up.swap(false, Ordering::Relaxed) {
                    tracing::error!(
                        "{:#}; messages are refused (unavailable) until it clears",
                        schema::explain(&self.path, &err)
                    );
                } else {
                    tracing::debug!(%err, "the history database still refuses messages");
                }
                for append in group {
                    let _ = append.reply.send(Err(ChatError::unavailable()));
                }
            }
        }
    }

    fn write(&mut self, committed: &[Committed]) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (room, id, ts, username, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for c in committed {
                let m = &c.message;
                insert.execute(params![
                    c.room,
                    to_i64(m.id),
                    to_i64(m.ts),
                    m.username,
                    m.message
                ])?;
            }
            let mut new_room =
                tx.prepare_cached("INSERT OR IGNORE INTO rooms (room, floor) VALUES (?1, ?2)")?;
            for c in committed {
                if self.rooms.get(&c.room).is_some_and(|r| !r.has_row) {
                    new_room.execute(params![c.room, to_i64(self.default_floor)])?;
                }
            }
        }
        tx.commit()
    }

    /// The id below which messages are past the age limit, now.
    fn age_cutoff(&self) -> Option<u64> {
        let age = u64::try_from(self.retain_age?.as_millis()).unwrap_or(u64::MAX);
        Some(
            now_millis()
                .saturating_sub(age)
                .saturating_mul(IDS_PER_MILLI),
        )
    }

    fn room_due(&self, room: &RoomState, cutoff: Option<u64>) -> bool {
        room.retained > self.retain_messages
            || matches!((room.oldest, cutoff), (Some(oldest), Some(cutoff)) if oldest < cutoff)
    }

    fn retention_due(&self) -> bool {
        if self
            .retention_paused_until
            .is_some_and(|until| Instant::now() < until)
        {
            return false;
        }
        let cutoff = self.age_cutoff();
        self.rooms.values().any(|room| self.room_due(room, cutoff))
    }

    fn excess_is_large(&self) -> bool {
        self.rooms
            .values()
            .any(|room| room.retained >= self.retain_messages + PRUNE_CHUNK)
    }

    /// Deletes at most `PRUNE_CHUNK` of the oldest messages of one room that is over a limit.
    fn retain_step(&mut self) {
        self.last_prune = Instant::now();
        let cutoff = self.age_cutoff();
        let Some(room) = self
            .rooms
            .iter()
            .find(|(_, state)| self.room_due(state, cutoff))
            .map(|(room, _)| room.clone())
        else {
            return;
        };
        match self.prune(&room, cutoff) {
            Ok(true) => self.retention_paused_until = None,
            Ok(false) => {
                // Nothing to delete after all: do not spin on it.
                self.retention_paused_until = Some(Instant::now() + RETAIN_CHECK_EVERY);
            }
            Err(err) => {
                tracing::warn!(
                    "{:#}; old messages are kept for now",
                    schema::explain(&self.path, &err)
                );
                self.retention_paused_until = Some(Instant::now() + RETAIN_CHECK_EVERY);
            }
        }
    }

    /// One retention step in `room`; false when it found nothing to delete.
    fn prune(&mut self, room: &str, cutoff: Option<u64>) -> rusqlite::Result<bool> {
        let Some(state) = self.rooms.get(room) else {
            return Ok(false);
        };
        let excess = state.retained.saturating_sub(self.retain_messages);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(up_to) = prune_bound(&tx, room, excess, cutoff)? else {
            return Ok(false);
        };
        let deleted = tx
            .prepare_cached("DELETE FROM messages WHERE room = ?1 AND id <= ?2")?
            .execute(params![room, to_i64(up_to)])?;
        tx.prepare_cached("UPDATE rooms SET floor = max(floor, ?2) WHERE room = ?1")?
            .execute(params![room, to_i64(up_to)])?;
        let oldest: Option<i64> = tx
            .prepare_cached("SELECT min(id) FROM messages WHERE room = ?1")?
            .query_row([room], |row| row.get(0))?;
        tx.commit()?;
        if let Some(state) = self.rooms.get_mut(room) {
            state.retained = state.retained.saturating_sub(deleted as u64);
            state.oldest = oldest.map(to_u64);
        }
        self.recent.pruned(room, up_to);
        tracing::debug!(room, deleted, up_to, "retention deleted old messages");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, recent_len: usize) -> SqliteOptions {
        SqliteOptions {
            data_dir: dir.to_owned(),
            recent_len,
            retain_messages: 10_000,
            retain_age: None,
            sync: SyncMode::Full,
        }
    }

    async fn send(store: &SqliteHistory, text: &str) -> StoredMessage {
        store.append("r", "c", "bob", text).await.unwrap().message
    }

    #[tokio::test]
    async fn messages_survive_a_restart_and_ids_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut committed) = SqliteHistory::open(&options(dir.path(), 3)).unwrap();
        let mut sent = Vec::new();
        for i in 0..5 {
            sent.push(send(&store, &format!("m{i}")).await);
        }
        assert!(sent.windows(2).all(|w| w[0].id < w[1].id));
        let delivered: Vec<u64> = std::iter::from_fn(|| committed.try_recv().ok())
            .flatten()
            .map(|c| c.message.id)
            .collect();
        assert_eq!(delivered, sent.iter().map(|m| m.id).collect::<Vec<_>>());
        store.close().await;
        drop(store);

        let (store, _committed) = SqliteHistory::open(&options(dir.path(), 3)).unwrap();
        let page = store.page("r", None, 3).await.unwrap();
        assert_eq!(page.messages, sent[2..]);
        let page = store.page("r", Some(sent[2].id), 3).await.unwrap();
        assert_eq!(page.messages, sent[3..]);
        assert!(page.complete);
        // sent[1] is stored but beyond the window: a client that missed it is told so.
        assert!(!store.page("r", Some(sent[0].id), 3).await.unwrap().complete);
        let next = send(&store, "after").await;
        assert!(next.id > sent[4].id);
    }

    #[tokio::test]
    async fn concurrent_appends_are_grouped_and_keep_their_order_per_sender() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut committed) = SqliteHistory::open(&options(dir.path(), 100)).unwrap();
        let store = Arc::new(store);
        let mut senders = Vec::new();
        for s in 0..20 {
            let store = store.clone();
            senders.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..20 {
                    let sender = format!("s{s}");
                    let m = store
                        .append("r", &sender, &sender, &format!("{i}"))
                        .await
                        .unwrap();
                    ids.push(m.message.id);
                }
                ids
            }));
        }
        for sender in senders {
            let ids = sender.await.unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
        }
        let mut groups = 0;
        let mut all = Vec::new();
        while let Ok(group) = committed.try_recv() {
            groups += 1;
            all.extend(group.into_iter().map(|c| c.message.id));
        }
        assert_eq!(all.len(), 400);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "delivered in id order");
        assert!(
            groups < 400,
            "some commits held several messages ({groups} groups)"
        );
    }

    fn stored_ids(dir: &Path) -> Vec<u64> {
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        let mut select = conn
            .prepare("SELECT id FROM messages WHERE room = 'r' ORDER BY id")
            .unwrap();
        select
            .query_map([], |row| row.get::<_, i64>(0))
            .unwrap()
            .map(|id| to_u64(id.unwrap()))
            .collect()
    }

    /// Waits for the writer's retention to leave `n` messages.
    async fn until_stored(dir: &Path, n: usize) -> Vec<u64> {
        for _ in 0..100 {
            let ids = stored_ids(dir);
            if ids.len() == n {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("still {} messages stored, not {n}", stored_ids(dir).len());
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_by_count_and_moves_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            retain_messages: 5,
            ..options(dir.path(), 3)
        };
        let (store, _c) = SqliteHistory::open(&opts).unwrap();
        let mut sent = Vec::new();
        for i in 0..12 {
            sent.push(send(&store, &format!("m{i}")).await);
        }
        let ids = until_stored(dir.path(), 5).await;
        assert_eq!(ids, sent[7..].iter().map(|m| m.id).collect::<Vec<_>>());
        // Missed only what the window holds: complete.
        let page = store.page("r", Some(sent[8].id), 3).await.unwrap();
        assert_eq!(page.messages, sent[9..]);
        assert!(page.complete);
        // Missed a stored message beyond the window (sent[8]), or a deleted one (sent[6]).
        assert!(!store.page("r", Some(sent[7].id), 3).await.unwrap().complete);
        assert!(!store.page("r", Some(sent[5].id), 3).await.unwrap().complete);
        store.close().await;
        drop(store);

        let (store, _c) = SqliteHistory::open(&opts).unwrap();
        assert!(store.page("r", Some(sent[8].id), 3).await.unwrap().complete);
        assert!(!store.page("r", Some(sent[5].id), 3).await.unwrap().complete);
        assert!(send(&store, "next").await.id > sent[11].id);
    }

    #[tokio::test]
    async fn retention_deletes_what_is_older_than_the_age_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _c) = SqliteHistory::open(&options(dir.path(), 3)).unwrap();
        send(&store, "today").await;
        store.close().await;
        drop(store);
        // Written as if sent 40 and 31 days ago (ids are clock-derived).
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let day = 86_400_000_u64;
        for days in [40, 31] {
            let ts = now_millis() - days * day;
            conn.execute(
                "INSERT INTO messages VALUES ('r', ?1, ?2, 'old', 'old')",
                params![to_i64(ts * IDS_PER_MILLI), to_i64(ts)],
            )
            .unwrap();
        }
        drop(conn);
        let opts = SqliteOptions {
            retain_age: Some(Duration::from_secs(30 * 86_400)),
            ..options(dir.path(), 3)
        };
        let (store, _c) = SqliteHistory::open(&opts).unwrap();
        until_stored(dir.path(), 1).await;
        let page = store.page("r", None, 3).await.unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].message, "today");
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, _c) = SqliteHistory::open(&options(dir.path(), 3)).unwrap();
        let err = SqliteHistory::open(&options(dir.path(), 3))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another Banter process"), "{err}");
    }
}
