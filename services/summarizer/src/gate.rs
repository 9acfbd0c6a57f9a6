//! The gate every LLM request of the process passes: a rate limit shared by
//! all the records the stage processes at once (`LLM_RATE_PER_SECOND`, per
//! replica), and the pause an endpoint asks for with `Retry-After`, which
//! holds every record too: the endpoint limits the key, not one record.
//! A wait that would end past the attempt's deadline is not begun.

use crate::budget::AttemptBudget;
use crate::llm_metrics;
use artifact_runtime::stage::StageError;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Longest pause taken from a `Retry-After`: a longer one (a daily quota,
/// or a bogus date) would fail every record without a request for that
/// long; past it the stage asks again and is told again.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// The rate limit and the endpoint's pause.
pub(crate) struct RequestGate {
    limiter: DefaultDirectRateLimiter,
    rate_per_second: f64,
    pause_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RequestGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestGate")
            .field("rate_per_second", &self.rate_per_second)
            .field("pause_until", &self.pause_until)
            .finish_non_exhaustive()
    }
}

/// The limiter's burst: one second's worth of requests, at least one.
pub fn burst(rate_per_second: f64) -> u32 {
    (rate_per_second.floor() as u32).max(1)
}

impl RequestGate {
    /// A gate letting `rate_per_second` requests through on average (more
    /// than 0, validated), in bursts of up to one second's worth.
    pub(crate) fn new(rate_per_second: f64) -> Result<Self, String> {
        let period = Duration::try_from_secs_f64(1.0 / rate_per_second)
            .ok()
            .filter(|p| !p.is_zero());
        let quota = period
            .and_then(Quota::with_period)
            .ok_or_else(|| format!("LLM_RATE_PER_SECOND={rate_per_second} is not a usable rate"))?
            .allow_burst(NonZeroU32::new(burst(rate_per_second)).expect("at least 1"));
        Ok(RequestGate {
            limiter: RateLimiter::direct(quota),
            rate_per_second,
            pause_until: Mutex::new(None),
        })
    }

    /// Waits until a request may go: past the endpoint's pause, then within
    /// the rate. Fails at once when that would be past `budget`'s deadline.
    pub(crate) async fn admit(&self, budget: &AttemptBudget) -> Result<(), StageError> {
        loop {
            let now = Instant::now();
            let paused = (*self.pause_until.lock().expect("not poisoned")).filter(|&u| u > now);
            if let Some(until) = paused {
                if until > budget.deadline() {
                    return Err(budget.out_of_time(&format!(
                        "ends before the pause the LLM endpoint asked for (Retry-After), {} ms from now",
                        (until - now).as_millis()
                    )));
                }
                tokio::time::sleep_until(until.into()).await;
                llm_metrics::waited("retry_after", until - now);
                continue;
            }
            let Err(not_until) = self.limiter.check() else {
                return Ok(());
            };
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            if now + wait > budget.deadline() {
                return Err(budget.out_of_time(&format!(
                    "ends before the stage's rate limit lets a request go (LLM_RATE_PER_SECOND={}, \
                     shared by the records processed at once)",
                    self.rate_per_second
                )));
            }
            tokio::time::sleep(wait).await;
            llm_metrics::waited("rate_limit", wait);
        }
    }

    /// Holds every request until `now + wait` (at most [`MAX_PAUSE`]),
    /// unless a later pause is already set; returns the end of the pause.
    pub(crate) fn pause(&self, wait: Duration) -> Instant {
        let until = Instant::now() + wait.min(MAX_PAUSE);
        let mut pause = self.pause_until.lock().expect("not poisoned");
        let until = pause.map_or(until, |p| p.max(until));
        *pause = Some(until);
        until
    }
}

/// The wait a `Retry-After` value asks for: delay-seconds (a fraction is
/// taken too), or an HTTP-date, which is no wait once past. `None` when it
/// is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = value.parse().ok()?;
        return Duration::try_from_secs_f64(secs.min(MAX_PAUSE.as_secs_f64())).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after("999999999999", now), Some(MAX_PAUSE));
        let in_a_minute = httpdate::fmt_http_date(now + Duration::from_secs(60));
        assert_eq!(
            retry_after(&in_a_minute, now),
            Some(Duration::from_secs(60))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(60));
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO));
        for bad in ["", "-1", "soon", "1e3", "Tue, 99 Foo 2020"] {
            assert_eq!(retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn burst_is_a_seconds_worth() {
        assert_eq!(burst(0.2), 1);
        assert_eq!(burst(1.0), 1);
        assert_eq!(burst(5.5), 5);
        assert!(RequestGate::new(0.001).is_ok());
        assert!(RequestGate::new(1e12).is_err());
    }

    #[test]
    fn a_pause_keeps_the_latest_end() {
        let gate = RequestGate::new(1.0).unwrap();
        let long = gate.pause(Duration::from_secs(30));
        let short = gate.pause(Duration::from_secs(1));
        assert_eq!(short, long);
        assert!(gate.pause(Duration::from_secs(86_400)) <= Instant::now() + MAX_PAUSE);
    }
}
