//! A fleet: all the clients of one run, their shared counters, the stop signal, and the helpers
//! scenarios use to wait for a state and to print progress.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{self, Client, Out, Shared, Target, Transport};
use crate::stats::now_nanos;

/// How often wait loops look at the counters.
const POLL: Duration = Duration::from_millis(10);

pub struct Fleet {
    pub shared: Arc<Shared>,
    targets: Vec<Target>,
    run_id: String,
    stop_tx: watch::Sender<bool>,
    handles: Vec<JoinHandle<Client>>,
    /// The outgoing queue of each client, by index.
    pub outs: Vec<Out>,
}

impl Fleet {
    /// `urls` are `http://host:port`; clients are spread over them round-robin.
    pub fn new(urls: &[String], transport: Transport, settle_target: u64) -> anyhow::Result<Self> {
        for url in urls {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--url takes http://host:port, not {url:?}"
            );
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            // Below Node's HTTP keep-alive timeout (5 s): reusing a connection the server is
            // closing at that moment makes a POST fail ("error sending request").
            .pool_idle_timeout(Duration::from_secs(4))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let targets = urls
            .iter()
            .map(|u| Target {
                base: u.trim_end_matches('/').to_owned(),
                transport,
                http: http.clone(),
            })
            .collect();
        // A run id keeps nicknames unique across runs against the same server (a server may
        // still hold the names of the previous run's clients during its reconnect grace period).
        let run_id = format!("{:05x}", (now_nanos() >> 24) & 0xf_ffff);
        let (stop_tx, _) = watch::channel(false);
        Ok(Self {
            shared: Shared::new(settle_target),
            targets,
            run_id,
            stop_tx,
            handles: Vec::new(),
            outs: Vec::new(),
        })
    }

    /// Starts one client; `role` is a short prefix of its nickname. Returns its index.
    pub fn spawn(
        &mut self,
        role: &str,
        join: bool,
        permit: Option<OwnedSemaphorePermit>,
        ready_deadline: Instant,
    ) -> usize {
        let index = self.handles.len();
        let target = self.targets[index % self.targets.len()].clone();
        let name = format!("{role}{index}-{}", self.run_id);
        let client = Client::new(name, join, Arc::clone(&self.shared), permit);
        let (out, outgoing) = mpsc::unbounded_channel();
        let handle = tokio::spawn(client::run(
            target,
            client,
            out.clone(),
            outgoing,
            self.stop_tx.subscribe(),
            ready_deadline,
        ));
        self.handles.push(handle);
        self.outs.push(out);
        index
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Stops every client and collects them.
    pub async fn finish(self) -> Vec<Client> {
        let _ = self.stop_tx.send(true);
        let mut clients = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            if let Ok(client) = handle.await {
                clients.push(client);
            }
        }
        clients
    }
}

/// Waits until `done()` or the deadline; true when done.
pub async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every client has seen the full user count, or no event arrived for `quiet`
/// (a cluster whose `numUsers` is per instance never reaches the target), or the deadline.
/// True when the clients settled or went quiet.
pub async fn wait_settled(
    shared: &Shared,
    clients: u64,
    quiet: Duration,
    deadline: Instant,
) -> bool {
    let quiet_nanos = quiet.as_nanos() as u64;
    wait_until(deadline, || {
        shared.settled.load(Relaxed) + shared.failed.load(Relaxed) >= clients
            || now_nanos().saturating_sub(shared.last_event_nanos.load(Relaxed)) > quiet_nanos
    })
    .await
}

/// Prints one progress line a second on stderr until aborted.
pub fn progress(scenario: &'static str, shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let (mut last_events, mut last_received) = (0, 0);
        loop {
            tick.tick().await;
            let events = shared.events.load(Relaxed);
            let received = shared.received.load(Relaxed);
            eprintln!(
                "[{scenario} {:>3}s] connected {} logged-in {} failed {} dropped {} | events {} (+{}/s) | sent {} acked {} refused {} received {} (+{}/s)",
                start.elapsed().as_secs(),
                shared.connected.load(Relaxed),
                shared.logged_in.load(Relaxed),
                shared.failed.load(Relaxed),
                shared.dropped.load(Relaxed),
                events,
                events - last_events,
                shared.sent.load(Relaxed),
                shared.acked.load(Relaxed),
                shared.refused.load(Relaxed),
                received,
                received - last_received,
            );
            last_events = events;
            last_received = received;
        }
    })
}
