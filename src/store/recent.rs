//! The newest messages of each room, in memory, as committed: what `add user` and `lastId`
//! pages are served from, so that a join never reads the disk or waits for the writer.
//!
//! Only the writer thread changes it, after each commit and each retention step; joins read it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::chat::{HistoryPage, StoredMessage, select_page};

/// The recent messages of every room.
pub struct Recent {
    /// Messages kept per room: the most a page returns (`--history-len`).
    capacity: usize,
    /// The floor of a room that has no row yet: the database's creation (see `RoomRecent::floor`).
    default_floor: u64,
    rooms: Mutex<HashMap<String, RoomRecent>>,
}

/// What a room's page needs to know.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoomRecent {
    /// The newest committed messages, oldest first, at most `capacity`.
    pub messages: VecDeque<StoredMessage>,
    /// Every message with an id above this is still stored; those at or below may be gone
    /// (removed by retention, or sent before the database existed).
    pub floor: u64,
    /// The newest stored message that is not in `messages`, if any: a client whose `lastId` is
    /// below it missed a message that no page returns.
    pub older: Option<u64>,
}

impl Recent {
    pub fn new(capacity: usize, default_floor: u64) -> Self {
        Self {
            capacity,
            default_floor,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn with_room<T>(&self, room: &str, f: impl FnOnce(&mut RoomRecent) -> T) -> T {
        // Plain values that every path leaves consistent: a poisoned lock is still usable.
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let entry = rooms.entry(room.to_owned()).or_insert_with(|| RoomRecent {
            floor: self.default_floor,
            ..RoomRecent::default()
        });
        f(entry)
    }

    /// Sets a room's state as loaded from the database at start.
    pub fn load(&self, room: &str, loaded: RoomRecent) {
        self.with_room(room, |r| *r = loaded);
    }

    /// Adds committed messages (in id order) to the end of the room's window.
    pub fn push(&self, room: &str, committed: impl IntoIterator<Item = StoredMessage>) {
        let capacity = self.capacity;
        self.with_room(room, |r| {
            for message in committed {
                r.messages.push_back(message);
                if r.messages.len() > capacity
                    && let Some(dropped) = r.messages.pop_front()
                {
                    r.older = Some(dropped.id);
                }
            }
        });
    }

    /// Records that retention deleted the room's messages with ids up to `up_to`.
    pub fn pruned(&self, room: &str, up_to: u64) {
        self.with_room(room, |r| {
            r.floor = r.floor.max(up_to);
            if r.older.is_some_and(|older| older <= up_to) {
                // Retention deletes oldest first: nothing older than the window is left.
                r.older = None;
            }
            while r.messages.front().is_some_and(|m| m.id <= up_to) {
                r.messages.pop_front();
            }
        });
    }

    /// The page for a joining client (see `History::page`).
    pub fn page(&self, room: &str, last_id: Option<u64>, limit: usize) -> HistoryPage {
        self.with_room(room, |r| {
            let mut page = select_page(&r.messages, r.floor, last_id, limit);
            if let (Some(last), Some(older)) = (last_id, r.older)
                && older > last
            {
                page.complete = false;
            }
            page
        })
    }

    pub fn len(&self, room: &str) -> usize {
        self.with_room(room, |r| r.messages.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64) -> StoredMessage {
        StoredMessage {
            id,
            ts: id / 1000,
            username: "u".into(),
            message: format!("m{id}"),
        }
    }

    #[test]
    fn a_window_over_a_longer_history_knows_what_it_misses() {
        let recent = Recent::new(3, 1_000);
        recent.push("r", (2_000..2_006).map(msg));
        // Held: 2003..2005; 2002 is stored but outside the window.
        let p = recent.page("r", Some(2_002), 10);
        assert_eq!(
            p.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [2_003, 2_004, 2_005]
        );
        assert!(p.complete);
        let p = recent.page("r", Some(2_001), 10);
        assert_eq!(p.messages.len(), 3);
        assert!(!p.complete, "2002 was missed and is not in the page");
        let p = recent.page("r", None, 10);
        assert!(p.complete && p.messages.len() == 3);
        // A lastId from before the database existed.
        assert!(!recent.page("r", Some(999), 10).complete);
    }

    #[test]
    fn retention_moves_the_floor_and_can_empty_the_window() {
        let recent = Recent::new(3, 1_000);
        recent.push("r", (2_000..2_006).map(msg));
        recent.pruned("r", 2_002);
        assert!(recent.page("r", Some(2_002), 10).complete);
        assert!(!recent.page("r", Some(2_001), 10).complete);
        recent.pruned("r", 2_004);
        let p = recent.page("r", Some(2_004), 10);
        assert_eq!(p.messages.iter().map(|m| m.id).collect::<Vec<_>>(), [2_005]);
        assert!(p.complete);
        assert!(!recent.page("r", Some(2_003), 10).complete);
    }
}
