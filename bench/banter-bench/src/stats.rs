//! Measurements: latency histograms, the clock, and server processes seen through /proc.

use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ; 100 on every Linux we run on).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Nanoseconds since the Unix epoch: the timestamp carried in bench messages.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// min/p50/p90/p99/max in milliseconds, as JSON. The minimum is the fixed part of a delivery's
/// path (sender, server, first receiver); the rest of the spread is the fan-out's own.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    if h.is_empty() {
        return json!({"count": 0, "min_ms": null, "p50_ms": null, "p90_ms": null, "p99_ms": null, "max_ms": null});
    }
    json!({
        "count": h.len(),
        "min_ms": ms(h.min()),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// One line for humans: `min 0.3 ms, p50 1.2 ms, p90 ..., max ...`.
pub fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "min {:.2} ms, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(h.min()),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len()
    )
}

/// The server processes named by `--server-pid` (comma-separated), read from /proc.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    pids: Vec<u32>,
}

impl Servers {
    pub fn new(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    /// Resident set size of all the processes, in KiB (None when one cannot be read).
    pub fn rss_kib(&self) -> Option<u64> {
        self.pids.iter().map(|&p| rss_kib(p)).sum()
    }

    /// User + system CPU time of all the processes, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pids.iter().map(|&p| cpu_seconds(p)).sum()
    }
}

/// VmRSS from /proc/<pid>/status, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime from /proc/<pid>/stat, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_SECOND)
}

/// This process's own CPU seconds (the bench shares the machine with the server).
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// Rounds to two decimals, for readable JSON.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        let servers = Servers::new(vec![me, me]);
        assert_eq!(servers.rss_kib().map(|r| r > 0), Some(true));
    }

    #[test]
    fn histogram_summary() {
        let mut h = latency_histogram();
        for us in 1..=1000 {
            h.record(us * 10).unwrap();
        }
        let j = latency_json(&h);
        assert_eq!(j["count"], 1000);
        assert!((j["p50_ms"].as_f64().unwrap() - 5.0).abs() < 0.05);
    }
}
