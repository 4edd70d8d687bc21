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
            connect_by: Some(tokio::time::Instant::now().into_std() + config.connect_timeout),
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

    fn dispatch(&mut self, complete: Complete) -> Result<(), CloseReason> {
        let Complete {
            packet,
            attachments,
        } = complete;
        match packet {
            Inbound::Connect { nsp, auth } => match self.registry.namespace(&nsp) {
                // A second connect to a namespace the client is in breaks the protocol; Node's
                // server closes the connection for it.
                Some(_)
                    if self.sockets.iter().any(|e| {
                        e.socket.namespace() == nsp
                            && matches!(e.socket.state(), CONNECTING | CONNECTED)
                    }) =>
                {
                    return Err(CloseReason::ParseError);
                }
                Some(ns) => self.queue.push_back(Work::Connect { ns, auth }),
                None => {
                    let refusal = connect_error(&nsp, &ConnectError::new("Invalid namespace"));
                    let _ = self.session.send(refusal);
                }
            },
            Inbound::Disconnect { nsp } => {
                if let Some(socket) = self.socket(&nsp).cloned() {
                    socket.begin_disconnect(DisconnectReason::ClientNamespaceDisconnect);
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
                                socket.begin_disconnect(DisconnectReason::TransportClose);
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
                // An event for a namespace the client has not joined is ignored, as by Node.
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
            Ok(Some(complete)) => self.dispatch(complete),
            Ok(None) => Ok(()),
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
        self.connect_by
    }

    fn on_timer(&mut self, now: Instant) -> Option<CloseReason> {
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
