//! Test fixtures: a real Banter server on an ephemeral port, a real Socket.IO client
//! (`rust_socketio`), and a raw Engine.IO long-polling peer for what no polite client sends.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// The data directory of its SQLite history, when the test did not give one; removed on drop.
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Result<Self> {
        Self::with_args(&[]).await
    }

    /// Starts a server with flags as on the command line, e.g. `["--message-burst", "3"]`.
    /// Unless the flags name a `--data-dir`, the history goes to a temporary one.
    pub async fn with_args(args: &[&str]) -> Result<Self> {
        let data = match args.contains(&"--data-dir") {
            true => None,
            false => Some(tempfile::tempdir()?),
        };
        let data_arg = data.as_ref().map(|d| d.path().display().to_string());
        let data_args = data_arg.iter().flat_map(|d| ["--data-dir", d.as_str()]);
        let config = Config::try_parse_from(
            std::iter::once("banter")
                .chain(args.iter().copied())
                .chain(data_args),
        )?;
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
            _data: data,
        })
    }

    /// A handle on a server running elsewhere (a child process), for clients to connect to.
    pub fn external(url: &str) -> Self {
        Self {
            addr: url
                .trim_start_matches("http://")
                .parse()
                .expect("banter prints an address"),
            url: url.to_owned(),
            stop: None,
            task: None,
            _data: None,
        }
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
        self.expect_within(event, WAIT).await
    }

    /// Like `expect`, with a longer wait for events that come after a deliberate delay.
    pub async fn expect_within(&mut self, event: &str, wait: Duration) -> Result<Value> {
        if let Some(pos) = self.seen.iter().position(|(name, _)| name == event) {
            return Ok(self.seen.remove(pos).expect("position is valid").1);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| {
                    anyhow!(
                        "no {event:?} within {wait:?}; other events: {:?}",
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

/// Whether a suite may skip for lack of software: not when `BANTER_REQUIRE_ALL=1` (set by CI).
pub fn skip_or_fail(what: &str) {
    let message = format!("!! SKIPPED: {what}");
    if std::env::var("BANTER_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{message} (BANTER_REQUIRE_ALL=1 makes this a failure)");
    }
    eprintln!("{message}");
}

/// A free TCP port on 127.0.0.1 (free when asked; taken by whoever binds it next).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A `redis-server` of the test's own, on a free port, never the machine's 6379. Killed on drop.
pub struct TestRedis {
    pub port: u16,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
    /// Whether the server speaks TLS (then `url` is rediss://).
    tls: bool,
    password: Option<String>,
    /// Where an append-only file is kept across restarts (`start_with_aof`).
    _aof_dir: Option<tempfile::TempDir>,
}

impl TestRedis {
    /// Starts a Redis with AOF persistence (`appendfsync always`) in a directory of its own that
    /// outlives `restart`: what it acknowledged survives a kill -9.
    pub async fn start_with_aof() -> Result<Option<Self>> {
        let dir = tempfile::tempdir()?;
        let args = vec![
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
            "--dir".into(),
            dir.path().display().to_string(),
        ];
        let redis = Self::start_with(args, false, None).await?;
        Ok(redis.map(|r| Self {
            _aof_dir: Some(dir),
            ..r
        }))
    }

    /// Starts a plain Redis, or returns `None` (after `skip_or_fail`) when redis-server is absent.
    pub async fn start() -> Result<Option<Self>> {
        Self::start_with(Vec::new(), false, None).await
    }

    /// Starts a plain Redis that takes `DEBUG` commands from loopback (`DEBUG SLEEP` stalls it).
    pub async fn start_debuggable() -> Result<Option<Self>> {
        let args = vec!["--enable-debug-command".into(), "local".into()];
        Self::start_with(args, false, None).await
    }

    /// Makes the server stall for `seconds` (`DEBUG SLEEP`): it reads, runs and answers nothing
    /// meanwhile, then carries on with what it was sent. Returns once the command is sent.
    pub async fn stall(&self, seconds: u32) -> Result<tokio::net::TcpStream> {
        use tokio::io::AsyncWriteExt;
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let n = seconds.to_string();
        let cmd = format!(
            "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{n}\r\n",
            n.len()
        );
        conn.write_all(cmd.as_bytes()).await?;
        // The connection is handed back: closing it at once could end the command early.
        Ok(conn)
    }

    /// Starts a Redis that takes only TLS with the given certificate files, and a password.
    pub async fn start_tls(certs: &TestCerts, password: &str) -> Result<Option<Self>> {
        let args = vec![
            "--tls-cert-file".into(),
            certs.server_cert.display().to_string(),
            "--tls-key-file".into(),
            certs.server_key.display().to_string(),
            "--tls-ca-cert-file".into(),
            certs.ca_cert.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            password.into(),
        ];
        Self::start_with(args, true, Some(password.to_owned())).await
    }

    async fn start_with(
        args: Vec<String>,
        tls: bool,
        password: Option<String>,
    ) -> Result<Option<Self>> {
        if which("redis-server").is_none() {
            skip_or_fail(
                "redis-server is not installed (apt-get install redis-server); Redis tests did not run",
            );
            return Ok(None);
        }
        let mut redis = Self {
            port: free_port()?,
            args,
            child: None,
            tls,
            password,
            _aof_dir: None,
        };
        redis.spawn().await?;
        Ok(Some(redis))
    }

    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<()> {
        let port = self.port.to_string();
        let (plain_port, tls_port) = if self.tls {
            ("0", port.as_str())
        } else {
            (port.as_str(), "0")
        };
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                plain_port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", tls_port])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start redis-server")?;
        self.child = Some(child);
        // Ready when it accepts connections.
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                bail!("redis-server did not start on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Kills the server (as a crash would: nothing saved).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await
    }
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl command in a temp folder.
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCerts {
    pub fn generate() -> Result<Option<Self>> {
        if which("openssl").is_none() {
            skip_or_fail("openssl is not installed; TLS tests did not run");
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(format!(
            "banter-certs-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let run = |args: &[&str]| -> Result<()> {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()?;
            if !out.status.success() {
                bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=Banter test CA",
        ])?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ])?;
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ])?;
        Ok(Some(Self {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            dir,
        }))
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// The real `banter` binary in a child process: for what an in-process server cannot show
/// (kill -9, SIGTERM, the process environment, the log). Killed on drop.
pub struct BanterProcess {
    pub url: String,
    child: tokio::process::Child,
    /// Its stderr so far, when started with [`BanterProcess::start_logged`].
    log: Option<std::sync::Arc<std::sync::Mutex<String>>>,
    /// Its data directory, when the test did not give one; removed on drop.
    _data: Option<tempfile::TempDir>,
}

/// A `banter` command line as a test runs it: on a free port, never the machine's Redis, and
/// with a temporary data directory unless `args` names one.
fn banter_command(args: &[&str]) -> Result<(tokio::process::Command, Option<tempfile::TempDir>)> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_banter"));
    command
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("NO_COLOR", "1")
        .env_remove("REDIS_URL")
        .args(args)
        .kill_on_drop(true);
    let data = match args.contains(&"--data-dir") {
        true => None,
        false => Some(tempfile::tempdir()?),
    };
    if let Some(dir) = &data {
        command.env("BANTER_DATA_DIR", dir.path());
    }
    Ok((command, data))
}

/// What a `banter` run that was expected to stop by itself left: its exit status and output.
pub struct Exited {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `banter` with `args` until it exits by itself (a start-up refusal, or a command such as
/// `backup`), for at most `within`.
pub async fn run_banter(args: &[&str], within: Duration) -> Result<Exited> {
    let (mut command, _data) = banter_command(args)?;
    let out = tokio::time::timeout(within, command.output())
        .await
        .with_context(|| format!("banter {args:?} still running after {within:?}"))??;
    Ok(Exited {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Variables of the test's own environment that would change what Banter trusts: a logged
/// process starts without them, and gets only those its test gives.
const PLATFORM_VARS: [&str; 3] = [
    "WEBSITE_SITE_NAME",
    "WEBSITE_INSTANCE_ID",
    "BANTER_TRUSTED_PROXIES",
];

impl BanterProcess {
    pub async fn start(args: &[&str]) -> Result<Self> {
        Self::spawn(args, &[], false).await
    }

    /// As [`Self::start`], with `env` set (and nothing of [`PLATFORM_VARS`] from the test's own
    /// environment), keeping its log for [`Self::log`].
    pub async fn start_logged(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn(args, env, true).await
    }

    async fn spawn(args: &[&str], env: &[(&str, &str)], logged: bool) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let (mut command, data) = banter_command(args)?;
        command.stdout(std::process::Stdio::piped());
        if logged {
            for name in PLATFORM_VARS {
                command.env_remove(name);
            }
            command
                .envs(env.iter().copied())
                .env("RUST_LOG", "info")
                .stderr(std::process::Stdio::piped());
        }
        let mut child = command.spawn().context("start banter")?;
        let log = match child.stderr.take() {
            Some(stderr) => {
                let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
                let sink = std::sync::Arc::clone(&log);
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                        log.push_str(&line);
                        log.push('\n');
                    }
                });
                Some(log)
            }
            None => None,
        };
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.split("listening on ").nth(1) {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("banter exited before listening")
        })
        .await
        .context("banter did not start")??;
        // Keep reading its output: a full pipe would block the server's next write.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // It prints the line once bound, then opens its stores (Redis, the SQLite history) and
        // only then answers: started means answering.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(res) = reqwest::get(format!("{url}/healthz")).await
                && res.status().is_success()
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("banter exited ({status}) before it answered");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("banter did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            url,
            child,
            log,
            _data: data,
        })
    }

    /// Its log so far (empty unless started with [`Self::start_logged`]).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .map(|log| log.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Waits until its log satisfies `check`; fails with the log after [`WAIT`].
    pub async fn wait_for_log(&self, what: &str, check: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let log = self.log();
            if check(&log) {
                return Ok(log);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the log never showed {what}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id, to signal it.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, then waits for the exit status (as `docker stop` would).
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().context("already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await??)
    }

    pub fn server(&self) -> TestServer {
        TestServer::external(&self.url)
    }

    /// SIGKILL: the instance vanishes without a word.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A Redis Cluster of three masters, each a `redis-server` of the test's own. Killed on drop.
pub struct TestRedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    _children: Vec<tokio::process::Child>,
}

impl TestRedisCluster {
    pub async fn start() -> Result<Option<Self>> {
        if which("redis-server").is_none() || which("redis-cli").is_none() {
            skip_or_fail(
                "redis-server or redis-cli is not installed; Redis Cluster tests did not run",
            );
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(format!(
            "banter-cluster-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..3 {
            let port = cluster_port(&ports)?;
            let child = tokio::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("start redis-server")?;
            children.push(child);
            ports.push(port);
        }
        for port in &ports {
            let deadline = tokio::time::Instant::now() + WAIT;
            while tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err()
            {
                if tokio::time::Instant::now() > deadline {
                    bail!("redis-server did not start on port {port}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        // Ready when every node agrees the cluster is up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for port in &ports {
            loop {
                let info = tokio::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .await?;
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("the Redis Cluster did not come up");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(Some(Self {
            ports,
            dir,
            _children: children,
        }))
    }

    /// Seed node URLs, comma separated, as `--redis-url` takes them with `--redis-cluster`.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port whose cluster bus port (port + 10000) is free too.
fn cluster_port(taken: &[u16]) -> Result<u16> {
    for _ in 0..200 {
        let port = 20_000 + (rand_u16() % 20_000);
        if taken.contains(&port) {
            continue;
        }
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    bail!("no free port pair for a Redis Cluster node")
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u16
}

/// A small tmpfs mounted by the test (as root), to make a full disk or a read-only file system;
/// unmounted on drop. `None` (after `skip_or_fail`) where mounting is not allowed.
pub struct TmpfsMount {
    pub path: PathBuf,
    _parent: tempfile::TempDir,
}

impl TmpfsMount {
    pub fn new(size_kib: u64, read_only: bool) -> Result<Option<Self>> {
        let parent = tempfile::tempdir()?;
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path)?;
        let mut options = format!("size={size_kib}k,mode=0777");
        if read_only {
            options.push_str(",ro");
        }
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(Some(Self {
                path,
                _parent: parent,
            })),
            Ok(out) => {
                skip_or_fail(&format!(
                    "cannot mount a tmpfs (needs root): {}; disk-full and read-only tests did not run",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                Ok(None)
            }
            Err(err) => {
                skip_or_fail(&format!(
                    "cannot run mount ({err}); disk-full and read-only tests did not run"
                ));
                Ok(None)
            }
        }
    }

    /// Writes a file that takes all the space left; returns its path.
    pub fn fill(&self) -> Result<PathBuf> {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 4096];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(28) => break, // ENOSPC
                Err(err) => return Err(err.into()),
            }
        }
        let _ = file.sync_all();
        Ok(path)
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
