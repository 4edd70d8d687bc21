//! An Engine.IO session as the other tasks see it: its id, its outbound queue, and the few
//! things they may hand its task (packets a POST carried, a WebSocket to probe, a request to
//! close). The session's own task (`driver.rs`) owns everything else.

use std::collections::VecDeque;
use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use crate::outbox::{Frame, Outbox, PushError};
use crate::proto::eio;

/// A session id: 120 random bits as 20 URL-safe base64 characters, as Node's are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid([u8; 20]);

impl Sid {
    pub fn random() -> Self {
        use base64::Engine as _;
        let bits: [u8; 15] = rand::random();
        let mut out = [0u8; 20];
        // 15 bytes are exactly 20 base64 characters.
        let _ = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_slice(bits, &mut out);
        Self(out)
    }

    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; 20] = s.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            .then_some(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.as_str())
    }
}

/// A transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::WebSocket => "websocket",
        }
    }
}

/// Why a session ended, in Node's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection, or sent a close packet.
    TransportClose,
    /// The connection failed, or the client broke the transport's rules.
    TransportError,
    /// The client stopped answering pings.
    PingTimeout,
    /// The client sent a packet that could not be read.
    ParseError,
    /// The server closed the session.
    ForcedClose,
    /// The server is shutting down.
    ServerShutdown,
    /// The client fell further behind than the outbound bound allows.
    TooSlow,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::PingTimeout => "ping timeout",
            Self::ParseError => "parse error",
            Self::ForcedClose => "forced close",
            Self::ServerShutdown => "server shutting down",
            Self::TooSlow => "too slow",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The origin of the millisecond clock sessions share with HTTP requests.
static EPOCH: LazyLock<Instant> = LazyLock::new(|| tokio::time::Instant::now().into_std());

fn millis_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_millis()).unwrap_or(u64::MAX)
}

const POLLING: u8 = 0;
const WEBSOCKET: u8 = 1;

/// What other tasks hand the session's task, under one lock.
#[derive(Default)]
pub(crate) struct Control {
    /// Packets of POSTs the task has not taken yet.
    pub inbox: VecDeque<eio::Inbound>,
    /// A POST waiting for the inbox to empty.
    pub post_waiter: Option<Waker>,
    /// A WebSocket upgrade for the task to probe.
    pub probe: Option<hyper::upgrade::OnUpgrade>,
    /// A close asked for from outside.
    pub close: Option<CloseReason>,
    /// The session's task, when it waits.
    pub driver: Option<Waker>,
    pub get_active: bool,
    pub post_active: bool,
    /// The task is closing or has ended: nothing more is handed to it.
    pub ended: bool,
    /// Why it is closing, once it is.
    pub closing: Option<CloseReason>,
}

/// A session, shared by its task, HTTP requests, and whoever sends to it.
pub struct Session {
    sid: Sid,
    transport: AtomicU8,
    /// A WebSocket probe succeeded and the upgrade is under way: long-polling GETs are answered
    /// with a noop, so that the client can pause polling.
    probed: AtomicBool,
    /// When the pong to the last ping is due, in milliseconds since `EPOCH`; 0 when none is.
    pong_due_ms: AtomicU64,
    initial: Transport,
    pub(crate) outbox: Outbox,
    control: Mutex<Control>,
    extensions: http::Extensions,
}

impl Session {
    pub(crate) fn new(
        sid: Sid,
        transport: Transport,
        max_buffered_bytes: usize,
        extensions: http::Extensions,
    ) -> Self {
        Self {
            sid,
            transport: AtomicU8::new(match transport {
                Transport::Polling => POLLING,
                Transport::WebSocket => WEBSOCKET,
            }),
            initial: transport,
            probed: AtomicBool::new(false),
            pong_due_ms: AtomicU64::new(0),
            outbox: Outbox::new(max_buffered_bytes),
            control: Mutex::new(Control::default()),
            extensions,
        }
    }

    pub fn sid(&self) -> Sid {
        self.sid
    }

    /// The transport in use now.
    pub fn transport(&self) -> Transport {
        match self.transport.load(Ordering::Acquire) {
            POLLING => Transport::Polling,
            _ => Transport::WebSocket,
        }
    }

    /// The transport the session opened with.
    pub fn initial_transport(&self) -> Transport {
        self.initial
    }

    pub(crate) fn set_upgraded(&self) {
        self.probed.store(false, Ordering::Release);
        self.transport.store(WEBSOCKET, Ordering::Release);
    }

    pub(crate) fn set_probed(&self, probed: bool) {
        self.probed.store(probed, Ordering::Release);
    }

    pub(crate) fn probed(&self) -> bool {
        self.probed.load(Ordering::Acquire)
    }

    /// Records when the pong to the last ping is due (`None`: none is).
    pub(crate) fn set_pong_due(&self, due: Option<Instant>) {
        let ms = due.map_or(0, |at| millis_since_epoch(at).max(1));
        self.pong_due_ms.store(ms, Ordering::Release);
    }

    /// Whether the client is gone: closing (and not owed packets still to drain), or past its
    /// pong's deadline even if the session's task has not noticed yet. Requests for such a
    /// session are answered as for an unknown one, as Node's server removes a session at once.
    pub(crate) fn gone(&self, now: Instant) -> bool {
        let due = self.pong_due_ms.load(Ordering::Acquire);
        if due != 0 && millis_since_epoch(now) > due {
            self.close(CloseReason::PingTimeout);
            return true;
        }
        let c = self.control();
        match c.closing {
            None => false,
            // A polling session that closed normally still hands its client what it was sent
            // (and the noop or close packet that ends it), to a GET that was on its way.
            Some(
                CloseReason::ForcedClose
                | CloseReason::ServerShutdown
                | CloseReason::TransportClose,
            ) => self.transport() != Transport::Polling || self.outbox.is_empty(),
            Some(_) => true,
        }
    }

    /// The extensions of the handshake request (what the HTTP layer put there: the client's
    /// address, say).
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        // Every change to `Control` is a plain assignment; a panic cannot leave it half done.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a frame. A client too far behind is closed: the error says so.
    pub(crate) fn send(&self, frame: Frame) -> Result<(), PushError> {
        self.send_all(std::slice::from_ref(&frame))
    }

    /// Sends frames together.
    pub(crate) fn send_all(&self, frames: &[Frame]) -> Result<(), PushError> {
        let result = self.outbox.push_all(frames);
        if result == Err(PushError::Overflow) {
            self.close(CloseReason::TooSlow);
        }
        result
    }

    /// Whether the session takes no more frames (it is closing or closed).
    pub(crate) fn outbox_closed(&self) -> bool {
        self.outbox.is_closed()
    }

    /// Sends a text packet (`4...`, `2`, ...).
    pub fn send_text(&self, packet: &[u8]) -> Result<(), PushError> {
        self.send(Frame::text(packet))
    }

    /// Sends a binary message.
    pub fn send_binary(&self, data: &[u8]) -> Result<(), PushError> {
        self.send(Frame::binary(data))
    }

    /// Asks the session's task to close the session. The first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let waker = {
            let mut c = self.control();
            if c.ended || c.close.is_some() {
                return;
            }
            c.close = Some(reason);
            c.driver.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Wakes the session's task.
    pub(crate) fn wake_driver(&self) {
        if let Some(w) = self.control().driver.take() {
            w.wake();
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .field("transport", &self.transport())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_are_random_url_safe_and_parse_back() {
        let a = Sid::random();
        let b = Sid::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 20);
        assert_eq!(Sid::parse(a.as_str()), Some(a));
        assert_eq!(Sid::parse("short"), None);
        assert_eq!(Sid::parse("aaaaaaaaaaaaaaaaaaa/"), None);
    }
}
