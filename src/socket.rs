//! The Socket.IO side of the chat: one handler per event, each validating its input, calling the
//! chat domain, and answering with an ack, an `error message`, or a broadcast.
//!
//! Handlers are generic over the socketioxide `Adapter`, so the same code serves the in-process
//! adapter and a cluster adapter. A handler never panics on client input: every argument is read
//! as a raw JSON value and checked here.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use serde::Serialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use socketioxide::handler::FromMessageParts;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::{DisconnectReason, Socket};

use crate::chat::{
    Announcer, Batch, Change, ChangeKind, ChatError, ErrorCode, History, Joined, LOBBY, Limits,
    Offer, Presence, StoredMessage, TokenBucket,
};
use crate::chat::{JoinRequest, Left, now_millis};
use crate::clients::{AddressLimits, Client, OpenSlot, Refusal as AddressRefusal};
use crate::metrics::{self, METRICS};
use crate::protocol::{
    AddUser, Auth, Login, MAX_ANNOUNCED_NAMES, MessageAck, Refusal, Typing, UserChange, UserList,
    inbound, outbound,
};

/// Longest session token accepted in the handshake; real ones are 32 characters.
const MAX_SESSION_TOKEN_LEN: usize = 64;

/// Longest part of an unknown event's name echoed back in the error.
const MAX_ECHOED_EVENT_CHARS: usize = 40;

/// Settings of the chat that handlers need.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    pub limits: Limits,
    pub history_len: usize,
    pub message_rate: f64,
    pub message_burst: u32,
    pub typing_rate: f64,
    pub reconnect_grace: Duration,
}

/// What every handler shares: the stores and the settings. Cheap to clone.
#[derive(Clone)]
pub struct ChatContext {
    pub presence: Arc<dyn Presence>,
    pub history: Arc<dyn History>,
    pub settings: Arc<ChatSettings>,
    /// Held from assigning a message's id to handing it to the broadcast, so that every client
    /// receives a room's messages in id order. Without it, two senders' messages could be
    /// broadcast in the opposite order of their ids, and a client that reconnects with the
    /// greater id as `lastId` would never get the other one.
    pub message_order: Arc<tokio::sync::Mutex<()>>,
    /// The per-address bounds on connections.
    pub clients: Arc<AddressLimits>,
    /// Coalesces `user joined` / `user left` during storms.
    pub announcer: Arc<Announcer>,
    /// Held while an announcement is offered and sent, so that they go out in order.
    pub announce_turn: Arc<tokio::sync::Mutex<()>>,
}

/// The state of one connection, kept in the socket's extensions.
struct Conn {
    /// The session token from the handshake `auth`, if the client sent one.
    auth_session: Option<String>,
    /// The end of this connection's queue of events (see `InOrder`). It starts with a place
    /// held until the connection is confirmed (see `on_connect`).
    last_turn: Mutex<Option<oneshot::Receiver<()>>>,
    /// Released by `on_connect`, the moment socketioxide counts the socket as connected.
    confirmed: Mutex<Option<oneshot::Sender<()>>>,
    /// The transport the connection started on, for the connection gauge.
    transport: metrics::Transport,
    member: Mutex<Membership>,
    messages: Mutex<TokenBucket>,
    typing: Mutex<TokenBucket>,
    /// This connection's place in its client address's count of open connections; released
    /// when the socket is dropped.
    _slot: Option<OpenSlot>,
}

enum Membership {
    /// Connected, has not sent `add user`.
    Anonymous,
    /// An `add user` is being handled: a second one, even concurrent, is ignored.
    Joining,
    Joined(Member),
}

#[derive(Clone)]
struct Member {
    room: &'static str,
    username: Arc<str>,
    session: Arc<str>,
    typing: bool,
}

impl Conn {
    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        // Membership is a plain value that any code path leaves consistent.
        self.member.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn member(&self) -> Option<Member> {
        match &*self.membership() {
            Membership::Joined(m) => Some(m.clone()),
            _ => None,
        }
    }

    /// Marks the connection as joining; false when it has already joined or is joining.
    fn begin_join(&self) -> bool {
        let mut m = self.membership();
        if !matches!(*m, Membership::Anonymous) {
            return false;
        }
        *m = Membership::Joining;
        true
    }

    fn finish_join(&self, member: Option<Member>) {
        *self.membership() = member.map_or(Membership::Anonymous, Membership::Joined);
    }

    fn take_member(&self) -> Option<Member> {
        match std::mem::replace(&mut *self.membership(), Membership::Anonymous) {
            Membership::Joined(m) => Some(m),
            _ => None,
        }
    }

    /// Records a typing state change. Returns the member to announce it for, or `None` when it is
    /// no change (a repeated `typing`) or the socket is over its typing rate.
    fn typing_change(&self, typing: bool) -> Option<Member> {
        let mut m = self.membership();
        let Membership::Joined(member) = &mut *m else {
            return None;
        };
        if member.typing == typing {
            return None;
        }
        if !self
            .typing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take()
        {
            return None;
        }
        member.typing = typing;
        Some(member.clone())
    }
}

/// An event's place in its connection's queue. socketioxide runs each event's handler as its own
/// task, so two events from one client could otherwise be handled in either order: a burst of
/// messages stored out of order, or a `new message` refused because the `add user` before it was
/// still being handled. Extractors run synchronously in arrival order, so this one takes a place
/// in a chain of one-shot channels; the handler waits for the previous event's place to be
/// released before doing anything. Dropping the place (the handler finished, or it never ran)
/// releases it, so the queue cannot stall.
pub struct InOrder {
    previous: Option<oneshot::Receiver<()>>,
    _release: oneshot::Sender<()>,
}

impl<A: Adapter> FromMessageParts<A> for InOrder {
    type Error = Infallible;

    fn from_message_parts(
        s: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        _: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let (release, next) = oneshot::channel();
        let previous = s.extensions.get::<Arc<Conn>>().and_then(|conn| {
            conn.last_turn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(next)
        });
        Ok(Self {
            previous,
            _release: release,
        })
    }
}

impl InOrder {
    /// Waits until every earlier event of this connection has been handled.
    async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            // An error means the previous place was released: exactly what we wait for.
            let _ = previous.await;
        }
    }
}

/// Replies to a client request: through its ack when it asked for one, else (for refusals) with
/// an `error message` event.
pub struct Reply<A: Adapter> {
    ack: AckSender<A>,
    wants_ack: bool,
}

impl<A: Adapter> FromMessageParts<A> for Reply<A> {
    type Error = Infallible;

    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Self {
            ack: AckSender::from_message_parts(s, v, ack_id)?,
            wants_ack: ack_id.is_some(),
        })
    }
}

impl<A: Adapter> Reply<A> {
    fn ok<T: Serialize + ?Sized>(self, value: &T) {
        if let Err(err) = self.ack.send(value) {
            count_if_dropped(&err);
            tracing::debug!(%err, "could not send an ack");
        }
    }

    fn refuse(self, socket: &SocketRef<A>, error: &ChatError) {
        METRICS.refused(error.code);
        tracing::debug!(sid = %socket.id, code = error.code.as_str(), "request refused");
        if self.wants_ack {
            self.ok(&Refusal { error });
        } else {
            emit(socket, outbound::ERROR_MESSAGE, error);
        }
    }
}

/// Sends to one socket. A full or closed socket is not an error of the handler: the client is
/// gone or too slow, and the disconnect path cleans up.
fn emit<A: Adapter, T: Serialize + ?Sized>(socket: &SocketRef<A>, event: &'static str, data: &T) {
    if let Err(err) = socket.emit(event, data) {
        count_if_dropped(&err);
        tracing::debug!(sid = %socket.id, event, %err, "could not emit to socket");
    }
}

/// A packet refused because the client's send buffer was full is a dropped packet, counted as
/// broadcasts' are; one refused because the socket is gone is not.
fn count_if_dropped(err: &socketioxide::SendError) {
    if matches!(
        err,
        socketioxide::SendError::Socket(socketioxide::SocketError::InternalChannelFull)
    ) {
        METRICS.dropped(1);
    }
}

fn bad_request(what: &str) -> ChatError {
    ChatError::new(ErrorCode::BadRequest, what.to_owned())
}

/// The namespace's connect middleware: sets up the connection's state and registers every event
/// handler. It runs before the server confirms the connection to the client; the connect
/// handler runs as a spawned task after that, so an event sent right after connecting could
/// reach a socket whose handlers are not registered yet if they were registered there.
pub async fn on_connecting<A: Adapter>(
    socket: SocketRef<A>,
    TryData(auth): TryData<Auth>,
    State(ctx): State<ChatContext>,
) -> Result<(), AddressRefusal> {
    // The client's address, worked out by the HTTP layer from the handshake request. Absent
    // only when the service is driven without a network peer.
    let client = socket.req_parts().extensions.get::<Client>().copied();
    let slot = match client {
        Some(client) => match ctx.clients.open(client.addr) {
            Ok(slot) => Some(slot),
            Err(refusal) => {
                METRICS.address_refused(refusal);
                tracing::debug!(client = %client.addr, %refusal, "refused a connection");
                return Err(refusal);
            }
        },
        None => None,
    };
    let auth_session = auth
        .ok()
        .and_then(|a| a.session)
        .filter(|s| !s.is_empty() && s.len() <= MAX_SESSION_TOKEN_LEN);
    let settings = &ctx.settings;
    let transport = match socket.transport_type() {
        socketioxide::TransportType::Websocket => metrics::Transport::Websocket,
        socketioxide::TransportType::Polling => metrics::Transport::Polling,
    };
    METRICS.connected(transport);
    // socketioxide sends the connect confirmation, then marks the socket connected, then runs
    // the connect handler; until it is marked, anything emitted to it is refused (`Closed`). A
    // client may send `add user` the moment it reads the confirmation (socket.io-client flushes
    // queued emits then; the classic page re-sends `add user` on reconnect), and that handler
    // could run and reply in between: the `login` was lost for 5-20% of such connections (the
    // hostile-client suite). So the first event waits until the connect handler has started.
    let (confirmed, first_turn) = oneshot::channel();
    socket.extensions.insert(Arc::new(Conn {
        auth_session,
        last_turn: Mutex::new(Some(first_turn)),
        confirmed: Mutex::new(Some(confirmed)),
        transport,
        member: Mutex::new(Membership::Anonymous),
        messages: Mutex::new(TokenBucket::new(
            settings.message_rate,
            settings.message_burst,
        )),
        typing: Mutex::new(TokenBucket::new(
            settings.typing_rate,
            (settings.typing_rate * 2.0).ceil() as u32,
        )),
        _slot: slot,
    }));

    socket.join(conn_room(&socket.id.to_string()));
    socket.on(inbound::ADD_USER, add_user::<A>);
    socket.on(inbound::NEW_MESSAGE, new_message::<A>);
    socket.on(inbound::TYPING, typing::<A>);
    socket.on(inbound::STOP_TYPING, stop_typing::<A>);
    socket.on(inbound::LIST_USERS, list_users::<A>);
    socket.on_fallback(unknown_event::<A>);
    socket.on_disconnect(on_disconnect::<A>);
    Ok(())
}

/// The namespace's connect handler, once the client knows it is connected.
pub async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    tracing::debug!(sid = %socket.id, transport = ?socket.transport_type(), "connected");
    if let Some(conn) = socket.extensions.get::<Arc<Conn>>()
        && let Some(confirmed) = conn
            .confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    {
        let _ = confirmed.send(());
    }
}

async fn add_user<A: Adapter>(
    mut order: InOrder,
    socket: SocketRef<A>,
    TryData(arg): TryData<Value>,
    reply: Reply<A>,
    State(ctx): State<ChatContext>,
    Extension(conn): Extension<Arc<Conn>>,
    io: SocketIo<A>,
) {
    order.wait().await;
    if !conn.begin_join() {
        // The classic contract: a second `add user` is ignored. Only a client that asked for an
        // ack is told why nothing happened.
        if reply.wants_ack {
            let err = ChatError::new(ErrorCode::AlreadyJoined, "this socket has already joined");
            reply.refuse(&socket, &err);
        }
        return;
    }
    match join(&socket, &io, &ctx, &conn, arg.ok()).await {
        Ok((member, login)) => {
            METRICS.joined();
            conn.finish_join(Some(member));
            reply.ok(&login);
        }
        Err(err) => {
            conn.finish_join(None);
            reply.refuse(&socket, &err);
        }
    }
}

/// Validates `add user`, registers the person, subscribes the socket to the room and sends
/// `login`. Returns what the caller needs to finish: the member and the login payload (for the
/// ack).
async fn join<A: Adapter>(
    socket: &SocketRef<A>,
    io: &SocketIo<A>,
    ctx: &ChatContext,
    conn: &Conn,
    arg: Option<Value>,
) -> Result<(Member, serde_json::Value), ChatError> {
    let request: AddUser = arg
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| bad_request("add user takes a nickname or {username, lastId}"))?;
    let nickname = ctx.settings.limits.nickname(request.username())?;
    let sid = socket.id.to_string();
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

    // Announced at once, before anything else of the join: whoever joins after this person
    // (on any instance) has them in their own `login`, and an announcement still on its way
    // when they subscribe would reach them late, with the count of a moment before. Announcing
    // first keeps that window as short as it can be.
    announce_join(ctx, io, socket, &joined).await;

    // Subscribe before reading the history: a message sent in between then arrives twice (the
    // client drops the copy by id) rather than not at all.
    socket.join(room);
    let page = ctx
        .history
        .page(room, request.last_id(), ctx.settings.history_len)
        .await;
    let page = match page {
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
        replace_socket(io, old).await;
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
    tracing::info!(sid = %socket.id, resumed = joined.resumed, users = joined.num_users, "user joined");
    let member = Member {
        room,
        username: Arc::from(joined.username.as_str()),
        session: Arc::from(joined.session.as_str()),
        typing: false,
    };
    Ok((member, login))
}

async fn announce_join<A: Adapter>(
    ctx: &ChatContext,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    joined: &Joined,
) {
    if joined.resumed {
        return;
    }
    let change = Change {
        kind: ChangeKind::Joined,
        username: joined.username.clone(),
        num_users: joined.num_users,
        sid: Some(socket.id.to_string()),
    };
    announce(ctx, io, change).await;
}

/// Announces a join or leave now, or, during a storm, with the others of its window (see
/// `chat::Announcer`).
async fn announce<A: Adapter>(ctx: &ChatContext, io: &SocketIo<A>, change: Change) {
    // One announcement at a time, in the order they were offered (tokio's mutex is fair): the
    // handlers of different connections run as concurrent tasks, and two sends racing each
    // other could deliver an older count after a newer one, which would then stay on pages.
    let _turn = ctx.announce_turn.lock().await;
    match ctx.announcer.offer(change) {
        Offer::Queued => {}
        Offer::Now(batch) => send_announcement(io, &batch, &[]).await,
        Offer::OpensWindow => {
            let ctx = ctx.clone();
            let io = io.clone();
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
                        send_announcement(&io, batch, &later_joiners).await;
                    }
                }
            });
        }
    }
}

/// Sends one announcement to the lobby, except to the person it names and to `also_except`.
async fn send_announcement<A: Adapter>(io: &SocketIo<A>, batch: &Batch, also_except: &[&str]) {
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
    let Some(ns) = namespace(io) else {
        return;
    };
    let except: Vec<String> = latest
        .sid
        .as_deref()
        .into_iter()
        .chain(also_except.iter().copied())
        .map(conn_room)
        .collect();
    let to = ns.to(LOBBY).except(except);
    broadcast(to, event, &payload).await;
}

/// Closes the socket that held a person until another socket presented its session. It may be
/// on another instance: every socket is in a room of its own (`conn_room`), and the adapter
/// reaches it there.
async fn replace_socket<A: Adapter>(io: &SocketIo<A>, old: &str) {
    let err = ChatError::new(
        ErrorCode::Replaced,
        "you joined again from another connection; this one is closed",
    );
    let Some(ns) = namespace(io) else {
        return;
    };
    broadcast(ns.clone().to(conn_room(old)), outbound::ERROR_MESSAGE, &err).await;
    if let Err(err) = ns.to(conn_room(old)).disconnect().await {
        tracing::debug!(%err, "could not disconnect a replaced socket");
    }
}

/// The chat's namespace, or `None` once shutdown has closed it. (socketioxide's shortcuts,
/// `io.to()`, `io.local()`, `io.sockets()`, panic when the default namespace is gone, and
/// announcements, deliveries and disconnect handlers can still run while the server drains.)
fn namespace<A: Adapter>(io: &SocketIo<A>) -> Option<BroadcastOperators<A>> {
    io.of("/")
}

/// The room that holds only the connection `sid`.
fn conn_room(sid: &str) -> String {
    format!("conn:{sid}")
}

async fn new_message<A: Adapter>(
    mut order: InOrder,
    socket: SocketRef<A>,
    TryData(arg): TryData<Value>,
    reply: Reply<A>,
    State(ctx): State<ChatContext>,
    Extension(conn): Extension<Arc<Conn>>,
) {
    let arrived = std::time::Instant::now();
    METRICS.message_received();
    order.wait().await;
    match post_message(&socket, &ctx, &conn, arg.ok()).await {
        Ok(stored) => {
            METRICS.message_accepted(arrived.elapsed());
            reply.ok(&MessageAck {
                id: stored.id,
                ts: stored.ts,
            });
        }
        Err(err) => reply.refuse(&socket, &err),
    }
}

async fn post_message<A: Adapter>(
    socket: &SocketRef<A>,
    ctx: &ChatContext,
    conn: &Conn,
    arg: Option<Value>,
) -> Result<StoredMessage, ChatError> {
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
    {
        let mut bucket = conn.messages.lock().unwrap_or_else(|e| e.into_inner());
        if !bucket.try_take() {
            let wait = bucket.retry_after().as_millis();
            return Err(ChatError::new(
                ErrorCode::RateLimited,
                format!("too many messages; try again in {wait} ms"),
            ));
        }
    }
    let sid = socket.id.to_string();
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
        broadcast(
            socket.to(member.room),
            outbound::NEW_MESSAGE,
            &appended.message,
        )
        .await;
    }
    Ok(appended.message)
}

async fn typing<A: Adapter>(
    mut order: InOrder,
    socket: SocketRef<A>,
    Extension(conn): Extension<Arc<Conn>>,
) {
    order.wait().await;
    announce_typing(&socket, &conn, true).await;
}

async fn stop_typing<A: Adapter>(
    mut order: InOrder,
    socket: SocketRef<A>,
    Extension(conn): Extension<Arc<Conn>>,
) {
    order.wait().await;
    announce_typing(&socket, &conn, false).await;
}

async fn announce_typing<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, typing: bool) {
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
    broadcast(socket.to(member.room), event, &payload).await;
}

async fn list_users<A: Adapter>(
    mut order: InOrder,
    socket: SocketRef<A>,
    reply: Reply<A>,
    State(ctx): State<ChatContext>,
) {
    order.wait().await;
    match ctx.presence.users(LOBBY).await {
        Ok((num_users, users)) => reply.ok(&UserList {
            num_users,
            users: &users,
        }),
        Err(err) => reply.refuse(&socket, &err),
    }
}

async fn unknown_event<A: Adapter>(
    mut order: InOrder,
    socket: SocketRef<A>,
    Event(name): Event,
    reply: Reply<A>,
) {
    order.wait().await;
    let shown: String = name.chars().take(MAX_ECHOED_EVENT_CHARS).collect();
    let err = ChatError::new(ErrorCode::UnknownEvent, format!("unknown event {shown:?}"));
    reply.refuse(&socket, &err);
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    reason: DisconnectReason,
    State(ctx): State<ChatContext>,
    Extension(conn): Extension<Arc<Conn>>,
    io: SocketIo<A>,
) {
    tracing::debug!(sid = %socket.id, ?reason, "disconnected");
    METRICS.disconnected(conn.transport);
    // Events still queued or running (an `add user` sent just before the connection dropped)
    // finish first: otherwise the join would complete after this handler found nobody to
    // remove, and leave a person in the chat for good. No event can join the queue any more;
    // the place held for the connect confirmation is released first, in case it never came.
    drop(
        conn.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    let tail = conn
        .last_turn
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(tail) = tail {
        let _ = tail.await;
    }
    let Some(member) = conn.take_member() else {
        return;
    };
    if member.typing {
        let payload = Typing {
            username: &member.username,
        };
        broadcast(socket.to(member.room), outbound::STOP_TYPING, &payload).await;
    }
    let sid = socket.id.to_string();
    let on_purpose = matches!(
        reason,
        DisconnectReason::ClientNSDisconnect | DisconnectReason::ServerNSDisconnect
    );
    if on_purpose {
        match ctx.presence.leave(member.room, &sid).await {
            Ok(Some(left)) => announce_left(&ctx, &io, &left).await,
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

/// Ends the grace periods that are over: the people who did not come back are announced as left.
/// Run periodically by the server; safe to run on every instance at once.
pub async fn reap<A: Adapter>(ctx: &ChatContext, io: &SocketIo<A>) {
    let room = LOBBY;
    match ctx.presence.reap(room, now_millis()).await {
        Ok(left) => {
            for person in &left {
                announce_left(ctx, io, person).await;
            }
        }
        Err(err) => tracing::warn!(%err, "could not end grace periods"),
    }
}

async fn announce_left<A: Adapter>(ctx: &ChatContext, io: &SocketIo<A>, left: &Left) {
    tracing::info!(users = left.num_users, "user left");
    let change = Change {
        kind: ChangeKind::Left,
        username: left.username.clone(),
        num_users: left.num_users,
        sid: None,
    };
    announce(ctx, io, change).await;
}

/// Delivers a message that the store published, to this instance's sockets in the room except
/// the sender. Called in the order the store published, which is id order.
pub async fn deliver_published<A: Adapter>(
    io: &SocketIo<A>,
    room: &str,
    sender: &str,
    message: &StoredMessage,
) {
    let Some(ns) = namespace(io) else {
        return;
    };
    let to = ns.local().to(room.to_owned()).except(conn_room(sender));
    broadcast(to, outbound::NEW_MESSAGE, message).await;
}

/// A person held by one of this instance's sockets.
pub struct LocalMember {
    pub conn: String,
    pub room: &'static str,
    pub username: String,
    pub session: String,
}

/// The people this instance's sockets hold, to put back into a store that lost them.
pub fn local_members<A: Adapter>(io: &SocketIo<A>) -> Vec<LocalMember> {
    let Some(ns) = namespace(io) else {
        return Vec::new();
    };
    ns.sockets()
        .into_iter()
        .filter_map(|socket| {
            let conn = socket.extensions.get::<Arc<Conn>>()?;
            let member = conn.member()?;
            Some(LocalMember {
                conn: socket.id.to_string(),
                room: member.room,
                username: member.username.to_string(),
                session: member.session.to_string(),
            })
        })
        .collect()
}

/// Emits to everyone the operator selects. A failed broadcast is logged, never returned: the
/// sender's request succeeded, and those who missed it recover through history on reconnect.
async fn broadcast<A: Adapter, T: Serialize + ?Sized>(
    to: socketioxide::operators::BroadcastOperators<A>,
    event: &'static str,
    data: &T,
) {
    match to.emit(event, data).await {
        Ok(()) => {}
        Err(socketioxide::BroadcastError::Socket(errors)) => {
            // Clients that are gone or too far behind; the others got the packet.
            let full = errors
                .iter()
                .filter(|e| matches!(e, socketioxide::SocketError::InternalChannelFull))
                .count();
            if full > 0 {
                METRICS.dropped(full as u64);
                tracing::warn!(
                    event,
                    clients = full,
                    "clients too far behind: packet dropped for them"
                );
            }
        }
        Err(err) => tracing::warn!(event, %err, "broadcast failed"),
    }
}
