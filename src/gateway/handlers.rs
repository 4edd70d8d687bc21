//! One handler per event of the chat's contract (`docs/protocol.md`).

use std::sync::Arc;

use banter_engine::Transport;
use banter_engine::socketio::{Ack, ConnectError, DisconnectReason, Event, Socket};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::ChatContext;
use super::announce::replace_socket;
use super::conn::{Conn, Member, Rates};
use crate::chat::{Appended, ChatError, ErrorCode, JoinRequest, LOBBY, now_millis};
use crate::config::net::Client;
use crate::gateway::protocol::{
    AddUser, Auth, Login, MessageAck, Refusal, Typing, UserList, inbound, outbound,
};
use crate::ops::metrics::{self, METRICS};

/// Longest session token accepted in the handshake; real ones are 32 characters.
const MAX_SESSION_TOKEN_LEN: usize = 64;

/// Longest part of an unknown event's name echoed back in the error.
const MAX_ECHOED_EVENT_CHARS: usize = 40;

/// Replies to a client request: through its ack when it asked for one, else (for refusals) with
/// an `error message` event.
struct Reply(Option<Ack>);

impl Reply {
    fn wants_ack(&self) -> bool {
        self.0.is_some()
    }

    fn ok<T: Serialize + ?Sized>(self, value: &T) {
        if let Some(ack) = self.0
            && let Err(err) = ack.send(value)
        {
            tracing::debug!(%err, "could not send an ack");
        }
    }

    fn refuse(self, socket: &Socket, error: &ChatError) {
        METRICS.refused(error.code);
        tracing::debug!(sid = %socket.id(), code = error.code.as_str(), "request refused");
        if self.wants_ack() {
            self.ok(&Refusal { error });
        } else {
            emit(socket, outbound::ERROR_MESSAGE, error);
        }
    }
}

/// Sends to one socket. A closed socket is not an error of the handler: the client is gone (or
/// too slow, and being closed), and the disconnect path cleans up.
pub(super) fn emit<T: Serialize + ?Sized>(socket: &Socket, event: &'static str, data: &T) {
    if let Err(err) = socket.emit(event, data) {
        tracing::debug!(sid = %socket.id(), event, %err, "could not emit to socket");
    }
}

fn bad_request(what: &str) -> ChatError {
    ChatError::new(ErrorCode::BadRequest, what.to_owned())
}

/// The first argument as a JSON value, if there is one and it parses.
fn first_arg(event: &Event) -> Option<Value> {
    event.arg::<Value>(0).and_then(Result::ok)
}

/// A new connection: counted against its address's bound, and given its state.
pub(super) fn connect(
    ctx: &ChatContext,
    socket: &Socket,
    auth: Option<&RawValue>,
) -> Result<(), ConnectError> {
    // The client's address, worked out by the HTTP layer from the handshake request. Absent
    // only when the engine is driven without a network peer.
    let slot = match socket.extensions().get::<Client>() {
        Some(client) => match ctx.clients.open(client.addr) {
            Ok(slot) => Some(slot),
            Err(refusal) => {
                METRICS.address_refused(matches!(refusal, crate::http::clients::Refusal::Open));
                tracing::debug!(client = %client.addr, %refusal, "refused a connection");
                return Err(ConnectError::new(refusal.to_string()));
            }
        },
        None => None,
    };
    let auth_session = auth
        .and_then(|raw| serde_json::from_str::<Auth>(raw.get()).ok())
        .and_then(|a| a.session)
        .filter(|s| !s.is_empty() && s.len() <= MAX_SESSION_TOKEN_LEN);
    let transport = match socket.initial_transport() {
        Transport::WebSocket => metrics::Transport::Websocket,
        Transport::Polling => metrics::Transport::Polling,
    };
    let settings = &ctx.settings;
    let rates = Rates {
        message_rate: settings.message_rate,
        message_burst: settings.message_burst,
        typing_rate: settings.typing_rate,
    };
    METRICS.connected(transport);
    let conn = Conn::new(auth_session, transport, &rates, slot);
    // Only this handler attaches state, once per socket.
    let _ = socket.set_data(Arc::new(conn));
    tracing::debug!(sid = %socket.id(), transport = transport.as_str(), "connected");
    Ok(())
}

fn conn_of(socket: &Socket) -> Option<Arc<Conn>> {
    socket.data::<Arc<Conn>>().cloned()
}

/// An event: dispatched by name.
pub(super) async fn event(ctx: ChatContext, socket: Socket, mut event: Event) {
    let Some(conn) = conn_of(&socket) else {
        return;
    };
    let reply = Reply(event.ack.take());
    match event.name.as_str() {
        inbound::ADD_USER => add_user(&ctx, &socket, &conn, first_arg(&event), reply).await,
        inbound::NEW_MESSAGE => new_message(&ctx, &socket, &conn, first_arg(&event), reply).await,
        inbound::TYPING => announce_typing(&socket, &conn, true),
        inbound::STOP_TYPING => announce_typing(&socket, &conn, false),
        inbound::LIST_USERS => list_users(&ctx, &socket, &conn, reply).await,
        other => {
            let shown: String = other.chars().take(MAX_ECHOED_EVENT_CHARS).collect();
            let err = ChatError::new(ErrorCode::UnknownEvent, format!("unknown event {shown:?}"));
            reply.refuse(&socket, &err);
        }
    }
}

async fn add_user(
    ctx: &ChatContext,
    socket: &Socket,
    conn: &Conn,
    arg: Option<Value>,
    reply: Reply,
) {
    if !conn.begin_join() {
        // The classic contract: a second `add user` is ignored. Only a client that asked for an
        // ack is told why nothing happened.
        if reply.wants_ack() {
            let err = ChatError::new(ErrorCode::AlreadyJoined, "this socket has already joined");
            reply.refuse(socket, &err);
        }
        return;
    }
    match join(ctx, socket, conn, arg).await {
        Ok((member, version, login)) => {
            METRICS.joined();
            conn.finish_join(socket, Some((member, version)));
            reply.ok(&login);
        }
        Err(err) => {
            conn.finish_join(socket, None);
            reply.refuse(socket, &err);
        }
    }
}

/// Validates `add user`, registers the person, subscribes the socket to the room and sends
/// `login`. Returns what the caller needs to finish: the member, the presence version the login
/// carries, and the login payload (for the ack).
async fn join(
    ctx: &ChatContext,
    socket: &Socket,
    conn: &Conn,
    arg: Option<Value>,
) -> Result<(Member, u64, Value), ChatError> {
    let request: AddUser = arg
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| bad_request("add user takes a nickname or {username, lastId}"))?;
    let nickname = ctx.settings.limits.nickname(request.username())?;
    let sid = socket.id().to_string();
    let room = LOBBY;
    let joined = ctx
        .presence
        .join(JoinRequest {
            room,
            nickname: &nickname,
            session: conn.auth_session.as_deref(),
            conn: &sid,
            max_name_chars: ctx.settings.limits.max_name_chars,
        })
        .await?;
    // The store has published the join (unless it was a return, which is no change): everyone
    // else hears of it from there. What this connection hears of meanwhile waits for its login.

    // Subscribe before reading the history: a message sent in between then arrives twice (the
    // client drops the copy by id) rather than not at all.
    socket.join(room);
    let page = match ctx
        .history
        .page(room, request.last_id(), ctx.settings.history_len)
        .await
    {
        Ok(page) => page,
        Err(err) => {
            // The person is registered; without history they can still chat. Say so honestly.
            tracing::warn!(%err, "could not read history for a joining user");
            crate::chat::HistoryPage {
                messages: Vec::new(),
                complete: false,
            }
        }
    };

    if let Some(old) = &joined.replaced {
        replace_socket(socket.ns(), old);
    }
    let login = Login {
        num_users: joined.num_users,
        username: &joined.username,
        renamed_from: joined.renamed_from.as_deref(),
        users: &joined.users,
        history: &page.messages,
        history_complete: page.complete,
        session: &joined.session,
        room,
    };
    emit(socket, outbound::LOGIN, &login);
    let login = serde_json::to_value(&login).map_err(|_| ChatError::unavailable())?;
    tracing::info!(sid = %socket.id(), resumed = joined.resumed, users = joined.num_users, "user joined");
    let member = Member {
        room,
        username: Arc::from(joined.username.as_str()),
        session: Arc::from(joined.session.as_str()),
        typing: false,
    };
    Ok((member, joined.version, login))
}

async fn new_message(
    ctx: &ChatContext,
    socket: &Socket,
    conn: &Conn,
    arg: Option<Value>,
    reply: Reply,
) {
    let arrived = std::time::Instant::now();
    METRICS.message_received();
    match post_message(ctx, socket, conn, arg).await {
        Ok(appended) => {
            METRICS.message_accepted(arrived.elapsed());
            reply.ok(&MessageAck {
                id: appended.message.id,
                ts: appended.message.ts,
                local_only: !appended.stored,
            });
        }
        Err(err) => reply.refuse(socket, &err),
    }
}

async fn post_message(
    ctx: &ChatContext,
    socket: &Socket,
    conn: &Conn,
    arg: Option<Value>,
) -> Result<Appended, ChatError> {
    let member = conn.member().ok_or_else(|| {
        ChatError::new(
            ErrorCode::NotJoined,
            "send add user before sending messages",
        )
    })?;
    let Some(Value::String(text)) = arg else {
        return Err(bad_request("new message takes the text as a string"));
    };
    ctx.settings.limits.message(&text)?;
    if let Err(wait) = conn.take_message_token() {
        return Err(ChatError::new(
            ErrorCode::RateLimited,
            format!("too many messages; try again in {} ms", wait.as_millis()),
        ));
    }
    let sid = socket.id().to_string();
    // Stores that publish keep id order themselves; otherwise assign-and-broadcast is one step.
    let _in_order = match ctx.history.publishes() {
        true => None,
        false => Some(ctx.message_order.lock().await),
    };
    let appended = ctx
        .history
        .append(member.room, &sid, &member.username, &text)
        .await
        .inspect_err(|err| tracing::warn!(%err, "could not store a message"))?;
    if !appended.published {
        broadcast_from(
            socket,
            member.room,
            outbound::NEW_MESSAGE,
            &appended.message,
        );
    }
    Ok(appended)
}

fn announce_typing(socket: &Socket, conn: &Conn, typing: bool) {
    let Some(member) = conn.typing_change(typing) else {
        return;
    };
    let event = if typing {
        outbound::TYPING
    } else {
        outbound::STOP_TYPING
    };
    let payload = Typing {
        username: &member.username,
    };
    broadcast_from(socket, member.room, event, &payload);
}

async fn list_users(ctx: &ChatContext, socket: &Socket, conn: &Conn, reply: Reply) {
    match ctx.presence.users(LOBBY).await {
        Ok(roster) => {
            // A page that shows this count is not set back by an older announcement after it.
            conn.saw(roster.version);
            reply.ok(&UserList {
                num_users: roster.num_users,
                users: &roster.users,
            })
        }
        Err(err) => reply.refuse(socket, &err),
    }
}

/// Sends to everyone in `room` but `socket`, on every instance.
fn broadcast_from<T: Serialize + ?Sized>(
    socket: &Socket,
    room: &str,
    event: &'static str,
    data: &T,
) {
    if let Err(err) = socket.to(room).emit(event, data) {
        tracing::warn!(event, %err, "broadcast failed");
    }
}

pub(super) async fn disconnect(ctx: ChatContext, socket: Socket, reason: DisconnectReason) {
    tracing::debug!(sid = %socket.id(), %reason, "disconnected");
    let Some(conn) = conn_of(&socket) else {
        return;
    };
    METRICS.disconnected(conn.transport, reason);
    let Some(member) = conn.take_member() else {
        return;
    };
    if member.typing {
        let payload = Typing {
            username: &member.username,
        };
        broadcast_from(&socket, member.room, outbound::STOP_TYPING, &payload);
    }
    let sid = socket.id().to_string();
    if reason.is_deliberate() {
        // The store publishes the leave; announcements come from there.
        match ctx.presence.leave(member.room, &sid).await {
            Ok(Some(left)) => tracing::info!(users = left.num_users, "user left"),
            Ok(None) => {}
            Err(err) => tracing::warn!(%err, "could not remove a user who left"),
        }
        return;
    }
    let grace_ms = u64::try_from(ctx.settings.reconnect_grace.as_millis()).unwrap_or(u64::MAX);
    let expires_at_ms = now_millis().saturating_add(grace_ms);
    if let Err(err) = ctx.presence.suspend(member.room, &sid, expires_at_ms).await {
        tracing::warn!(%err, "could not mark a dropped user");
    }
}

/// Ends the grace periods that are over: the store publishes the people who did not come back
/// as left. Run periodically by the server; safe to run on every instance at once.
pub async fn reap(ctx: &ChatContext) {
    match ctx.presence.reap(LOBBY, now_millis()).await {
        Ok(left) => {
            for person in &left {
                tracing::info!(users = person.num_users, "user left after the grace period");
            }
        }
        Err(err) => tracing::warn!(%err, "could not end grace periods"),
    }
}
