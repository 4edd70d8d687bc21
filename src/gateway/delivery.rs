//! Delivery of messages a store published (in id order), a single instance's duties (ending grace
//! periods, delivering what the store stored), and what this instance's sockets hold.

use std::sync::Arc;
use std::time::Duration;

use banter_engine::socketio::{Namespace, Packet};

use super::ChatContext;
use super::conn::Conn;
use super::protocol::outbound;
use crate::chat::StoredMessage;
use crate::store::{Committed, CommittedStream};

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
///
/// Everything stored by the time the task looks is delivered together: each socket is sent its
/// share of a room's messages at once, which on a WebSocket is one write. At a low rate that is
/// one message per write, as soon as it is stored; when the rate outgrows what one write per
/// message can carry, messages gather while the previous ones are written, and each write
/// carries more of them.
async fn deliver_committed(ns: Arc<Namespace>, mut committed: CommittedStream) {
    let mut batch: Vec<Committed> = Vec::new();
    while let Some(group) = committed.recv().await {
        batch.extend(group);
        while batch.len() < MAX_BATCH
            && let Ok(group) = committed.try_recv()
        {
            batch.extend(group);
        }
        for chunk in batch.chunks(MAX_BATCH) {
            deliver_batch(&ns, chunk);
        }
        batch.clear();
        if batch.capacity() > MAX_BATCH * 4 {
            batch = Vec::new();
        }
    }
}

/// Messages delivered together at most: what one write to a socket may carry (the engine
/// writes up to 64 frames at once).
pub(super) const MAX_BATCH: usize = 32;

/// Delivers stored messages, in order, to this instance's sockets in their rooms, each socket
/// its share at once (not its own messages).
pub(super) fn deliver_batch(ns: &Arc<Namespace>, batch: &[Committed]) {
    let mut rest = batch;
    while let Some(first) = rest.first() {
        let same_room = rest.iter().take_while(|c| c.room == first.room).count();
        let (run, after) = rest.split_at(same_room);
        rest = after;
        if let [one] = run {
            deliver_published(ns, &one.room, &one.sender, &one.message);
            continue;
        }
        let packets: Vec<(&str, Packet)> = run
            .iter()
            .filter_map(|c| match ns.prepare(outbound::NEW_MESSAGE, &c.message) {
                Ok(packet) => Some((c.sender.as_str(), packet)),
                Err(err) => {
                    tracing::warn!(%err, "could not deliver a published message");
                    None
                }
            })
            .collect();
        let mut share: Vec<&Packet> = Vec::with_capacity(packets.len());
        for socket in ns.broadcast().local().to(first.room.as_str()).sockets() {
            let id = socket.id();
            share.clear();
            share.extend(
                packets
                    .iter()
                    .filter(|(sender, _)| *sender != id.as_str())
                    .map(|(_, packet)| packet),
            );
            // A socket that is gone or too slow is being closed; the others carry on.
            let _ = socket.send_packets(&share);
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
