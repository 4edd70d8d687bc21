//! Message history: ids, timestamps and the last N messages of each room.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use super::{StoreFuture, now_millis};

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
    /// True when the store has already delivered the message to every instance, in id order;
    /// false when the caller must broadcast it (in-process store, or Redis unreachable).
    pub published: bool,
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

/// The in-process history: a bounded ring of the last `capacity` messages per room.
pub struct MemoryHistory {
    capacity: usize,
    /// Ids at or below this were assigned before the store began: we cannot know what they were.
    epoch_floor: u64,
    rooms: Mutex<HashMap<String, RoomHistory>>,
}

struct RoomHistory {
    messages: VecDeque<StoredMessage>,
    last_id: u64,
    /// Every message with an id above `floor` is still held; those at or below it may be gone.
    floor: u64,
}

impl MemoryHistory {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            epoch_floor: now_millis().saturating_mul(IDS_PER_MILLI),
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn with_room<T>(&self, room: &str, f: impl FnOnce(&mut RoomHistory) -> T) -> T {
        // A poisoned lock means a panic elsewhere while holding it; the data is plain values
        // that stay consistent, so keep serving rather than failing every later call.
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let entry = rooms.entry(room.to_owned()).or_insert_with(|| RoomHistory {
            messages: VecDeque::new(),
            last_id: self.epoch_floor,
            floor: self.epoch_floor,
        });
        f(entry)
    }
}

impl History for MemoryHistory {
    fn append<'a>(
        &'a self,
        room: &'a str,
        _sender: &'a str,
        username: &'a str,
        message: &'a str,
    ) -> StoreFuture<'a, Appended> {
        let stored = self.with_room(room, |r| {
            let ts = now_millis();
            let id = next_id(r.last_id, ts);
            r.last_id = id;
            let stored = StoredMessage {
                id,
                ts,
                username: username.to_owned(),
                message: message.to_owned(),
            };
            r.messages.push_back(stored.clone());
            while r.messages.len() > self.capacity {
                if let Some(dropped) = r.messages.pop_front() {
                    r.floor = dropped.id;
                }
            }
            stored
        });
        Box::pin(async move {
            Ok(Appended {
                message: stored,
                published: false,
            })
        })
    }

    fn len<'a>(&'a self, room: &'a str) -> StoreFuture<'a, usize> {
        let len = self.with_room(room, |r| r.messages.len());
        Box::pin(async move { Ok(len) })
    }

    fn page<'a>(
        &'a self,
        room: &'a str,
        last_id: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, HistoryPage> {
        let page = self.with_room(room, |r| select_page(&r.messages, r.floor, last_id, limit));
        Box::pin(async move { Ok(page) })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn fill(h: &MemoryHistory, n: usize) -> Vec<StoredMessage> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(
                h.append("r", "c", "bob", &format!("m{i}"))
                    .await
                    .unwrap()
                    .message,
            );
        }
        out
    }

    #[tokio::test]
    async fn ids_increase_and_history_is_bounded() {
        let h = MemoryHistory::new(5);
        let sent = fill(&h, 8).await;
        assert!(sent.windows(2).all(|w| w[0].id < w[1].id));
        let last = h.page("r", None, 100).await.unwrap();
        assert_eq!(last.messages, sent[3..]);
        assert!(last.complete);
        let few = h.page("r", None, 2).await.unwrap();
        assert_eq!(few.messages, sent[6..]);
    }

    #[tokio::test]
    async fn page_after_last_id() {
        let h = MemoryHistory::new(5);
        let sent = fill(&h, 8).await;
        // Still held: exactly what came after.
        let p = h.page("r", Some(sent[5].id), 100).await.unwrap();
        assert_eq!(p.messages, sent[6..]);
        assert!(p.complete);
        // Up to date.
        let p = h.page("r", Some(sent[7].id), 100).await.unwrap();
        assert!(p.messages.is_empty() && p.complete);
        // The last one dropped is sent[2]: asking after it is still complete.
        let p = h.page("r", Some(sent[2].id), 100).await.unwrap();
        assert_eq!(p.messages, sent[3..]);
        assert!(p.complete);
        // Asking after sent[1]: sent[2] is gone.
        let p = h.page("r", Some(sent[1].id), 100).await.unwrap();
        assert!(!p.complete);
        // More missed than the limit: the newest, marked incomplete.
        let p = h.page("r", Some(sent[3].id), 2).await.unwrap();
        assert_eq!(p.messages, sent[6..]);
        assert!(!p.complete);
        // An id from before this store existed (a restart): incomplete.
        let p = h.page("r", Some(1), 100).await.unwrap();
        assert_eq!(p.messages.len(), 5);
        assert!(!p.complete);
    }

    #[test]
    fn next_id_never_goes_backwards() {
        assert_eq!(next_id(0, 5), 5_000);
        assert_eq!(next_id(5_000, 5), 5_001);
        // The clock moved back: still increasing.
        assert_eq!(next_id(9_000, 5), 9_001);
    }

    #[tokio::test]
    async fn rooms_are_separate() {
        let h = MemoryHistory::new(5);
        h.append("a", "c", "x", "in a").await.unwrap();
        assert!(h.page("b", None, 10).await.unwrap().messages.is_empty());
    }
}
