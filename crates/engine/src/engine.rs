//! The Engine.IO server: answers the HTTP requests of the protocol (handshakes, long-polling GETs
//! and POSTs, WebSocket upgrades), keeps the table of sessions, and starts one task per session
//! (`driver.rs`). What runs above Engine.IO in a session (Socket.IO, or a bare echo for the
//! conformance suite) plugs in through `Layer`.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::Notify;

use crate::config::Config;
use crate::outbox::{Frame, Take};
use crate::proto::eio;
use crate::session::{CloseReason, Session, Sid, Transport};

/// The body of every response the engine gives.
pub type ResponseBody = Full<Bytes>;

/// A message of a session, for the layer above Engine.IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
}

/// What runs above Engine.IO in one session. The session's task owns it and calls it; nothing
/// else does, so it needs no lock.
pub trait Layer: Send + 'static {
    /// A message from the client. An error closes the session for that reason.
    fn message(&mut self, message: Message) -> Result<(), CloseReason>;
    /// Drives work in progress. `Ready` when there is none.
    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// Whether the layer takes more messages now. While it does not, the session's task stops
    /// reading from the client, which slows the client down.
    fn accepting(&self) -> bool;
    /// When `on_timer` should be called, if ever.
    fn deadline(&self) -> Option<Instant>;
    /// A deadline of the layer's came. A reason closes the session.
    fn on_timer(&mut self, now: Instant) -> Option<CloseReason>;
    /// The session is closing. `poll_work` is then called until `Ready`, to let the layer finish.
    fn close(&mut self, reason: CloseReason);
}

/// Makes the layer of each new session.
pub trait LayerFactory: Send + Sync + 'static {
    type Layer: Layer;
    fn open(&self, session: Arc<Session>) -> Self::Layer;
}

/// Node's error codes for refused requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

/// What the sessions' tasks share.
pub(crate) struct Shared<F: LayerFactory> {
    pub config: Config,
    pub factory: F,
    sessions: Mutex<HashMap<Sid, Arc<Session>>>,
    /// Session tasks still running.
    live: AtomicUsize,
    drained: Notify,
    /// The server is closing: no new session is opened.
    closing: AtomicBool,
}

impl<F: LayerFactory> Shared<F> {
    fn sessions(&self) -> MutexGuard<'_, HashMap<Sid, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn forget(&self, sid: Sid) {
        self.sessions().remove(&sid);
    }

    pub(crate) fn task_ended(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }
}

/// An Engine.IO server. Cheap to clone.
pub struct Engine<F: LayerFactory> {
    shared: Arc<Shared<F>>,
}

impl<F: LayerFactory> Clone for Engine<F> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<F: LayerFactory> Engine<F> {
    pub fn new(config: Config, factory: F) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                factory,
                sessions: Mutex::new(HashMap::new()),
                live: AtomicUsize::new(0),
                drained: Notify::new(),
                closing: AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn factory(&self) -> &F {
        &self.shared.factory
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.shared.sessions().len()
    }

    /// Closes every session with `reason` (their clients see their transport close, and
    /// reconnect), and waits until every session's task has finished.
    pub async fn close_all(&self, reason: CloseReason) {
        self.shared.closing.store(true, Ordering::Release);
        loop {
            let drained = self.shared.drained.notified();
            // A handshake already past its check when closing began may still add a session.
            let sessions: Vec<Arc<Session>> = self.shared.sessions().values().cloned().collect();
            for session in sessions {
                session.close(reason);
            }
            if self.shared.live.load(Ordering::Acquire) == 0 {
                return;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), drained).await;
        }
    }

    /// Answers one request of the protocol (whatever its path: routing is the caller's).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let query = Query::parse(req.uri().query().unwrap_or(""));
        let config = &self.shared.config;
        let transport = match query.transport.as_deref() {
            Some("polling") if config.polling => Transport::Polling,
            Some("websocket") if config.websocket => Transport::WebSocket,
            _ => return error(ErrorCode::UnknownTransport),
        };
        let Some(sid) = query.sid else {
            return self.handshake(req, transport, query.eio.as_deref());
        };
        let Some(session) =
            Sid::parse(&sid).and_then(|sid| self.shared.sessions().get(&sid).cloned())
        else {
            return error(ErrorCode::UnknownSid);
        };
        if session.gone(crate::driver::now()) {
            return error(ErrorCode::UnknownSid);
        }
        // Every request of a session speaks its protocol, 4 (Node: `PROTOCOL_MISMATCH`, EIO
        // missing counting as 3); the session lives on.
        if query.eio.as_deref() != Some("4") {
            return error(ErrorCode::BadRequest);
        }
        match transport {
            Transport::WebSocket => self.probe(req, &session),
            Transport::Polling if session.transport() != Transport::Polling => {
                error(ErrorCode::BadRequest)
            }
            Transport::Polling => match *req.method() {
                Method::GET => poll(&session).await,
                Method::POST => post(&session, req, config.max_payload).await,
                _ => error(ErrorCode::BadRequest),
            },
        }
    }

    fn handshake<B>(
        &self,
        mut req: Request<B>,
        transport: Transport,
        eio: Option<&str>,
    ) -> Response<ResponseBody> {
        if req.method() != Method::GET {
            return error(ErrorCode::BadHandshakeMethod);
        }
        if self.shared.closing.load(Ordering::Acquire) {
            // Clients retry elsewhere (or here, after a restart).
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }
        if eio != Some("4") {
            return error(ErrorCode::UnsupportedProtocolVersion);
        }
        let upgrade = match transport {
            Transport::WebSocket => match websocket_accept(&mut req) {
                Ok(accept) => Some(accept),
                Err(response) => return response,
            },
            Transport::Polling => None,
        };
        let mut extensions = std::mem::take(req.extensions_mut());
        extensions.remove::<hyper::upgrade::OnUpgrade>();
        let config = &self.shared.config;
        let sid = Sid::random();
        let session = Arc::new(Session::new(
            sid,
            transport,
            config.max_buffered_bytes,
            extensions,
        ));
        let open = eio::encode_open(&eio::Open {
            sid: sid.as_str(),
            upgrades: if transport == Transport::Polling && config.websocket {
                &["websocket"]
            } else {
                &[]
            },
            ping_interval: config.ping_interval.as_millis() as u64,
            ping_timeout: config.ping_timeout.as_millis() as u64,
            max_payload: config.max_payload as u64,
        });
        let layer = self.shared.factory.open(Arc::clone(&session));
        self.shared.sessions().insert(sid, Arc::clone(&session));
        self.shared.live.fetch_add(1, Ordering::AcqRel);
        let (on_upgrade, response) = match upgrade {
            Some((on_upgrade, response)) => (Some(on_upgrade), response),
            None => (None, polling_response(Bytes::from(open.clone()))),
        };
        let driver = crate::driver::Driver::new(
            Arc::clone(&self.shared),
            session,
            layer,
            on_upgrade.map(|u| (u, Frame::text(open.as_bytes()))),
        );
        tokio::spawn(driver);
        response
    }

    /// A WebSocket for a polling session: handed to the session's task, which probes it and
    /// completes the upgrade.
    fn probe<B>(&self, mut req: Request<B>, session: &Arc<Session>) -> Response<ResponseBody> {
        let (on_upgrade, response) = match websocket_accept(&mut req) {
            Ok(accepted) => accepted,
            Err(response) => return response,
        };
        let mut c = session.control();
        if session.transport() != Transport::Polling || c.probe.is_some() || c.ended {
            drop(c);
            // Already upgraded, or upgrading: as Node's server does, the WebSocket is accepted
            // and closed at once (a refused handshake is an error some clients throw).
            tokio::spawn(close_at_once(on_upgrade));
            return response;
        }
        c.probe = Some(on_upgrade);
        let waker = c.driver.take();
        drop(c);
        if let Some(w) = waker {
            w.wake();
        }
        response
    }
}

/// Closes a WebSocket as soon as it is open.
pub(crate) async fn close_at_once(on_upgrade: hyper::upgrade::OnUpgrade) {
    use tokio::io::AsyncWriteExt;
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    let _ = io.write_all(&crate::proto::ws::close_frame(1000)).await;
    let _ = io.shutdown().await;
}

/// The 101 answer to a WebSocket handshake, and the upgrade to wait for; or the refusal.
#[allow(clippy::result_large_err)]
fn websocket_accept<B>(
    req: &mut Request<B>,
) -> Result<(hyper::upgrade::OnUpgrade, Response<ResponseBody>), Response<ResponseBody>> {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.method() != Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
    {
        return Err(error(ErrorCode::BadRequest));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = error(ErrorCode::BadRequest);
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(response);
    }
    // The key is 16 random bytes in base64 (RFC 6455 4.1): 22 characters and `==`. Node's `ws`
    // refuses any other with 400.
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| is_websocket_key(key.as_bytes()))
    else {
        return Err(error(ErrorCode::BadRequest));
    };
    let accept = crate::proto::ws::accept_key(key.as_bytes());
    // A client that offers subprotocols must get one of them back, or it fails the connection
    // (RFC 6455 4.1): the first, as Node's `ws` chooses when nothing else is set. A list that is
    // not tokens is refused, as by `ws`.
    let mut offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .peekable();
    let protocol = match offered.peek() {
        None => None,
        Some(first) => {
            let first = HeaderValue::from_bytes(first).ok();
            if !offered.all(is_token) {
                return Err(error(ErrorCode::BadRequest));
            }
            first
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        // Not served by hyper over HTTP/1.1: there is no connection to take over.
        return Err(error(ErrorCode::BadRequest));
    };
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Full::default())
        .unwrap_or_default();
    if let Some(protocol) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    Ok((on_upgrade, response))
}

/// An HTTP token (RFC 9110 5.6.2): what a subprotocol's name must be.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// A `Sec-WebSocket-Key` as RFC 6455 has it: 16 bytes in base64.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Node's answer to a refused request: 400 and `{"code":N,"message":"..."}`.
pub(crate) fn error(code: ErrorCode) -> Response<ResponseBody> {
    let body = format!(
        r#"{{"code":{},"message":"{}"}}"#,
        code as u8,
        code.message()
    );
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn polling_response(body: Bytes) -> Response<ResponseBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=UTF-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(body))
        .unwrap_or_default()
}

fn status(status: StatusCode) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .body(Full::default())
        .unwrap_or_default()
}

/// Ends the session if a GET is dropped before it answered: the client went away (a closed
/// tab), and Node's server ends the session at once in that case.
struct PendingGet<'a> {
    session: &'a Session,
    answered: bool,
}

impl Drop for PendingGet<'_> {
    fn drop(&mut self) {
        self.session.outbox.unregister();
        self.session.control().get_active = false;
        if !self.answered {
            self.session.close(CloseReason::TransportError);
        }
    }
}

enum Polled {
    Taken(Take),
    Upgrading,
    Upgraded,
}

/// A long-polling GET: waits for packets and answers with them.
async fn poll(session: &Arc<Session>) -> Response<ResponseBody> {
    {
        let mut c = session.control();
        if c.get_active {
            drop(c);
            // Two GETs at once: the client is broken, and Node ends the session.
            session.close(CloseReason::TransportError);
            return error(ErrorCode::BadRequest);
        }
        c.get_active = true;
    }
    let mut pending = PendingGet {
        session,
        answered: false,
    };
    let taken = poll_fn(|cx| {
        if session.transport() != Transport::Polling {
            // Upgraded meanwhile: polling is over for this session, as a close packet says.
            return Poll::Ready(Polled::Upgraded);
        }
        if session.probed() {
            // An upgrade is under way: the client waits for this GET to end before it
            // completes the upgrade, and what is queued goes out on the WebSocket.
            return Poll::Ready(Polled::Upgrading);
        }
        session.outbox.poll_take(cx).map(Polled::Taken)
    })
    .await;
    let body = match taken {
        Polled::Upgrading => Bytes::from_static(b"6"),
        Polled::Upgraded | Polled::Taken(Take::Closed) => Bytes::from_static(b"1"),
        Polled::Taken(Take::Frames(frames)) => {
            let mut body = Vec::new();
            let mut cost = 0;
            for (i, frame) in frames.iter().enumerate() {
                if i > 0 {
                    body.push(eio::SEPARATOR);
                }
                if frame.is_binary() {
                    eio::encode_binary_for_polling(frame.payload(), &mut body);
                } else {
                    body.extend_from_slice(frame.payload());
                }
                cost += frame.cost();
            }
            session.outbox.written(cost);
            Bytes::from(body)
        }
    };
    pending.answered = true;
    drop(pending);
    // A closing session waits for its client to fetch the last packets: tell it they went.
    if session.control().ended {
        session.wake_driver();
    }
    polling_response(body)
}

/// Marks a POST done when it ends, however it ends.
struct ActivePost<'a>(&'a Session);

impl Drop for ActivePost<'_> {
    fn drop(&mut self) {
        self.0.control().post_active = false;
    }
}

/// A long-polling POST: reads the packets and hands them to the session's task.
async fn post<B>(
    session: &Arc<Session>,
    req: Request<B>,
    max_payload: usize,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    {
        let mut c = session.control();
        if c.post_active {
            drop(c);
            session.close(CloseReason::TransportError);
            return error(ErrorCode::BadRequest);
        }
        c.post_active = true;
    }
    let _active = ActivePost(session);
    // Binary data travels base64-encoded in text payloads; Node refuses a binary body.
    if req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/octet-stream"))
    {
        session.close(CloseReason::TransportError);
        return error(ErrorCode::BadRequest);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_payload as u64) {
        session.close(CloseReason::TransportError);
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let body = match Limited::new(req.into_body(), max_payload).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            session.close(CloseReason::TransportError);
            if err.is::<http_body_util::LengthLimitError>() {
                return status(StatusCode::PAYLOAD_TOO_LARGE);
            }
            return error(ErrorCode::BadRequest);
        }
    };
    let packets = match eio::decode_payload(body, max_payload) {
        Ok(packets) => packets,
        Err(err) => {
            tracing::debug!(sid = %session.sid(), %err, "unreadable polling payload");
            session.close(CloseReason::ParseError);
            return error(ErrorCode::BadRequest);
        }
    };
    // One batch at a time: a POST waits until the task has taken the one before.
    let mut packets = Some(packets);
    let ended = poll_fn(|cx| {
        let mut c = session.control();
        if c.ended {
            return Poll::Ready(true);
        }
        if c.inbox.is_empty() {
            c.inbox.extend(packets.take().into_iter().flatten());
            return Poll::Ready(false);
        }
        c.post_waiter = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    if !ended {
        session.wake_driver();
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from_static(b"ok")))
        .unwrap_or_default()
}

/// The query parameters the protocol uses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl Query {
    fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "EIO" => &mut q.eio,
                "transport" => &mut q.transport,
                "sid" => &mut q.sid,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(percent_decode(value));
            }
        }
        q
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(
            Query::parse("EIO=4&transport=polling&t=abc&sid=a%2Db"),
            Query {
                eio: Some("4".into()),
                transport: Some("polling".into()),
                sid: Some("a-b".into()),
            }
        );
        assert_eq!(Query::parse(""), Query::default());
        assert_eq!(Query::parse("sid=%zz&sid=x").sid.as_deref(), Some("%zz"));
        assert_eq!(percent_decode("a%"), "a%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn error_bodies_are_nodes() {
        let r = error(ErrorCode::UnknownSid);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
