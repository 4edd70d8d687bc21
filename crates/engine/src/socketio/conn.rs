//! Socket.IO in one session: the layer above Engine.IO that the session's task runs. It turns
//! messages into packets (collecting binary attachments), keeps the session's sockets (one per
//! namespace), and runs the application's handlers one at a time, in the order the packets
//! came: an event is handled after the connect before it, and a socket's `disconnect` after
//! every event it sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use serde_json::value::RawValue;

use super::namespace::Namespace;
use super::socket::{CONNECTED, CONNECTING, DISCONNECTING, DONE, Socket};
use super::{Ack, BoxFuture, ConnectError, DisconnectReason, Event, Registry};
use crate::driver::now;
use crate::engine::{Layer, LayerFactory, Message};
use crate::outbox::Frame;
use crate::proto::sio::{self, Assembler, Complete, Inbound, Kind};
use crate::session::{CloseReason, Session};

/// Packets waiting to be handled before the session stops reading from its client.
const MAX_QUEUED: usize = 64;

pub(crate) struct Factory {
    pub registry: Arc<Registry>,
}

impl LayerFactory for Factory {
    type Layer = Conn;

    fn open(&self, session: Arc<Session>) -> Conn {
        let config = &self.registry.config;
        Conn {
            registry: Arc::clone(&self.registry),
            session,
            assembler: Assembler::new(config.max_attachments, config.max_payload),
            sockets: Vec::new(),
            queue: VecDeque::new(),
            running: None,
            connect_by: Some(now() + config.connect_timeout),
            attachments_by: None,
            closing: None,
        }
    }
}

enum Work {
    Connect {
        ns: Arc<Namespace>,
        auth: Option<Box<RawValue>>,
    },
    Event {
        nsp: String,
        id: Option<u64>,
        name: String,
        args: Vec<Box<RawValue>>,
        attachments: Vec<bytes::Bytes>,
    },
    /// The client's DISCONNECT: handled in its turn, so that it leaves a namespace whose
    /// CONNECT came just before it (both in one read) rather than being lost.
    Leave { nsp: String },
    Disconnect {
        socket: Socket,
        reason: DisconnectReason,
    },
}

/// A socket of the session, and whether its `disconnect` has been queued.
struct Entry {
    socket: Socket,
    disconnect_queued: bool,
}

pub(crate) struct Conn {
    registry: Arc<Registry>,
    session: Arc<Session>,
    assembler: Assembler,
    sockets: Vec<Entry>,
    queue: VecDeque<Work>,
    running: Option<BoxFuture<()>>,
    /// Until a namespace is joined, the session must join one by then.
    connect_by: Option<Instant>,
    /// While a binary packet waits for its attachments, the next one must come by then.
    attachments_by: Option<Instant>,
    closing: Option<CloseReason>,
}

impl Conn {
    /// The session's socket in `nsp` that events may reach: the connected one, or else one that
    /// is disconnecting (its events sent before the DISCONNECT are still handled, before its
    /// `disconnect`).
    fn socket(&self, nsp: &str) -> Option<&Socket> {
        let mut of_nsp = self
            .sockets
            .iter()
            .map(|e| &e.socket)
            .filter(|s| s.namespace() == nsp);
        let connected = of_nsp.clone().find(|s| s.state() == CONNECTED);
        connected.or_else(|| of_nsp.find(|s| s.state() == DISCONNECTING))
    }

    /// Whether the client is in `nsp`, or on its way in, once the work queued so far is done:
    /// its packets count in the order they came, even those not yet handled.
    fn joining(&self, nsp: &str) -> bool {
        let now = self.sockets.iter().any(|e| {
            e.socket.namespace() == nsp && matches!(e.socket.state(), CONNECTING | CONNECTED)
        });
        self.queue.iter().fold(now, |joined, work| match work {
            Work::Connect { ns, .. } if ns.name() == nsp => true,
            Work::Leave { nsp: left } if left == nsp => false,
            _ => joined,
        })
    }

    /// A CONNECT to `nsp` is queued, or its application is deciding it.
    fn connect_pending(&self, nsp: &str) -> bool {
        self.queue
            .iter()
            .any(|w| matches!(w, Work::Connect { ns, .. } if ns.name() == nsp))
            || self
                .sockets
                .iter()
                .any(|e| e.socket.namespace() == nsp && e.socket.state() == CONNECTING)
    }

    fn dispatch(&mut self, complete: Complete) -> Result<(), CloseReason> {
        let Complete {
            packet,
            attachments,
        } = complete;
        match packet {
            Inbound::Connect { nsp, auth } => match self.registry.namespace(&nsp) {
                // A second connect to a namespace the client is in (or is joining: two in one
                // read) breaks the protocol; Node's server closes the connection for it.
                Some(_) if self.joining(&nsp) => return Err(CloseReason::ParseError),
                Some(ns) => self.queue.push_back(Work::Connect { ns, auth }),
                None => {
                    let refusal = connect_error(&nsp, &ConnectError::new("Invalid namespace"));
                    let _ = self.session.send(refusal);
                }
            },
            Inbound::Disconnect { nsp } => {
                if self.connect_pending(&nsp) {
                    // Its CONNECT came in the same read, or is still being decided: the
                    // DISCONNECT waits for it.
                    self.queue.push_back(Work::Leave { nsp });
                } else if let Some(socket) = self.socket(&nsp).cloned()
                    && socket.begin_disconnect(DisconnectReason::ClientNamespaceDisconnect)
                {
                    // At once: the socket is told why it left even if the connection ends in
                    // the same read (a client that leaves sends DISCONNECT, then closes); and
                    // its `disconnect` is queued now, before whatever the client sends next.
                    self.collect();
                }
            }
            Inbound::Event {
                nsp,
                id,
                name,
                args,
                ..
            } => self.queue.push_back(Work::Event {
                nsp,
                id,
                name,
                args,
                attachments,
            }),
            Inbound::Ack { nsp, id, args, .. } => {
                if let (Some(socket), Some(id)) = (self.socket(&nsp), id) {
                    socket.acknowledged(id, super::AckReply { args, attachments });
                }
            }
        }
        Ok(())
    }

    /// Queues the `disconnect` of sockets that began disconnecting (from anywhere), and forgets
    /// the sockets that are done.
    fn collect(&mut self) {
        for entry in &mut self.sockets {
            if !entry.disconnect_queued && entry.socket.state() == DISCONNECTING {
                entry.disconnect_queued = true;
                let reason = entry
                    .socket
                    .disconnect_reason()
                    .unwrap_or(DisconnectReason::TransportClose);
                self.queue.push_back(Work::Disconnect {
                    socket: entry.socket.clone(),
                    reason,
                });
            }
        }
        self.sockets.retain(|e| e.socket.state() != DONE);
    }

    fn start(&mut self, work: Work) -> Option<BoxFuture<()>> {
        match work {
            Work::Connect { ns, auth } => {
                // The client's DISCONNECT right behind (both in one read): if the session ends
                // before the socket is in, that is still why it left.
                let leaves = self
                    .queue
                    .iter()
                    .any(|w| matches!(w, Work::Leave { nsp } if nsp == ns.name()));
                let socket = Socket::new(Arc::clone(&ns), Arc::clone(&self.session));
                self.sockets.push(Entry {
                    socket: socket.clone(),
                    disconnect_queued: false,
                });
                let handler = Arc::clone(&ns.handler);
                Some(Box::pin(async move {
                    match handler.connect(socket.clone(), auth).await {
                        Ok(()) => {
                            if ns.insert(&socket) {
                                let _ = socket.push(&[connect_packet(ns.name(), &socket)]);
                                handler.connected(socket).await;
                            } else {
                                // The session closed while the application decided: it still
                                // hears of the disconnect of what it accepted.
                                socket.set_state(CONNECTED);
                                socket.begin_disconnect(if leaves {
                                    DisconnectReason::ClientNamespaceDisconnect
                                } else {
                                    DisconnectReason::TransportClose
                                });
                            }
                        }
                        Err(err) => {
                            let _ = socket.push(&[connect_error(ns.name(), &err)]);
                            socket.set_state(DONE);
                        }
                    }
                }))
            }
            Work::Event {
                nsp,
                id,
                name,
                args,
                attachments,
            } => {
                // An event for a namespace the client has not joined (or has just left, or
                // was disconnected from while the event was on its way) is ignored; Node
                // closes the connection (tests/socketio_node.rs, deliberate differences).
                let socket = self.socket(&nsp)?.clone();
                let ack = id.map(|id| Ack {
                    socket: socket.clone(),
                    id,
                });
                let event = Event {
                    name,
                    args,
                    attachments,
                    ack,
                };
                Some(socket.0.ns.handler.event(socket.clone(), event))
            }
            Work::Leave { nsp } => {
                // Events the client sent before are handled (they were ahead in the queue); the
                // socket's `disconnect` comes next, before what the client sent after.
                let entry = self
                    .sockets
                    .iter_mut()
                    .find(|e| e.socket.namespace() == nsp && e.socket.state() == CONNECTED);
                if let Some(entry) = entry
                    && entry
                        .socket
                        .begin_disconnect(DisconnectReason::ClientNamespaceDisconnect)
                {
                    entry.disconnect_queued = true;
                    self.queue.push_front(Work::Disconnect {
                        socket: entry.socket.clone(),
                        reason: DisconnectReason::ClientNamespaceDisconnect,
                    });
                }
                None
            }
            Work::Disconnect { socket, reason } => {
                socket.set_state(DONE);
                Some(socket.0.ns.handler.disconnect(socket.clone(), reason))
            }
        }
    }

    fn after_work(&mut self) {
        if self.sockets.iter().any(|e| e.socket.state() == CONNECTED) {
            self.connect_by = None;
        }
        if let Some(reason) = self.closing {
            for entry in &self.sockets {
                entry.socket.begin_disconnect(reason.into());
            }
        }
        // A refused connect leaves its socket done; forget it.
        self.sockets.retain(|e| e.socket.state() != DONE);
    }
}

impl Layer for Conn {
    fn message(&mut self, message: Message) -> Result<(), CloseReason> {
        let complete = match message {
            Message::Text(bytes) => {
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    return Err(CloseReason::ParseError);
                };
                self.assembler.text(text)
            }
            Message::Binary(data) => self.assembler.binary(data),
        };
        match complete {
            Ok(Some(complete)) => {
                self.attachments_by = None;
                self.dispatch(complete)
            }
            Ok(None) => {
                // A binary packet or one of its attachments: the next must follow within the
                // ping timeout, or the packet is not coming (its parts would stay in memory).
                self.attachments_by = Some(now() + self.registry.config.ping_timeout);
                Ok(())
            }
            Err(err) => {
                tracing::debug!(sid = %self.session.sid(), %err, "closing a session that sent an unreadable packet");
                Err(CloseReason::ParseError)
            }
        }
    }

    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(running) = &mut self.running {
                if running.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.running = None;
                self.after_work();
            }
            self.collect();
            let Some(work) = self.queue.pop_front() else {
                // An idle connection keeps no room for work.
                if self.queue.capacity() > 0 {
                    self.queue = VecDeque::new();
                }
                return Poll::Ready(());
            };
            self.running = self.start(work);
        }
    }

    fn accepting(&self) -> bool {
        self.queue.len() < MAX_QUEUED
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.connect_by, self.attachments_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self, now: Instant) -> Option<CloseReason> {
        if self.attachments_by.is_some_and(|by| now >= by) {
            tracing::debug!(sid = %self.session.sid(), "closing a session whose binary packet's attachments did not come");
            self.attachments_by = None;
            return Some(CloseReason::ParseError);
        }
        let by = self.connect_by?;
        if now < by {
            return None;
        }
        self.connect_by = None;
        let joined = self.sockets.iter().any(|e| e.socket.state() == CONNECTED);
        (!joined).then_some(CloseReason::ForcedClose)
    }

    fn close(&mut self, reason: CloseReason) {
        self.closing = Some(reason);
        self.connect_by = None;
        self.attachments_by = None;
        // A DISCONNECT still queued was the client leaving: that is its sockets' reason.
        for work in &self.queue {
            if let Work::Leave { nsp } = work
                && let Some(socket) = self.socket(nsp)
            {
                socket.begin_disconnect(DisconnectReason::ClientNamespaceDisconnect);
            }
        }
        for entry in &self.sockets {
            entry.socket.begin_disconnect(reason.into());
        }
    }
}

/// `40[/nsp,]{"sid":"..."}`.
fn connect_packet(nsp: &str, socket: &Socket) -> Frame {
    let mut text = Vec::with_capacity(40);
    let w = sio::Writer::start(&mut text, Kind::Connect, nsp, 0, None);
    let _ = w.json(&serde_json::json!({ "sid": socket.id().as_str() }));
    Frame::text(&text)
}

/// `44[/nsp,]{"message":"...","data":...}`, in Node's order.
fn connect_error(nsp: &str, err: &ConnectError) -> Frame {
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a serde_json::Value>,
    }
    let mut text = Vec::with_capacity(64);
    let _ = sio::Writer::start(&mut text, Kind::ConnectError, nsp, 0, None).json(&Payload {
        message: &err.message,
        data: err.data.as_ref(),
    });
    Frame::text(&text)
}
