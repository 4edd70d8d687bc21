//! The in-process stores: presence and history in memory, for a single instance (history in
//! memory only with `--store memory`; SQLite keeps it otherwise, `sqlite.rs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::{Committed, CommittedStream, MAX_QUEUED_DELIVERIES};

use crate::chat::{
    Appended, Change, ChangeKind, ChangeSink, ChatError, ConnId, ErrorCode, History, HistoryPage,
    IDS_PER_MILLI, JoinRequest, Joined, Left, MAX_VARIANTS, Presence, Roster, StoreFuture,
    StoredMessage, name_key, new_session_token, next_id, next_version, now_millis, select_page,
    variant,
};

/// The in-process presence store.
#[derive(Default)]
pub struct MemoryPresence {
    rooms: Mutex<HashMap<String, RoomPresence>>,
    /// Where changes are published; `None` publishes nothing.
    changes: Option<ChangeSink>,
}

#[derive(Default)]
struct RoomPresence {
    /// The version of the latest change.
    version: u64,
    /// Changes made by the operation in progress, to publish.
    made: Vec<Change>,
    /// People by `name_key`, kept in that order: the users list of every `login` is then a walk,
    /// not a sort (keys are unique, so the order is `sort_users`'s).
    people: BTreeMap<String, Person>,
    sessions: HashMap<String, String>,
    conns: HashMap<ConnId, String>,
}

struct Person {
    username: String,
    session: String,
    /// The connection holding the person; `None` during the grace period.
    conn: Option<ConnId>,
    /// When the grace period ends (meaningful only while `conn` is `None`).
    expires_at_ms: u64,
}

impl RoomPresence {
    fn join(&mut self, req: &JoinRequest<'_>) -> Result<Joined, ChatError> {
        let conn = req.conn.to_owned();
        // 1. The session token names a person still here: take it over.
        if let Some(key) = req.session.and_then(|s| self.sessions.get(s)).cloned() {
            return Ok(self.take_over(&key, conn, false));
        }
        // 2. The nickname belongs to someone in the grace period: they are back (the classic page
        //    re-sends `add user` without a token after reconnecting).
        let key = name_key(req.nickname);
        if self.people.get(&key).is_some_and(|p| p.conn.is_none()) {
            return Ok(self.take_over(&key, conn, true));
        }
        // 3. A new person, under the nickname or its first free variant.
        let (username, key) = if self.people.contains_key(&key) {
            (1..=MAX_VARIANTS)
                .skip(1)
                .map(|n| variant(req.nickname, n, req.max_name_chars))
                .map(|v| {
                    let k = name_key(&v);
                    (v, k)
                })
                .find(|(_, k)| !self.people.contains_key(k))
                .ok_or_else(|| {
                    ChatError::new(
                        ErrorCode::NameTaken,
                        format!("the nickname {:?} and its variants are taken", req.nickname),
                    )
                })?
        } else {
            (req.nickname.to_owned(), key)
        };
        let session = new_session_token();
        self.sessions.insert(session.clone(), key.clone());
        self.conns.insert(conn.clone(), key.clone());
        self.people.insert(
            key,
            Person {
                username: username.clone(),
                session: session.clone(),
                conn: Some(conn),
                expires_at_ms: 0,
            },
        );
        self.changed(ChangeKind::Joined, &username);
        let roster = self.users();
        Ok(Joined {
            renamed_from: (username != req.nickname).then(|| req.nickname.to_owned()),
            username,
            session,
            resumed: false,
            replaced: None,
            num_users: roster.num_users,
            users: roster.users,
            version: roster.version,
        })
    }

    /// Moves the person under `key` to `conn`. With `new_session`, the old token stops working:
    /// whoever took the name back by nickname alone does not share a token with its last holder.
    fn take_over(&mut self, key: &str, conn: ConnId, new_session: bool) -> Joined {
        let person = self.people.get_mut(key).expect("indexed person exists");
        if new_session {
            self.sessions.remove(&person.session);
            person.session = new_session_token();
            self.sessions.insert(person.session.clone(), key.to_owned());
        }
        let previous = person.conn.replace(conn.clone());
        let (username, session) = (person.username.clone(), person.session.clone());
        let replaced = previous.filter(|p| *p != conn);
        if let Some(old) = &replaced {
            self.conns.remove(old);
        }
        self.conns.insert(conn, key.to_owned());
        let roster = self.users();
        Joined {
            username,
            renamed_from: None,
            session,
            resumed: true,
            replaced,
            num_users: roster.num_users,
            users: roster.users,
            version: roster.version,
        }
    }

    /// Records a change of the count under a new version.
    fn changed(&mut self, kind: ChangeKind, username: &str) {
        self.version = next_version(self.version, now_millis());
        self.made.push(Change {
            kind,
            username: username.to_owned(),
            num_users: self.people.len(),
            version: self.version,
        });
    }

    fn remove(&mut self, key: &str) -> Option<Left> {
        let person = self.people.remove(key)?;
        self.sessions.remove(&person.session);
        if let Some(conn) = &person.conn {
            self.conns.remove(conn);
        }
        self.changed(ChangeKind::Left, &person.username);
        Some(Left {
            username: person.username,
            num_users: self.people.len(),
            version: self.version,
        })
    }

    fn users(&self) -> Roster {
        let users: Vec<String> = self.people.values().map(|p| p.username.clone()).collect();
        Roster {
            num_users: users.len(),
            users,
            version: self.version,
        }
    }
}

impl MemoryPresence {
    /// A store that publishes its changes to `changes`.
    pub fn publishing(changes: ChangeSink) -> Self {
        Self {
            rooms: Mutex::default(),
            changes: Some(changes),
        }
    }

    fn with_room<T>(&self, room: &str, f: impl FnOnce(&mut RoomPresence) -> T) -> T {
        // See `MemoryHistory::with_room` on poisoning.
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let r = rooms.entry(room.to_owned()).or_default();
        let result = f(r);
        // Published under the lock: in version order.
        for change in r.made.drain(..) {
            if let Some(sink) = &self.changes {
                // Nobody listens once the server has stopped; nothing to do then.
                let _ = sink.send(change);
            }
        }
        result
    }
}

impl Presence for MemoryPresence {
    fn join<'a>(&'a self, req: JoinRequest<'a>) -> StoreFuture<'a, Joined> {
        let result = self.with_room(req.room, |r| r.join(&req));
        Box::pin(async move { result })
    }

    fn leave<'a>(&'a self, room: &'a str, conn: &'a str) -> StoreFuture<'a, Option<Left>> {
        let left = self.with_room(room, |r| {
            let key = r.conns.get(conn).cloned()?;
            r.remove(&key)
        });
        Box::pin(async move { Ok(left) })
    }

    fn suspend<'a>(
        &'a self,
        room: &'a str,
        conn: &'a str,
        expires_at_ms: u64,
    ) -> StoreFuture<'a, bool> {
        let suspended = self.with_room(room, |r| {
            let Some(key) = r.conns.remove(conn) else {
                return false;
            };
            let Some(person) = r.people.get_mut(&key) else {
                return false;
            };
            person.conn = None;
            person.expires_at_ms = expires_at_ms;
            true
        });
        Box::pin(async move { Ok(suspended) })
    }

    fn reap<'a>(&'a self, room: &'a str, now_ms: u64) -> StoreFuture<'a, Vec<Left>> {
        let left = self.with_room(room, |r| {
            let mut expired: Vec<String> = r
                .people
                .iter()
                .filter(|(_, p)| p.conn.is_none() && p.expires_at_ms <= now_ms)
                .map(|(key, _)| key.clone())
                .collect();
            expired.sort();
            expired.iter().filter_map(|key| r.remove(key)).collect()
        });
        Box::pin(async move { Ok(left) })
    }

    fn users<'a>(&'a self, room: &'a str) -> StoreFuture<'a, Roster> {
        let users = self.with_room(room, |r| r.users());
        Box::pin(async move { Ok(users) })
    }
}

/// The in-process history: a bounded ring of the last `capacity` messages per room.
pub struct MemoryHistory {
    capacity: usize,
    /// Ids at or below this were assigned before the store began: we cannot know what they were.
    epoch_floor: u64,
    rooms: Mutex<HashMap<String, RoomHistory>>,
    /// Where stored messages go, in id order, for the server to deliver; `None`: the caller
    /// broadcasts.
    delivery: Option<mpsc::Sender<Vec<Committed>>>,
}

struct RoomHistory {
    messages: VecDeque<StoredMessage>,
    last_id: u64,
    /// Every message with an id above `floor` is still held; those at or below it may be gone.
    floor: u64,
}

impl MemoryHistory {
    /// A store whose caller broadcasts what it appends.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            epoch_floor: now_millis().saturating_mul(IDS_PER_MILLI),
            rooms: Mutex::new(HashMap::new()),
            delivery: None,
        }
    }

    /// A store that hands every message it appends to the returned stream, in id order, as
    /// the SQLite store does after a commit: one task then delivers every message, back to
    /// back, instead of each sender's handler broadcasting in turn (measured: in memory, the
    /// latter fell behind from 250,000 deliveries/s where the former kept up; see
    /// docs/performance.md).
    pub fn publishing(capacity: usize) -> (Self, CommittedStream) {
        let (delivery, committed) = mpsc::channel(MAX_QUEUED_DELIVERIES);
        let store = Self {
            delivery: Some(delivery),
            ..Self::new(capacity)
        };
        (store, committed)
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
        sender: &'a str,
        username: &'a str,
        message: &'a str,
    ) -> StoreFuture<'a, Appended> {
        Box::pin(async move {
            // A place in the delivery queue first (a full queue holds the sender back); the
            // message takes it under the room's lock, so the queue is in id order.
            let place = match &self.delivery {
                Some(delivery) => Some(
                    delivery
                        .reserve()
                        .await
                        .map_err(|_| ChatError::unavailable())?,
                ),
                None => None,
            };
            let published = place.is_some();
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
                if let Some(place) = place {
                    place.send(vec![Committed {
                        room: room.to_owned(),
                        sender: sender.to_owned(),
                        message: stored.clone(),
                    }]);
                }
                stored
            });
            Ok(Appended {
                message: stored,
                published,
                stored: true,
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

    fn publishes(&self) -> bool {
        self.delivery.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(nickname: &'a str, conn: &'a str, session: Option<&'a str>) -> JoinRequest<'a> {
        JoinRequest {
            room: "r",
            nickname,
            session,
            conn,
            max_name_chars: 32,
        }
    }

    #[tokio::test]
    async fn join_and_leave() {
        let p = MemoryPresence::default();
        let a = p.join(req("alice", "c1", None)).await.unwrap();
        assert_eq!(
            (a.username.as_str(), a.num_users, a.resumed),
            ("alice", 1, false)
        );
        let b = p.join(req("Bob", "c2", None)).await.unwrap();
        assert_eq!(b.users, vec!["alice", "Bob"]);
        let left = p.leave("r", "c1").await.unwrap().unwrap();
        assert_eq!((left.username.as_str(), left.num_users), ("alice", 1));
        assert_eq!(p.leave("r", "c1").await.unwrap(), None);
        assert_eq!(p.leave("r", "never-joined").await.unwrap(), None);
    }

    #[tokio::test]
    async fn taken_names_get_variants() {
        let p = MemoryPresence::default();
        p.join(req("alice", "c1", None)).await.unwrap();
        let second = p.join(req("ALICE", "c2", None)).await.unwrap();
        assert_eq!(second.username, "ALICE (2)");
        assert_eq!(second.renamed_from.as_deref(), Some("ALICE"));
        let third = p.join(req("alice", "c3", None)).await.unwrap();
        assert_eq!(third.username, "alice (3)");
        assert_eq!(third.num_users, 3);
        let long = "x".repeat(32);
        p.join(req(&long, "c4", None)).await.unwrap();
        let v = p.join(req(&long, "c5", None)).await.unwrap();
        assert_eq!(v.username, format!("{} (2)", "x".repeat(28)));
    }

    #[tokio::test]
    async fn name_taken_when_no_variant_is_free() {
        let p = MemoryPresence::default();
        for i in 0..MAX_VARIANTS {
            p.join(req("a", &format!("c{i}"), None)).await.unwrap();
        }
        let err = p.join(req("a", "last", None)).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::NameTaken);
    }

    #[tokio::test]
    async fn grace_period_resume_by_session_or_name() {
        let p = MemoryPresence::default();
        let a = p.join(req("alice", "c1", None)).await.unwrap();
        assert!(p.suspend("r", "c1", 1_000).await.unwrap());
        // Still counted while suspended.
        assert_eq!(p.users("r").await.unwrap().num_users, 1);
        let back = p
            .join(req("whatever", "c2", Some(&a.session)))
            .await
            .unwrap();
        assert!(back.resumed);
        assert_eq!((back.username.as_str(), back.num_users), ("alice", 1));
        assert_eq!(back.replaced, None);
        // The grace period that was running must not remove the person who came back.
        assert!(p.reap("r", 5_000).await.unwrap().is_empty());

        // Dropped again, then back by nickname alone: a new token.
        assert!(p.suspend("r", "c2", 9_000).await.unwrap());
        let by_name = p.join(req("Alice", "c3", None)).await.unwrap();
        assert!(by_name.resumed);
        assert_eq!(by_name.username, "alice");
        assert_ne!(by_name.session, a.session);
    }

    #[tokio::test]
    async fn expiry_reports_left() {
        let p = MemoryPresence::default();
        p.join(req("alice", "c1", None)).await.unwrap();
        p.join(req("bob", "c2", None)).await.unwrap();
        assert!(p.suspend("r", "c1", 1_000).await.unwrap());
        assert!(!p.suspend("r", "c1", 1_000).await.unwrap());
        assert!(p.reap("r", 999).await.unwrap().is_empty());
        let left = p.reap("r", 1_000).await.unwrap();
        assert_eq!(
            left.iter()
                .map(|l| (l.username.as_str(), l.num_users))
                .collect::<Vec<_>>(),
            vec![("alice", 1)]
        );
        assert!(p.reap("r", 2_000).await.unwrap().is_empty());
        // The name is free again.
        let again = p.join(req("alice", "c3", None)).await.unwrap();
        assert!(!again.resumed);
    }

    #[tokio::test]
    async fn session_takes_over_a_live_ghost() {
        let p = MemoryPresence::default();
        let a = p.join(req("alice", "c1", None)).await.unwrap();
        let back = p.join(req("alice", "c2", Some(&a.session))).await.unwrap();
        assert_eq!(back.replaced.as_deref(), Some("c1"));
        assert_eq!(back.num_users, 1);
        // The ghost's later disconnect reports nothing.
        assert_eq!(p.leave("r", "c1").await.unwrap(), None);
        assert_eq!(p.users("r").await.unwrap().num_users, 1);
    }

    #[tokio::test]
    async fn a_live_holder_without_token_is_not_taken_over() {
        let p = MemoryPresence::default();
        p.join(req("alice", "c1", None)).await.unwrap();
        let other = p.join(req("alice", "c2", Some("forged"))).await.unwrap();
        assert_eq!(other.username, "alice (2)");
        assert!(!other.resumed);
    }

    #[tokio::test]
    async fn every_change_of_the_count_gets_a_greater_version_and_is_published_in_order() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let p = MemoryPresence::publishing(tx);
        let a = p.join(req("alice", "c1", None)).await.unwrap();
        let b = p.join(req("bob", "c2", None)).await.unwrap();
        assert!(b.version > a.version);
        // A return within the grace period is no change: same version, nothing published.
        assert!(p.suspend("r", "c1", 1_000).await.unwrap());
        let back = p.join(req("alice", "c3", None)).await.unwrap();
        assert!(back.resumed);
        assert_eq!(back.version, b.version);
        let left = p.leave("r", "c2").await.unwrap().unwrap();
        assert!(left.version > b.version);
        let roster = p.users("r").await.unwrap();
        assert_eq!((roster.num_users, roster.version), (1, left.version));
        let published: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.kind, c.username, c.num_users, c.version))
            .collect();
        assert_eq!(
            published,
            vec![
                (ChangeKind::Joined, "alice".to_owned(), 1, a.version),
                (ChangeKind::Joined, "bob".to_owned(), 2, b.version),
                (ChangeKind::Left, "bob".to_owned(), 1, left.version),
            ]
        );
    }

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
