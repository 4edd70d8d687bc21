//! A Socket.IO socket: one client's connection to one namespace, as the application holds it.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::namespace::{Broadcast, Namespace, encode_event};
use super::{DisconnectReason, EmitError};
use crate::outbox::{Frame, PushError};
use crate::proto::sio::{self, Kind};
use crate::session::{Session, Sid, Transport};

pub(crate) const CONNECTING: u8 = 0;
pub(crate) const CONNECTED: u8 = 1;
pub(crate) const DISCONNECTING: u8 = 2;
pub(crate) const DONE: u8 = 3;

/// What a client answered to an event the server sent with an ack: its arguments (binary ones as
/// placeholders) and the binary attachments they point to.
#[derive(Debug, Default)]
pub struct AckReply {
    pub args: Vec<Box<RawValue>>,
    pub attachments: Vec<bytes::Bytes>,
}

/// Why an acknowledgement did not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    /// The client did not answer in time.
    Timeout,
    /// The socket disconnected first.
    Disconnected,
    /// The event could not be sent.
    NotSent(EmitError),
}

impl fmt::Display for AckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("no acknowledgement in time"),
            Self::Disconnected => f.write_str("the socket disconnected"),
            Self::NotSent(err) => write!(f, "not sent: {err}"),
        }
    }
}

impl std::error::Error for AckError {}

#[derive(Default)]
struct Acks {
    next: u64,
    waiting: HashMap<u64, oneshot::Sender<AckReply>>,
}

pub(crate) struct Inner {
    pub(crate) id: Sid,
    pub(crate) ns: Arc<Namespace>,
    pub(crate) session: Arc<Session>,
    pub(crate) state: AtomicU8,
    /// Why the socket is disconnecting, once it is.
    pub(crate) reason: Mutex<Option<DisconnectReason>>,
    /// The rooms joined, besides the socket's own id.
    pub(crate) rooms: Mutex<Vec<Arc<str>>>,
    data: OnceLock<Box<dyn Any + Send + Sync>>,
    /// Acknowledgements the server waits for; allocated by the first emit that asks for one.
    acks: Mutex<Option<Box<Acks>>>,
}

/// A client's connection to a namespace. Cheap to clone.
#[derive(Clone)]
pub struct Socket(pub(crate) Arc<Inner>);

impl Socket {
    pub(crate) fn new(ns: Arc<Namespace>, session: Arc<Session>) -> Self {
        Self(Arc::new(Inner {
            id: Sid::random(),
            ns,
            session,
            state: AtomicU8::new(CONNECTING),
            reason: Mutex::new(None),
            rooms: Mutex::new(Vec::new()),
            data: OnceLock::new(),
            acks: Mutex::new(None),
        }))
    }

    /// The socket's id (Socket.IO v5: not the Engine.IO session id).
    pub fn id(&self) -> Sid {
        self.0.id
    }

    /// The namespace's name.
    pub fn namespace(&self) -> &str {
        self.0.ns.name()
    }

    /// The namespace itself (to broadcast from it).
    pub fn ns(&self) -> &Arc<Namespace> {
        &self.0.ns
    }

    /// The transport the session uses now.
    pub fn transport(&self) -> Transport {
        self.0.session.transport()
    }

    /// The transport the session opened with.
    pub fn initial_transport(&self) -> Transport {
        self.0.session.initial_transport()
    }

    /// What the HTTP layer put in the handshake request's extensions.
    pub fn extensions(&self) -> &http::Extensions {
        self.0.session.extensions()
    }

    /// Whether the client may be sent events: connected, and not yet disconnected.
    pub fn connected(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == CONNECTED
    }

    pub(crate) fn state(&self) -> u8 {
        self.0.state.load(Ordering::Acquire)
    }

    /// Attaches the application's state to the socket, once.
    pub fn set_data<T: Any + Send + Sync>(&self, data: T) -> Result<(), T> {
        self.0.data.set(Box::new(data)).map_err(|boxed| {
            // Only a `T` was ever boxed here.
            *boxed.downcast::<T>().unwrap_or_else(|_| unreachable!())
        })
    }

    /// The application's state, if it was attached with this type.
    pub fn data<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.data.get()?.downcast_ref()
    }

    /// Sends `event` with one argument.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), EmitError> {
        let frame =
            encode_event(self.namespace(), event, data, None).map_err(|_| EmitError::Serialize)?;
        self.send(std::slice::from_ref(&frame))
    }

    /// Sends a packet prepared once for many sockets ([`Namespace::prepare`]).
    pub fn send_packet(&self, packet: &super::Packet) -> Result<(), EmitError> {
        self.send(&packet.0)
    }

    /// Sends prepared packets together, in this order: on a WebSocket with nothing queued they
    /// leave in one write. (A broadcaster that has several messages for a room sends each
    /// socket its share at once, rather than one write per message.)
    pub fn send_packets(&self, packets: &[&super::Packet]) -> Result<(), EmitError> {
        match packets {
            [] => Ok(()),
            [one] => self.send(&one.0),
            many => {
                let frames: Vec<Frame> = many.iter().flat_map(|p| p.0.iter().cloned()).collect();
                self.send(&frames)
            }
        }
    }

    /// Sends `event` with raw arguments and binary attachments (their placeholders are in the
    /// arguments already).
    pub fn emit_raw(
        &self,
        event: &str,
        args: &[Box<RawValue>],
        attachments: &[bytes::Bytes],
    ) -> Result<(), EmitError> {
        let frames = super::namespace::encode_raw(self.namespace(), event, args, attachments, None)
            .map_err(|_| EmitError::Serialize)?;
        self.send(&frames)
    }

    /// Sends `event` and waits for the client's acknowledgement.
    pub async fn emit_with_ack<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<AckReply, AckError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut acks = self.acks();
            let acks = acks.get_or_insert_with(Box::default);
            acks.next += 1;
            acks.waiting.insert(acks.next, tx);
            acks.next
        };
        let sent = encode_event(self.namespace(), event, data, Some(id))
            .map_err(|_| EmitError::Serialize)
            .and_then(|frame| self.send(std::slice::from_ref(&frame)));
        if let Err(err) = sent {
            self.forget_ack(id);
            return Err(AckError::NotSent(err));
        }
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(AckError::Disconnected),
            Err(_) => Err(AckError::Timeout),
        };
        self.forget_ack(id);
        result
    }

    fn acks(&self) -> MutexGuard<'_, Option<Box<Acks>>> {
        self.0.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget_ack(&self, id: u64) {
        let mut acks = self.acks();
        if let Some(a) = acks.as_mut() {
            a.waiting.remove(&id);
            if a.waiting.is_empty() {
                *acks = None;
            }
        }
    }

    /// The client acknowledged event `id`.
    pub(crate) fn acknowledged(&self, id: u64, reply: AckReply) {
        let waiting = self.acks().as_mut().and_then(|a| a.waiting.remove(&id));
        if let Some(tx) = waiting {
            let _ = tx.send(reply);
        }
    }

    /// Queues frames for the client, all together.
    pub(crate) fn send(&self, frames: &[Frame]) -> Result<(), EmitError> {
        if !self.connected() {
            return Err(EmitError::Closed);
        }
        self.push(frames)
    }

    pub(crate) fn push(&self, frames: &[Frame]) -> Result<(), EmitError> {
        match self.0.session.send_all(frames) {
            Ok(()) => Ok(()),
            Err(PushError::Closed) => Err(EmitError::Closed),
            Err(PushError::Overflow) => Err(EmitError::TooSlow),
        }
    }

    /// Joins a room. A socket that is disconnecting joins nothing.
    pub fn join(&self, room: &str) {
        self.0.ns.join(self, room);
    }

    /// Leaves a room.
    pub fn leave(&self, room: &str) {
        self.0.ns.leave(self, room);
    }

    /// The rooms the socket is in, besides its own id.
    pub fn rooms(&self) -> Vec<String> {
        self.0
            .rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|r| r.to_string())
            .collect()
    }

    /// Everyone in `room` but this socket.
    pub fn to(&self, room: impl Into<String>) -> Broadcast {
        Broadcast::new(Arc::clone(&self.0.ns))
            .to(room)
            .except(self.id().as_str())
    }

    /// Everyone in the namespace but this socket.
    pub fn broadcast(&self) -> Broadcast {
        Broadcast::new(Arc::clone(&self.0.ns)).except(self.id().as_str())
    }

    /// Disconnects the socket from its namespace: the client is told (a DISCONNECT packet) and
    /// does not reconnect on its own. Its session stays open for its other namespaces.
    pub fn disconnect(&self) {
        if self.begin_disconnect(DisconnectReason::ServerNamespaceDisconnect) {
            let mut text = Vec::new();
            sio::Writer::start(&mut text, Kind::Disconnect, self.namespace(), 0, None).finish();
            let _ = self.push(&[Frame::text(&text)]);
            self.0.session.wake_driver();
        }
    }

    /// Closes the whole session the socket is on (its transport): the client sees its connection
    /// drop, and reconnects.
    pub fn close_session(&self) {
        self.0
            .session
            .close(crate::session::CloseReason::ForcedClose);
    }

    /// Marks the socket as disconnecting for `reason` and takes it out of its namespace and
    /// rooms. False when it was not connected (already disconnecting, or never connected).
    pub(crate) fn begin_disconnect(&self, reason: DisconnectReason) -> bool {
        if self
            .0
            .state
            .compare_exchange(
                CONNECTED,
                DISCONNECTING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        *self.0.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.0.ns.remove(self);
        // Nobody will answer now.
        *self.acks() = None;
        true
    }

    pub(crate) fn disconnect_reason(&self) -> Option<DisconnectReason> {
        *self.0.reason.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_state(&self, state: u8) {
        self.0.state.store(state, Ordering::Release);
    }
}

impl PartialEq for Socket {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("nsp", &self.namespace())
            .finish_non_exhaustive()
    }
}
