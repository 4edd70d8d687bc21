//! The log lines that tell an operator what to set.
//!
//! A first deployment behind a proxy fails in ways that Banter alone notices: every browser
//! arriving from the proxy's address and sharing its per-address bounds, for one. That would
//! otherwise be a silent refusal. Here it becomes a line in the log that names the setting and a
//! value to try.
//!
//! Warnings from traffic come once per cause (per proxy address), not per request. The causes already reported are kept in sets of fixed capacity, process-wide like the
//! metrics: traffic cannot grow them, and when one is full a last line says that further causes of
//! that kind go unreported (the metrics still count them).

use std::collections::HashSet;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use crate::clients::{AddressBounds, Refusal};
use crate::metrics::METRICS;

/// Proxy addresses whose untrusted `X-Forwarded-For` is reported. Real deployments have a
/// handful of proxies; the rest would be clients writing the header themselves.
const MAX_FORWARDING_PEERS: usize = 64;

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

    pub fn contains(&self, key: &K) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
