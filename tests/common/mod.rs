//! Test fixtures: a real Banter server on an ephemeral port, a real Socket.IO client
//! (`rust_socketio`), and a raw Engine.IO long-polling peer for what no polite client sends.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use banter::Config;
use clap::Parser;
use futures::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a test waits for an event that should come.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for an event that must not come.
pub const QUIET: Duration = Duration::from_millis(400);

/// A Banter server bound to 127.0.0.1 on a free port, stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Result<Self> {
        Self::with_args(&[]).await
    }

    /// Starts a server with flags as on the command line, e.g. `["--message-burst", "3"]`.
    pub async fn with_args(args: &[&str]) -> Result<Self> {
        let config = Config::try_parse_from(std::iter::once("banter").chain(args.iter().copied()))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(banter::server::run(listener, config, shutdown));
        Ok(Self {
            addr,
            url: format!("http://{addr}"),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Asks the server to shut down as on SIGTERM and waits for `run` to return.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().context("already stopped")?;
        task.await.context("server task panicked")?
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A `rust_socketio` client that records every event it receives, in order.
pub struct TestClient {
    pub client: Client,
    events: mpsc::UnboundedReceiver<(String, Value)>,
    seen: VecDeque<(String, Value)>,
}

impl TestClient {
    pub async fn connect(server: &TestServer, transport: TransportType) -> Result<Self> {
        Self::connect_with_auth(server, transport, None).await
    }

    pub async fn connect_with_auth(
        server: &TestServer,
        transport: TransportType,
        auth: Option<Value>,
    ) -> Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let (connected_tx, connected) = oneshot::channel::<()>();
        let connected_tx = std::sync::Mutex::new(Some(connected_tx));
        let mut builder = ClientBuilder::new(server.url.clone())
            .transport_type(transport)
            .reconnect(false)
            .on(Event::Connect, move |_, _| {
                if let Some(tx) = connected_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                async {}.boxed()
            })
            .on(Event::Close, {
                let tx = tx.clone();
                move |_, _| {
                    let _ = tx.send(("close".to_owned(), Value::Null));
                    async {}.boxed()
                }
            })
            .on_any(move |event, payload, _| {
                let name = String::from(event);
                let _ = tx.send((name, first_arg(payload)));
                async {}.boxed()
            });
        if let Some(auth) = auth {
            builder = builder.auth(auth);
        }
        let client = builder.connect().await.context("connect")?;
        tokio::time::timeout(WAIT, connected)
            .await
            .context("no Socket.IO connect")??;
        Ok(Self {
            client,
            events,
            seen: VecDeque::new(),
        })
    }

    pub async fn emit(&self, event: &str, data: Value) -> Result<()> {
        let payload = match data {
            Value::Null => Payload::Text(vec![]),
            data => Payload::Text(vec![data]),
        };
        self.client.emit(event, payload).await?;
        Ok(())
    }

    /// Emits with an ack and returns the ack's first argument.
    pub async fn call(&self, event: &str, data: Value) -> Result<Value> {
        let (tx, rx) = oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        self.client
            .emit_with_ack(event, Payload::Text(vec![data]), WAIT, move |payload, _| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    // rust_socketio hands over an ack's arguments as one array.
                    let ack = match first_arg(payload) {
                        Value::Array(mut args) if args.len() == 1 => args.swap_remove(0),
                        other => other,
                    };
                    let _ = tx.send(ack);
                }
                async {}.boxed()
            })
            .await?;
        tokio::time::timeout(WAIT, rx)
            .await
            .with_context(|| format!("no ack for {event:?}"))?
            .map_err(|_| anyhow!("ack dropped"))
    }

    /// Joins with `add user` and an ack; fails if the server refused.
    pub async fn join(&mut self, name: &str) -> Result<Value> {
        let login = self.call("add user", Value::from(name)).await?;
        if login.get("error").is_some() {
            bail!("join refused: {login}");
        }
        Ok(login)
    }

    /// The next `event` received (earlier events of other names stay available).
    pub async fn expect(&mut self, event: &str) -> Result<Value> {
        if let Some(pos) = self.seen.iter().position(|(name, _)| name == event) {
            return Ok(self.seen.remove(pos).expect("position is valid").1);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| {
                    anyhow!(
                        "no {event:?} within {WAIT:?}; other events: {:?}",
                        self.seen
                    )
                })?
                .context("client closed")?;
            if next.0 == event {
                return Ok(next.1);
            }
            self.seen.push_back(next);
        }
    }

    /// Fails if `event` arrives within `QUIET`.
    pub async fn expect_none(&mut self, event: &str) -> Result<()> {
        tokio::time::sleep(QUIET).await;
        while let Ok(next) = self.events.try_recv() {
            self.seen.push_back(next);
        }
        if let Some((_, v)) = self.seen.iter().find(|(name, _)| name == event) {
            bail!("unexpected {event:?}: {v}");
        }
        Ok(())
    }

    pub async fn disconnect(self) -> Result<()> {
        self.client.disconnect().await?;
        Ok(())
    }
}

fn first_arg(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut args) if !args.is_empty() => args.swap_remove(0),
        #[allow(deprecated)]
        Payload::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        _ => Value::Null,
    }
}

/// A raw Engine.IO v4 long-polling peer, speaking the text framing by hand so that tests can send
/// what a well-behaved client never would, or stop answering without a word.
pub struct RawPolling {
    http: reqwest::Client,
    endpoint: String,
    pub sid: String,
}

impl RawPolling {
    /// Performs the Engine.IO handshake and the Socket.IO connect to `/`.
    pub async fn connect(server: &TestServer, auth: Option<Value>) -> Result<Self> {
        let http = reqwest::Client::new();
        let base = format!("{}/socket.io/?EIO=4&transport=polling", server.url);
        let open = http.get(&base).send().await?.text().await?;
        let handshake: Value = serde_json::from_str(
            open.strip_prefix('0')
                .with_context(|| format!("bad open packet {open:?}"))?,
        )?;
        let sid = handshake["sid"].as_str().context("no sid")?.to_owned();
        let raw = Self {
            http,
            endpoint: format!("{base}&sid={sid}"),
            sid,
        };
        let connect = match auth {
            Some(auth) => format!("40{auth}"),
            None => "40".to_owned(),
        };
        raw.post(&connect).await?;
        let reply = raw.poll().await?;
        if !reply.contains("40{") {
            bail!("no Socket.IO connect reply: {reply:?}");
        }
        Ok(raw)
    }

    /// POSTs one payload; returns the HTTP status.
    pub async fn post(&self, body: &str) -> Result<reqwest::StatusCode> {
        let res = self
            .http
            .post(&self.endpoint)
            .body(body.to_owned())
            .send()
            .await?;
        Ok(res.status())
    }

    /// One long-poll GET; returns the body (packets separated by \x1e).
    pub async fn poll(&self) -> Result<String> {
        let res = tokio::time::timeout(WAIT, self.http.get(&self.endpoint).send())
            .await
            .context("poll timed out")??;
        Ok(res.text().await?)
    }

    /// Emits a Socket.IO event with one JSON argument.
    pub async fn emit(&self, event: &str, arg: Value) -> Result<reqwest::StatusCode> {
        self.post(&format!("42{}", serde_json::json!([event, arg])))
            .await
    }
}
