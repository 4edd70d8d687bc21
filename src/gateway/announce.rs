//! Sending `user joined` / `user left`: one by one at a human pace, gathered per window during
//! storms (`chat::Announcer` decides which), always in the order presence reported them.

use std::sync::Arc;

use banter_engine::socketio::{Namespace, Socket};

use super::ChatContext;
use crate::chat::{Batch, Change, ChangeKind, ChatError, ErrorCode, Joined, LOBBY, Left, Offer};
use crate::protocol::{MAX_ANNOUNCED_NAMES, UserChange, outbound};

pub(super) async fn announce_join(ctx: &ChatContext, socket: &Socket, joined: &Joined) {
    if joined.resumed {
        return;
    }
    let change = Change {
        kind: ChangeKind::Joined,
        username: joined.username.clone(),
        num_users: joined.num_users,
        sid: Some(socket.id().to_string()),
    };
    announce(ctx, socket.ns(), change).await;
}

pub(super) async fn announce_left(ctx: &ChatContext, ns: &Arc<Namespace>, left: &Left) {
    tracing::info!(users = left.num_users, "user left");
    let change = Change {
        kind: ChangeKind::Left,
        username: left.username.clone(),
        num_users: left.num_users,
        sid: None,
    };
    announce(ctx, ns, change).await;
}

/// Announces a join or leave now, or, during a storm, with the others of its window.
async fn announce(ctx: &ChatContext, ns: &Arc<Namespace>, change: Change) {
    // One announcement at a time, in the order they were offered (tokio's mutex is fair): the
    // handlers of different connections run as concurrent tasks, and two sends racing each
    // other could deliver an older count after a newer one, which would then stay on pages.
    let _turn = ctx.announce_turn.lock().await;
    match ctx.announcer.offer(change) {
        Offer::Queued => {}
        Offer::Now(batch) => send_announcement(ns, &batch, &[]),
        Offer::OpensWindow => {
            let ctx = ctx.clone();
            let ns = Arc::clone(ns);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ctx.announcer.window()).await;
                    let _turn = ctx.announce_turn.lock().await;
                    let batches = ctx.announcer.flush();
                    if batches.is_empty() {
                        break;
                    }
                    // Whoever joined in a later batch of this window has every earlier change
                    // in their `login` already: the earlier events, with older counts, would
                    // only set their count back.
                    for (i, batch) in batches.iter().enumerate() {
                        let later_joiners: Vec<&str> = batches[i + 1..]
                            .iter()
                            .flat_map(|b| b.changes.iter())
                            .filter_map(|c| c.sid.as_deref())
                            .collect();
                        send_announcement(&ns, batch, &later_joiners);
                    }
                }
            });
        }
    }
}

/// Sends one announcement to the lobby, except to the person it names and to `also_except`.
fn send_announcement(ns: &Arc<Namespace>, batch: &Batch, also_except: &[&str]) {
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
        num_users: latest.num_users,
        count: coalesced.then_some(batch.changes.len()),
        usernames: names,
    };
    let event = match batch.kind {
        ChangeKind::Joined => outbound::USER_JOINED,
        ChangeKind::Left => outbound::USER_LEFT,
    };
    // The named joiner learnt of its own join from `login`; the others in a coalesced event
    // joined before it and need to hear of it (and of each other).
    let mut to = ns.broadcast().to(LOBBY);
    for sid in latest
        .sid
        .as_deref()
        .into_iter()
        .chain(also_except.iter().copied())
    {
        to = to.except(sid);
    }
    if let Err(err) = to.emit(event, &payload) {
        tracing::warn!(event, %err, "announcement failed");
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
