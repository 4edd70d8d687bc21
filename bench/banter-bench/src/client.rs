//! One simulated chat user: a transport (WebSocket or HTTP long-polling) that speaks Engine.IO,
//! and the chat logic on top (connect, `add user`, count and time what arrives).
//!
//! Every client runs in its own task. Outgoing Engine.IO packets go through an unbounded channel
//! (`Out`), so scenario code (a sender's clock) and the client's own logic (pong, `add user`)
//! can both write. Counters and the latency histogram shared by all the clients of a run live in
//! [`Shared`]; each client gathers its counts and latency samples for a few milliseconds and adds
//! them there in one go.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

use crate::proto::{self, Engine, Sio};
use crate::stamped::Stamped;
use crate::stats::{latency_histogram, now_nanos};

/// Outgoing Engine.IO packets of one client.
pub type Out = mpsc::UnboundedSender<String>;

/// How long a client may keep its counts before adding them to the shared ones.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Websocket,
    Polling,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Polling => "polling",
        }
    }
}

/// Counters for all the clients of one run.
pub struct Shared {
    /// Sockets connected to the namespace (`40` answered).
    pub connected: AtomicU64,
    /// Sockets that received `login`.
    pub logged_in: AtomicU64,
    /// Sockets that failed before they were ready (connect error, timeout, refused join).
    pub failed: AtomicU64,
    /// Sockets lost after they were ready (before the run stopped them).
    pub dropped: AtomicU64,
    /// When this many users are in the chat, a client counts itself as settled.
    pub settle_target: AtomicU64,
    /// Clients that have seen `numUsers` reach `settle_target`.
    pub settled: AtomicU64,
    /// Every event received, of any name.
    pub events: AtomicU64,
    /// `new message` events carrying a bench timestamp.
    pub received: AtomicU64,
    /// `new message` sent with an ack.
    pub sent: AtomicU64,
    /// Acks that accepted a message.
    pub acked: AtomicU64,
    /// Acks that refused a message.
    pub refused: AtomicU64,
    /// `error message` events.
    pub error_events: AtomicU64,
    /// When the last event of any kind arrived (Unix nanos): to wait for quiet.
    pub last_event_nanos: AtomicU64,
    /// When the last timed message arrived (Unix nanos).
    pub last_received_nanos: AtomicU64,
    /// Latency of timed messages, µs, over all clients. One histogram for the run rather than one
    /// per client: a 3-digit histogram is a few hundred KiB, and a thousand of them, each touched
    /// at random, made the bench's cache misses its hottest spot.
    pub latency: Mutex<Histogram<u64>>,
    /// The same messages timed to when they reached the receiver's socket (the kernel's receive
    /// stamp, WebSocket only: see `stamped.rs`), µs: the server's part of the latency, without the
    /// time the frame waited for the bench to read it.
    pub arrival: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(settle_target: u64) -> Arc<Self> {
        Arc::new(Self {
            connected: AtomicU64::default(),
            logged_in: AtomicU64::default(),
            failed: AtomicU64::default(),
            dropped: AtomicU64::default(),
            settle_target: AtomicU64::new(settle_target),
            settled: AtomicU64::default(),
            events: AtomicU64::default(),
            received: AtomicU64::default(),
            sent: AtomicU64::default(),
            acked: AtomicU64::default(),
            refused: AtomicU64::default(),
            error_events: AtomicU64::default(),
            last_event_nanos: AtomicU64::default(),
            last_received_nanos: AtomicU64::default(),
            latency: Mutex::new(latency_histogram()),
            arrival: Mutex::new(latency_histogram()),
            first_error: Mutex::new(None),
        })
    }

    /// The latency of every timed message received so far, over all clients.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency.lock().expect("not poisoned").clone()
    }

    /// Arrival latency (the kernel's receive stamp) of every timed message received so far.
    pub fn arrival(&self) -> Histogram<u64> {
        self.arrival.lock().expect("not poisoned").clone()
    }

    /// Keeps the first error seen, for the summary.
    pub fn note_error(&self, error: String) {
        let mut first = self.first_error.lock().expect("not poisoned");
        if first.is_none() {
            *first = Some(error);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().expect("not poisoned").clone()
    }

    /// Clients that reached the state the scenario waits for, or gave up.
    pub fn ready_or_failed(&self, join: bool) -> u64 {
        let ready = if join {
            self.logged_in.load(Relaxed)
        } else {
            self.connected.load(Relaxed)
        };
        ready + self.failed.load(Relaxed)
    }
}

/// Where and how a client connects.
#[derive(Clone)]
pub struct Target {
    /// `http://host:port`, without a path.
    pub base: String,
    pub transport: Transport,
    /// Shared by all polling clients (one connection pool).
    pub http: reqwest::Client,
}

/// The chat logic of one user, fed by the transport.
pub struct Client {
    pub name: String,
    /// Send `add user` once connected (otherwise the socket stays anonymous).
    join: bool,
    shared: Arc<Shared>,
    /// Time from the start of the connection to `login` (or to connected, without a join), µs.
    pub ready_us: Option<u64>,
    started: Instant,
    num_users: u64,
    settled: bool,
    /// Held while connecting and joining; bounds how many clients do so at once.
    permit: Option<OwnedSemaphorePermit>,
    /// Counts not yet added to `shared`: thousands of clients updating the same atomics for
    /// every event would make the bench itself the bottleneck.
    pending: Pending,
    /// When the frame being handled reached the socket (Unix nanos), if the transport knows.
    arrived_nanos: Option<u64>,
}

#[derive(Default)]
struct Pending {
    events: u64,
    received: u64,
    /// Latency of the timed messages received, µs.
    latency_us: Vec<u64>,
    /// Their arrival latency, µs, where the transport knows it.
    arrival_us: Vec<u64>,
    last_event_nanos: u64,
    last_received_nanos: u64,
}

impl Client {
    pub fn new(
        name: String,
        join: bool,
        shared: Arc<Shared>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            name,
            join,
            shared,
            ready_us: None,
            started: Instant::now(),
            num_users: 0,
            settled: false,
            permit,
            pending: Pending::default(),
            arrived_nanos: None,
        }
    }

    fn has_pending(&self) -> bool {
        self.pending.events > 0
    }

    /// Adds the pending counts to the shared ones.
    fn flush(&mut self) {
        if self.pending.events == 0 {
            return;
        }
        // The samples' vector keeps its capacity: on one thread this runs for every frame.
        let latency_us = std::mem::take(&mut self.pending.latency_us);
        let arrival_us = std::mem::take(&mut self.pending.arrival_us);
        let mut p = std::mem::take(&mut self.pending);
        p.latency_us = latency_us;
        p.arrival_us = arrival_us;
        let shared = &self.shared;
        shared.events.fetch_add(p.events, Relaxed);
        shared
            .last_event_nanos
            .fetch_max(p.last_event_nanos, Relaxed);
        if p.received > 0 {
            shared.received.fetch_add(p.received, Relaxed);
            shared
                .last_received_nanos
                .fetch_max(p.last_received_nanos, Relaxed);
        }
        if !p.latency_us.is_empty() {
            let mut latency = shared.latency.lock().expect("not poisoned");
            for &us in &p.latency_us {
                latency.saturating_record(us.max(1));
            }
        }
        if !p.arrival_us.is_empty() {
            let mut arrival = shared.arrival.lock().expect("not poisoned");
            for &us in &p.arrival_us {
                arrival.saturating_record(us.max(1));
            }
        }
        p.latency_us.clear();
        p.arrival_us.clear();
        self.pending.latency_us = p.latency_us;
        self.pending.arrival_us = p.arrival_us;
    }

    fn is_ready(&self) -> bool {
        self.ready_us.is_some()
    }

    fn become_ready(&mut self) {
        self.ready_us = Some(self.started.elapsed().as_micros() as u64);
        self.permit = None;
    }

    fn see_num_users(&mut self, raw: &str) {
        if let Some(n) = proto::num_users(raw) {
            self.num_users = self.num_users.max(n);
            if !self.settled && self.num_users >= self.shared.settle_target.load(Relaxed) {
                self.settled = true;
                self.shared.settled.fetch_add(1, Relaxed);
            }
        }
    }

    /// Handles one Engine.IO packet. Returns false when the server closed the session.
    fn on_engine(&mut self, packet: &str, out: &Out) -> anyhow::Result<bool> {
        match proto::parse_engine(packet) {
            Engine::Open { .. } => send(out, proto::CONNECT.to_owned()),
            Engine::Ping => send(out, proto::PONG.to_owned()),
            Engine::Close => return Ok(false),
            Engine::Message(sio) => self.on_sio(sio, out)?,
            Engine::Other => {}
        }
        Ok(true)
    }

    fn on_sio(&mut self, packet: &str, out: &Out) -> anyhow::Result<()> {
        let shared = Arc::clone(&self.shared);
        match proto::parse_sio(packet) {
            Sio::Connected => {
                shared.connected.fetch_add(1, Relaxed);
                if self.join {
                    send(out, proto::event("add user", &self.name, None));
                } else {
                    self.become_ready();
                }
            }
            Sio::ConnectError(why) => bail!("connect refused: {why}"),
            Sio::Disconnected => bail!("disconnected by the server"),
            Sio::Event { name, raw } => {
                let now = now_nanos();
                self.pending.events += 1;
                self.pending.last_event_nanos = now;
                match name {
                    "new message" => {
                        if let Some(sent_at) = proto::timed_nanos(raw) {
                            let us = now.saturating_sub(sent_at) / 1000;
                            self.pending.latency_us.push(us);
                            if let Some(arrived) = self.arrived_nanos {
                                let us = arrived.saturating_sub(sent_at) / 1000;
                                self.pending.arrival_us.push(us);
                            }
                            self.pending.received += 1;
                            self.pending.last_received_nanos = now;
                        }
                    }
                    "login" => {
                        if !self.is_ready() {
                            self.become_ready();
                            shared.logged_in.fetch_add(1, Relaxed);
                        }
                        self.see_num_users(raw);
                    }
                    "user joined" | "user left" => self.see_num_users(raw),
                    "error message" => {
                        shared.error_events.fetch_add(1, Relaxed);
                        shared.note_error(format!("{}: {raw}", self.name));
                        if !self.is_ready() {
                            bail!("join refused: {raw}");
                        }
                    }
                    _ => {}
                }
            }
            Sio::Ack { raw, .. } => {
                if proto::ack_is_error(raw) {
                    shared.refused.fetch_add(1, Relaxed);
                    shared.note_error(format!("{}: refused: {raw}", self.name));
                } else {
                    shared.acked.fetch_add(1, Relaxed);
                }
            }
            Sio::Unknown => {}
        }
        Ok(())
    }
}

/// Resolves when the run asks its clients to stop (or the run is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, before any other await.
    let _ = stop.wait_for(|&s| s).await.is_ok();
}

fn send(out: &Out, packet: String) {
    // The receiving side lives as long as the transport loop, which is the only caller.
    let _ = out.send(packet);
}

/// Runs one client until `stop` turns true, the server closes it, or it fails. Returns the
/// client (its histogram and timings) for the scenario to merge.
pub async fn run(
    target: Target,
    mut client: Client,
    out: Out,
    outgoing: mpsc::UnboundedReceiver<String>,
    mut stop: watch::Receiver<bool>,
    ready_deadline: tokio::time::Instant,
) -> Client {
    let result = match target.transport {
        Transport::Websocket => {
            run_websocket(
                &target,
                &mut client,
                &out,
                outgoing,
                &mut stop,
                ready_deadline,
            )
            .await
        }
        Transport::Polling => {
            run_polling(
                &target,
                &mut client,
                &out,
                outgoing,
                &mut stop,
                ready_deadline,
            )
            .await
        }
    };
    let stopped = *stop.borrow();
    if let Err(e) = result {
        let shared = &client.shared;
        if !client.is_ready() {
            shared.failed.fetch_add(1, Relaxed);
            shared.note_error(format!("{}: {e:#}", client.name));
        } else if !stopped {
            shared.dropped.fetch_add(1, Relaxed);
            shared.note_error(format!("{}: dropped: {e:#}", client.name));
        }
    }
    client.permit = None;
    client.flush();
    client
}

/// Whether the clients run on a current-thread runtime (the bench pinned to one CPU).
fn one_thread() -> bool {
    tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
}

/// tungstenite zero-fills its whole read buffer (128 KiB by default) before every read from the
/// socket: with a thousand receivers that memset was a quarter of the bench's CPU, taken from the
/// cores it shares with the server. Chat frames are small; a larger frame still arrives whole,
/// over several reads.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(2 * 1024)
}

async fn run_websocket(
    target: &Target,
    client: &mut Client,
    out: &Out,
    mut outgoing: mpsc::UnboundedReceiver<String>,
    stop: &mut watch::Receiver<bool>,
    ready_deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        target.base.replacen("http", "ws", 1)
    );
    let addr = target
        .base
        .split_once("://")
        .map_or(target.base.as_str(), |(_, rest)| rest)
        .to_owned();
    let (mut ws, _) = timeout_at(ready_deadline, async {
        let tcp = tokio::net::TcpStream::connect(&addr).await?;
        tcp.set_nodelay(true)?;
        let stream = Stamped::new(tcp)?;
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .context("websocket connect timed out")?
    .context("websocket connect")?;
    // The timers and the stop signal live across iterations: a receiver wakes for every
    // delivery, and building and registering them anew each time cost the bench CPU that it
    // shares with the server.
    // On one thread the shared counters are never contended: each frame's counts go there at
    // once, and no timer is armed per client.
    let flush_now = one_thread();
    let flush = tokio::time::sleep(FLUSH_EVERY);
    let deadline = sleep_until(ready_deadline);
    let stopping = stopped(stop);
    tokio::pin!(flush, deadline, stopping);
    loop {
        tokio::select! {
            () = &mut flush, if client.has_pending() => {
                client.flush();
                flush.as_mut().reset(tokio::time::Instant::now() + FLUSH_EVERY);
            }
            () = &mut stopping => {
                let _ = timeout(Duration::from_millis(200), ws.close(None)).await;
                return Ok(());
            }
            () = &mut deadline, if !client.is_ready() => {
                bail!("not ready before the deadline");
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    client.arrived_nanos = ws.get_ref().arrived_nanos();
                    if !client.on_engine(text.as_str(), out)? {
                        bail!("closed by the server");
                    }
                    if flush_now {
                        client.flush();
                    }
                }
                Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            },
            Some(packet) = outgoing.recv() => {
                ws.feed(Message::text(packet)).await?;
                while let Ok(more) = outgoing.try_recv() {
                    ws.feed(Message::text(more)).await?;
                }
                ws.flush().await?;
            }
        }
    }
}

async fn run_polling(
    target: &Target,
    client: &mut Client,
    out: &Out,
    mut outgoing: mpsc::UnboundedReceiver<String>,
    stop: &mut watch::Receiver<bool>,
    ready_deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let http = &target.http;
    let url = format!("{}/socket.io/?EIO=4&transport=polling", target.base);
    let body = timeout_at(ready_deadline, async {
        http.get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    })
    .await
    .context("polling handshake timed out")?
    .context("polling handshake")?;
    let sid = body
        .split(proto::RECORD_SEPARATOR)
        .find_map(|p| match proto::parse_engine(p) {
            Engine::Open { sid } if !sid.is_empty() => Some(sid.to_owned()),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no handshake in {body:?}"))?;
    let url = format!("{url}&sid={sid}");
    for packet in body.split(proto::RECORD_SEPARATOR) {
        client.on_engine(packet, out)?;
    }

    // Engine.IO allows one POST at a time per session: a writer drains the queue into one
    // payload per request.
    let (writer_error_tx, mut writer_error) = mpsc::channel::<anyhow::Error>(1);
    let writer = {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            while let Some(first) = outgoing.recv().await {
                let mut payload = first;
                while let Ok(more) = outgoing.try_recv() {
                    payload.push(proto::RECORD_SEPARATOR);
                    payload.push_str(&more);
                }
                let sent = async {
                    http.post(&url)
                        .body(payload)
                        .send()
                        .await?
                        .error_for_status()
                };
                if let Err(e) = sent.await {
                    let _ = writer_error_tx.send(anyhow!("polling POST: {e}")).await;
                    return;
                }
            }
        })
    };
    let result = async {
        let flush = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(flush);
        // One long-poll at a time, kept across loop turns: dropping a pending GET would close
        // its connection, and the server would end the session.
        let mut poll = Box::pin(long_poll(http, &url));
        loop {
            tokio::select! {
                _ = stopped(stop) => return Ok(()),
                _ = sleep_until(ready_deadline), if !client.is_ready() => {
                    bail!("not ready before the deadline");
                }
                Some(e) = writer_error.recv() => return Err(e),
                () = &mut flush, if client.has_pending() => {
                    client.flush();
                    flush.as_mut().reset(tokio::time::Instant::now() + FLUSH_EVERY);
                }
                body = &mut poll => {
                    let body = body?;
                    poll = Box::pin(long_poll(http, &url));
                    for packet in body.split(proto::RECORD_SEPARATOR) {
                        if !client.on_engine(packet, out)? {
                            bail!("closed by the server");
                        }
                    }
                }
            }
        }
    }
    .await;
    writer.abort();
    result
}

/// One long-polling GET: the packets the server had for us, separated by `\x1e`.
async fn long_poll(http: &reqwest::Client, url: &str) -> reqwest::Result<String> {
    http.get(url).send().await?.error_for_status()?.text().await
}
