//! Delivery of messages a store published (in id order), and what this instance's sockets hold.

use std::sync::Arc;

use banter_engine::socketio::Namespace;

use super::conn::Conn;
use crate::chat::StoredMessage;
use crate::protocol::outbound;

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
