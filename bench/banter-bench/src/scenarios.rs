//! The three scenarios: idle connections, message fan-out, join storm. Each prints a summary for
//! humans on stderr and returns one JSON object (printed on stdout by `main`) plus whether the
//! run met its correctness condition.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until};

use crate::Common;
use crate::client::Client;
use crate::fleet::{Fleet, progress, wait_settled, wait_until};
use crate::proto;
use crate::stats::{
    Servers, latency_histogram, latency_json, latency_line, now_nanos, own_cpu_seconds, round2,
};

/// No event for this long means the join fan-out is over.
const QUIET: Duration = Duration::from_secs(1);

/// What a scenario hands back to `main`.
pub struct Outcome {
    pub json: Value,
    pub ok: bool,
}

/// Connects `count` clients with at most `concurrency` connecting at once; stops early at the
/// deadline. Returns when all are spawned.
async fn connect_bounded(
    fleet: &mut Fleet,
    role: &str,
    count: usize,
    join: bool,
    concurrency: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    for _ in 0..count {
        let permit = tokio::select! {
            permit = Arc::clone(&gate).acquire_owned() => permit?,
            _ = sleep_until(deadline) => break,
        };
        fleet.spawn(role, join, Some(permit), deadline);
    }
    Ok(())
}

/// Merged ready times (connect + join) in a histogram of µs.
fn ready_histogram(clients: &[Client]) -> hdrhistogram::Histogram<u64> {
    let mut h = latency_histogram();
    for us in clients.iter().filter_map(|c| c.ready_us) {
        h.saturating_record(us.max(1));
    }
    h
}

fn base_json(common: &Common, scenario: &str) -> Value {
    json!({
        "scenario": scenario,
        "label": common.label,
        "transport": common.transport.name(),
        "urls": common.url,
        // One thread when the bench may use one CPU only (main.rs).
        "bench_runtime": match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
            _ => "multi_thread",
        },
    })
}

fn merge(into: &mut Value, other: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), other) {
        a.extend(b);
    }
}

/// `idle`: N clients connect (and join), then sit; how long it took and what they cost the server.
pub async fn idle(common: &Common, clients: usize, join: bool) -> anyhow::Result<Outcome> {
    let servers = Servers::new(common.server_pid.clone());
    let rss_before = servers.rss_kib();
    let deadline = Instant::now() + Duration::from_secs(common.timeout);
    let mut fleet = Fleet::new(&common.url, common.transport, clients as u64)?;
    let shared = Arc::clone(&fleet.shared);
    let ticker = progress("idle", Arc::clone(&shared));
    let start = Instant::now();

    connect_bounded(&mut fleet, "i", clients, join, common.concurrency, deadline).await?;
    let all_ready = wait_until(deadline, || shared.ready_or_failed(join) >= clients as u64).await;
    let ready_s = start.elapsed().as_secs_f64();
    let settled = !join || wait_settled(&shared, clients as u64, QUIET, deadline).await;
    // Let the server finish what it was doing (and its allocator settle) before measuring.
    sleep(Duration::from_secs(1)).await;
    let rss_after = servers.rss_kib();
    ticker.abort();

    let ready = if join {
        shared.logged_in.load(Relaxed)
    } else {
        shared.connected.load(Relaxed)
    };
    let failed = shared.failed.load(Relaxed);
    let events = shared.events.load(Relaxed);
    let first_error = shared.first_error();
    let all = fleet.finish().await;
    let h = ready_histogram(&all);
    let rss_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if ready > 0 => Some(round2(a.saturating_sub(b) as f64 / ready as f64)),
        _ => None,
    };

    eprintln!("idle: {ready}/{clients} ready (joined: {join}) in {ready_s:.2} s, {failed} failed");
    eprintln!(
        "  connect{} time: {}",
        if join { "+join" } else { "" },
        latency_line(&h)
    );
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        eprintln!(
            "  server RSS {b} KiB -> {a} KiB: {:.2} KiB per connection",
            rss_per_conn.unwrap_or(0.0)
        );
    }
    if let Some(e) = &first_error {
        eprintln!("  first error: {e}");
    }

    let ok = all_ready && failed == 0;
    let mut out = base_json(common, "idle");
    merge(
        &mut out,
        json!({
            "clients": clients,
            "join": join,
            "ready": ready,
            "failed": failed,
            "settled": settled,
            "events": events,
            "ready_total_s": round2(ready_s),
            "ready_time": latency_json(&h),
            "server_rss_before_kib": rss_before,
            "server_rss_after_kib": rss_after,
            "server_rss_per_conn_kib": rss_per_conn,
            "first_error": first_error,
            "ok": ok,
        }),
    );
    Ok(Outcome { json: out, ok })
}

/// Parameters of the fan-out scenario.
pub struct FanoutParams {
    pub receivers: usize,
    pub senders: usize,
    /// Messages per second, all senders together.
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
}

/// `fanout`: receivers and senders join; senders send timed messages at a fixed total rate for a
/// while; every socket but the sender must get each message.
pub async fn fanout(common: &Common, p: &FanoutParams) -> anyhow::Result<Outcome> {
    anyhow::ensure!(p.senders > 0 && p.rate > 0.0, "need senders and a rate");
    let servers = Servers::new(common.server_pid.clone());
    let total = p.receivers + p.senders;
    let join_deadline = Instant::now() + Duration::from_secs(common.timeout);
    let mut fleet = Fleet::new(&common.url, common.transport, total as u64)?;
    let shared = Arc::clone(&fleet.shared);
    let ticker = progress("fanout", Arc::clone(&shared));

    let join_start = Instant::now();
    connect_bounded(
        &mut fleet,
        "r",
        p.receivers,
        true,
        common.concurrency,
        join_deadline,
    )
    .await?;
    connect_bounded(
        &mut fleet,
        "s",
        p.senders,
        true,
        common.concurrency,
        join_deadline,
    )
    .await?;
    let all_joined = wait_until(join_deadline, || {
        shared.ready_or_failed(true) >= fleet.len() as u64
    })
    .await;
    let join_s = join_start.elapsed().as_secs_f64();
    wait_settled(&shared, total as u64, QUIET, join_deadline).await;
    let settle_s = join_start.elapsed().as_secs_f64();
    eprintln!("fanout: {total} clients joined in {join_s:.2} s, settled in {settle_s:.2} s");

    // The senders are the last `senders` clients.
    let cpu_before = servers.cpu_seconds();
    let own_before = own_cpu_seconds();
    let events_before = shared.events.load(Relaxed);
    let send_start_unix = now_nanos();
    let send_start = Instant::now();
    let send_end = send_start + p.duration;
    let per_sender_period = Duration::from_secs_f64(p.senders as f64 / p.rate);
    let mut sending = Vec::new();
    // Without everyone in the chat, there is nothing to measure: send nothing.
    let senders = if all_joined && fleet.len() == total {
        p.senders
    } else {
        shared.note_error(format!(
            "only {} of {total} clients joined within {} s",
            shared.logged_in.load(Relaxed),
            common.timeout
        ));
        0
    };
    for s in 0..senders {
        let out = fleet.outs[p.receivers + s].clone();
        let shared = Arc::clone(&shared);
        let senders = p.senders as u64;
        // Senders are staggered over one period so they do not all fire together.
        let offset = per_sender_period.mul_f64(s as f64 / p.senders as f64);
        sending.push(tokio::spawn(async move {
            let mut k: u64 = 0;
            loop {
                let due = send_start + offset + per_sender_period.mul_f64(k as f64);
                if due >= send_end {
                    break;
                }
                sleep_until(due).await;
                k += 1;
                let text = proto::timed_text(now_nanos(), k * senders + s as u64);
                let packet = proto::event("new message", &text, Some(k));
                if out.send(packet).is_err() {
                    break;
                }
                shared.sent.fetch_add(1, Relaxed);
            }
        }));
    }
    for task in sending {
        task.await?;
    }
    // Drain: every ack back and every delivery in, or the drain period is over.
    let per_message = (shared.logged_in.load(Relaxed)).saturating_sub(1);
    let drain_deadline = Instant::now() + p.drain;
    wait_until(drain_deadline, || {
        let sent = shared.sent.load(Relaxed);
        let refused = shared.refused.load(Relaxed);
        shared.acked.load(Relaxed) + refused >= sent
            && shared.received.load(Relaxed) >= (sent - refused) * per_message
    })
    .await;
    let cpu_after = servers.cpu_seconds();
    let own_after = own_cpu_seconds();
    ticker.abort();
    // Deliveries still coming in when an incomplete drain ended are late, not necessarily lost.
    let incomplete = shared.received.load(Relaxed)
        < shared
            .sent
            .load(Relaxed)
            .saturating_sub(shared.refused.load(Relaxed))
            * per_message;
    let still_arriving = incomplete
        && now_nanos().saturating_sub(shared.last_received_nanos.load(Relaxed))
            < QUIET.as_nanos() as u64;

    let sent = shared.sent.load(Relaxed);
    let acked = shared.acked.load(Relaxed);
    let refused = shared.refused.load(Relaxed);
    let received = shared.received.load(Relaxed);
    let failed = shared.failed.load(Relaxed);
    let dropped = shared.dropped.load(Relaxed);
    // Every message the server did not refuse must reach every other socket, acked in time
    // or not.
    let expected = sent.saturating_sub(refused) * per_message;
    let last = shared.last_received_nanos.load(Relaxed);
    let span_s = last.saturating_sub(send_start_unix) as f64 / 1e9;
    let delivered_per_s = if span_s > 0.0 {
        received as f64 / span_s
    } else {
        0.0
    };
    let offered_per_s = p.rate * per_message as f64;
    let first_error = shared.first_error();
    fleet.finish().await;
    let latency = shared.latency();
    let arrival = shared.arrival();
    let server_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(round2(a - b)),
        _ => None,
    };
    let bench_cpu = match (own_before, own_after) {
        (Some(b), Some(a)) => Some(round2(a - b)),
        _ => None,
    };
    let bench_events = shared.events.load(Relaxed) - events_before;
    let cpu_us_per_delivery = server_cpu
        .filter(|_| received > 0)
        .map(|c| round2(c * 1e6 / received as f64));

    let lost = expected.saturating_sub(received);
    eprintln!(
        "fanout: offered {:.0} deliveries/s ({} msg/s x {per_message} recipients) for {:?}",
        offered_per_s, p.rate, p.duration
    );
    eprintln!(
        "  sent {sent}, acked {acked}, refused {refused}; expected {expected} deliveries, received {received} ({lost} missing)"
    );
    if lost > 0 && still_arriving {
        eprintln!("  deliveries were still arriving when the drain ended: late, maybe not lost");
    }
    if acked + refused < sent {
        eprintln!(
            "  {} acks did not come back in time",
            sent - acked - refused
        );
    }
    eprintln!(
        "  delivered {delivered_per_s:.0}/s over {span_s:.2} s; latency {}",
        latency_line(&latency)
    );
    if !arrival.is_empty() {
        eprintln!(
            "  arrival at the receivers' sockets (kernel stamp): {}",
            latency_line(&arrival)
        );
    }
    if let Some(c) = server_cpu {
        eprintln!(
            "  server CPU {c:.2} s ({} µs per delivery); bench CPU {:.2} s",
            cpu_us_per_delivery.unwrap_or(0.0),
            bench_cpu.unwrap_or(0.0)
        );
    }
    if let Some(e) = &first_error {
        eprintln!("  first error: {e}");
    }

    let ok = all_joined
        && failed == 0
        && dropped == 0
        && refused == 0
        && acked == sent
        && received == expected;
    let mut out = base_json(common, "fanout");
    merge(
        &mut out,
        json!({
            "receivers": p.receivers,
            "senders": p.senders,
            "rate_msgs_per_s": p.rate,
            "duration_s": p.duration.as_secs_f64(),
            "joined": shared.logged_in.load(Relaxed),
            "failed": failed,
            "dropped": dropped,
            "join_s": round2(join_s),
            "settle_s": round2(settle_s),
            "sent": sent,
            "acked": acked,
            "refused": refused,
            "expected": expected,
            "received": received,
            "lost": lost,
            "still_arriving": still_arriving,
            "offered_deliveries_per_s": offered_per_s.round(),
            "delivered_per_s": delivered_per_s.round(),
            "delivery_span_s": round2(span_s),
            "latency": latency_json(&latency),
            "arrival": latency_json(&arrival),
            "server_cpu_s": server_cpu,
            "server_cpu_us_per_delivery": cpu_us_per_delivery,
            "bench_cpu_s": bench_cpu,
            "bench_events": bench_events,
            "first_error": first_error,
            "ok": ok,
        }),
    );
    Ok(Outcome { json: out, ok })
}

/// `storm`: N clients connect and join at once, as after a restart; then one probe message must
/// reach everyone.
pub async fn storm(common: &Common, clients: usize) -> anyhow::Result<Outcome> {
    anyhow::ensure!(clients >= 2, "a storm needs at least 2 clients");
    let servers = Servers::new(common.server_pid.clone());
    let deadline = Instant::now() + Duration::from_secs(common.timeout);
    let mut fleet = Fleet::new(&common.url, common.transport, clients as u64)?;
    let shared = Arc::clone(&fleet.shared);
    let ticker = progress("storm", Arc::clone(&shared));
    let cpu_before = servers.cpu_seconds();

    let start = Instant::now();
    for _ in 0..clients {
        fleet.spawn("m", true, None, deadline);
    }
    let all_in = wait_until(deadline, || shared.ready_or_failed(true) >= clients as u64).await;
    let login_s = start.elapsed().as_secs_f64();
    let logged_in = shared.logged_in.load(Relaxed);

    // The probe: the first client sends one message; it is behind every `user joined` already
    // queued for each socket, so it arrives when the storm is over for that socket.
    let probe_target = logged_in.saturating_sub(1);
    let mut probe_s = None;
    if all_in {
        let text = proto::timed_text(now_nanos(), 0);
        let _ = fleet.outs[0].send(proto::event("new message", &text, Some(1)));
        shared.sent.fetch_add(1, Relaxed);
        if wait_until(deadline, || shared.received.load(Relaxed) >= probe_target).await {
            probe_s = Some(start.elapsed().as_secs_f64());
        }
    }
    let cpu_after = servers.cpu_seconds();
    ticker.abort();
    let received = shared.received.load(Relaxed);
    let failed = shared.failed.load(Relaxed);
    let events = shared.events.load(Relaxed);
    let first_error = shared.first_error();
    let all = fleet.finish().await;
    let h = ready_histogram(&all);
    let server_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(round2(a - b)),
        _ => None,
    };

    eprintln!(
        "storm: {logged_in}/{clients} logged in after {login_s:.2} s ({failed} failed); probe reached {received}/{probe_target} {}",
        match probe_s {
            Some(s) => format!("after {s:.2} s"),
            None => "before the timeout: no".into(),
        }
    );
    eprintln!("  login time: {}", latency_line(&h));
    eprintln!("  {events} events delivered");
    if let Some(e) = &first_error {
        eprintln!("  first error: {e}");
    }

    let ok = all_in && failed == 0 && probe_s.is_some();
    let mut out = base_json(common, "storm");
    merge(
        &mut out,
        json!({
            "clients": clients,
            "logged_in": logged_in,
            "failed": failed,
            "all_logged_in_s": all_in.then_some(round2(login_s)),
            "probe_all_s": probe_s.map(round2),
            "probe_received": received,
            "probe_expected": probe_target,
            "events": events,
            "login_time": latency_json(&h),
            "server_cpu_s": server_cpu,
            "first_error": first_error,
            "ok": ok,
        }),
    );
    Ok(Outcome { json: out, ok })
}
