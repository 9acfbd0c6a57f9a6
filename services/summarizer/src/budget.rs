//! One processing attempt's LLM budget: a deadline and a number of
//! requests, shared by the attempt's concurrent requests. It ends an
//! attempt inside the runner's `PROCESSING_TIMEOUT_MS` with a reason of its
//! own, and bounds what re-sends after `Retry-After` can cost. Running out
//! is a retriable failure: the runner tries the record again later.

use crate::llm_metrics;
use artifact_runtime::stage::StageError;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The limits of one attempt, from `LLM_ATTEMPT_BUDGET_MS` and
/// `LLM_ATTEMPT_MAX_REQUESTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Time from the attempt's start to its last request's end.
    pub time: Duration,
    /// Requests sent, re-sends included.
    pub requests: u32,
}

/// What is left of one attempt's budget.
#[derive(Debug)]
pub(crate) struct AttemptBudget {
    limits: BudgetLimits,
    deadline: Instant,
    sent: AtomicU32,
}

impl AttemptBudget {
    /// A budget starting now.
    pub(crate) fn start(limits: BudgetLimits) -> Self {
        AttemptBudget {
            limits,
            deadline: Instant::now() + limits.time,
            sent: AtomicU32::new(0),
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline.
    pub(crate) fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Counts one more request, or fails the attempt when its requests are
    /// spent; `last` is the previous answer, for the reason.
    pub(crate) fn take_request(&self, last: Option<&str>) -> Result<(), StageError> {
        let taken = self
            .sent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.limits.requests).then_some(n + 1)
            });
        if taken.is_ok() {
            return Ok(());
        }
        llm_metrics::budget_exhausted("requests");
        let mut reason = format!(
            "this attempt sent its {} LLM requests (LLM_ATTEMPT_MAX_REQUESTS) without finishing \
             the summary",
            self.limits.requests
        );
        if let Some(last) = last {
            reason.push_str("; the last answer: ");
            reason.push_str(last);
        }
        Err(StageError::Retriable(reason))
    }

    /// The failure when the time ran out, or would before a wait ends;
    /// `what` completes "this attempt's LLM budget …".
    pub(crate) fn out_of_time(&self, what: &str) -> StageError {
        llm_metrics::budget_exhausted("time");
        StageError::Retriable(format!(
            "this attempt's LLM budget of {} ms (LLM_ATTEMPT_BUDGET_MS) {what}",
            self.limits.time.as_millis()
        ))
    }
}

/// The most requests a text of `chunks` chunks can need without re-sends.
/// Partial summaries are at most `max_summary_chars` each and one
/// paragraph, and chunks are packed greedily, so a chunk of `chunk_chars`
/// holds at least `k = (chunk_chars + 2) / (max_summary_chars + 2)` of
/// them (2 or more, validated): `p` partials that do not fit in one request
/// make at most `⌈p / k⌉` groups, and `k` or fewer make the final request.
pub fn most_requests(chunks: usize, chunk_chars: usize, max_summary_chars: usize) -> u64 {
    if chunks <= 1 {
        return chunks as u64;
    }
    let per_group = ((chunk_chars + 2) / (max_summary_chars + 2)).max(2);
    let mut total = chunks as u64;
    let mut partials = chunks;
    while partials > per_group {
        partials = partials.div_ceil(per_group);
        total += partials as u64;
    }
    total + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_requests_follows_the_rounds() {
        assert_eq!(most_requests(0, 12_000, 600), 0);
        assert_eq!(most_requests(1, 12_000, 600), 1);
        // Two to nineteen partials of 600 fit in one chunk of 12 000.
        assert_eq!(most_requests(2, 12_000, 600), 3);
        assert_eq!(most_requests(19, 12_000, 600), 20);
        // 32 → 2 groups → final.
        assert_eq!(most_requests(32, 12_000, 600), 35);
        // Two per chunk: 8 → 4 → 2 → final.
        assert_eq!(most_requests(8, 202, 100), 15);
    }

    #[test]
    fn requests_are_counted_until_spent() {
        let budget = AttemptBudget::start(BudgetLimits {
            time: Duration::from_secs(60),
            requests: 2,
        });
        budget.take_request(None).unwrap();
        budget.take_request(None).unwrap();
        let err = budget
            .take_request(Some("429 Too Many Requests"))
            .unwrap_err();
        assert_eq!(
            err,
            StageError::Retriable(
                "this attempt sent its 2 LLM requests (LLM_ATTEMPT_MAX_REQUESTS) without \
                 finishing the summary; the last answer: 429 Too Many Requests"
                    .into()
            )
        );
        assert!(budget.left() <= Duration::from_secs(60));
    }
}
