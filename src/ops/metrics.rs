//! Prometheus metrics: a small fixed set of counters, gauges and one histogram, kept in atomics
//! and rendered in the text exposition format at `/metrics`.
//!
//! Labels are fixed (transport, refusal code): no label takes a value from a client, so the
//! number of series cannot grow with traffic.

use std::fmt::Write;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use banter_engine::socketio::DisconnectReason;

use crate::chat::ErrorCode;
use crate::store::redis::RedisHealth;

/// Every disconnect reason, for the per-reason counters.
const REASONS: [DisconnectReason; 9] = [
    DisconnectReason::TransportClose,
    DisconnectReason::TransportError,
    DisconnectReason::PingTimeout,
    DisconnectReason::ParseError,
    DisconnectReason::ForcedClose,
    DisconnectReason::ServerShuttingDown,
    DisconnectReason::ClientNamespaceDisconnect,
    DisconnectReason::ServerNamespaceDisconnect,
    DisconnectReason::TooSlow,
];

/// Every refusal code, in the order of `ErrorCode`'s variants, for the per-code counters.
const CODES: [ErrorCode; 12] = [
    ErrorCode::BadRequest,
    ErrorCode::NotJoined,
    ErrorCode::AlreadyJoined,
    ErrorCode::InvalidName,
    ErrorCode::NameTaken,
    ErrorCode::Empty,
    ErrorCode::TooLong,
    ErrorCode::RateLimited,
    ErrorCode::UnknownEvent,
    ErrorCode::Replaced,
    ErrorCode::Unavailable,
    ErrorCode::Unconfirmed,
];

/// Upper bounds of the message latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

#[derive(Default)]
pub struct Metrics {
    connections_websocket: AtomicI64,
    connections_polling: AtomicI64,
    connects_total: AtomicU64,
    joins_total: AtomicU64,
    messages_received_total: AtomicU64,
    messages_accepted_total: AtomicU64,
    refusals_total: [AtomicU64; CODES.len()],
    /// Cumulative counts per bucket, then +Inf; and the sum in microseconds.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
    disconnects_total: [AtomicU64; REASONS.len()],
    refused_addresses_rate_total: AtomicU64,
    refused_addresses_open_total: AtomicU64,
    untrusted_forwarded_total: AtomicU64,
}

/// The transport a connection started on.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Websocket,
    Polling,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::Polling => "polling",
        }
    }
}

impl Metrics {
    fn gauge(&self, transport: Transport) -> &AtomicI64 {
        match transport {
            Transport::Websocket => &self.connections_websocket,
            Transport::Polling => &self.connections_polling,
        }
    }

    pub fn connected(&self, transport: Transport) {
        self.gauge(transport).fetch_add(1, Ordering::Relaxed);
        self.connects_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn disconnected(&self, transport: Transport, reason: DisconnectReason) {
        self.gauge(transport).fetch_sub(1, Ordering::Relaxed);
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.disconnects_total[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn joined(&self) {
        self.joins_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn message_received(&self) {
        self.messages_received_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A message was stored and handed to the broadcast, `took` after it arrived.
    pub fn message_accepted(&self, took: Duration) {
        self.messages_accepted_total.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// A client address over its bounds was refused a new connection: for opening too many at
    /// once (`open`), or too many per second.
    pub fn address_refused(&self, open: bool) {
        match open {
            false => &self.refused_addresses_rate_total,
            true => &self.refused_addresses_open_total,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A request carried `X-Forwarded-For` from a peer that is not a trusted proxy (the header
    /// was ignored).
    pub fn untrusted_forwarded(&self) {
        self.untrusted_forwarded_total
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, code: ErrorCode) {
        if let Some(i) = CODES.iter().position(|c| *c == code) {
            self.refusals_total[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition format.
    /// `history` is the number of messages the chat's history holds, when known.
    pub fn render(&self, redis: Option<&RedisHealth>, history: Option<usize>) -> String {
        let mut out = String::with_capacity(4_096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP banter_connections Open Socket.IO connections, by the transport they started on."
        );
        let _ = writeln!(out, "# TYPE banter_connections gauge");
        let _ = writeln!(
            out,
            "banter_connections{{transport=\"websocket\"}} {}",
            self.connections_websocket.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "banter_connections{{transport=\"polling\"}} {}",
            self.connections_polling.load(Ordering::Relaxed)
        );
        for (name, help, value) in [
            (
                "banter_connects_total",
                "Socket.IO connections opened.",
                get(&self.connects_total),
            ),
            (
                "banter_joins_total",
                "Successful add user.",
                get(&self.joins_total),
            ),
            (
                "banter_messages_received_total",
                "new message events received.",
                get(&self.messages_received_total),
            ),
            (
                "banter_messages_accepted_total",
                "Messages stored and broadcast.",
                get(&self.messages_accepted_total),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP banter_refusals_total Requests refused, by error code."
        );
        let _ = writeln!(out, "# TYPE banter_refusals_total counter");
        for (code, count) in CODES.iter().zip(&self.refusals_total) {
            let _ = writeln!(
                out,
                "banter_refusals_total{{code=\"{}\"}} {}",
                code.as_str(),
                get(count)
            );
        }
        let _ = writeln!(
            out,
            "# HELP banter_connections_refused_total New connections refused because their \
             client address was over its bounds: too many new connections per second (rate) or \
             open at once (open).\n# TYPE banter_connections_refused_total counter"
        );
        for (reason, count) in [
            ("rate", &self.refused_addresses_rate_total),
            ("open", &self.refused_addresses_open_total),
        ] {
            let _ = writeln!(
                out,
                "banter_connections_refused_total{{reason=\"{reason}\"}} {}",
                get(count)
            );
        }
        let _ = writeln!(
            out,
            "# HELP banter_untrusted_forwarded_total Requests that carried X-Forwarded-For from a \
             peer not in BANTER_TRUSTED_PROXIES: the header was ignored, and the peer counted as \
             the client.\n# TYPE banter_untrusted_forwarded_total counter\nbanter_untrusted_forwarded_total {}",
            get(&self.untrusted_forwarded_total)
        );
        let _ = writeln!(
            out,
            "# HELP banter_disconnects_total Socket.IO connections ended, by reason (\"too slow\": \
             the client fell further behind than BANTER_MAX_BUFFERED_BYTES).\n# TYPE banter_disconnects_total counter"
        );
        for (reason, count) in REASONS.iter().zip(&self.disconnects_total) {
            let _ = writeln!(
                out,
                "banter_disconnects_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                get(count)
            );
        }
        let _ = writeln!(
            out,
            "# HELP banter_message_seconds From a message's arrival to its ack (stored, or broadcast)."
        );
        let _ = writeln!(out, "# TYPE banter_message_seconds histogram");
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += get(&self.latency_buckets[i]);
            let _ = writeln!(
                out,
                "banter_message_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += get(&self.latency_buckets[LATENCY_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "banter_message_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = get(&self.latency_sum_micros) as f64 / 1e6;
        let _ = writeln!(
            out,
            "banter_message_seconds_sum {sum}\nbanter_message_seconds_count {cumulative}"
        );
        if let Some(len) = history {
            let _ = writeln!(
                out,
                "# HELP banter_history_messages Messages held in the chat's history (what a \
                 reconnecting client can catch up from).\n# TYPE banter_history_messages gauge\nbanter_history_messages {len}"
            );
        }
        if let Some(health) = redis {
            let _ = writeln!(
                out,
                "# HELP banter_redis_up Whether Redis answers (1) or not (0).\n# TYPE banter_redis_up gauge"
            );
            let _ = writeln!(out, "banter_redis_up {}", u8::from(health.is_up()));
            let _ = writeln!(
                out,
                "# HELP banter_redis_reconnects_total Times Redis came back after an outage.\n# TYPE banter_redis_reconnects_total counter"
            );
            let _ = writeln!(out, "banter_redis_reconnects_total {}", health.reconnects());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.connected(Transport::Websocket);
        m.refused(ErrorCode::TooLong);
        m.message_accepted(Duration::from_micros(300));
        m.message_accepted(Duration::from_secs(2));
        m.untrusted_forwarded();
        m.untrusted_forwarded();
        let text = m.render(None, Some(7));
        assert!(text.contains("\nbanter_untrusted_forwarded_total 2\n"));
        assert!(text.contains("banter_connections{transport=\"websocket\"} 1"));
        assert!(text.contains("banter_refusals_total{code=\"too_long\"} 1"));
        assert!(text.contains("banter_message_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("banter_message_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("banter_message_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("banter_history_messages 7"));
        assert!(!text.contains("banter_redis_up"));
        m.disconnected(Transport::Websocket, DisconnectReason::TooSlow);
        let text = m.render(None, None);
        assert!(text.contains("banter_disconnects_total{reason=\"too slow\"} 1"));
        assert!(text.contains("banter_disconnects_total{reason=\"ping timeout\"} 0"));
    }
}
