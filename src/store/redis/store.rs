//! Presence, sessions and history in Redis: the cluster-wide versions of the in-memory stores.
//!
//! Each operation that reads and writes is one Lua script (in `lua/`), so that instances racing
//! for a nickname or an expiry see one consistent order. Keys of a room share a hash tag
//! (`banter:{lobby}:…`), so a room's scripts run on one shard in a Redis Cluster too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::RedisHealth;
use super::conn::RedisConn;
use crate::chat::{
    Appended, Change, ChangeKind, ChatError, History, HistoryPage, JoinRequest, Joined, Left,
    MAX_VARIANTS, Presence, Roster, StoreFuture, StoredMessage, name_key, new_session_token,
    next_id, now_millis, select_page, sort_users, variant,
};

/// The prefix of every key and channel Banter uses.
const PREFIX: &str = "banter";

/// How long a message whose store command timed out waits for the command's own publication
/// before its sender is told `unconfirmed`. With the 2 s command timeout, 8 s in all: under the
/// chat page's 10 s ack timeout.
const CONFIRM_WAIT: Duration = Duration::from_secs(6);

struct Scripts {
    join: Script,
    leave: Script,
    suspend: Script,
    reap: Script,
    register: Script,
    reconcile: Script,
    append: Script,
}

/// The Redis-backed `Presence` and `History`, plus this instance's heartbeat.
pub struct RedisStore {
    conn: RedisConn,
    health: Arc<RedisHealth>,
    instance: String,
    grace_ms: u64,
    history_len: usize,
    scripts: Scripts,
    /// The greatest message id this instance has seen assigned, for ids given while Redis is away.
    last_local_id: AtomicU64,
    /// Messages of this instance's senders on their way through Redis (see [`Unconfirmed`]).
    unconfirmed: Unconfirmed,
}

/// This instance's appends in flight, by sender connection: if the store command times out (a
/// stalled Redis), the script may still run when Redis wakes up, and its publication on the
/// messages channel is then the only word of the id it got. Such a message is neither delivered
/// here under an id of this instance's own (it would be delivered twice, under two ids, out of
/// order) nor acked before that word comes.
#[derive(Default)]
struct Unconfirmed {
    next: AtomicU64,
    waiting: Mutex<HashMap<String, Vec<Waiter>>>,
}

struct Waiter {
    token: u64,
    username: String,
    message: String,
    /// The id and timestamp the message was stored under.
    tx: oneshot::Sender<(u64, u64)>,
}

/// An append registered with [`Unconfirmed::expect`], forgotten when dropped.
struct Expecting<'a> {
    unconfirmed: &'a Unconfirmed,
    sender: &'a str,
    token: u64,
}

impl Drop for Expecting<'_> {
    fn drop(&mut self) {
        self.unconfirmed.forget(self.sender, self.token);
    }
}

impl Unconfirmed {
    /// Registers an append before its command is sent, so that its publication cannot come back
    /// before anyone listens for it. The registration ends when the returned guard is dropped,
    /// whichever way the append ends (a handler dropped mid-way included).
    fn expect<'a>(
        &'a self,
        sender: &'a str,
        username: &str,
        message: &str,
    ) -> (Expecting<'a>, oneshot::Receiver<(u64, u64)>) {
        let (tx, rx) = oneshot::channel();
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let waiter = Waiter {
            token,
            username: username.to_owned(),
            message: message.to_owned(),
            tx,
        };
        let mut waiting = self.waiting.lock().expect("not poisoned");
        waiting.entry(sender.to_owned()).or_default().push(waiter);
        let guard = Expecting {
            unconfirmed: self,
            sender,
            token,
        };
        (guard, rx)
    }

    fn forget(&self, sender: &str, token: u64) {
        let mut waiting = self.waiting.lock().expect("not poisoned");
        if let Some(list) = waiting.get_mut(sender) {
            list.retain(|w| w.token != token);
            if list.is_empty() {
                waiting.remove(sender);
            }
        }
    }

    /// A message came back on the messages channel: the oldest waiting append of its sender with
    /// the same text learns the id it was stored under.
    fn confirm(&self, published: &Published) {
        let mut waiting = self.waiting.lock().expect("not poisoned");
        let Some(list) = waiting.get_mut(&published.sender) else {
            return;
        };
        let m = &published.message;
        if let Some(at) = list
            .iter()
            .position(|w| w.username == m.username && w.message == m.message)
        {
            let waiter = list.remove(at);
            let _ = waiter.tx.send((m.id, m.ts));
        }
        if list.is_empty() {
            waiting.remove(&published.sender);
        }
    }
}

/// The keys of one room.
struct RoomKeys {
    people: String,
    sessions: String,
    conns: String,
    expiry: String,
    instances: String,
    presence: String,
    history: String,
    meta: String,
}

fn keys(room: &str) -> RoomKeys {
    let k = |what: &str| format!("{PREFIX}:{{{room}}}:{what}");
    RoomKeys {
        people: k("people"),
        sessions: k("sessions"),
        conns: k("conns"),
        expiry: k("expiry"),
        instances: k("instances"),
        presence: k("presence"),
        history: k("history"),
        meta: k("meta"),
    }
}

/// The pub/sub channel on which a room's messages go out, in id order.
pub fn messages_channel(room: &str) -> String {
    format!("{PREFIX}:{{{room}}}:messages")
}

/// The pub/sub channel on which a room's presence changes (joins and leaves, with their
/// versions) go out, in version order.
pub fn presence_channel(room: &str) -> String {
    format!("{PREFIX}:{{{room}}}:presence")
}

/// A presence change as the scripts publish it.
#[derive(Deserialize)]
struct ChangeReply {
    k: String,
    u: String,
    n: usize,
    v: String,
}

impl ChangeReply {
    fn into_change(self) -> Option<Change> {
        Some(Change {
            kind: match self.k.as_str() {
                "j" => ChangeKind::Joined,
                "l" => ChangeKind::Left,
                _ => return None,
            },
            username: self.u,
            num_users: self.n,
            version: self.v.parse().ok()?,
        })
    }
}

/// Parses a payload of the presence channel.
pub fn parse_change(payload: &[u8]) -> Option<Change> {
    serde_json::from_slice::<ChangeReply>(payload)
        .ok()?
        .into_change()
}

/// The pub/sub channel of the engine's broadcasts (announcements, typing, replaced sockets) for
/// a room's instances. It shares the room's hash tag: in a Redis Cluster, sharded pub/sub keeps
/// it on the shard of the room's keys.
pub fn ops_channel(room: &str) -> String {
    format!("{PREFIX}:{{{room}}}:ops")
}

#[derive(Deserialize)]
struct JoinReply {
    k: i64,
    u: String,
    s: String,
    r: String,
    n: Vec<String>,
    v: String,
}

/// A message as published on the messages channel: who sent it (so that its instance does not
/// echo it to the sender), and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub sender: String,
    pub message: StoredMessage,
}

/// The stored form is `<id> <ts> <json {username, message}>`, written by `append.lua`: Lua
/// cannot print 16-digit ids exactly as JSON numbers, so they stay text outside the JSON.
fn parse_item(item: &str) -> Option<StoredMessage> {
    #[derive(Deserialize)]
    struct Body {
        username: String,
        message: String,
    }
    let (id, rest) = item.split_once(' ')?;
    let (ts, json) = rest.split_once(' ')?;
    let body: Body = serde_json::from_str(json).ok()?;
    Some(StoredMessage {
        id: id.parse().ok()?,
        ts: ts.parse().ok()?,
        username: body.username,
        message: body.message,
    })
}

/// Parses a payload of the messages channel: `<sender> <stored item>`.
pub fn parse_published(payload: &[u8]) -> Option<Published> {
    let text = std::str::from_utf8(payload).ok()?;
    let (sender, item) = text.split_once(' ')?;
    Some(Published {
        sender: sender.to_owned(),
        message: parse_item(item)?,
    })
}

impl RedisStore {
    pub fn new(
        conn: RedisConn,
        health: Arc<RedisHealth>,
        instance: String,
        grace_ms: u64,
        history_len: usize,
    ) -> Self {
        Self {
            conn,
            health,
            instance,
            grace_ms,
            history_len,
            last_local_id: AtomicU64::new(0),
            unconfirmed: Unconfirmed::default(),
            scripts: Scripts {
                join: Script::new(include_str!("lua/join.lua")),
                leave: Script::new(include_str!("lua/leave.lua")),
                suspend: Script::new(include_str!("lua/suspend.lua")),
                reap: Script::new(include_str!("lua/reap.lua")),
                register: Script::new(include_str!("lua/register.lua")),
                reconcile: Script::new(include_str!("lua/reconcile.lua")),
                append: Script::new(include_str!("lua/append.lua")),
            },
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A message published on the messages channel (by any instance): if it is one of this
    /// instance's appends whose command timed out, its sender's ack can now say its id.
    pub fn confirm_published(&self, published: &Published) {
        self.unconfirmed.confirm(published);
    }

    /// A message accepted while Redis is unreachable: it gets an id from this instance's clock
    /// (the same scheme as Redis's, so order is kept with what came before), is delivered to this
    /// instance's sockets by the caller, and is not stored. People on this instance keep
    /// chatting; the others do not see it.
    fn unstored(&self, username: &str, message: &str) -> Appended {
        let ts = now_millis();
        let mut last = self.last_local_id.load(Ordering::Relaxed);
        let id = loop {
            let id = next_id(last, ts);
            match self.last_local_id.compare_exchange(
                last,
                id,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break id,
                Err(current) => last = current,
            }
        };
        Appended {
            message: StoredMessage {
                id,
                ts,
                username: username.to_owned(),
                message: message.to_owned(),
            },
            published: false,
            stored: false,
        }
    }

    /// Fails at once while Redis is known to be away, instead of after a timeout; the heartbeat
    /// (which does not call this) notices when it is back.
    fn ensure_up(&self) -> Result<(), ChatError> {
        if self.health.is_up() {
            Ok(())
        } else {
            Err(ChatError::unavailable())
        }
    }

    /// Records Redis's health from a result, and turns a Redis error into `unavailable` (the
    /// detail goes to the log, not to the client).
    fn checked<T>(&self, what: &str, result: redis::RedisResult<T>) -> Result<T, ChatError> {
        self.health.observe(what, result).map_err(|err| {
            tracing::debug!(%err, what, "Redis operation failed");
            ChatError::unavailable()
        })
    }

    /// Runs a script on the room's presence keys, recording Redis's health.
    async fn presence_script<T: redis::FromRedisValue>(
        &self,
        what: &str,
        script: &Script,
        room: &str,
        args: &[&str],
    ) -> Result<T, ChatError> {
        self.ensure_up()?;
        let k = keys(room);
        let mut invocation = script.key(&k.people);
        invocation
            .key(&k.sessions)
            .key(&k.conns)
            .key(&k.expiry)
            .key(&k.instances)
            .key(&k.presence);
        for arg in args {
            invocation.arg(*arg);
        }
        let result = invocation.invoke_async(&mut self.conn.clone()).await;
        self.checked(what, result)
    }

    /// Says this instance is alive until `now + timeout`. Returns true when Redis did not know
    /// the instance (a Redis restart that lost its data, or this instance taken for dead): the
    /// caller then puts back the people it holds with `register`.
    pub async fn heartbeat(&self, room: &str, timeout_ms: u64) -> Result<bool, ChatError> {
        let deadline = now_millis().saturating_add(timeout_ms);
        let result: redis::RedisResult<i64> = redis::cmd("ZADD")
            .arg(keys(room).instances)
            .arg(deadline)
            .arg(&self.instance)
            .query_async(&mut self.conn.clone())
            .await;
        Ok(self.checked("heartbeat", result)? == 1)
    }

    /// Marks this instance as gone now, so that the others treat its people as dropped (they
    /// reconnect elsewhere within the grace period) without waiting for the heartbeat to lapse.
    pub async fn retire(&self, room: &str) -> Result<(), ChatError> {
        self.ensure_up()?;
        let result: redis::RedisResult<i64> = redis::cmd("ZADD")
            .arg(keys(room).instances)
            .arg(now_millis())
            .arg(&self.instance)
            .query_async(&mut self.conn.clone())
            .await;
        self.checked("retire", result).map(|_| ())
    }

    /// Puts back a person held by one of this instance's connections.
    pub async fn register(
        &self,
        room: &str,
        conn: &str,
        username: &str,
        session: &str,
    ) -> Result<bool, ChatError> {
        let key = name_key(username);
        let args = [conn, self.instance.as_str(), username, &key, session];
        let restored: i64 = self
            .presence_script("register", &self.scripts.register, room, &args)
            .await?;
        Ok(restored == 1)
    }
}

impl RedisStore {
    /// After an outage: starts the grace period of the people this instance holds through
    /// connections it no longer has. Returns how many.
    pub async fn reconcile(&self, room: &str, live_conns: &[String]) -> Result<u64, ChatError> {
        let expires = now_millis().saturating_add(self.grace_ms).to_string();
        let mut args: Vec<&str> = vec![&self.instance, &expires];
        args.extend(live_conns.iter().map(String::as_str));
        self.presence_script("reconcile", &self.scripts.reconcile, room, &args)
            .await
    }
}

impl Presence for RedisStore {
    fn join<'a>(&'a self, req: JoinRequest<'a>) -> StoreFuture<'a, Joined> {
        Box::pin(async move {
            let fresh = new_session_token();
            let mut candidates = vec![req.nickname.to_owned()];
            candidates
                .extend((2..=MAX_VARIANTS).map(|n| variant(req.nickname, n, req.max_name_chars)));
            let candidate_keys: Vec<String> = candidates.iter().map(|c| name_key(c)).collect();
            let now = now_millis().to_string();
            let channel = presence_channel(req.room);
            let mut args: Vec<&str> = vec![
                req.conn,
                &self.instance,
                req.session.unwrap_or(""),
                &fresh,
                &now,
                &channel,
                self.conn.publish_command(),
            ];
            for (name, key) in candidates.iter().zip(&candidate_keys) {
                args.push(name);
                args.push(key);
            }
            let raw: String = self
                .presence_script("join", &self.scripts.join, req.room, &args)
                .await?;
            let reply: JoinReply = serde_json::from_str(&raw).map_err(|err| {
                tracing::error!(%err, "unexpected reply from join.lua");
                ChatError::unavailable()
            })?;
            if reply.k < 0 {
                return Err(ChatError::new(
                    crate::chat::ErrorCode::NameTaken,
                    format!("the nickname {:?} and its variants are taken", req.nickname),
                ));
            }
            let mut users = reply.n;
            sort_users(&mut users);
            let version = reply.v.parse().map_err(|_| ChatError::unavailable())?;
            Ok(Joined {
                version,
                renamed_from: (reply.k == 0 && reply.u != req.nickname)
                    .then(|| req.nickname.to_owned()),
                username: reply.u,
                session: reply.s,
                resumed: reply.k == 1,
                replaced: (!reply.r.is_empty()).then_some(reply.r),
                num_users: users.len(),
                users,
            })
        })
    }

    fn leave<'a>(&'a self, room: &'a str, conn: &'a str) -> StoreFuture<'a, Option<Left>> {
        Box::pin(async move {
            let now = now_millis().to_string();
            let channel = presence_channel(room);
            let args = [conn, now.as_str(), &channel, self.conn.publish_command()];
            let reply: Option<(String, usize, String)> = self
                .presence_script("leave", &self.scripts.leave, room, &args)
                .await?;
            Ok(reply.and_then(|(username, num_users, version)| {
                Some(Left {
                    username,
                    num_users,
                    version: version.parse().ok()?,
                })
            }))
        })
    }

    fn suspend<'a>(
        &'a self,
        room: &'a str,
        conn: &'a str,
        expires_at_ms: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let expires = expires_at_ms.to_string();
            let done: i64 = self
                .presence_script("suspend", &self.scripts.suspend, room, &[conn, &expires])
                .await?;
            Ok(done == 1)
        })
    }

    fn reap<'a>(&'a self, room: &'a str, now_ms: u64) -> StoreFuture<'a, Vec<Left>> {
        Box::pin(async move {
            let (now, grace) = (now_ms.to_string(), self.grace_ms.to_string());
            let channel = presence_channel(room);
            let args = [&now, &grace, &channel, self.conn.publish_command()];
            let raw: String = self
                .presence_script("reap", &self.scripts.reap, room, &args)
                .await?;
            let left: Vec<ChangeReply> = serde_json::from_str(&raw).map_err(|err| {
                tracing::error!(%err, "unexpected reply from reap.lua");
                ChatError::unavailable()
            })?;
            Ok(left
                .into_iter()
                .filter_map(ChangeReply::into_change)
                .map(|c| Left {
                    username: c.username,
                    num_users: c.num_users,
                    version: c.version,
                })
                .collect())
        })
    }

    fn users<'a>(&'a self, room: &'a str) -> StoreFuture<'a, Roster> {
        Box::pin(async move {
            self.ensure_up()?;
            let k = keys(room);
            // One transaction: the names and the version they are the state of.
            let result: redis::RedisResult<(Vec<String>, Option<String>)> = redis::pipe()
                .atomic()
                .cmd("HVALS")
                .arg(&k.people)
                .cmd("HGET")
                .arg(&k.presence)
                .arg("v")
                .query_async(&mut self.conn.clone())
                .await;
            let (raw, version) = self.checked("users", result)?;
            #[derive(Deserialize)]
            struct Person {
                u: String,
            }
            let mut users: Vec<String> = raw
                .iter()
                .filter_map(|p| serde_json::from_str::<Person>(p).ok())
                .map(|p| p.u)
                .collect();
            sort_users(&mut users);
            Ok(Roster {
                num_users: users.len(),
                users,
                version: version.and_then(|v| v.parse().ok()).unwrap_or(0),
            })
        })
    }
}

impl History for RedisStore {
    fn append<'a>(
        &'a self,
        room: &'a str,
        sender: &'a str,
        username: &'a str,
        message: &'a str,
    ) -> StoreFuture<'a, Appended> {
        Box::pin(async move {
            // Redis refused or dropped the connection: local chat goes on (docs/scaling.md). A
            // Redis that stalled is still tried: what is sent runs, in order, when it wakes.
            if !self.health.is_up() && !self.health.is_stalled() {
                return Ok(self.unstored(username, message));
            }
            let k = keys(room);
            let now = now_millis();
            let body = serde_json::json!({ "username": username, "message": message }).to_string();
            let (expecting, published) = self.unconfirmed.expect(sender, username, message);
            let result: redis::RedisResult<(String, String)> = self
                .scripts
                .append
                .key(&k.history)
                .key(&k.meta)
                .arg(now)
                .arg(&body)
                .arg(self.history_len)
                .arg(messages_channel(room))
                .arg(sender)
                .arg(self.conn.publish_command())
                .invoke_async(&mut self.conn.clone())
                .await;
            let (id, ts) = match self.health.observe("append", result) {
                Ok((id, ts)) => {
                    drop(expecting);
                    let parse = |s: &str| s.parse::<u64>().map_err(|_| ChatError::unavailable());
                    (parse(&id)?, parse(&ts)?)
                }
                Err(err) if err.is_timeout() => {
                    // The script may still run: wait for its publication rather than deliver
                    // it here under another id.
                    let stored = tokio::time::timeout(CONFIRM_WAIT, published).await;
                    drop(expecting);
                    match stored {
                        Ok(Ok(stored)) => stored,
                        _ => return Err(ChatError::unconfirmed()),
                    }
                }
                Err(_) => {
                    drop(expecting);
                    return Ok(self.unstored(username, message));
                }
            };
            self.last_local_id.fetch_max(id, Ordering::Relaxed);
            Ok(Appended {
                message: StoredMessage {
                    id,
                    ts,
                    username: username.to_owned(),
                    message: message.to_owned(),
                },
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
        Box::pin(async move {
            self.ensure_up()?;
            let k = keys(room);
            let result: redis::RedisResult<(Vec<String>, Option<String>)> = redis::pipe()
                .cmd("LRANGE")
                .arg(&k.history)
                .arg(0)
                .arg(-1)
                .cmd("HGET")
                .arg(&k.meta)
                .arg("floor")
                .query_async(&mut self.conn.clone())
                .await;
            let (items, floor) = self.checked("history", result)?;
            let messages: Vec<StoredMessage> =
                items.iter().filter_map(|item| parse_item(item)).collect();
            // No floor: Redis has no history at all (new, or restarted without persistence), so
            // nothing can be said about what came before.
            let floor = floor.and_then(|f| f.parse().ok()).unwrap_or(u64::MAX);
            Ok(select_page(&messages, floor, last_id, limit))
        })
    }

    fn len<'a>(&'a self, room: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            self.ensure_up()?;
            let result: redis::RedisResult<usize> = redis::cmd("LLEN")
                .arg(keys(room).history)
                .query_async(&mut self.conn.clone())
                .await;
            self.checked("history length", result)
        })
    }

    fn publishes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(sender: &str, id: u64, username: &str, message: &str) -> Published {
        Published {
            sender: sender.to_owned(),
            message: StoredMessage {
                id,
                ts: id / 1000,
                username: username.to_owned(),
                message: message.to_owned(),
            },
        }
    }

    /// A publication settles the oldest waiting append of its sender with the same text; others'
    /// messages and other texts settle nothing; a settled or forgotten append leaves no entry.
    #[test]
    fn publications_settle_their_own_appends_in_order() {
        let u = Unconfirmed::default();
        let (g1, mut first) = u.expect("s1", "ann", "same");
        let (g2, mut second) = u.expect("s1", "ann", "same");
        let (g3, mut other) = u.expect("s1", "ann", "other");
        let (_g4, mut elsewhere) = u.expect("s2", "bob", "same");

        u.confirm(&published("s3", 7, "ann", "same"));
        u.confirm(&published("s1", 8, "ann", "different"));
        assert!(first.try_recv().is_err() && other.try_recv().is_err());

        u.confirm(&published("s1", 9, "ann", "same"));
        assert_eq!(first.try_recv().unwrap().0, 9);
        assert!(second.try_recv().is_err());
        u.confirm(&published("s1", 10, "ann", "same"));
        assert_eq!(second.try_recv().unwrap().0, 10);
        assert!(elsewhere.try_recv().is_err());

        drop((g1, g2, g3));
        assert!(!u.waiting.lock().unwrap().contains_key("s1"));
        assert!(
            other.try_recv().is_err(),
            "a forgotten append hears nothing"
        );
        assert_eq!(u.waiting.lock().unwrap().len(), 1);
    }

    #[test]
    fn stored_items_parse() {
        let m = parse_item(r#"1795645185072000 1795645185072 {"username":"a b","message":"x y"}"#)
            .unwrap();
        assert_eq!((m.id, m.ts), (1_795_645_185_072_000, 1_795_645_185_072));
        assert_eq!((m.username.as_str(), m.message.as_str()), ("a b", "x y"));
        assert!(parse_item("garbage").is_none());
        let p = parse_published(br#"sid123 5 6 {"username":"u","message":"m"}"#).unwrap();
        assert_eq!(p.sender, "sid123");
        assert_eq!(p.message.id, 5);
    }
}
