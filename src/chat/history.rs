//! Message history: ids, timestamps and the last N messages of each room.

use serde::Serialize;

use super::StoreFuture;

/// A message as stored and as broadcast: the classic `{username, message}` plus `id` and `ts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    pub id: u64,
    pub ts: u64,
    pub username: String,
    pub message: String,
}

/// The outcome of `History::append`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub message: StoredMessage,
    /// True when the store has handed the message on for delivery, in id order (to this
    /// instance's delivery task, or to every instance through Redis); false when the caller must
    /// broadcast it (a store made with `MemoryHistory::new`, or Redis unreachable).
    pub published: bool,
    /// False when the message could not be stored and reaches only this instance's sockets
    /// (Redis unreachable): the sender's ack says so.
    pub stored: bool,
}

/// What a joining client is sent: messages oldest first, and whether they are all it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    pub complete: bool,
}

/// Where messages are stored. One implementation per deployment, chosen at start-up.
pub trait History: Send + Sync + 'static {
    /// Stores a message and assigns its id (greater than every earlier id of the room) and `ts`.
    /// `sender` is the sending connection, for stores that also publish (see `publishes`).
    fn append<'a>(
        &'a self,
        room: &'a str,
        sender: &'a str,
        username: &'a str,
        message: &'a str,
    ) -> StoreFuture<'a, Appended>;

    /// The messages after `last_id` (at most `limit`, the newest ones), or the last `limit`
    /// messages when `last_id` is `None`.
    fn page<'a>(
        &'a self,
        room: &'a str,
        last_id: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, HistoryPage>;

    /// How many messages the room's history holds now (for the metrics).
    fn len<'a>(&'a self, room: &'a str) -> StoreFuture<'a, usize>;

    /// True when `append` normally delivers the message itself (see `Appended::published`): the
    /// caller then need not hold the per-chat order lock, which only serves its own broadcasts.
    fn publishes(&self) -> bool {
        false
    }
}

/// Ids are derived from the clock (milliseconds × 1000, plus a counter within a millisecond) so
/// that they keep increasing across restarts of the process; a client holding an id from before a
/// restart is then told that history is incomplete rather than silently given nothing.
pub const IDS_PER_MILLI: u64 = 1_000;

/// The next id of a room: the clock-derived id, or one more than the last, whichever is greater.
pub fn next_id(last_id: u64, now_ms: u64) -> u64 {
    (last_id + 1).max(now_ms.saturating_mul(IDS_PER_MILLI))
}

/// The page rule shared by every store: newest `limit` messages after `last_id`, complete only
/// when nothing after `last_id` is missing from what is returned.
pub fn select_page<'m>(
    messages: impl IntoIterator<Item = &'m StoredMessage, IntoIter: DoubleEndedIterator>,
    floor: u64,
    last_id: Option<u64>,
    limit: usize,
) -> HistoryPage {
    let after = last_id.unwrap_or(0);
    let mut newest_first: Vec<StoredMessage> = messages
        .into_iter()
        .rev()
        .take_while(|m| m.id > after)
        .take(limit.saturating_add(1))
        .cloned()
        .collect();
    let truncated = newest_first.len() > limit;
    newest_first.truncate(limit);
    newest_first.reverse();
    let complete = match last_id {
        None => true,
        Some(id) => id >= floor && !truncated,
    };
    HistoryPage {
        messages: newest_first,
        complete,
    }
}
