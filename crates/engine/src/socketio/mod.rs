//! Socket.IO v5 over the engine: what the application uses.
//!
//! The application registers a [`Handler`] per namespace. For each client, the engine calls
//! `connect` (which may refuse), then `connected`, then `event` for each event, one at a time and
//! in the order the client sent them, and finally `disconnect` once, after every event before it
//! has been handled. Sockets ([`Socket`]) emit, join and leave rooms; namespaces broadcast
//! ([`Broadcast`]). With an [`Adapter`], broadcasts reach the sockets of other instances too.

mod conn;
mod namespace;
mod socket;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use namespace::{Broadcast, Namespace, Packet};
pub use socket::{AckError, AckReply, Socket};

use crate::config::Config;
use crate::engine::{Engine, ResponseBody};
use crate::outbox::Frame;
use crate::proto::sio::{self, Kind};
use crate::session::CloseReason;

/// A boxed future, as handlers return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The application's side of a namespace. Every method has a default but `event`.
pub trait Handler: Send + Sync + 'static {
    /// A client asks to connect, with its `auth` object if it sent one. An error refuses it with
    /// a CONNECT_ERROR. Nothing can be emitted to the socket yet.
    fn connect(
        &self,
        socket: Socket,
        auth: Option<Box<RawValue>>,
    ) -> BoxFuture<Result<(), ConnectError>> {
        let _ = (socket, auth);
        Box::pin(std::future::ready(Ok(())))
    }

    /// The client has been told it is connected.
    fn connected(&self, socket: Socket) -> BoxFuture<()> {
        let _ = socket;
        Box::pin(std::future::ready(()))
    }

    /// An event from the client.
    fn event(&self, socket: Socket, event: Event) -> BoxFuture<()>;

    /// The socket disconnected. Called once for every socket whose `connect` succeeded, after
    /// the events before it.
    fn disconnect(&self, socket: Socket, reason: DisconnectReason) -> BoxFuture<()> {
        let _ = (socket, reason);
        Box::pin(std::future::ready(()))
    }
}

/// A refused connection: what the client's CONNECT_ERROR says.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub message: String,
    /// Optional details (`data` in the packet).
    pub data: Option<serde_json::Value>,
}

impl ConnectError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            data: None,
        }
    }
}

/// Why a socket disconnected, in Node's words (`as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    TransportClose,
    TransportError,
    PingTimeout,
    ParseError,
    ForcedClose,
    ServerShuttingDown,
    ClientNamespaceDisconnect,
    ServerNamespaceDisconnect,
    /// The client fell further behind than the outbound bound allows (not in Node, which has no
    /// bound).
    TooSlow,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::PingTimeout => "ping timeout",
            Self::ParseError => "parse error",
            Self::ForcedClose => "forced close",
            Self::ServerShuttingDown => "server shutting down",
            Self::ClientNamespaceDisconnect => "client namespace disconnect",
            Self::ServerNamespaceDisconnect => "server namespace disconnect",
            Self::TooSlow => "too slow",
        }
    }

    /// Whether the client meant to leave (it will not reconnect on its own), as opposed to
    /// losing its connection.
    pub fn is_deliberate(self) -> bool {
        matches!(
            self,
            Self::ClientNamespaceDisconnect | Self::ServerNamespaceDisconnect
        )
    }
}

impl From<CloseReason> for DisconnectReason {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::TransportClose => Self::TransportClose,
            CloseReason::TransportError => Self::TransportError,
            CloseReason::PingTimeout => Self::PingTimeout,
            CloseReason::ParseError => Self::ParseError,
            CloseReason::ForcedClose => Self::ForcedClose,
            CloseReason::ServerShutdown => Self::ServerShuttingDown,
            CloseReason::TooSlow => Self::TooSlow,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an emit to one socket did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// The socket is not connected (any more).
    Closed,
    /// The client is too far behind; its session is being closed.
    TooSlow,
    /// The data could not be serialised.
    Serialize,
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "the socket is not connected",
            Self::TooSlow => "the client is too far behind",
            Self::Serialize => "the data could not be serialised",
        })
    }
}

impl std::error::Error for EmitError {}

/// An event from a client.
pub struct Event {
    pub name: String,
    /// The arguments as raw JSON text; binary arguments are placeholders into `attachments`.
    pub args: Vec<Box<RawValue>>,
    pub attachments: Vec<Bytes>,
    /// Present when the client asked for an acknowledgement.
    pub ack: Option<Ack>,
}

impl Event {
    /// Argument `i`, parsed as `T`. Lone UTF-16 surrogates in its strings (which JavaScript
    /// allows) are read as replacement characters rather than refusing the whole argument.
    pub fn arg<T: serde::de::DeserializeOwned>(&self, i: usize) -> Option<serde_json::Result<T>> {
        self.args.get(i).map(|raw| {
            serde_json::from_str(raw.get()).or_else(|err| {
                match crate::proto::sio::replace_lone_surrogates(raw.get()) {
                    Some(fixed) => serde_json::from_str(&fixed),
                    None => Err(err),
                }
            })
        })
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name)
            .field("args", &self.args.len())
            .field("attachments", &self.attachments.len())
            .field("ack", &self.ack.is_some())
            .finish()
    }
}

/// Answers a client's event.
pub struct Ack {
    socket: Socket,
    id: u64,
}

impl Ack {
    /// The ack id the client gave.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Acknowledges with one argument.
    pub fn send<T: Serialize + ?Sized>(self, data: &T) -> Result<(), EmitError> {
        let mut builder = crate::proto::ws::FrameBuilder::with_capacity(64);
        let w = sio::Writer::start(
            builder.payload(),
            Kind::Ack,
            self.socket.namespace(),
            0,
            Some(self.id),
        );
        w.single(data).map_err(|_| EmitError::Serialize)?;
        let (ws, head) = builder.finish(true);
        self.socket.send(&[Frame::new(ws, head, false)])
    }

    /// Acknowledges with raw arguments and binary attachments.
    pub fn send_raw(self, args: &[Box<RawValue>], attachments: &[Bytes]) -> Result<(), EmitError> {
        let kind = if attachments.is_empty() {
            Kind::Ack
        } else {
            Kind::BinaryAck
        };
        let mut builder = crate::proto::ws::FrameBuilder::with_capacity(64);
        sio::Writer::start(
            builder.payload(),
            kind,
            self.socket.namespace(),
            attachments.len(),
            Some(self.id),
        )
        .args_raw(args);
        let (ws, head) = builder.finish(true);
        let mut frames = vec![Frame::new(ws, head, false)];
        frames.extend(attachments.iter().map(|a| Frame::binary(a)));
        self.socket.send(&frames)
    }
}

/// A broadcast (or a disconnect) published to the other instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteOp {
    pub nsp: String,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
    pub action: RemoteAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteAction {
    /// An Engine.IO message (`4...`), and its binary attachments.
    Emit {
        packet: String,
        attachments: Vec<Vec<u8>>,
    },
    Disconnect,
}

/// Carries broadcasts to the other instances (over Redis, say). The receiving side hands what
/// it gets to [`SocketIo::apply_remote`].
pub trait Adapter: Send + Sync + 'static {
    fn publish(&self, op: RemoteOp);
}

pub(crate) struct Registry {
    pub config: Config,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    adapter: RwLock<Option<Arc<dyn Adapter>>>,
}

impl Registry {
    pub(crate) fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub(crate) fn adapter(&self) -> Option<Arc<dyn Adapter>> {
        self.adapter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A Socket.IO server. Cheap to clone.
#[derive(Clone)]
pub struct SocketIo {
    engine: Engine<conn::Factory>,
    registry: Arc<Registry>,
}

impl SocketIo {
    pub fn new(config: Config) -> Self {
        let registry = Arc::new(Registry {
            config: config.clone(),
            namespaces: RwLock::new(HashMap::new()),
            adapter: RwLock::new(None),
        });
        Self {
            engine: Engine::new(
                config,
                conn::Factory {
                    registry: Arc::clone(&registry),
                },
            ),
            registry,
        }
    }

    /// Adds (or replaces) a namespace.
    pub fn namespace(&self, name: &str, handler: impl Handler) -> Arc<Namespace> {
        let ns = Arc::new(Namespace::new(
            name,
            Arc::new(handler),
            Arc::downgrade(&self.registry),
        ));
        self.registry
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), Arc::clone(&ns));
        ns
    }

    /// A namespace, if there is one by that name.
    pub fn of(&self, name: &str) -> Option<Arc<Namespace>> {
        self.registry.namespace(name)
    }

    /// Sends broadcasts to other instances through `adapter` from now on.
    pub fn set_adapter(&self, adapter: Arc<dyn Adapter>) {
        *self
            .registry
            .adapter
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(adapter);
    }

    /// Carries out a broadcast published by another instance, on this instance's sockets.
    pub fn apply_remote(&self, op: &RemoteOp) {
        if let Some(ns) = self.registry.namespace(&op.nsp) {
            ns.apply(op);
        }
    }

    /// Answers one request of the protocol.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.engine.handle(req).await
    }

    /// Open Engine.IO sessions.
    pub fn session_count(&self) -> usize {
        self.engine.session_count()
    }

    /// Closes every session: each socket disconnects with "server shutting down", and its
    /// client sees the transport close, and reconnects (to another instance, if there is one).
    /// Returns once every session's task has finished.
    pub async fn close(&self) {
        self.engine.close_all(CloseReason::ServerShutdown).await;
    }

    pub fn config(&self) -> &Config {
        &self.registry.config
    }
}
