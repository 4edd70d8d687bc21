//! A namespace: its sockets, its rooms, and broadcasts to them.
//!
//! A broadcast encodes its packet once, framed for WebSocket, and queues that one frame for every
//! recipient; each recipient's task wakes and writes it. With more than one worker thread, the
//! first recipients are being written to while the room is still being walked.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::socket::{CONNECTED, Socket};
use super::{Handler, Registry, RemoteAction, RemoteOp};
use crate::outbox::Frame;
use crate::proto::sio::{self, Kind};
use crate::proto::ws::FrameBuilder;
use crate::session::Sid;

#[derive(Default)]
struct Members {
    sockets: HashMap<Sid, Socket>,
    rooms: HashMap<Arc<str>, HashMap<Sid, Socket>>,
}

/// A namespace of a Socket.IO server.
pub struct Namespace {
    name: Arc<str>,
    pub(crate) handler: Arc<dyn Handler>,
    members: RwLock<Members>,
    registry: Weak<Registry>,
}

impl Namespace {
    pub(crate) fn new(name: &str, handler: Arc<dyn Handler>, registry: Weak<Registry>) -> Self {
        Self {
            name: Arc::from(name),
            handler,
            members: RwLock::new(Members::default()),
            registry,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn read(&self) -> RwLockReadGuard<'_, Members> {
        self.members.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Members> {
        self.members.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the socket in, once its connection is confirmed. False when its session closed
    /// meanwhile.
    pub(crate) fn insert(&self, socket: &Socket) -> bool {
        let mut m = self.write();
        if socket.0.session.outbox_closed() {
            return false;
        }
        socket.set_state(CONNECTED);
        m.sockets.insert(socket.id(), socket.clone());
        true
    }

    /// Takes the socket out of the namespace and of every room.
    pub(crate) fn remove(&self, socket: &Socket) {
        let rooms = std::mem::take(
            &mut *socket
                .0
                .rooms
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut m = self.write();
        m.sockets.remove(&socket.id());
        for room in rooms {
            if let Some(members) = m.rooms.get_mut(&room) {
                members.remove(&socket.id());
                if members.is_empty() {
                    m.rooms.remove(&room);
                }
            }
        }
    }

    pub(crate) fn join(&self, socket: &Socket, room: &str) {
        let mut m = self.write();
        // Under the lock that `remove` takes: a socket disconnecting now cannot end up in a room.
        if socket.state() != CONNECTED {
            return;
        }
        let mut rooms = socket
            .0
            .rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if rooms.iter().any(|r| &**r == room) {
            return;
        }
        let room: Arc<str> = match m.rooms.get_key_value(room) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(room),
        };
        rooms.push(Arc::clone(&room));
        m.rooms
            .entry(room)
            .or_default()
            .insert(socket.id(), socket.clone());
    }

    pub(crate) fn leave(&self, socket: &Socket, room: &str) {
        let mut m = self.write();
        let mut rooms = socket
            .0
            .rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        rooms.retain(|r| &**r != room);
        if let Some(members) = m.rooms.get_mut(room) {
            members.remove(&socket.id());
            if members.is_empty() {
                m.rooms.remove(room);
            }
        }
    }

    /// Every connected socket of this instance.
    pub fn sockets(&self) -> Vec<Socket> {
        self.read().sockets.values().cloned().collect()
    }

    /// How many sockets of this instance are connected.
    pub fn len(&self) -> usize {
        self.read().sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Broadcasts to the whole namespace, or, with `to`, to rooms.
    pub fn broadcast(self: &Arc<Self>) -> Broadcast {
        Broadcast::new(Arc::clone(self))
    }

    /// Encodes `event` with one argument once, for sending to sockets of this namespace one by
    /// one ([`Socket::send_packet`]): when which socket gets it is the application's decision.
    pub fn prepare<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> serde_json::Result<Packet> {
        Ok(Packet(vec![encode_event(self.name(), event, data, None)?]))
    }

    /// Calls `each` for every socket of this instance that the rooms select (every socket when
    /// there are none), but those in `except`, under the namespace's lock. A room named by a
    /// socket's id selects that socket.
    fn for_each(&self, rooms: &[String], except: &[String], mut each: impl FnMut(&Socket)) {
        let m = self.read();
        let excluded: HashSet<Sid> = except
            .iter()
            .flat_map(|room| members_of(&m, room))
            .map(Socket::id)
            .collect();
        let mut visit = |socket: &Socket| {
            if !excluded.contains(&socket.id()) {
                each(socket);
            }
        };
        match rooms {
            [] => m.sockets.values().for_each(&mut visit),
            [room] => members_of(&m, room).for_each(&mut visit),
            _ => {
                let mut seen = HashSet::new();
                for room in rooms {
                    for socket in members_of(&m, room) {
                        if seen.insert(socket.id()) {
                            visit(socket);
                        }
                    }
                }
            }
        }
    }

    /// Carries out a broadcast another instance published.
    pub(crate) fn apply(&self, op: &RemoteOp) {
        match &op.action {
            RemoteAction::Emit {
                packet,
                attachments,
            } => {
                let mut frames = vec![Frame::text(packet.as_bytes())];
                frames.extend(attachments.iter().map(|a| Frame::binary(a)));
                for socket in self.select(&op.rooms, &op.except) {
                    let _ = socket.send(&frames);
                }
            }
            RemoteAction::Disconnect => {
                for socket in self.select(&op.rooms, &op.except) {
                    socket.disconnect();
                }
            }
        }
    }

    fn select(&self, rooms: &[String], except: &[String]) -> Vec<Socket> {
        let mut out = Vec::new();
        self.for_each(rooms, except, |s| out.push(s.clone()));
        out
    }
}

fn members_of<'m>(m: &'m Members, room: &str) -> Box<dyn Iterator<Item = &'m Socket> + 'm> {
    match m.rooms.get(room) {
        Some(members) => Box::new(members.values()),
        None => Box::new(
            Sid::parse(room)
                .and_then(|sid| m.sockets.get(&sid))
                .into_iter(),
        ),
    }
}

/// An event encoded once, to be sent to any number of sockets of its namespace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Packet(pub(crate) Vec<Frame>);

/// Frames an event with one argument: `4` + `2[/nsp,][id]["event",data]`.
pub(crate) fn encode_event<T: Serialize + ?Sized>(
    nsp: &str,
    event: &str,
    data: &T,
    id: Option<u64>,
) -> serde_json::Result<Frame> {
    let mut builder = FrameBuilder::with_capacity(64);
    sio::Writer::start(builder.payload(), Kind::Event, nsp, 0, id).event(event, data)?;
    let (ws, head) = builder.finish(true);
    Ok(Frame::new(ws, head, false))
}

/// Frames an event with raw arguments and attachments.
pub(crate) fn encode_raw(
    nsp: &str,
    event: &str,
    args: &[Box<RawValue>],
    attachments: &[Bytes],
    id: Option<u64>,
) -> serde_json::Result<Vec<Frame>> {
    let kind = if attachments.is_empty() {
        Kind::Event
    } else {
        Kind::BinaryEvent
    };
    let mut builder = FrameBuilder::with_capacity(64);
    sio::Writer::start(builder.payload(), kind, nsp, attachments.len(), id)
        .event_raw(event, args)?;
    let (ws, head) = builder.finish(true);
    let mut frames = vec![Frame::new(ws, head, false)];
    frames.extend(attachments.iter().map(|a| Frame::binary(a)));
    Ok(frames)
}

/// A broadcast being put together: to which rooms, except whom, on this instance only or on
/// every instance.
#[must_use = "a broadcast does nothing until it emits"]
pub struct Broadcast {
    ns: Arc<Namespace>,
    rooms: Vec<String>,
    except: Vec<String>,
    local: bool,
}

impl Broadcast {
    pub(crate) fn new(ns: Arc<Namespace>) -> Self {
        Self {
            ns,
            rooms: Vec::new(),
            except: Vec::new(),
            local: false,
        }
    }

    /// Adds a room (or a socket id) to send to.
    pub fn to(mut self, room: impl Into<String>) -> Self {
        self.rooms.push(room.into());
        self
    }

    /// Leaves out the sockets of a room (or a socket, by id).
    pub fn except(mut self, room: impl Into<String>) -> Self {
        self.except.push(room.into());
        self
    }

    /// Only this instance's sockets, even with an adapter.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }

    /// Sends `event` with one argument to everyone selected. Returns how many sockets of this
    /// instance it was queued for.
    pub fn emit<T: Serialize + ?Sized>(self, event: &str, data: &T) -> serde_json::Result<usize> {
        let frame = encode_event(self.ns.name(), event, data, None)?;
        Ok(self.send(vec![frame], Vec::new()))
    }

    /// Sends `event` with raw arguments and binary attachments.
    pub fn emit_raw(
        self,
        event: &str,
        args: &[Box<RawValue>],
        attachments: &[Bytes],
    ) -> serde_json::Result<usize> {
        let frames = encode_raw(self.ns.name(), event, args, attachments, None)?;
        Ok(self.send(frames, attachments.to_vec()))
    }

    fn send(self, frames: Vec<Frame>, attachments: Vec<Bytes>) -> usize {
        // Taken out of the namespace's lock first: a send may write to the socket (`tcp.rs`),
        // and a broadcast to a large room would hold joins and leaves back for all its writes.
        let sockets = self.ns.select(&self.rooms, &self.except);
        for socket in &sockets {
            // A socket that is gone or too slow is being closed; the others carry on.
            let _ = socket.send(&frames);
        }
        let count = sockets.len();
        if !self.local
            && let Some(adapter) = self.ns.registry.upgrade().and_then(|r| r.adapter())
        {
            let packet = String::from_utf8_lossy(frames[0].payload()).into_owned();
            adapter.publish(RemoteOp {
                nsp: self.ns.name().to_owned(),
                rooms: self.rooms,
                except: self.except,
                action: RemoteAction::Emit {
                    packet,
                    attachments: attachments.iter().map(|a| a.to_vec()).collect(),
                },
            });
        }
        count
    }

    /// Disconnects everyone selected from the namespace (see [`Socket::disconnect`]).
    pub fn disconnect(self) {
        for socket in self.ns.select(&self.rooms, &self.except) {
            socket.disconnect();
        }
        if !self.local
            && let Some(adapter) = self.ns.registry.upgrade().and_then(|r| r.adapter())
        {
            adapter.publish(RemoteOp {
                nsp: self.ns.name().to_owned(),
                rooms: self.rooms,
                except: self.except,
                action: RemoteAction::Disconnect,
            });
        }
    }

    /// The sockets of this instance that are selected.
    pub fn sockets(self) -> Vec<Socket> {
        self.ns.select(&self.rooms, &self.except)
    }
}
