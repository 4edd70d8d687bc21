//! Fixtures for the engine's integration tests: the conformance servers started in-process on
//! a free port ([`TestServer`], stopped on `Drop`), a raw HTTP/1.1 client for long-polling
//! ([`HttpResponse`], [`InFlight`]), and a raw WebSocket client ([`Ws`]).
//!
//! The clients are deliberately low-level: the tests check the bytes of the protocol, so nothing
//! between the test and the socket may add, merge, retry or hide anything. Every HTTP request
//! is sent on a new connection with `Connection: close`, as the official suites' client does.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use banter_engine::conformance::{self, Conformance, EchoFactory};
use banter_engine::serve::{not_found, serve};
use banter_engine::socketio::SocketIo;
use banter_engine::{Config, Engine};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// Where the Engine.IO suite expects its endpoint.
pub const ENGINE_PATH: &str = "/engine.io/";
/// Where the Socket.IO suite expects its endpoint.
pub const SOCKETIO_PATH: &str = "/socket.io/";

/// How long a test waits for the next WebSocket message, or for an HTTP response: the official
/// suites' per-test timeout (mocha's 2000 ms).
pub const WAIT: Duration = Duration::from_millis(2_000);

/// The Engine.IO handshake of a polling session (`initLongPollingSession` in the suites).
pub const POLLING: &str = "EIO=4&transport=polling";
/// The Engine.IO handshake of a WebSocket session.
pub const WEBSOCKET: &str = "EIO=4&transport=websocket";

/// The query of a request on polling session `sid`.
pub fn polling(sid: &str) -> String {
    format!("{POLLING}&sid={sid}")
}

/// The query of a WebSocket upgrade of session `sid`.
pub fn websocket(sid: &str) -> String {
    format!("{WEBSOCKET}&sid={sid}")
}

/// How a test server hands its connections to hyper, and so who writes to a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// As `banter_engine::TcpConnection`: whoever sends writes to the socket while nothing is
    /// queued for it (how the chat serves plain TCP).
    Shared,
    /// As any other connection (TLS, say): the session's task writes everything.
    Task,
}

impl Conn {
    /// `Shared`, unless `ENGINE_TEST_IO=task` (scripts/test runs the suite both ways).
    pub fn from_env() -> Self {
        match std::env::var("ENGINE_TEST_IO").as_deref() {
            Ok("task") => Conn::Task,
            _ => Conn::Shared,
        }
    }
}

/// Serves every connection with `handle`, handed to hyper as `conn` says.
async fn serve_as<H, F>(conn: Conn, listener: tokio::net::TcpListener, handle: H)
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<banter_engine::ResponseBody>> + Send + 'static,
{
    match conn {
        Conn::Shared => serve(listener, handle).await,
        Conn::Task => banter_engine::serve::serve_as(listener, handle, |tcp| tcp).await,
    }
}

/// A server on 127.0.0.1, on a port the system chose; its accept loop is stopped when it is
/// dropped. (Connections and sessions already running end with the test's runtime.)
pub struct TestServer {
    addr: SocketAddr,
    path: &'static str,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// The Engine.IO suite's server: an echo at `/engine.io/`, pinging every 300 ms with a
    /// 200 ms timeout.
    pub async fn engine() -> Result<Self> {
        Self::engine_with(conformance::engine_config()).await
    }

    /// An echo at `/engine.io/` with other settings.
    pub async fn engine_with(config: Config) -> Result<Self> {
        let engine = Engine::new(config, EchoFactory);
        let listener = bind().await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve_as(Conn::from_env(), listener, move |req| {
            let engine = engine.clone();
            async move {
                if req.uri().path() == ENGINE_PATH {
                    engine.handle(req).await
                } else {
                    not_found()
                }
            }
        }));
        Ok(Self {
            addr,
            path: ENGINE_PATH,
            task,
        })
    }

    /// The Socket.IO suite's server at `/socket.io/`.
    pub async fn socketio() -> Result<Self> {
        Self::socketio_with(conformance::socketio_server()).await
    }

    /// A Socket.IO server at `/socket.io/`.
    pub async fn socketio_with(io: SocketIo) -> Result<Self> {
        Self::socketio_as(io, Conn::from_env()).await
    }

    /// A Socket.IO server at `/socket.io/`, whose connections go to hyper as `conn` says.
    pub async fn socketio_as(io: SocketIo, conn: Conn) -> Result<Self> {
        let listener = bind().await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve_as(conn, listener, move |req| {
            let io = io.clone();
            async move {
                if req.uri().path() == SOCKETIO_PATH {
                    io.handle(req).await
                } else {
                    not_found()
                }
            }
        }));
        Ok(Self {
            addr,
            path: SOCKETIO_PATH,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request target for `query` at the endpoint.
    pub fn target(&self, query: &str) -> String {
        format!("{}?{query}", self.path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}{}", self.addr, self.target(query))
    }

    /// Sends a request and waits for its response.
    pub async fn request(
        &self,
        method: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse> {
        self.start(method, query, headers, body)
            .await?
            .response()
            .await
    }

    pub async fn get(&self, query: &str) -> Result<HttpResponse> {
        self.request("GET", query, &[], b"").await
    }

    /// A POST with the body as text, as the suites' client sends it.
    pub async fn post(&self, query: &str, body: &str) -> Result<HttpResponse> {
        self.request(
            "POST",
            query,
            &[("Content-Type", "text/plain;charset=UTF-8")],
            body.as_bytes(),
        )
        .await
    }

    /// Sends a request (its head and `body`, with a `Content-Length` of `body`'s length unless
    /// `headers` set one or chunked encoding) without waiting for the response.
    pub async fn start(
        &self,
        method: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<InFlight> {
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: */*\r\n",
            self.target(query),
            self.addr
        );
        let framed = headers.iter().any(|(name, _)| {
            name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
        });
        if !framed && (method == "POST" || method == "PUT" || !body.is_empty()) {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        Ok(InFlight { stream })
    }

    /// Opens a polling session, as the suites' `initLongPollingSession` does; returns its sid.
    pub async fn open_polling(&self) -> Result<String> {
        let res = self.get(POLLING).await?;
        ensure!(res.status == 200, "handshake: {res:?}");
        Ok(open_packet(&res.text())?["sid"]
            .as_str()
            .context("a sid")?
            .to_owned())
    }

    /// Opens a WebSocket to the endpoint; fails if the handshake is refused.
    pub async fn ws(&self, query: &str) -> Result<Ws> {
        match Ws::connect(self.addr, &self.ws_url(query), None).await? {
            Ok(ws) => Ok(ws),
            Err(refusal) => bail!("WebSocket handshake refused: {refusal:?}"),
        }
    }

    /// Opens a WebSocket session and reads its open packet; returns the socket and the packet's
    /// JSON.
    pub async fn open_ws(&self) -> Result<(Ws, Value)> {
        let mut ws = self.ws(WEBSOCKET).await?;
        let open = open_packet(&ws.next_text().await?)?;
        Ok((ws, open))
    }

    /// A Socket.IO connection joined to `/`, as the suite's `initSocketIOConnection`: the open
    /// packet, `40`, the CONNECT reply and the `auth` event are read.
    pub async fn socketio_client(&self) -> Result<Ws> {
        let (mut ws, _) = self.open_ws().await?;
        ws.send_text("40").await?;
        let reply = ws.next_text().await?;
        ensure!(reply.starts_with("40{"), "CONNECT reply: {reply:?}");
        let auth = ws.next_text().await?;
        ensure!(auth == r#"42["auth",{}]"#, "auth event: {auth:?}");
        Ok(ws)
    }

    /// Asserts that the polling session `sid` is alive and echoes: `packet` is accepted by a
    /// POST and comes back whole from one GET (the engine example echoes every message).
    pub async fn assert_polling_echo(&self, sid: &str, packet: &str) -> Result<()> {
        let res = self.post(&polling(sid), packet).await?;
        ensure!(res.status == 200, "POST {packet:?}: {res:?}");
        let res = self.get(&polling(sid)).await?;
        ensure!(res.text() == packet, "GET after {packet:?}: {res:?}");
        Ok(())
    }

    /// Asserts that `sid` names no session: a GET is refused with code 1.
    pub async fn assert_gone(&self, sid: &str) -> Result<()> {
        let res = self.get(&polling(sid)).await?;
        ensure!(
            res.status == 400 && res.error_code() == Some(1),
            "expected 400 \"Session ID unknown\" for {sid}, got {res:?}"
        );
        Ok(())
    }
}

async fn bind() -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a test server")
}

/// A Socket.IO server with the suite's namespaces and handlers, and other settings.
pub fn conformance_io(config: Config) -> SocketIo {
    let io = SocketIo::new(config);
    io.namespace("/", Conformance { echo: true });
    io.namespace("/custom", Conformance { echo: false });
    io
}

/// Settings with no heartbeat to speak of (a ping every 25 s), for tests that are not about it
/// and take longer than the suites' 500 ms of life.
pub fn quiet_config() -> Config {
    Config {
        connect_timeout: Duration::from_secs(25),
        ..Config::default()
    }
}

/// The JSON of an open packet (`0{...}`); fails if `text` is anything else.
pub fn open_packet(text: &str) -> Result<Value> {
    let json = text
        .strip_prefix('0')
        .with_context(|| format!("an open packet, not {text:?}"))?;
    serde_json::from_str(json).with_context(|| format!("open packet JSON: {text:?}"))
}

/// The sorted keys of a JSON object.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// An HTTP response, read whole.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.status, self.text())
    }
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `code` of an Engine.IO error body (`{"code":N,"message":"..."}`).
    pub fn error_code(&self) -> Option<i64> {
        serde_json::from_slice::<Value>(&self.body).ok()?["code"].as_i64()
    }

    fn parse(raw: &[u8]) -> Result<Self> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .with_context(|| format!("no end of head in {:?}", String::from_utf8_lossy(raw)))?;
        let head = std::str::from_utf8(&raw[..end]).context("a head that is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut res = Self {
            status,
            headers,
            body: Vec::new(),
        };
        let rest = &raw[end + 4..];
        res.body = if res
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            dechunk(rest)?
        } else if let Some(len) = res.header("content-length") {
            let len: usize = len.parse().context("Content-Length")?;
            rest[..len.min(rest.len())].to_vec()
        } else {
            rest.to_vec()
        };
        Ok(res)
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line")?;
        let size = std::str::from_utf8(&rest[..line_end])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        ensure!(rest.len() >= size + 2, "a truncated chunk");
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A request whose response has not been read yet. Dropping it closes its connection (a client
/// that went away).
pub struct InFlight {
    stream: TcpStream,
}

impl InFlight {
    /// Sends more of the body.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the response (the server closes the connection after it).
    pub async fn response(mut self) -> Result<HttpResponse> {
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, self.stream.read_to_end(&mut raw))
            .await
            .context("no HTTP response in time")??;
        HttpResponse::parse(&raw)
    }
}

/// What a WebSocket client sees next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
    /// The server closed the WebSocket (with a close frame and its code if any, or by closing
    /// the connection).
    Closed(Option<u16>),
}

impl Msg {
    pub fn text(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

/// A refused WebSocket handshake: the HTTP status and body.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: String,
}

/// A WebSocket client that reports every frame the server sends, in order.
pub struct Ws {
    inner: WebSocketStream<TcpStream>,
    closed: bool,
}

impl Ws {
    /// Connects to `url` at `addr`; with `recv_buffer`, the socket's receive buffer is made that
    /// small (a client that stops reading then holds back the server sooner). The inner result
    /// is the server's refusal of the handshake.
    pub async fn connect(
        addr: SocketAddr,
        url: &str,
        recv_buffer: Option<u32>,
    ) -> Result<std::result::Result<Self, Refusal>> {
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let stream = socket.connect(addr).await?;
        // Frames go out as they are sent, as a browser's do, not held back by Nagle.
        stream.set_nodelay(true)?;
        match tokio_tungstenite::client_async(url, stream).await {
            Ok((inner, _)) => Ok(Ok(Self {
                inner,
                closed: false,
            })),
            Err(tungstenite::Error::Http(res)) => Ok(Err(Refusal {
                status: res.status().as_u16(),
                body: String::from_utf8_lossy(res.body().as_deref().unwrap_or_default())
                    .into_owned(),
            })),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.inner.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.inner.send(Message::binary(data.to_vec())).await?;
        Ok(())
    }

    /// Sends a close frame, as a client that leaves does.
    pub async fn close(&mut self) -> Result<()> {
        self.inner.close(None).await?;
        Ok(())
    }

    /// Sends a close frame with `code`.
    pub async fn close_with(&mut self, code: u16) -> Result<()> {
        let frame = tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        self.inner.close(Some(frame)).await?;
        Ok(())
    }

    /// The next message, or the close; fails after [`WAIT`].
    pub async fn next(&mut self) -> Result<Msg> {
        self.next_within(WAIT).await
    }

    /// The next message, or the close; fails after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Msg> {
        tokio::time::timeout(wait, self.read())
            .await
            .with_context(|| format!("no WebSocket message within {wait:?}"))
    }

    /// The next message, which must be text.
    pub async fn next_text(&mut self) -> Result<String> {
        match self.next().await? {
            Msg::Text(text) => Ok(text),
            other => bail!("expected a text message, got {other:?}"),
        }
    }

    /// The next message that is not a ping (`2`), as the suite's `waitForPackets` reads.
    pub async fn next_skipping_pings(&mut self) -> Result<Msg> {
        loop {
            let msg = self.next().await?;
            if msg != Msg::text("2") {
                return Ok(msg);
            }
        }
    }

    /// Waits until the server closes the WebSocket, within `wait`; returns the messages that
    /// came before the close.
    pub async fn closed_within(&mut self, wait: Duration) -> Result<Vec<Msg>> {
        let mut before = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read()).await {
                Err(_) => bail!("not closed within {wait:?}; got {before:?}"),
                Ok(Msg::Closed(_)) => return Ok(before),
                Ok(msg) => before.push(msg),
            }
        }
    }

    /// Waits until the server closes the WebSocket, within `wait`, and fails if it sent
    /// anything but pings first.
    pub async fn assert_closed_within(&mut self, wait: Duration) -> Result<()> {
        let before = self.closed_within(wait).await?;
        ensure!(
            before.iter().all(|m| *m == Msg::text("2")),
            "the server sent {before:?} before closing"
        );
        Ok(())
    }

    async fn read(&mut self) -> Msg {
        if self.closed {
            return Msg::Closed(None);
        }
        loop {
            let msg = match self.inner.next().await {
                None => Msg::Closed(None),
                Some(Err(_)) => Msg::Closed(None),
                Some(Ok(Message::Text(text))) => Msg::Text(text.as_str().to_owned()),
                Some(Ok(Message::Binary(data))) => Msg::Binary(data.to_vec()),
                Some(Ok(Message::Close(frame))) => Msg::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            };
            if matches!(msg, Msg::Closed(_)) {
                self.closed = true;
            }
            return msg;
        }
    }
}
