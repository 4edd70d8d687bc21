//! How many connections each client address may open, and the middleware that tells who each
//! request comes from (through `config::net`: the trusted proxies) and applies the bounds.
//!
//! Per address, two bounds: a token bucket on new Engine.IO sessions (handshakes), which keeps a
//! single address from opening sessions faster than a person could, and a cap on the Socket.IO
//! connections it holds open at once. IPv6 addresses count per /64, the block a single host or
//! subscriber usually gets, so that hopping addresses within it does not escape the bounds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::chat::TokenBucket;
pub use crate::config::net::Refusal;
use crate::config::net::{AddressBounds, TrustedProxies};

#[derive(Debug)]
struct Slot {
    bucket: Option<TokenBucket>,
    open: u32,
}

/// The state of every address seen recently. Entries of addresses with nothing open are
/// forgotten once their bucket has refilled, so the table holds only active addresses.
#[derive(Debug)]
pub struct AddressLimits {
    bounds: AddressBounds,
    slots: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    slots: HashMap<IpAddr, Slot>,
    /// Sweep idle entries when the table reaches this size (doubling, so sweeps are amortised).
    sweep_at: usize,
}

/// Below this many entries the table is never swept.
const MIN_SWEEP: usize = 1_024;

impl AddressLimits {
    pub fn new(bounds: AddressBounds) -> Arc<Self> {
        Arc::new(Self {
            bounds,
            slots: Mutex::new(Table {
                slots: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        })
    }

    pub fn bounds(&self) -> AddressBounds {
        self.bounds
    }

    /// The key an address is counted under: IPv6 per /64.
    fn key(addr: IpAddr) -> IpAddr {
        match addr.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
            v4 => v4,
        }
    }

    fn with_slot<R>(&self, addr: IpAddr, f: impl FnOnce(&mut Slot) -> R) -> R {
        let mut table = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if table.slots.len() >= table.sweep_at {
            table.slots.retain(|_, slot| !slot.is_idle());
            table.sweep_at = (table.slots.len() * 2).max(MIN_SWEEP);
        }
        let bounds = self.bounds;
        let slot = table.slots.entry(Self::key(addr)).or_insert_with(|| Slot {
            bucket: (bounds.connect_rate > 0.0)
                .then(|| TokenBucket::new(bounds.connect_rate, bounds.connect_burst)),
            open: 0,
        });
        f(slot)
    }

    /// Whether `addr` may start a new session now. Takes a token from its bucket.
    pub fn admit(&self, addr: IpAddr) -> Result<(), Refusal> {
        let max_open = self.bounds.max_open;
        if self.bounds.connect_rate <= 0.0 && max_open == 0 {
            return Ok(());
        }
        self.with_slot(addr, |slot| {
            if max_open > 0 && slot.open >= max_open {
                return Err(Refusal::Open);
            }
            match &mut slot.bucket {
                Some(bucket) => {
                    if bucket.try_take() {
                        Ok(())
                    } else {
                        Err(Refusal::Rate(bucket.retry_after()))
                    }
                }
                None => Ok(()),
            }
        })
    }

    /// Counts a connection of `addr` as open, unless that would pass the cap. The connection
    /// stays counted until the returned slot is dropped.
    pub fn open(self: &Arc<Self>, addr: IpAddr) -> Result<OpenSlot, Refusal> {
        let max_open = self.bounds.max_open;
        let key = Self::key(addr);
        if max_open > 0 {
            self.with_slot(key, |slot| {
                if slot.open >= max_open {
                    return Err(Refusal::Open);
                }
                slot.open += 1;
                Ok(())
            })?;
        }
        Ok(OpenSlot {
            limits: max_open.gt(&0).then(|| Arc::clone(self)),
            key,
        })
    }

    fn close(&self, key: IpAddr) {
        let mut table = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = table.slots.get_mut(&key) {
            slot.open = slot.open.saturating_sub(1);
        }
    }

    /// How many addresses are tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .len()
    }
}

impl Slot {
    fn is_idle(&self) -> bool {
        self.open == 0 && self.bucket.as_ref().is_none_or(TokenBucket::is_full)
    }
}

/// One open connection of an address, counted until dropped.
#[derive(Debug)]
pub struct OpenSlot {
    limits: Option<Arc<AddressLimits>>,
    key: IpAddr,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        if let Some(limits) = &self.limits {
            limits.close(self.key);
        }
    }
}

/// What the client-identifying middleware needs.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    pub trusted: TrustedProxies,
    pub limits: Arc<AddressLimits>,
    /// Whether we terminate TLS ourselves.
    pub own_tls: bool,
}

/// Works out each request's [`Client`] and puts it in the request's extensions (where the
/// Socket.IO connect middleware finds it, in the handshake request's parts); refuses Engine.IO
/// handshakes from addresses over their bounds with 429; marks HTTPS responses with HSTS.
pub async fn identify(
    State(policy): State<Arc<ClientPolicy>>,
    mut request: Request,
    next: Next,
) -> Response {
    let handshake = is_handshake(&request);
    // Without the peer's address (a router driven directly, as in tests) there is nobody to
    // count.
    let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .copied()
    else {
        return next.run(request).await;
    };
    let client = policy
        .trusted
        .client(peer.ip(), request.headers(), policy.own_tls);
    // A proxy we do not trust: the operator has to hear of it, or every client behind it shares
    // one address's bounds without a word in the log.
    if request.headers().contains_key("x-forwarded-for") && !policy.trusted.trusts(peer.ip()) {
        crate::http::advice::untrusted_forwarding(client.addr, policy.limits.bounds());
    }
    if handshake && let Err(refusal) = policy.limits.admit(client.addr) {
        crate::ops::metrics::METRICS.address_refused(matches!(refusal, Refusal::Open));
        crate::http::advice::refused(client.addr, refusal, policy.limits.bounds());
        tracing::debug!(client = %client.addr, %refusal, "refused a new session");
        let mut response = (StatusCode::TOO_MANY_REQUESTS, format!("{refusal}\n")).into_response();
        if let Refusal::Rate(after) = refusal {
            let secs = after.as_secs() + 1;
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        return response;
    }
    request.extensions_mut().insert(client);
    let mut response = next.run(request).await;
    if client.https {
        // Browsers ignore this header over plain HTTP; over HTTPS it keeps them there.
        response.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// An Engine.IO request that starts a session: on the engine's path, with a `transport` and
/// without a `sid`. (The client bundle, `/socket.io/socket.io.js`, is not one.)
fn is_handshake(request: &Request) -> bool {
    if !crate::http::guard::is_engine_path(request.uri().path()) {
        return false;
    }
    let query = request.uri().query().unwrap_or("");
    let has = |key: &str| query.split('&').any(|pair| pair.starts_with(key));
    has("transport=") && !has("sid=")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn rate_and_open_connections_per_address() {
        let limits = AddressLimits::new(AddressBounds {
            connect_rate: 2.0,
            connect_burst: 3,
            max_open: 2,
        });
        let a = ip("1.2.3.4");
        assert!((0..3).all(|_| limits.admit(a).is_ok()));
        assert!(matches!(limits.admit(a), Err(Refusal::Rate(_))));
        assert!(limits.admit(ip("1.2.3.5")).is_ok(), "another address");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limits.admit(a).is_ok());

        let first = limits.open(a).unwrap();
        let _second = limits.open(a).unwrap();
        assert_eq!(limits.open(a).unwrap_err(), Refusal::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            limits.admit(a),
            Err(Refusal::Open),
            "the cap holds at handshake"
        );
        drop(first);
        assert!(limits.open(a).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_counts_per_64_and_idle_entries_are_forgotten() {
        let limits = AddressLimits::new(AddressBounds {
            connect_rate: 1.0,
            connect_burst: 1,
            max_open: 0,
        });
        assert!(limits.admit(ip("2001:db8::1")).is_ok());
        assert!(limits.admit(ip("2001:db8::2")).is_err(), "same /64");
        assert!(limits.admit(ip("2001:db8:0:1::1")).is_ok(), "another /64");
        for i in 0..(MIN_SWEEP as u32 + 10) {
            let _ = limits.admit(IpAddr::from(std::net::Ipv4Addr::from(i)));
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for i in 0..(MIN_SWEEP as u32) {
            let _ = limits.admit(IpAddr::from(std::net::Ipv4Addr::from(1 << 24 | i)));
        }
        assert!(
            limits.tracked() < 2 * MIN_SWEEP,
            "refilled, idle addresses are swept: {}",
            limits.tracked()
        );
    }

    #[test]
    fn unlimited_bounds_track_nothing() {
        let limits = AddressLimits::new(AddressBounds {
            connect_rate: 0.0,
            connect_burst: 0,
            max_open: 0,
        });
        let a = ip("1.2.3.4");
        assert!((0..10_000).all(|_| limits.admit(a).is_ok()));
        let slots: Vec<_> = (0..10_000).map(|_| limits.open(a).unwrap()).collect();
        assert_eq!(limits.tracked(), 0);
        drop(slots);
    }
}
