//! Retry policy: quick in-process retries with exponential backoff and full
//! jitter, then delayed retries through the stage's retry topic, then a
//! permanent failure. Retry-topic records carry the original input bytes and
//! the headers of [`artifact_kafka::headers`].

use rand::Rng;
use std::time::Duration;

/// How a stage retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// In-process attempts per delivery (1 = no in-process retry).
    pub inline_attempts: u32,
    /// Backoff before the first in-process retry; doubles each time.
    pub inline_backoff: Duration,
    /// Cap of the in-process backoff.
    pub inline_backoff_max: Duration,
    /// Deliveries in total (the first plus those through the retry topic).
    pub max_deliveries: u32,
    /// Delay before the first retry-topic delivery; doubles each time.
    pub topic_delay: Duration,
    /// Cap of the retry-topic delay.
    pub topic_delay_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            inline_attempts: 3,
            inline_backoff: Duration::from_millis(100),
            inline_backoff_max: Duration::from_secs(2),
            max_deliveries: 4,
            topic_delay: Duration::from_secs(5),
            topic_delay_max: Duration::from_secs(300),
        }
    }
}

/// Exponential backoff with full jitter: a random duration in
/// `[0, min(max, base * 2^(n-1))]` for the n-th retry (n ≥ 1).
pub fn jittered(base: Duration, max: Duration, n: u32) -> Duration {
    let ceiling = exponential(base, max, n);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::rng().random_range(ms / 2..=ms)
    })
}

/// `min(max, base * 2^(n-1))` for n ≥ 1.
pub fn exponential(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

impl RetryPolicy {
    /// Delay before retry-topic delivery number `delivery` (2 = first retry).
    pub fn topic_delay_for(&self, delivery: u32) -> Duration {
        exponential(
            self.topic_delay,
            self.topic_delay_max,
            delivery.saturating_sub(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_and_caps() {
        let b = Duration::from_millis(100);
        let m = Duration::from_millis(1000);
        assert_eq!(exponential(b, m, 1), b);
        assert_eq!(exponential(b, m, 2), Duration::from_millis(200));
        assert_eq!(exponential(b, m, 4), Duration::from_millis(800));
        assert_eq!(exponential(b, m, 5), m);
        assert_eq!(exponential(b, m, 60), m);
    }

    #[test]
    fn jitter_stays_within_half_to_full_ceiling() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(10);
        for n in 1..8 {
            let ceiling = exponential(b, m, n);
            for _ in 0..50 {
                let d = jittered(b, m, n);
                assert!(d <= ceiling && d >= ceiling / 2, "{d:?} vs {ceiling:?}");
            }
        }
    }

    #[test]
    fn topic_delays_grow_per_delivery() {
        let p = RetryPolicy::default();
        assert_eq!(p.topic_delay_for(2), Duration::from_secs(5));
        assert_eq!(p.topic_delay_for(3), Duration::from_secs(10));
    }
}
