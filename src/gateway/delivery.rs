//! Delivery of messages a store published (in id order), a single instance's duties (ending grace
//! periods, delivering what the store stored), and what this instance's sockets hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banter_engine::socketio::{Namespace, Packet};

use super::ChatContext;
use super::conn::Conn;
use super::protocol::outbound;
use crate::chat::StoredMessage;
use crate::store::{Committed, CommittedStream};

/// How often grace periods are checked: often enough that "left" comes within a small fraction of
/// the grace period after it ends, and never more than twice a second.
pub fn reap_interval(grace: Duration) -> Duration {
    (grace / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// A single instance's duties, for as long as it runs: end grace periods, and deliver the
/// messages that the store stored, in the order it stored them.
pub async fn local_forever(
    ctx: ChatContext,
    ns: Arc<Namespace>,
    committed: Option<CommittedStream>,
) {
    let every = reap_interval(ctx.settings.reconnect_grace);
    let reap = async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            super::reap(&ctx).await;
        }
    };
    match committed {
        Some(committed) => {
            tokio::join!(reap, deliver_committed(ns, committed));
        }
        None => reap.await,
    }
}

/// The delivery task of a single instance: each stored message goes to this instance's sockets
/// in its room (except the sender), group after group, so every client receives a room's
/// messages in id order. The sender's ack comes from its handler once the store has the message
/// (with SQLite, after the commit). One task broadcasting back to back, rather than each
/// sender's handler, also lets each socket's writes gather several messages under load.
///
/// Everything stored by the time the task looks is delivered together: each socket is sent its
/// share of a room's messages at once, which on a WebSocket is one write. At a low rate that is
/// one message per write, as soon as it is stored; when the rate outgrows what one write per
/// message can carry, messages gather while the previous ones are written, and each write
/// carries more of them.
async fn deliver_committed(ns: Arc<Namespace>, mut committed: CommittedStream) {
    let mut batch: Vec<Committed> = Vec::new();
    let mut pacer = Pacer::default();
    loop {
        let Some(group) = pacer.wait(committed.recv()).await else {
            break;
        };
        batch.extend(group);
        while batch.len() < MAX_BATCH
            && let Ok(group) = committed.try_recv()
        {
            batch.extend(group);
        }
        pacer.round(batch.len(), || {
            for chunk in batch.chunks(MAX_BATCH) {
                deliver_batch(&ns, chunk);
            }
        });
        batch.clear();
        if batch.capacity() > MAX_BATCH * 4 {
            batch = Vec::new();
        }
    }
}

/// Paces a delivery task under load. A write costs nearly the same for one frame as for several,
/// so when the task spends most of its time writing, the next round waits as long as the last
/// one took (at most [`PACE_MAX`]) and the messages stored meanwhile share its writes: fewer
/// writes, and less CPU, per delivery, for at most one round's time of latency. "Most of its
/// time" is the share of time spent in rounds of writes, smoothed over the last rounds, above
/// [`PACE_LOAD`]: a task near saturation, which would soon fall behind. A few messages that
/// happen to come close together at a lower rate do not make it wait (it would add latency and
/// save nothing); short rounds (a small room) never wait.
#[derive(Default)]
pub(super) struct Pacer {
    /// How long the task waited for the last round's messages (not counting its own rest).
    idle: Duration,
    /// How long the last round of writes took.
    busy: Duration,
    /// Whether the last round carried all it could ([`MAX_BATCH`]): messages are already
    /// waiting, a rest would only delay them (and, repeated, halve the rate it catches up at).
    full: bool,
    /// The share of its time the task spent writing, smoothed over about [`PACE_ROUNDS`] rounds.
    /// While it rests, messages pile up and it waits for none: a task that paces keeps pacing
    /// until the messages stop coming faster than it writes them.
    load: f64,
}

/// Rounds shorter than this never make the next one wait.
const PACE_FROM: Duration = Duration::from_micros(500);
/// The longest a round waits for the previous one.
const PACE_MAX: Duration = Duration::from_millis(5);
/// The smoothed share of time spent writing above which the task paces.
const PACE_LOAD: f64 = 0.8;
/// Rounds over which that share is smoothed (an exponential moving average).
const PACE_ROUNDS: f64 = 8.0;

impl Pacer {
    /// Waits for the next messages: first the rest that a busy task calls for (see [`Pacer`]),
    /// then for `next` itself, timing that wait.
    pub(super) async fn wait<T>(&mut self, next: impl Future<Output = T>) -> T {
        if let Some(rest) = self.rest() {
            tokio::time::sleep(rest).await;
        }
        let waiting = Instant::now();
        let next = next.await;
        self.idle = waiting.elapsed();
        next
    }

    /// How long the next round waits before it looks for messages, if at all.
    fn rest(&self) -> Option<Duration> {
        (!self.full && self.busy >= PACE_FROM && self.load > PACE_LOAD)
            .then(|| self.busy.min(PACE_MAX))
    }

    /// Runs one round of writes of `messages` messages, timing it. A full round (all a round
    /// may carry) makes the next one go at once: the task is behind, and catches up at its
    /// full rate.
    pub(super) fn round(&mut self, messages: usize, writes: impl FnOnce()) {
        let started = Instant::now();
        writes();
        self.full = messages >= MAX_BATCH;
        self.ended(started.elapsed());
    }

    /// Accounts for a round of writes that took `busy`.
    fn ended(&mut self, busy: Duration) {
        self.busy = busy;
        let total = (busy + self.idle).as_secs_f64();
        if total > 0.0 {
            let share = busy.as_secs_f64() / total;
            self.load += (share - self.load) / PACE_ROUNDS;
        }
    }
}

/// Messages delivered together at most: what one write to a socket may carry (the engine
/// writes up to 64 frames at once).
pub(super) const MAX_BATCH: usize = 32;

/// Delivers stored messages, in order, to this instance's sockets in their rooms, each socket
/// its share at once (not its own messages).
pub(super) fn deliver_batch(ns: &Arc<Namespace>, batch: &[Committed]) {
    let mut rest = batch;
    while let Some(first) = rest.first() {
        let same_room = rest.iter().take_while(|c| c.room == first.room).count();
        let (run, after) = rest.split_at(same_room);
        rest = after;
        if let [one] = run {
            deliver_published(ns, &one.room, &one.sender, &one.message);
            continue;
        }
        let packets: Vec<(&str, Packet)> = run
            .iter()
            .filter_map(|c| match ns.prepare(outbound::NEW_MESSAGE, &c.message) {
                Ok(packet) => Some((c.sender.as_str(), packet)),
                Err(err) => {
                    tracing::warn!(%err, "could not deliver a published message");
                    None
                }
            })
            .collect();
        let mut share: Vec<&Packet> = Vec::with_capacity(packets.len());
        for socket in ns.broadcast().local().to(first.room.as_str()).sockets() {
            let id = socket.id();
            share.clear();
            share.extend(
                packets
                    .iter()
                    .filter(|(sender, _)| *sender != id.as_str())
                    .map(|(_, packet)| packet),
            );
            // A socket that is gone or too slow is being closed; the others carry on.
            let _ = socket.send_packets(&share);
        }
    }
}

/// Delivers a message that the store published, to this instance's sockets in the room except
/// the sender. Called in the order the store published, which is id order.
pub fn deliver_published(ns: &Arc<Namespace>, room: &str, sender: &str, message: &StoredMessage) {
    let to = ns.broadcast().local().to(room).except(sender);
    if let Err(err) = to.emit(outbound::NEW_MESSAGE, message) {
        tracing::warn!(%err, "could not deliver a published message");
    }
}

/// A person held by one of this instance's sockets.
pub struct LocalMember {
    pub conn: String,
    pub room: &'static str,
    pub username: String,
    pub session: String,
}

/// The people this instance's sockets hold, to put back into a store that lost them.
pub fn local_members(ns: &Arc<Namespace>) -> Vec<LocalMember> {
    ns.sockets()
        .into_iter()
        .filter_map(|socket| {
            let conn = socket.data::<Arc<Conn>>()?;
            let member = conn.member()?;
            Some(LocalMember {
                conn: socket.id().to_string(),
                room: member.room,
                username: member.username.to_string(),
                session: member.session.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` rounds of writes taking `busy_us`, each after waiting `idle_us` for its messages.
    fn rounds(pacer: &mut Pacer, n: usize, busy_us: u64, idle_us: u64) {
        for _ in 0..n {
            pacer.idle = Duration::from_micros(idle_us);
            pacer.ended(Duration::from_micros(busy_us));
        }
    }

    #[test]
    fn a_task_that_ends_its_rounds_well_before_the_next_message_never_waits() {
        // 100 messages/s to 1,000 sockets at 4 µs a write: 4 ms of writes, 6 ms of waiting.
        let mut pacer = Pacer::default();
        assert_eq!(pacer.rest(), None, "the first round has nothing to go by");
        rounds(&mut pacer, 100, 4_000, 6_000);
        assert_eq!(pacer.rest(), None);
    }

    #[test]
    fn messages_that_happen_to_come_together_at_a_moderate_rate_make_nothing_wait() {
        // Half the time writing, then two messages back to back: the last round had no wait at
        // all, but the task is far from saturated.
        let mut pacer = Pacer::default();
        rounds(&mut pacer, 100, 3_400, 3_400);
        rounds(&mut pacer, 2, 3_400, 0);
        assert_eq!(pacer.rest(), None);
        // Rounds alternating between back to back and a long wait: still not saturated.
        for _ in 0..50 {
            rounds(&mut pacer, 1, 3_400, 0);
            rounds(&mut pacer, 1, 3_400, 8_000);
        }
        assert_eq!(pacer.rest(), None);
    }

    #[test]
    fn a_saturated_task_rests_as_long_as_its_last_round_took_until_the_load_falls() {
        let mut pacer = Pacer::default();
        rounds(&mut pacer, 30, 3_000, 300);
        assert_eq!(pacer.rest(), Some(Duration::from_millis(3)));
        // Resting, it finds messages waiting each time: it keeps pacing.
        rounds(&mut pacer, 30, 2_500, 0);
        assert_eq!(pacer.rest(), Some(Duration::from_micros(2_500)));
        // The load falls: a few rounds later it no longer waits.
        rounds(&mut pacer, 10, 2_500, 5_000);
        assert_eq!(pacer.rest(), None);
    }

    #[test]
    fn short_rounds_never_wait_and_long_ones_wait_at_most_pace_max() {
        let mut pacer = Pacer::default();
        rounds(&mut pacer, 30, 400, 0);
        assert_eq!(pacer.rest(), None);
        rounds(&mut pacer, 30, 60_000, 0);
        assert_eq!(pacer.rest(), Some(PACE_MAX));
    }

    #[test]
    fn a_task_behind_by_a_full_round_catches_up_without_resting() {
        let mut pacer = Pacer::default();
        rounds(&mut pacer, 30, 3_000, 0);
        assert_eq!(pacer.rest(), Some(Duration::from_millis(3)));
        pacer.full = true;
        assert_eq!(pacer.rest(), None);
    }
}
