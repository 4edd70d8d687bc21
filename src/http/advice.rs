//! The log lines that tell an operator what to set.
//!
//! A first deployment behind a proxy fails in ways that Banter alone notices: every browser
//! arriving from the proxy's address and sharing its per-address bounds, a proxy that rewrites
//! `Host` so that the page's own origin is refused, long-polling across instances without sticky
//! sessions, App Service forwarding to a port nobody listens on. Each of those would otherwise be
//! a silent refusal. Here they become a line in the log that names the setting and a value to
//! try: at start-up for what the settings and the environment show, and while serving for what
//! the traffic shows.
//!
//! Warnings from traffic come once per cause (per proxy address, per page origin), not per
//! request. The causes already reported are kept in sets of fixed capacity, process-wide like
//! the metrics: traffic cannot grow them, and when one is full a last line says that further
//! causes of that kind go unreported (the metrics still count them).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use axum::http::HeaderMap;
use tracing::Level;

use crate::config::net::Refusal;
use crate::config::net::{AddressBounds, TrustSource, TrustedProxies};
use crate::config::platform::Platform;
use crate::config::{Config, Transport};
use crate::ops::metrics::METRICS;

/// Proxy addresses whose untrusted `X-Forwarded-For` is reported. Real deployments have a
/// handful of proxies; the rest would be clients writing the header themselves.
const MAX_FORWARDING_PEERS: usize = 64;

/// Page origins whose refusal behind a proxy is reported.
const MAX_ORIGINS: usize = 32;

/// Origins longer than this are not remembered (nor reported): no page has one.
const MAX_ORIGIN_LEN: usize = 256;

/// Remembers up to a fixed number of keys, so that something is reported once per key and the
/// memory stays bounded whatever the traffic.
#[derive(Debug)]
pub struct OnceEach<K> {
    seen: Mutex<HashSet<K>>,
    capacity: usize,
    overflowed: AtomicBool,
}

/// What [`OnceEach::note`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A new key, now remembered: report it.
    First,
    /// Reported before.
    Again,
    /// A new key, but the set is full. `first` is true for the first such key only: report
    /// once that no more are reported.
    Overflow { first: bool },
}

impl<K: Eq + Hash> OnceEach<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: Mutex::new(HashSet::new()),
            capacity,
            overflowed: AtomicBool::new(false),
        }
    }

    pub fn note(&self, key: K) -> Seen {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&key) {
            return Seen::Again;
        }
        if seen.len() < self.capacity {
            seen.insert(key);
            return Seen::First;
        }
        Seen::Overflow {
            first: !self.overflowed.swap(true, Ordering::Relaxed),
        }
    }

    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }
}

static FORWARDING_PEERS: LazyLock<OnceEach<IpAddr>> =
    LazyLock::new(|| OnceEach::new(MAX_FORWARDING_PEERS));
static REFUSED_PROXIES: LazyLock<OnceEach<IpAddr>> =
    LazyLock::new(|| OnceEach::new(MAX_FORWARDING_PEERS));
static REFUSED_ORIGINS: LazyLock<OnceEach<String>> = LazyLock::new(|| OnceEach::new(MAX_ORIGINS));

// ---------------------------------------------------------------------------------------------
// From traffic

/// A request from `peer`, which is not a trusted proxy, carries `X-Forwarded-For`: counted
/// always, reported once per peer.
pub fn untrusted_forwarding(peer: IpAddr, bounds: AddressBounds) {
    METRICS.untrusted_forwarded();
    let peer = peer.to_canonical();
    match FORWARDING_PEERS.note(peer) {
        Seen::First => tracing::warn!(
            %peer,
            setting = "BANTER_TRUSTED_PROXIES",
            "{}",
            untrusted_forwarding_text(peer, bounds)
        ),
        Seen::Overflow { first: true } => tracing::warn!(
            "more than {MAX_FORWARDING_PEERS} addresses sent X-Forwarded-For without being \
             trusted proxies; no more are reported (banter_untrusted_forwarded_total counts \
             their requests)"
        ),
        Seen::Overflow { first: false } | Seen::Again => {}
    }
}

fn untrusted_forwarding_text(peer: IpAddr, bounds: AddressBounds) -> String {
    format!(
        "requests from {peer} carry X-Forwarded-For, but {peer} is not a trusted proxy, so the \
         header is ignored and every client behind {peer} counts as {peer}, sharing one \
         address's bounds ({}). If {peer} is your proxy or load balancer, set \
         BANTER_TRUSTED_PROXIES={peer} (or its network, if its address changes). If nothing \
         should stand in front of Banter, a client wrote the header itself: ignore this",
        describe_bounds(bounds)
    )
}

fn describe_bounds(bounds: AddressBounds) -> String {
    let mut parts = Vec::new();
    if bounds.max_open > 0 {
        parts.push(format!("{} open connections", bounds.max_open));
    }
    if bounds.connect_rate > 0.0 {
        parts.push(format!(
            "{} new connections per second",
            bounds.connect_rate
        ));
    }
    if parts.is_empty() {
        "none are on now, but its address is the one logged and counted".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `addr` was refused for being over its per-address bounds. When it is an address that sent
/// untrusted `X-Forwarded-For`, it is a proxy, and the refusal hits every client behind it:
/// reported once per address. (Other refusals are ordinary clients over their bounds, logged at
/// debug where they happen.)
pub fn refused(addr: IpAddr, refusal: Refusal, bounds: AddressBounds) {
    let addr = addr.to_canonical();
    if !FORWARDING_PEERS.contains(&addr) {
        return;
    }
    if REFUSED_PROXIES.note(addr) != Seen::First {
        return;
    }
    let bound = match refusal {
        Refusal::Open => format!(
            "{} open connections, BANTER_MAX_CONNECTIONS_PER_IP",
            bounds.max_open
        ),
        Refusal::Rate(_) => format!(
            "{} new connections per second, BANTER_CONNECT_RATE_PER_IP",
            bounds.connect_rate
        ),
    };
    tracing::warn!(
        %addr,
        setting = "BANTER_TRUSTED_PROXIES",
        "refusing connections from {addr}, which is over its per-address bound ({bound}): \
         {addr} forwards other clients (X-Forwarded-For), so they are refused together. Set \
         BANTER_TRUSTED_PROXIES={addr} so that each client behind it counts on its own \
         (banter_connections_refused_total counts the refusals)"
    );
}

/// A Socket.IO request from a page of `origin` was refused (it is neither the `Host` nor in
/// `BANTER_ALLOWED_ORIGINS`). Mostly another site's page, which is what the check is for; but
/// when the request came through a proxy that rewrote `Host`, it is our own page. Reported once
/// per origin when the headers point at a proxy.
pub fn refused_origin(origin: &str, host: Option<&str>, headers: &HeaderMap) {
    // Cheap checks first: a page that keeps trying is refused on every attempt.
    if origin.len() > MAX_ORIGIN_LEN || REFUSED_ORIGINS.contains(origin) {
        return;
    }
    let Some(text) = refused_origin_text(origin, host, headers) else {
        return;
    };
    if REFUSED_ORIGINS.note(origin.to_owned()) == Seen::First {
        tracing::warn!(origin, setting = "BANTER_ALLOWED_ORIGINS", "{text}");
    }
}

/// Why a refused origin looks like our own page behind a proxy, and what to set; `None` when
/// nothing points at a proxy.
fn refused_origin_text(origin: &str, host: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let authority = origin.split_once("://").map(|(_, rest)| rest)?;
    let host = host.unwrap_or("");
    let forwarded_host = forwarded_host(headers);
    let why = if let Some((header, asked)) = &forwarded_host
        && asked.eq_ignore_ascii_case(authority)
    {
        format!(
            "a proxy rewrote Host: the browser asked for {asked} ({header}), but Host says \
             {host:?}"
        )
    } else if !host.is_empty() && same_name_other_port(authority, host) {
        format!(
            "Host says {host:?}, the page's host with another port or none: a proxy in front \
             changed it (nginx: `proxy_set_header Host $http_host`, not `$host`)"
        )
    } else if let Some(header) = forwarded_host
        .as_ref()
        .map(|(header, _)| *header)
        .or_else(|| proxy_header(headers))
    {
        format!(
            "the request came through a proxy (it carries {header}), which may have rewritten \
             Host: Host says {host:?}"
        )
    } else {
        return None;
    };
    Some(format!(
        "refused Socket.IO from a page at {origin}: {why}. If {origin} is your chat page's \
         origin, set BANTER_ALLOWED_ORIGINS={origin}, or make the proxy pass the browser's Host \
         on unchanged; if it is not, another site's page tried to connect, and the refusal is \
         right"
    ))
}

/// The host the browser asked for, as a proxy reports it: the header's name and its value.
fn forwarded_host(headers: &HeaderMap) -> Option<(&'static str, String)> {
    for name in ["x-forwarded-host", "x-original-host"] {
        // A list when several proxies added one: the browser's is the first.
        if let Some(first) = header_text(headers, name)
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            return Some((canonical_name(name), first.to_owned()));
        }
    }
    // RFC 7239: `Forwarded: for=...;host=chat.example;proto=https, for=...`.
    let forwarded = header_text(headers, "forwarded")?;
    let first = forwarded.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("host")
            .then(|| ("Forwarded", value.trim().trim_matches('"').to_owned()))
    })
}

/// A header that a proxy adds to what it forwards, if the request has one.
fn proxy_header(headers: &HeaderMap) -> Option<&'static str> {
    ["x-forwarded-for", "forwarded", "x-real-ip", "via"]
        .into_iter()
        .find(|name| headers.contains_key(*name))
        .map(canonical_name)
}

fn canonical_name(name: &str) -> &'static str {
    match name {
        "x-forwarded-host" => "X-Forwarded-Host",
        "x-original-host" => "X-Original-Host",
        "x-forwarded-for" => "X-Forwarded-For",
        "forwarded" => "Forwarded",
        "x-real-ip" => "X-Real-IP",
        _ => "Via",
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether two authorities (`host[:port]`) name the same host with different ports.
fn same_name_other_port(a: &str, b: &str) -> bool {
    let split = |s: &str| -> (String, Option<String>) {
        // `[::1]:3000`, `[::1]`, `chat.example:3000`, `chat.example`.
        if let Some(rest) = s.strip_prefix('[')
            && let Some((ip, after)) = rest.split_once(']')
        {
            let port = after.strip_prefix(':').map(str::to_owned);
            return (ip.to_ascii_lowercase(), port);
        }
        match s.rsplit_once(':') {
            Some((name, port)) => (name.to_ascii_lowercase(), Some(port.to_owned())),
            None => (s.to_ascii_lowercase(), None),
        }
    };
    let (a_name, a_port) = split(a);
    let (b_name, b_port) = split(b);
    a_name == b_name && a_port != b_port
}

// ---------------------------------------------------------------------------------------------
// At start-up

/// One piece of start-up advice: its level, the setting it is about, and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub level: Level,
    pub setting: &'static str,
    pub text: String,
}

/// Logs the start-up advice for this process: its settings, its platform, where it listens.
pub fn at_startup(config: &Config, bound: Option<SocketAddr>) {
    let env = |name: &str| std::env::var(name).ok();
    let platform = Platform::current();
    for line in startup_lines(config, &platform, &env, bound) {
        let Line {
            level,
            setting,
            text,
        } = line;
        if level == Level::WARN {
            tracing::warn!(setting, "{text}");
        } else {
            tracing::info!(setting, "{text}");
        }
    }
}

/// The start-up advice, from the settings, the platform, the environment (read through `env`) and
/// the address the listener is bound to.
pub fn startup_lines(
    config: &Config,
    platform: &Platform,
    env: &dyn Fn(&str) -> Option<String>,
    bound: Option<SocketAddr>,
) -> Vec<Line> {
    let mut lines = Vec::new();
    let trusted = config.trusted_proxies_on(platform);
    lines.push(trusted_line(&trusted, platform));
    if let Some(everything) = trusted.nets().iter().find(|net| net.prefix() == 0) {
        lines.push(Line {
            level: Level::WARN,
            setting: "BANTER_TRUSTED_PROXIES",
            text: format!(
                "BANTER_TRUSTED_PROXIES includes {everything}, every address: any client can then \
                 write X-Forwarded-For and choose the address it is counted under. List only \
                 your proxies (their addresses or subnet){}",
                if matches!(platform, Platform::AppService { .. }) {
                    "; on Azure App Service, unset it to trust the front end's ranges"
                } else {
                    ""
                }
            ),
        });
    }
    if config.redis_url().is_some() && config.transports.contains(&Transport::Polling) {
        let transports = config
            .transports
            .iter()
            .map(|t| match t {
                Transport::Polling => "polling",
                Transport::Websocket => "websocket",
            })
            .collect::<Vec<_>>()
            .join(",");
        lines.push(Line {
            level: Level::WARN,
            setting: "BANTER_TRANSPORTS",
            text: format!(
                "several instances share Redis and long-polling is on \
                 (BANTER_TRANSPORTS={transports}): every request of a polling client must reach \
                 the instance that holds its session, so the load balancer needs sticky sessions \
                 (docs/scaling.md, section 4; on Azure App Service, ARR affinity), or clients get \
                 400 \"Session ID unknown\". If it cannot keep clients on one instance, set \
                 BANTER_TRANSPORTS=websocket"
            ),
        });
    }
    if let Platform::AppService { .. } = platform {
        lines.extend(app_service_lines(env, bound));
    }
    lines
}

fn trusted_line(trusted: &TrustedProxies, platform: &Platform) -> Line {
    let on_azure = match platform {
        Platform::AppService { site } => Some(site.as_str()),
        Platform::Other => None,
    };
    let text = match (trusted.source(), on_azure) {
        (TrustSource::AppService, site) => format!(
            "on Azure App Service (app {}): trusting X-Forwarded-For and X-Forwarded-Proto from \
             the front end's ranges by default: {trusted}. BANTER_TRUSTED_PROXIES replaces this \
             list (empty or none: trust no proxy)",
            site.unwrap_or("?")
        ),
        (TrustSource::Setting, _) if trusted.nets().is_empty() => format!(
            "trusting no proxy (BANTER_TRUSTED_PROXIES is set to none): X-Forwarded-For is \
             ignored and every TCP peer counts as the client{}",
            if on_azure.is_some() {
                "; on Azure App Service, every browser then counts as the front end"
            } else {
                ""
            }
        ),
        (TrustSource::Setting, _) => format!(
            "trusting X-Forwarded-For and X-Forwarded-Proto from {trusted} \
             (BANTER_TRUSTED_PROXIES{})",
            if on_azure.is_some() {
                "; it replaces the Azure App Service default"
            } else {
                ""
            }
        ),
        (TrustSource::Unset, _) => "trusting no proxy (BANTER_TRUSTED_PROXIES is unset): \
             each TCP peer counts as the client. Behind a proxy or load balancer, set \
             BANTER_TRUSTED_PROXIES to its address (docs/deploy.md, section 10)"
            .to_owned(),
    };
    Line {
        level: Level::INFO,
        setting: "BANTER_TRUSTED_PROXIES",
        text,
    }
}

/// App Service forwards to one port of the container (`WEBSITES_PORT`) on its network interface.
fn app_service_lines(env: &dyn Fn(&str) -> Option<String>, bound: Option<SocketAddr>) -> Vec<Line> {
    let mut lines = Vec::new();
    let Some(bound) = bound else {
        return lines;
    };
    if bound.ip().is_loopback() {
        lines.push(Line {
            level: Level::WARN,
            setting: "HOST",
            text: format!(
                "listening on {}, which App Service's front end cannot reach: set HOST=0.0.0.0 \
                 (the image does)",
                bound.ip()
            ),
        });
    }
    let port = bound.port();
    match env("WEBSITES_PORT").map(|p| p.trim().to_owned()) {
        Some(forwarded) if !forwarded.is_empty() => {
            if forwarded != port.to_string() {
                lines.push(Line {
                    level: Level::WARN,
                    setting: "WEBSITES_PORT",
                    text: format!(
                        "App Service forwards to WEBSITES_PORT={forwarded}, but Banter listens \
                         on port {port}: set PORT={forwarded}, or WEBSITES_PORT={port}"
                    ),
                });
            }
        }
        _ => lines.push(Line {
            level: Level::INFO,
            setting: "WEBSITES_PORT",
            text: format!(
                "WEBSITES_PORT is not set: App Service has to guess the port to forward to; set \
                 WEBSITES_PORT={port} (docs/deploy.md, section 6)"
            ),
        }),
    }
    lines
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use clap::Parser;

    use super::*;
    use crate::config::platform::test_env as env;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn each_key_is_reported_once_and_the_set_stays_bounded() {
        let once = OnceEach::new(2);
        assert_eq!(once.note(1), Seen::First);
        assert_eq!(once.note(1), Seen::Again);
        assert_eq!(once.note(2), Seen::First);
        assert_eq!(once.note(3), Seen::Overflow { first: true });
        assert_eq!(once.note(4), Seen::Overflow { first: false });
        assert_eq!(once.note(2), Seen::Again, "what is in stays in");
        assert!(once.contains(&1) && !once.contains(&3));
        assert_eq!(once.seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn the_untrusted_forwarding_warning_names_the_setting_and_the_peer() {
        let bounds = AddressBounds {
            connect_rate: 20.0,
            connect_burst: 100,
            max_open: 256,
        };
        let text = untrusted_forwarding_text("127.0.0.1".parse().unwrap(), bounds);
        assert!(text.contains("BANTER_TRUSTED_PROXIES=127.0.0.1"), "{text}");
        assert!(text.contains("256 open connections, 20 new connections per second"));
    }

    #[test]
    fn a_refused_origin_is_explained_only_when_a_proxy_shows() {
        let origin = "https://chat.example";
        // Another site's page, straight to us: the refusal is the point, nothing to advise.
        assert_eq!(
            refused_origin_text(origin, Some("banter:3000"), &headers(&[])),
            None
        );

        // The proxy says which host the browser asked for: Host was rewritten.
        let text = refused_origin_text(
            origin,
            Some("banter:3000"),
            &headers(&[("x-forwarded-host", "chat.example")]),
        )
        .unwrap();
        assert!(text.contains("a proxy rewrote Host"), "{text}");
        assert!(text.contains("X-Forwarded-Host"), "{text}");
        assert!(
            text.contains("BANTER_ALLOWED_ORIGINS=https://chat.example"),
            "{text}"
        );
        let text = refused_origin_text(
            origin,
            Some("10.0.0.4"),
            &headers(&[("forwarded", "for=1.2.3.4;Host=\"chat.example\";proto=https")]),
        )
        .unwrap();
        assert!(text.contains("(Forwarded)"), "{text}");
        let text = refused_origin_text(
            origin,
            Some("backend.internal"),
            &headers(&[("x-original-host", "chat.example")]),
        )
        .unwrap();
        assert!(text.contains("X-Original-Host"), "{text}");

        // The port dropped on the way ($host instead of $http_host in nginx).
        let text = refused_origin_text(
            "http://chat.example:8080",
            Some("chat.example"),
            &headers(&[]),
        )
        .unwrap();
        assert!(text.contains("$http_host"), "{text}");

        // Only a forwarding header: a proxy is there, and may have rewritten Host.
        let text = refused_origin_text(
            origin,
            Some("banter"),
            &headers(&[("x-forwarded-for", "1.2.3.4")]),
        )
        .unwrap();
        assert!(text.contains("came through a proxy"), "{text}");
        assert!(
            text.contains("if it is not, another site's page"),
            "the advice is conditional: {text}"
        );
    }

    #[test]
    fn authorities_compare_by_name_then_port() {
        assert!(same_name_other_port("chat.example:8080", "chat.example"));
        assert!(same_name_other_port("Chat.Example:8080", "chat.example:80"));
        assert!(same_name_other_port("[::1]:3000", "[::1]"));
        assert!(!same_name_other_port("chat.example", "chat.example"));
        assert!(!same_name_other_port("chat.example:1", "other.example:1"));
    }

    fn lines(
        args: &[&str],
        platform: &Platform,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<Line> {
        let config = Config::parse_from(std::iter::once("banter").chain(args.iter().copied()));
        startup_lines(
            &config,
            platform,
            env,
            Some("127.0.0.1:8080".parse().unwrap()),
        )
    }

    fn find<'a>(lines: &'a [Line], setting: &str) -> Vec<&'a Line> {
        lines.iter().filter(|l| l.setting == setting).collect()
    }

    #[test]
    fn startup_says_which_proxies_are_trusted_and_why() {
        let azure = Platform::AppService {
            site: "banter-chat".into(),
        };
        let none = env(&[]);
        let out = lines(&[], &Platform::Other, &none);
        let trusted = find(&out, "BANTER_TRUSTED_PROXIES");
        assert_eq!(trusted.len(), 1);
        assert!(trusted[0].text.contains("is unset"), "{:?}", trusted[0]);

        let out = lines(&[], &azure, &none);
        let trusted = find(&out, "BANTER_TRUSTED_PROXIES")[0];
        assert!(
            trusted
                .text
                .contains("on Azure App Service (app banter-chat)")
        );
        assert!(trusted.text.contains("10.0.0.0/8"), "{trusted:?}");

        let out = lines(&["--trusted-proxies", ""], &azure, &none);
        let trusted = find(&out, "BANTER_TRUSTED_PROXIES")[0];
        assert!(trusted.text.contains("set to none"), "{trusted:?}");
        assert!(trusted.text.contains("front end"), "{trusted:?}");

        let out = lines(&["--trusted-proxies", "0.0.0.0/0"], &Platform::Other, &none);
        let warned = find(&out, "BANTER_TRUSTED_PROXIES");
        assert_eq!(warned.len(), 2);
        assert_eq!(warned[1].level, Level::WARN);
        assert!(warned[1].text.contains("0.0.0.0/0, every address"));
    }

    #[test]
    fn startup_warns_about_polling_across_instances() {
        let none = env(&[]);
        let redis = ["--redis-url", "redis://127.0.0.1:6379"];
        let out = lines(&redis, &Platform::Other, &none);
        let sticky = find(&out, "BANTER_TRANSPORTS");
        assert_eq!(sticky.len(), 1);
        assert_eq!(sticky[0].level, Level::WARN);
        assert!(sticky[0].text.contains("sticky sessions"));
        assert!(sticky[0].text.contains("BANTER_TRANSPORTS=websocket"));
        assert!(sticky[0].text.contains("docs/scaling.md"));
        let ws_only = [&redis[..], &["--transports", "websocket"]].concat();
        assert!(
            find(
                &lines(&ws_only, &Platform::Other, &none),
                "BANTER_TRANSPORTS"
            )
            .is_empty()
        );
        assert!(find(&lines(&[], &Platform::Other, &none), "BANTER_TRANSPORTS").is_empty());
    }

    #[test]
    fn startup_checks_the_app_service_port_and_interface() {
        let azure = Platform::AppService {
            site: "banter-chat".into(),
        };
        // Bound to 127.0.0.1:8080 (see `lines`).
        let out = lines(&[], &azure, &env(&[("WEBSITES_PORT", "8080")]));
        assert_eq!(find(&out, "HOST")[0].level, Level::WARN);
        assert!(find(&out, "WEBSITES_PORT").is_empty(), "the port matches");
        let out = lines(&[], &azure, &env(&[("WEBSITES_PORT", "3000")]));
        let port = find(&out, "WEBSITES_PORT");
        assert_eq!(port[0].level, Level::WARN);
        assert!(
            port[0]
                .text
                .contains("set PORT=3000, or WEBSITES_PORT=8080")
        );
        let out = lines(&[], &azure, &env(&[]));
        assert!(
            find(&out, "WEBSITES_PORT")[0]
                .text
                .contains("WEBSITES_PORT=8080")
        );
        // Elsewhere, neither applies.
        let out = lines(&[], &Platform::Other, &env(&[]));
        assert!(find(&out, "HOST").is_empty() && find(&out, "WEBSITES_PORT").is_empty());
    }
}
