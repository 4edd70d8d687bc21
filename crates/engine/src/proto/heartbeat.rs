//! The Engine.IO v4 heartbeat, as a state machine over time: the server pings `ping_interval`
//! after the session opens and after each pong; a client that does not answer within
//! `ping_timeout` is gone.

use std::time::{Duration, Instant};

/// What the heartbeat asks for when its deadline comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send a ping now.
    Ping,
    /// The client did not answer the last ping in time: close the session ("ping timeout").
    TimedOut,
    /// The deadline has not come yet (a timer fired early, or was reset meanwhile).
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next ping goes out at this instant.
    PingAt(Instant),
    /// A ping is out; its pong must arrive by this instant.
    PongBy(Instant),
}

#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    state: State,
    /// The pong's timeout was refreshed by activity once already.
    refreshed: bool,
}

impl Heartbeat {
    /// A heartbeat for a session that opened at `now`: the first ping goes out after one
    /// interval, not at once.
    pub fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            state: State::PingAt(now + interval),
            refreshed: false,
        }
    }

    /// When `on_timer` should next be called.
    pub fn deadline(&self) -> Instant {
        match self.state {
            State::PingAt(at) | State::PongBy(at) => at,
        }
    }

    /// Advances to `now`. The pong is due `ping_timeout` after the ping was due, as in Node (a
    /// client that waits exactly `ping_interval + ping_timeout` finds the session gone); a
    /// timer that fired late still leaves the client at least half the timeout.
    pub fn on_timer(&mut self, now: Instant) -> Beat {
        match self.state {
            State::PingAt(at) if now >= at => {
                self.state = State::PongBy((at + self.timeout).max(now + self.timeout / 2));
                self.refreshed = false;
                Beat::Ping
            }
            State::PongBy(by) if now >= by => Beat::TimedOut,
            _ => Beat::Wait,
        }
    }

    /// Another packet arrived while a pong is due: the client is alive, if slow to answer. As
    /// in Node, the first such packet of a ping gives the pong a fresh timeout.
    pub fn on_activity(&mut self, now: Instant) {
        if let State::PongBy(by) = self.state
            && !self.refreshed
        {
            self.refreshed = true;
            self.state = State::PongBy(by.max(now + self.timeout));
        }
    }

    /// When the pong is due, if a ping is waiting for one.
    pub fn pong_due(&self) -> Option<Instant> {
        match self.state {
            State::PongBy(by) => Some(by),
            State::PingAt(_) => None,
        }
    }

    /// A pong arrived. One that answers no ping changes nothing.
    pub fn on_pong(&mut self, now: Instant) {
        if let State::PongBy(_) = self.state {
            self.state = State::PingAt(now + self.interval);
        }
    }

    /// Whether a ping is waiting for its pong.
    pub fn awaiting_pong(&self) -> bool {
        matches!(self.state, State::PongBy(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_after_the_interval_and_times_out_after_the_timeout() {
        let t0 = Instant::now();
        let (i, t) = (Duration::from_millis(300), Duration::from_millis(200));
        let mut hb = Heartbeat::new(t0, i, t);
        assert_eq!(hb.deadline(), t0 + i, "the first ping waits one interval");
        assert_eq!(hb.on_timer(t0 + i - Duration::from_millis(1)), Beat::Wait);
        assert_eq!(hb.on_timer(t0 + i), Beat::Ping);
        assert_eq!(hb.deadline(), t0 + i + t);
        // A pong in time: the next ping is one interval after it.
        hb.on_pong(t0 + i + Duration::from_millis(50));
        assert_eq!(hb.deadline(), t0 + i + Duration::from_millis(50) + i);
        // An unanswered ping: timed out once the timeout has passed, not before.
        let at = hb.deadline();
        assert_eq!(hb.on_timer(at), Beat::Ping);
        assert_eq!(hb.on_timer(at + t - Duration::from_millis(1)), Beat::Wait);
        assert_eq!(hb.on_timer(at + t), Beat::TimedOut);
    }

    #[test]
    fn a_late_timer_still_leaves_half_the_timeout_and_activity_refreshes_once() {
        let t0 = Instant::now();
        let (i, t) = (Duration::from_millis(300), Duration::from_millis(200));
        let mut hb = Heartbeat::new(t0, i, t);
        let late = t0 + i + Duration::from_millis(500);
        assert_eq!(hb.on_timer(late), Beat::Ping);
        assert_eq!(hb.pong_due(), Some(late + t / 2));
        hb.on_activity(late + Duration::from_millis(50));
        assert_eq!(hb.pong_due(), Some(late + Duration::from_millis(250)));
        hb.on_activity(late + Duration::from_millis(90));
        assert_eq!(
            hb.pong_due(),
            Some(late + Duration::from_millis(250)),
            "once per ping"
        );
    }

    #[test]
    fn an_unsolicited_pong_changes_nothing() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, Duration::from_secs(25), Duration::from_secs(20));
        hb.on_pong(t0 + Duration::from_secs(3));
        assert_eq!(hb.deadline(), t0 + Duration::from_secs(25));
        assert!(!hb.awaiting_pong());
    }
}
