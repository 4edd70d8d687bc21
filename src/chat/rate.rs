//! A token bucket: the per-socket rate limit for messages and typing notices.

use tokio::time::{Duration, Instant};

/// Allows `burst` events at once, refilled at `per_second`. Uses tokio's clock so that tests can
/// drive it with `tokio::time::pause()`.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: f64, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_second: per_second.max(0.0),
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one. Returns false when the caller is over its rate.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely: its owner has been quiet for long enough that
    /// forgetting it changes nothing.
    pub fn is_full(&self) -> bool {
        let elapsed = Instant::now().saturating_duration_since(self.last);
        self.tokens + elapsed.as_secs_f64() * self.per_second >= self.capacity
    }

    /// How long until one token is available again (for the client's error message).
    pub fn retry_after(&self) -> Duration {
        if self.tokens >= 1.0 || self.per_second == 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let mut bucket = TokenBucket::new(2.0, 3);
        assert!(bucket.try_take() && bucket.try_take() && bucket.try_take());
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.try_take());
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_secs(60)).await;
        // Refill stops at the burst size.
        assert!(bucket.try_take() && bucket.try_take() && bucket.try_take());
        assert!(!bucket.try_take());
    }
}
