//! Every metric of the LLM backend, defined once: its name, help text and
//! label values. The backend records them through the functions here, and
//! [`describe`] exports their help and every counter series at zero from
//! the start, from the same definitions.

use artifact_runtime::counters::Counter;
use std::time::Duration;

const REQUESTS: Counter = Counter {
    name: "artifact_summarizer_llm_requests_total",
    help: "Requests sent to the LLM endpoint, by how they ended.",
    label: Some((
        "result",
        &[
            "ok",
            "rate_limited",
            "server_error",
            "refused",
            "timeout",
            "connection",
            "bad_answer",
        ],
    )),
};
const WAITS: Counter = Counter {
    name: "artifact_summarizer_llm_waits_total",
    help: "Waits before an LLM request: for the stage's rate limit, or for the pause an endpoint asked for with Retry-After.",
    label: Some(("cause", &["rate_limit", "retry_after"])),
};
const BUDGET_EXHAUSTED: Counter = Counter {
    name: "artifact_summarizer_llm_budget_exhausted_total",
    help: "Processing attempts stopped by their LLM budget, by what ran out.",
    label: Some(("budget", &["time", "requests"])),
};

const COUNTERS: [&Counter; 3] = [&REQUESTS, &WAITS, &BUDGET_EXHAUSTED];

const REQUEST_SECONDS: (&str, &str) = (
    "artifact_summarizer_llm_request_seconds",
    "Time of one LLM request, from sending it to the last byte of the answer.",
);
const WAIT_SECONDS: (&str, &str) = (
    "artifact_summarizer_llm_wait_seconds",
    "Time of one wait before an LLM request, by cause.",
);

/// Exports every metric's help text and every counter series at zero.
pub fn describe() {
    for c in COUNTERS {
        c.describe(&[]);
    }
    for (name, help) in [REQUEST_SECONDS, WAIT_SECONDS] {
        metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
    }
}

fn count(c: &Counter, value: &'static str) {
    c.add(&[], Some(value), 1);
}

/// One request ended with `result` (a value of [`REQUESTS`]) after `took`.
pub(crate) fn request(result: &'static str, took: Duration) {
    count(&REQUESTS, result);
    metrics::histogram!(REQUEST_SECONDS.0).record(took.as_secs_f64());
}

/// A request waited `took` for `cause` (`rate_limit` or `retry_after`).
pub(crate) fn waited(cause: &'static str, took: Duration) {
    count(&WAITS, cause);
    metrics::histogram!(WAIT_SECONDS.0, "cause" => cause).record(took.as_secs_f64());
}

/// An attempt ran out of `budget` (`time` or `requests`).
pub(crate) fn budget_exhausted(budget: &'static str) {
    count(&BUDGET_EXHAUSTED, budget);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_and_described_once() {
        Counter::check_all(&COUNTERS);
    }
}
