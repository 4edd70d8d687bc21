//! Who is in the chat: unique nicknames, sessions, and the reconnect grace period.
//!
//! A person is an entry with a nickname and a session token. The entry is held by one connection
//! at a time, or by none while the person is in the grace period after a dropped connection. The
//! count and the users list include people in the grace period: for the others nothing has
//! happened until the period ends.

use super::{Change, StoreFuture};

/// A connection's id, as the transport names it. Opaque to the domain.
pub type ConnId = String;

/// The outcome of a successful join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The nickname the person holds now.
    pub username: String,
    /// The nickname asked for, when a variant was given instead.
    pub renamed_from: Option<String>,
    pub session: String,
    /// True when the person was already in the chat (session or grace-period take-over): nobody
    /// should be told that someone joined.
    pub resumed: bool,
    /// A connection that held this person until now and must be closed without a "left".
    pub replaced: Option<ConnId>,
    pub num_users: usize,
    pub users: Vec<String>,
    /// The presence version `users` and `num_users` are the state of.
    pub version: u64,
}

/// Someone who has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub username: String,
    pub num_users: usize,
    pub version: u64,
}

/// Who is in a room, as of a presence version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    pub num_users: usize,
    /// Sorted case-insensitively.
    pub users: Vec<String>,
    pub version: u64,
}

/// Where a presence store publishes its changes, in version order.
pub type ChangeSink = tokio::sync::mpsc::UnboundedSender<Change>;

/// The next presence version after `last`: greater than it, and derived from the clock
/// (microseconds), so that versions keep growing across restarts of the store, as message ids do.
pub fn next_version(last: u64, now_ms: u64) -> u64 {
    (last + 1).max(now_ms.saturating_mul(1000))
}

/// A join request, already validated.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    pub room: &'a str,
    pub nickname: &'a str,
    pub session: Option<&'a str>,
    pub conn: &'a str,
    pub max_name_chars: usize,
}

/// The presence store. One implementation per deployment, chosen at start-up.
///
/// Every join of a new person and every leave (on purpose, or at the end of a grace period) gets
/// a presence version, greater than every earlier one of the room, and is published, in version
/// order, to every instance (see `ChangeSink`): announcements come from there, so that each
/// client can be sent counts in the order they happened.
pub trait Presence: Send + Sync + 'static {
    fn join<'a>(&'a self, req: JoinRequest<'a>) -> StoreFuture<'a, Joined>;
    /// The connection left on purpose: remove its person now. `None` when the connection held
    /// nobody (it never joined, or it was replaced).
    fn leave<'a>(&'a self, room: &'a str, conn: &'a str) -> StoreFuture<'a, Option<Left>>;
    /// The connection dropped: keep its person, unheld, until `expires_at_ms` (the end of the
    /// reconnect grace period). False when the connection held nobody.
    fn suspend<'a>(
        &'a self,
        room: &'a str,
        conn: &'a str,
        expires_at_ms: u64,
    ) -> StoreFuture<'a, bool>;
    /// Removes the people whose grace period ended by `now_ms` and returns them (published as
    /// left like any leave). Each person is removed by exactly one caller, however many instances
    /// reap at once.
    fn reap<'a>(&'a self, room: &'a str, now_ms: u64) -> StoreFuture<'a, Vec<Left>>;
    /// The number of people and their nicknames, and the version they are the state of.
    fn users<'a>(&'a self, room: &'a str) -> StoreFuture<'a, Roster>;
}

/// A fresh, unguessable session token: 128 random bits as hex.
pub fn new_session_token() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// The key under which nicknames are compared: names that look the same are the same person.
/// "Alice" and "alice"; "alice" and "alice" with a joiner or a variation selector that shows
/// nothing; "ａｌｉｃｅ" (full width) or "𝐚𝐥𝐢𝐜𝐞" (mathematical bold) and "alice" (compatibility
/// forms, NFKC); "al ice", "al  ice" and "al\u{a0}ice" (any run of white space is one space).
/// Case is folded as Unicode folds it where that differs from lower case in names people
/// write: "ΟΔΥΣΣΕΥΣ" is "οδυσσευς" (final sigma), "STRASSE" is "straße".
pub fn name_key(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut key = String::with_capacity(name.len());
    let mut space = false;
    for c in name
        .nfkc()
        .filter(|c| !super::limits::is_ignorable(*c))
        .flat_map(char::to_lowercase)
    {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && !key.is_empty() {
            key.push(' ');
        }
        space = false;
        match c {
            'ς' => key.push('σ'),
            'ß' => key.push_str("ss"),
            'ſ' => key.push('s'),
            c => key.push(c),
        }
    }
    key
}

/// Sorts nicknames as every users list is shown: case-insensitively, ties by exact spelling.
pub fn sort_users(users: &mut [String]) {
    users.sort_by_cached_key(|u| (name_key(u), u.clone()));
}

/// The n-th variant of a nickname, shortened so that it stays within the limit.
pub fn variant(name: &str, n: u32, max_chars: usize) -> String {
    let suffix = format!(" ({n})");
    let keep = max_chars.saturating_sub(suffix.chars().count());
    let base: String = name.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end())
}

/// How many variants are tried before a nickname is refused as taken.
pub const MAX_VARIANTS: u32 = 99;
