//! Settings, from flags and the environment. Every default runs a full single-instance chat.

pub mod net;
pub mod platform;

pub use crate::ops::telemetry::LogFormat;
pub use crate::store::{StoreKind, SyncMode};

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::chat::Limits;
use crate::config::net::{AddressBounds, TrustedProxies};
use crate::config::platform::Platform;

const SECONDS_PER_DAY: u64 = 86_400;

/// The longest age limit accepted: a hundred years (so that the arithmetic cannot overflow).
const MAX_RETAIN_DAYS: u64 = 36_500;

/// Banter: a real-time chat server that speaks Socket.IO, a drop-in for the classic Node.js chat
/// example. Every setting can also be given in the environment variable named beside it.
#[derive(Debug, Clone, Parser)]
#[command(name = "banter", version, about, max_term_width = 100)]
pub struct Config {
    /// Without a command, Banter serves the chat.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on. Use 0.0.0.0 (or ::) to accept connections from other machines, as a
    /// container does.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// TCP port to listen on; 0 picks a free one (the chosen port is printed at start).
    #[arg(long, short, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// PEM certificate chain for built-in HTTPS/WSS. With --tls-key, Banter serves TLS itself;
    /// without them it serves plain HTTP (as behind a TLS-terminating proxy).
    #[arg(long, env = "BANTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "BANTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Which Socket.IO transports clients may use, comma separated. "websocket" alone is the
    /// troubleshooting mode that needs no sticky sessions; "polling" alone suits proxies that
    /// block WebSocket.
    #[arg(
        long,
        env = "BANTER_TRANSPORTS",
        value_delimiter = ',',
        default_value = "polling,websocket"
    )]
    pub transports: Vec<Transport>,

    /// Page origins (scheme://host[:port]) besides the server's own that may open Socket.IO
    /// connections, comma separated; "*" allows any. By default only pages served by this
    /// server (same origin) may, which stops other sites from chatting as their visitors.
    #[arg(long, env = "BANTER_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub allowed_origins: Vec<String>,

    /// Engine.IO heartbeat: how often the server pings each client, in milliseconds.
    #[arg(long, env = "BANTER_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,

    /// Engine.IO heartbeat: how long a client may take to answer a ping before it is
    /// disconnected, in milliseconds.
    #[arg(long, env = "BANTER_PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,

    /// Largest Engine.IO packet accepted from a client, in bytes (Node's default: 1 MB). A client
    /// that sends more is disconnected.
    #[arg(long, env = "BANTER_MAX_PAYLOAD_BYTES", default_value_t = 1_000_000)]
    pub max_payload_bytes: u64,

    /// Bytes that may wait to be sent to one client. A client that falls further behind (a
    /// stalled network, a tab in the background that stopped reading) is disconnected, counted
    /// in banter_disconnects_total{reason="too slow"}, and catches up through `lastId` when it
    /// reconnects. Broadcast data is shared, so this is not memory per client. Raised, if need
    /// be, to twice the largest history a joining client is sent.
    #[arg(long, env = "BANTER_MAX_BUFFERED_BYTES", default_value_t = 4 << 20)]
    pub max_buffered_bytes: usize,

    /// How long a new connection may take to join the Socket.IO namespace before it is closed, in
    /// milliseconds (Node's connectTimeout).
    #[arg(long, env = "BANTER_CONNECT_TIMEOUT_MS", default_value_t = 45_000)]
    pub connect_timeout_ms: u64,

    /// Longest nickname, in characters (after trimming white space).
    #[arg(long, env = "BANTER_MAX_NAME_CHARS", default_value_t = 32)]
    pub max_name_chars: usize,

    /// Longest chat message, in characters.
    #[arg(long, env = "BANTER_MAX_MESSAGE_CHARS", default_value_t = 2_000)]
    pub max_message_chars: usize,

    /// How many recent messages are sent to people who join, and the most a reconnecting client
    /// catches up with `lastId`. With `--store memory` and with Redis, also all that is kept.
    #[arg(long, env = "BANTER_HISTORY_LEN", default_value_t = 100)]
    pub history_len: usize,

    /// Where a single instance keeps its history: "sqlite" (a database in --data-dir that
    /// survives restarts) or "memory" (nothing on disk; lost when the process stops). Ignored
    /// with Redis, which keeps the history then.
    #[arg(long, env = "BANTER_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,

    /// The directory of the SQLite history (the file banter.db in it), created if missing. In a
    /// container, a mounted volume; on Azure App Service, a folder under /home.
    #[arg(long, env = "BANTER_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,

    /// With SQLite: messages kept per room. Older ones are deleted, a few hundred at a time
    /// between commits. At least --history-len.
    #[arg(long, env = "BANTER_RETAIN_MESSAGES", default_value_t = 10_000)]
    pub retain_messages: u64,

    /// With SQLite: days a message is kept; older ones are deleted. 0 keeps them as long as
    /// --retain-messages allows.
    #[arg(long, env = "BANTER_RETAIN_DAYS", default_value_t = 30)]
    pub retain_days: u64,

    /// With SQLite: "full" syncs each commit to disk before its messages are acked (an acked
    /// message survives a power cut); "normal" syncs at checkpoints only (it survives a crash of
    /// the process, not of the host), for less latency per message.
    #[arg(long, env = "BANTER_SQLITE_SYNC", value_enum, default_value_t = SyncMode::Full)]
    pub sqlite_sync: SyncMode,

    /// Messages per second that one socket may send over time.
    #[arg(long, env = "BANTER_MESSAGE_RATE", default_value_t = 5.0)]
    pub message_rate: f64,

    /// Messages that one socket may send at once before the rate applies.
    #[arg(long, env = "BANTER_MESSAGE_BURST", default_value_t = 10)]
    pub message_burst: u32,

    /// Typing notices per second that one socket may send; more are dropped silently.
    #[arg(long, env = "BANTER_TYPING_RATE", default_value_t = 4.0)]
    pub typing_rate: f64,

    /// How long a person whose connection dropped stays in the chat (keeping the nickname, not
    /// reported as left) waiting to reconnect, in milliseconds.
    #[arg(long, env = "BANTER_RECONNECT_GRACE_MS", default_value_t = 10_000)]
    pub reconnect_grace_ms: u64,

    /// During a storm of joins or leaves (many people within moments, as when an instance
    /// restarts and its clients all reconnect), announce them together once per this many
    /// milliseconds instead of one `user joined` / `user left` each to everyone (N² events). A
    /// change after a quiet moment is announced at once, as in the classic chat. 0: never coalesce.
    #[arg(long, env = "BANTER_ANNOUNCE_WINDOW_MS", default_value_t = 250)]
    pub announce_window_ms: u64,

    /// How long a connection may take to send each HTTP request head, in milliseconds; then it is
    /// closed. Bounds connections that open and send nothing, or half a request.
    #[arg(long, env = "BANTER_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// On SIGTERM or Ctrl-C, how long to wait for connections to close before exiting anyway,
    /// in milliseconds.
    #[arg(long, env = "BANTER_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed, comma separated: addresses
    /// or networks (`127.0.0.1,10.0.0.0/8`). Set it to your load balancer's addresses; without
    /// it, the TCP peer is the client, and behind a proxy every client shares the proxy's
    /// per-address limits. Unset on Azure App Service: the front end's ranges (private,
    /// link-local, loopback) are trusted. Empty, or "none": no proxy is trusted, not even there.
    #[arg(long, env = "BANTER_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<TrustedProxies>,

    /// New connections (Engine.IO sessions) one client address may open per second, on average
    /// (IPv6: per /64). Refused with 429 beyond it. 0 turns the limit off.
    #[arg(long, env = "BANTER_CONNECT_RATE_PER_IP", default_value_t = 20.0)]
    pub connect_rate_per_ip: f64,

    /// New connections one client address may open at once before the per-second rate applies.
    #[arg(long, env = "BANTER_CONNECT_BURST_PER_IP", default_value_t = 100)]
    pub connect_burst_per_ip: u32,

    /// Connections one client address may hold open at once (IPv6: per /64). Raise it if many of
    /// your users share one address (a company network behind one NAT). 0 turns the cap off.
    #[arg(long, env = "BANTER_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: u32,

    /// Redis URL that switches on scale-out: every instance with the same Redis serves one chat.
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS (managed caches such as
    /// Azure Cache for Redis use rediss:// on port 6380). REDIS_URL is read too when this is unset.
    /// Without it, Banter runs a single self-contained instance.
    #[arg(long, env = "BANTER_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// A PEM file of CA certificates to trust for rediss:// (for a Redis with a private or
    /// self-signed certificate). Without it, the public web PKI roots built into Banter (Mozilla's
    /// list, as in browsers) are trusted; the operating system's store is not read.
    #[arg(long, env = "BANTER_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// The Redis URL names a Redis Cluster: list seed nodes comma separated
    /// (redis://h1:7000,redis://h2:7000). Pub/sub is then sharded (Redis 7+).
    #[arg(long, env = "BANTER_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// With Redis: an instance that stops heart-beating for this long is taken for dead, in
    /// milliseconds. Its people are then treated as dropped: they keep their place for the
    /// reconnect grace period (so at most this plus the grace period, 15 s by default, until the
    /// others see them leave).
    #[arg(long, env = "BANTER_INSTANCE_TIMEOUT_MS", default_value_t = 5_000)]
    pub instance_timeout_ms: u64,

    /// Serve Prometheus /metrics on this address (e.g. 127.0.0.1:9090) instead of on the chat's
    /// port, to keep it off the public listener.
    #[arg(long, env = "BANTER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Log format: "text" for people, "json" for log collectors. The level is set with RUST_LOG
    /// (default: info).
    #[arg(long, env = "BANTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A Socket.IO transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Polling,
    Websocket,
}

/// What `banter` does besides serving the chat: tools for the SQLite history in --data-dir.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Copy the SQLite history to PATH, a new file, while Banter runs or not: a consistent
    /// snapshot (SQLite's online backup), checked, in one self-contained file. To restore it,
    /// stop Banter and put it in the data directory as banter.db.
    Backup {
        /// The file to write; it must not exist.
        path: PathBuf,
    },
    /// Write a room's stored messages as JSON lines, oldest first, one
    /// {"id","ts","username","message"} per line.
    Export {
        /// The room (the chat has one, "lobby").
        #[arg(long, default_value = "lobby")]
        room: String,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

impl Default for Config {
    /// The defaults of every flag, as if no flag was given (the environment still applies).
    fn default() -> Self {
        Config::parse_from(["banter"])
    }
}

impl Config {
    /// Checks what clap cannot check alone. Called once at start-up.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.transports.is_empty() {
            bail!("--transports needs at least one of: polling, websocket");
        }
        if self.max_name_chars < 8 {
            bail!("--max-name-chars must be at least 8 (so that variants like \"ab (12)\" fit)");
        }
        if self.max_message_chars == 0 {
            bail!("--max-message-chars must be at least 1");
        }
        if !(self.message_rate.is_finite() && self.message_rate > 0.0) {
            bail!("--message-rate must be a positive number");
        }
        if !(self.typing_rate.is_finite() && self.typing_rate > 0.0) {
            bail!("--typing-rate must be a positive number");
        }
        if self.message_burst == 0 {
            bail!("--message-burst must be at least 1");
        }
        if self.header_timeout_ms == 0 {
            bail!("--header-timeout-ms must be positive");
        }
        if self.ping_interval_ms == 0 || self.ping_timeout_ms == 0 {
            bail!("--ping-interval-ms and --ping-timeout-ms must be positive");
        }
        if self.max_payload_bytes < 1_024 {
            bail!("--max-payload-bytes must be at least 1024");
        }
        usize::try_from(self.max_payload_bytes).context("--max-payload-bytes is too large")?;
        if self.max_buffered_bytes < 64 * 1024 {
            bail!("--max-buffered-bytes must be at least 65536");
        }
        if self.connect_timeout_ms == 0 {
            bail!("--connect-timeout-ms must be positive");
        }
        if !(self.connect_rate_per_ip.is_finite() && self.connect_rate_per_ip >= 0.0) {
            bail!("--connect-rate-per-ip must be a number, 0 or more");
        }
        if self.connect_rate_per_ip > 0.0 && self.connect_burst_per_ip == 0 {
            bail!("--connect-burst-per-ip must be at least 1 while --connect-rate-per-ip is on");
        }
        if self.instance_timeout_ms < 1_000 {
            bail!(
                "--instance-timeout-ms must be at least 1000 (instances heart-beat every 500 ms)"
            );
        }
        let sqlite = self.store == StoreKind::Sqlite && self.redis_url().is_none();
        if sqlite && self.retain_messages < self.history_len as u64 {
            bail!(
                "--retain-messages ({}) must be at least --history-len ({}): a join is sent that many",
                self.retain_messages,
                self.history_len
            );
        }
        if self.retain_days > MAX_RETAIN_DAYS {
            bail!("--retain-days must be at most {MAX_RETAIN_DAYS} (0 for no age limit)");
        }
        if let Some(urls) = self.redis_url() {
            for url in urls.split(',').map(str::trim) {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    bail!("the Redis URL must start with redis:// or rediss://");
                }
                // A URL that does not parse never will: say so now, not after the retries
                // meant for a Redis that is still starting.
                if let Err(err) = redis::IntoConnectionInfo::into_connection_info(url) {
                    bail!("the Redis URL is not valid: {err}");
                }
            }
        }
        Ok(())
    }

    /// The Redis URL from `--redis-url`, `BANTER_REDIS_URL` or `REDIS_URL`, if any.
    pub fn redis_url(&self) -> Option<String> {
        self.redis_url
            .clone()
            .or_else(|| std::env::var("REDIS_URL").ok())
            .filter(|url| !url.trim().is_empty())
    }

    /// The proxies whose forwarding headers are believed: the setting when it is given (an empty
    /// one included), otherwise the default of the platform this process runs on.
    pub fn effective_trusted_proxies(&self) -> TrustedProxies {
        self.trusted_proxies_on(&Platform::current())
    }

    /// As [`Self::effective_trusted_proxies`], on `platform`.
    pub fn trusted_proxies_on(&self, platform: &Platform) -> TrustedProxies {
        match &self.trusted_proxies {
            Some(setting) => setting.clone(),
            None => platform.default_trusted_proxies(),
        }
    }

    /// What the history of a single instance is kept in, and how.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            kind: self.store,
            data_dir: self.data_dir.clone(),
            history_len: self.history_len,
            retain_messages: self.retain_messages,
            retain_age: self.retain_age(),
            sync: self.sqlite_sync,
        }
    }

    /// The age limit of the SQLite history, if any.
    pub fn retain_age(&self) -> Option<Duration> {
        (self.retain_days > 0).then(|| Duration::from_secs(self.retain_days * SECONDS_PER_DAY))
    }

    pub fn instance_timeout(&self) -> Duration {
        Duration::from_millis(self.instance_timeout_ms)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_name_chars: self.max_name_chars,
            max_message_chars: self.max_message_chars,
        }
    }

    pub fn address_bounds(&self) -> AddressBounds {
        AddressBounds {
            connect_rate: self.connect_rate_per_ip,
            connect_burst: self.connect_burst_per_ip,
            max_open: self.max_connections_per_ip,
        }
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    /// The bound on bytes waiting for one client: `--max-buffered-bytes`, raised if need be to
    /// hold what a joining client is sent at once, `login` and its ack (the same object): the
    /// history at its largest (4 bytes a character), twice. A client reading as fast as it can is
    /// then never taken for a slow one.
    pub fn outbound_bound(&self) -> usize {
        let login = self
            .history_len
            .saturating_mul(self.max_message_chars)
            .saturating_mul(4)
            .saturating_mul(2);
        self.max_buffered_bytes.max(login)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn reconnect_grace(&self) -> Duration {
        Duration::from_millis(self.reconnect_grace_ms)
    }

    pub fn announce_window(&self) -> Duration {
        Duration::from_millis(self.announce_window_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// One entry of `--allowed-origins`: `*`, `null`, or an origin as a browser sends it,
/// `scheme://host[:port]`. A trailing `/` (a page's address pasted as is) is dropped: an
/// `Origin` header never has one, and the entry would match nothing.
fn parse_origin(raw: &str) -> Result<String, String> {
    let origin = raw.trim();
    // An empty setting, or a trailing comma: nothing (dropped where the list is used).
    if origin.is_empty() || origin == "*" || origin == "null" {
        return Ok(origin.to_owned());
    }
    let origin = origin.strip_suffix('/').unwrap_or(origin);
    let well_formed = origin.split_once("://").is_some_and(|(scheme, authority)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !authority.is_empty()
            && !authority.contains(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
    });
    if !well_formed {
        return Err(format!(
            "{raw:?} is not an origin: one is scheme://host[:port] (https://chat.example.com), \
             with no path, or \"*\" for any"
        ));
    }
    Ok(origin.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_origins_are_origins() {
        let c = Config::parse_from([
            "banter",
            "--allowed-origins",
            "https://chat.example.com/, http://localhost:8080,capacitor://localhost",
        ]);
        assert_eq!(
            c.allowed_origins,
            [
                "https://chat.example.com",
                "http://localhost:8080",
                "capacitor://localhost"
            ]
        );
        let c = Config::parse_from(["banter", "--allowed-origins", ""]);
        c.validate().unwrap();
        let c = Config::parse_from(["banter", "--allowed-origins", "https://a.example,"]);
        assert_eq!(
            c.allowed_origins.iter().filter(|o| !o.is_empty()).count(),
            1
        );
        for bad in [
            "not a url",
            "chat.example.com",
            "https://",
            "https://chat.example.com/chat",
            "https://chat.example.com?x",
            "://x",
        ] {
            assert!(
                Config::try_parse_from(["banter", "--allowed-origins", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_redis_url_that_does_not_parse_is_refused_at_once() {
        for bad in [
            "redis://",
            "redis://127.0.0.1:99999",
            "redis://h:1,rediss://",
        ] {
            let c = Config::parse_from(["banter", "--redis-url", bad]);
            assert!(c.validate().is_err(), "{bad}");
        }
        for good in [
            "redis://127.0.0.1:6379",
            "rediss://:secret@cache.example.net:6380/0",
            "redis://a:1,redis://b:2",
        ] {
            let c = Config::parse_from(["banter", "--redis-url", good]);
            c.validate().unwrap();
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::parse_from(["banter"]);
        c.validate().unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.max_payload_bytes, 1_000_000);
        assert_eq!(c.transports, vec![Transport::Polling, Transport::Websocket]);
    }

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let c = Config::parse_from(["banter", "--transports", "websocket", "-p", "0"]);
        assert_eq!(c.transports, vec![Transport::Websocket]);
        assert!(Config::try_parse_from(["banter", "--transports", "carrier-pigeon"]).is_err());
        let c = Config::parse_from(["banter", "--message-rate", "0"]);
        assert!(c.validate().is_err());
        let c = Config::parse_from(["banter", "--trusted-proxies", "127.0.0.1,10.0.0.0/8"]);
        assert_eq!(c.trusted_proxies.map(|t| t.nets().len()), Some(2));
        assert!(Config::try_parse_from(["banter", "--trusted-proxies", "10.0.0.0/40"]).is_err());
        assert!(Config::try_parse_from(["banter", "--trusted-proxies", "10.0.0.0/8,x"]).is_err());
        let c = Config::parse_from(["banter", "--connect-rate-per-ip=-1"]);
        assert!(c.validate().is_err());
        let c = Config::parse_from(["banter", "--history-len", "1000"]);
        c.validate().unwrap();
        assert_eq!(
            c.outbound_bound(),
            1000 * 2000 * 4 * 2,
            "raised to hold two logins"
        );
        let c = Config::parse_from(["banter"]);
        assert_eq!(
            c.outbound_bound(),
            4 << 20,
            "the default holds two logins already"
        );
    }

    fn app_service() -> Platform {
        Platform::AppService {
            site: "banter-chat".into(),
        }
    }

    #[test]
    fn trusted_proxies_come_from_the_setting_else_from_the_platform() {
        use crate::config::net::TrustSource;

        let unset = Config::parse_from(["banter"]);
        let none = unset.trusted_proxies_on(&Platform::Other);
        assert_eq!((none.nets().len(), none.source()), (0, TrustSource::Unset));
        let azure = unset.trusted_proxies_on(&app_service());
        assert_eq!(azure.source(), TrustSource::AppService);
        assert!(azure.trusts("169.254.129.1".parse().unwrap()));

        // An explicit list replaces the App Service default; it does not add to it.
        let listed = Config::parse_from(["banter", "--trusted-proxies", "203.0.113.7"]);
        let listed = listed.trusted_proxies_on(&app_service());
        assert_eq!(listed.source(), TrustSource::Setting);
        assert!(listed.trusts("203.0.113.7".parse().unwrap()));
        assert!(!listed.trusts("169.254.129.1".parse().unwrap()));

        // Empty (what `BANTER_TRUSTED_PROXIES=` gives clap) or "none": trust nobody, deliberately,
        // on App Service too.
        for empty in ["", " ", "none", "NONE", ","] {
            let c = Config::try_parse_from(["banter", "--trusted-proxies", empty]).unwrap();
            let t = c.trusted_proxies_on(&app_service());
            assert_eq!(
                (t.nets().len(), t.source()),
                (0, TrustSource::Setting),
                "{empty:?}"
            );
            assert_eq!(t.to_string(), "none");
        }
    }

    #[test]
    fn retention_must_cover_what_a_join_is_sent_only_where_it_applies() {
        let c = Config::parse_from(["banter", "--history-len", "20000"]);
        assert!(c.validate().is_err(), "SQLite keeps 10,000 by default");
        let c = Config::parse_from([
            "banter",
            "--history-len",
            "20000",
            "--retain-messages",
            "20000",
        ]);
        c.validate().unwrap();
        let c = Config::parse_from(["banter", "--history-len", "20000", "--store", "memory"]);
        c.validate().unwrap();
        let c = Config::parse_from([
            "banter",
            "--history-len",
            "20000",
            "--redis-url",
            "redis://127.0.0.1:1",
        ]);
        c.validate().unwrap();
        assert_eq!(
            Config::parse_from(["banter"]).retain_age(),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            Config::parse_from(["banter", "--retain-days", "0"]).retain_age(),
            None
        );
    }
}
