//! `user joined` / `user left`: presence changes, as the store publishes them (in version order,
//! to every instance), announced to this instance's people: one by one at a human pace, gathered
//! per window during storms (`chat::Announcer` decides which).
//!
//! Each connection is sent only counts newer than the one it holds (`Conn::announce`): whatever
//! the timing across instances, the last count a page shows is the newest. A joining connection
//! holds what comes while it joins and gets it after its `login`, if it is newer than the state
//! the `login` carries; its own join is never announced to it.

use std::sync::Arc;
use std::time::Duration;

use banter_engine::socketio::Namespace;
use tokio::sync::mpsc;

use super::conn::Conn;
use crate::chat::{Announcer, Batch, Change, ChangeKind, ChatError, ErrorCode, Offer};
use crate::gateway::protocol::{MAX_ANNOUNCED_NAMES, UserChange, outbound};

/// Announces the changes that arrive on `changes`, for as long as the server runs.
pub async fn announce_forever(
    mut changes: mpsc::UnboundedReceiver<Change>,
    ns: Arc<Namespace>,
    window: Duration,
) {
    let announcer = Announcer::new(window);
    // When the window in progress ends, if one is.
    let mut window_ends: Option<tokio::time::Instant> = None;
    loop {
        let change = match window_ends {
            None => changes.recv().await,
            Some(at) => tokio::select! {
                change = changes.recv() => change,
                () = tokio::time::sleep_until(at) => {
                    let batches = announcer.flush();
                    window_ends = (!batches.is_empty()).then(|| at + announcer.window());
                    for batch in &batches {
                        deliver(&ns, batch);
                    }
                    continue;
                }
            },
        };
        let Some(change) = change else {
            return;
        };
        match announcer.offer(change) {
            Offer::Now(batch) => deliver(&ns, &batch),
            Offer::OpensWindow => {
                window_ends = Some(tokio::time::Instant::now() + announcer.window());
            }
            Offer::Queued => {}
        }
    }
}

/// Sends one announcement to every connection of this instance that it concerns.
fn deliver(ns: &Arc<Namespace>, batch: &Batch) {
    let latest = batch.latest();
    let coalesced = batch.changes.len() > 1;
    let names = coalesced.then(|| {
        let skip = batch.changes.len().saturating_sub(MAX_ANNOUNCED_NAMES);
        batch.changes[skip..]
            .iter()
            .map(|c| c.username.as_str())
            .collect()
    });
    let payload = UserChange {
        username: &latest.username,
        num_users: batch.num_users,
        count: coalesced.then_some(batch.changes.len()),
        usernames: names,
    };
    let event = match batch.kind {
        ChangeKind::Joined => outbound::USER_JOINED,
        ChangeKind::Left => outbound::USER_LEFT,
    };
    let packet = match ns.prepare(event, &payload) {
        Ok(packet) => packet,
        Err(err) => {
            tracing::warn!(event, %err, "announcement failed");
            return;
        }
    };
    for socket in ns.sockets() {
        if let Some(conn) = socket.data::<Arc<Conn>>()
            && conn.in_chat()
        {
            conn.announce(&socket, batch.version, &packet);
        }
    }
}

/// Closes the socket that held a person until another socket presented its session. It may be
/// on another instance: a socket id selects that socket on whichever instance holds it.
pub(super) fn replace_socket(ns: &Arc<Namespace>, old: &str) {
    let err = ChatError::new(
        ErrorCode::Replaced,
        "you joined again from another connection; this one is closed",
    );
    if let Err(e) = ns.broadcast().to(old).emit(outbound::ERROR_MESSAGE, &err) {
        tracing::warn!(%e, "could not tell a replaced socket");
    }
    ns.broadcast().to(old).disconnect();
}
