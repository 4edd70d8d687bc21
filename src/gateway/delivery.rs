//! Delivery of messages a store published (in id order), a single instance's duties (ending grace
//! periods, delivering what the store stored), and what this instance's sockets hold.

use std::sync::Arc;
use std::time::Duration;

use banter_engine::socketio::Namespace;

use super::ChatContext;
use super::conn::Conn;
use super::protocol::outbound;
use crate::chat::StoredMessage;
use crate::store::CommittedStream;

/// How often grace periods are checked: often enough that "left" comes within a small fraction of
/// the grace period after it ends, and never more than twice a second.
pub fn reap_interval(grace: Duration) -> Duration {
    (grace / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// A single instance's duties, for as long as it runs: end grace periods, and deliver the
/// messages that the store stored, in the order it stored them.
pub async fn local_forever(
    ctx: ChatContext,
    ns: Arc<Namespace>,
    committed: Option<CommittedStream>,
) {
    let every = reap_interval(ctx.settings.reconnect_grace);
    let reap = async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            super::reap(&ctx).await;
        }
    };
    match committed {
        Some(committed) => {
            tokio::join!(reap, deliver_committed(ns, committed));
        }
        None => reap.await,
    }
}

/// The delivery task of a single instance: each stored message goes to this instance's sockets
/// in its room (except the sender), group after group, so every client receives a room's
/// messages in id order. The sender's ack comes from its handler once the store has the message
/// (with SQLite, after the commit). One task broadcasting back to back, rather than each
/// sender's handler, also lets each socket's writes gather several messages under load.
async fn deliver_committed(ns: Arc<Namespace>, mut committed: CommittedStream) {
    while let Some(group) = committed.recv().await {
        for c in &group {
            deliver_published(&ns, &c.room, &c.sender, &c.message);
        }
    }
}

/// Delivers a message that the store published, to this instance's sockets in the room except
/// the sender. Called in the order the store published, which is id order.
pub fn deliver_published(ns: &Arc<Namespace>, room: &str, sender: &str, message: &StoredMessage) {
    let to = ns.broadcast().local().to(room).except(sender);
    if let Err(err) = to.emit(outbound::NEW_MESSAGE, message) {
        tracing::warn!(%err, "could not deliver a published message");
    }
}

/// A person held by one of this instance's sockets.
pub struct LocalMember {
    pub conn: String,
    pub room: &'static str,
    pub username: String,
    pub session: String,
}

/// The people this instance's sockets hold, to put back into a store that lost them.
pub fn local_members(ns: &Arc<Namespace>) -> Vec<LocalMember> {
    ns.sockets()
        .into_iter()
        .filter_map(|socket| {
            let conn = socket.data::<Arc<Conn>>()?;
            let member = conn.member()?;
            Some(LocalMember {
                conn: socket.id().to_string(),
                room: member.room,
                username: member.username.to_string(),
                session: member.session.to_string(),
            })
        })
        .collect()
}
