//! The chat domain: nicknames, messages, limits, presence and history rules.
//!
//! Nothing here knows about Socket.IO, HTTP or event names (`crate::gateway` has those). The
//! storage traits (`Presence`, `History`) are the seam where the stores of `crate::store` plug
//! in: in memory, SQLite, Redis.

mod announce;
mod error;
mod history;
mod limits;
mod presence;
mod rate;

pub use announce::{Announcer, Batch, Change, ChangeKind, Offer};
pub use error::{ChatError, ErrorCode};
pub use history::{
    Appended, History, HistoryPage, IDS_PER_MILLI, StoredMessage, next_id, select_page,
};
pub use limits::Limits;
pub use presence::{
    ChangeSink, ConnId, JoinRequest, Joined, Left, MAX_VARIANTS, Presence, Roster, name_key,
    new_session_token, next_version, sort_users, variant,
};
pub use rate::TokenBucket;

use futures::future::BoxFuture;

/// The one room of the classic chat. Ids, history and presence are kept per room so that more
/// rooms can be added without changing any stored shape or payload.
pub const LOBBY: &str = "lobby";

/// A boxed future returned by the storage traits: they are used as trait objects, chosen once at
/// start-up, and some implementations do network I/O.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, ChatError>>;

/// Milliseconds since the Unix epoch, as sent to clients in `ts`.
pub fn now_millis() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
