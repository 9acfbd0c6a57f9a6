//! Every metric the API exports, defined once: its name, help text and
//! labels. The handlers, the projector and the read model record them
//! through the functions here, and [`describe`] exports their help and every
//! counter series at zero from the start, from the same definitions (a
//! series that appears with its first increment has no earlier sample for a
//! rate or an alert's `increase()` to compare with).

/// A counter and the values of its one label, if it has one.
struct Counter {
    name: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static [&'static str])>,
}

const UPLOADS: Counter = Counter {
    name: "artifact_api_uploads_total",
    help: "Uploads by outcome: accepted; too_large; failed (nothing kept); unpublished (stored, its event not published).",
    label: Some((
        "outcome",
        &["accepted", "too_large", "failed", "unpublished"],
    )),
};
const REFUSED: Counter = Counter {
    name: "artifact_api_requests_refused_total",
    help: "Requests refused to bound the API: over the per-token rate, uploads over the concurrency limit, uploads past their deadline or idle too long.",
    label: Some(("reason", &["rate_limited", "busy", "deadline", "idle_body"])),
};
const PROJECTOR_EVENTS: Counter = Counter {
    name: "artifact_api_projector_events_total",
    help: "Events the projector read and decoded.",
    label: None,
};
const LATE_EVENTS: Counter = Counter {
    name: "artifact_api_projector_late_events_total",
    help: "Events written since the projector started for a generation already settled: skipped, not folded.",
    label: None,
};
const UNREADABLE_EVENTS: Counter = Counter {
    name: "artifact_api_projector_skipped_events_total",
    help: "Records the projector skipped: undecodable, or from a topic that carries no pipeline event.",
    label: None,
};
const SNAPSHOTS: Counter = Counter {
    name: "artifact_api_status_snapshots_total",
    help: "Status snapshots the projector wrote.",
    label: None,
};
const SNAPSHOT_FAILURES: Counter = Counter {
    name: "artifact_api_status_snapshot_failures_total",
    help: "Status snapshots that were not delivered (each is written again).",
    label: None,
};

const WEBHOOK_DELIVERIES: Counter = Counter {
    name: "artifact_api_webhook_deliveries_total",
    help: "Webhook deliveries by outcome: delivered (answered 2xx); failed (every attempt failed, given up); refused (the URL or its address is not allowed).",
    label: Some(("outcome", &["delivered", "failed", "refused"])),
};

const COUNTERS: [&Counter; 8] = [
    &UPLOADS,
    &REFUSED,
    &PROJECTOR_EVENTS,
    &LATE_EVENTS,
    &UNREADABLE_EVENTS,
    &SNAPSHOTS,
    &SNAPSHOT_FAILURES,
    &WEBHOOK_DELIVERIES,
];

const FOLDS: (&str, &str) = (
    "artifact_api_projector_folds",
    "Artifacts the projector holds a fold for.",
);
const SETTLED: (&str, &str) = (
    "artifact_api_projector_settled",
    "Settled generations the projector holds until the read model shows them.",
);
const FILE_BYTES: (&str, &str) = (
    "artifact_api_read_model_file_bytes",
    "Bytes of the read model's file.",
);
const IN_FLIGHT: (&str, &str) = (
    "artifact_api_read_model_in_flight",
    "Artifacts whose snapshot the read model holds in memory (not final).",
);
const GAUGES: [(&str, &str); 4] = [FOLDS, SETTLED, FILE_BYTES, IN_FLIGHT];

const END_TO_END_SECONDS: (&str, &str) = (
    "artifact_pipeline_end_to_end_seconds",
    "Time from an artifact's creation to its completed summary, seen by the projector.",
);

const WEBHOOK_REQUEST_SECONDS: (&str, &str) = (
    "artifact_api_webhook_request_seconds",
    "Time a webhook receiver took to answer a delivery attempt.",
);

/// Exports every metric's help text, every counter series at zero and
/// every gauge at zero.
pub fn describe() {
    for c in COUNTERS {
        metrics::describe_counter!(c.name, c.help);
        match c.label {
            Some((key, values)) => {
                for value in values {
                    metrics::counter!(c.name, key => *value).absolute(0);
                }
            }
            None => metrics::counter!(c.name).absolute(0),
        }
    }
    for (name, help) in GAUGES {
        metrics::describe_gauge!(name, help);
        metrics::gauge!(name).set(0.0);
    }
    for (name, help) in [END_TO_END_SECONDS, WEBHOOK_REQUEST_SECONDS] {
        metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
    }
}

fn count(c: &Counter, value: Option<&'static str>, n: u64) {
    match (c.label, value) {
        (Some((key, values)), Some(v)) => {
            debug_assert!(values.contains(&v), "{} has no {key}={v}", c.name);
            metrics::counter!(c.name, key => v).increment(n);
        }
        _ => metrics::counter!(c.name).increment(n),
    }
}

/// How an upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Stored and published.
    Accepted,
    /// Larger than `MAX_UPLOAD_BYTES`.
    TooLarge,
    /// Not stored.
    Failed,
    /// Stored, its event not published.
    Unpublished,
}

/// An upload ended with `outcome`.
pub fn upload(outcome: UploadOutcome) {
    let value = match outcome {
        UploadOutcome::Accepted => "accepted",
        UploadOutcome::TooLarge => "too_large",
        UploadOutcome::Failed => "failed",
        UploadOutcome::Unpublished => "unpublished",
    };
    count(&UPLOADS, Some(value), 1);
}

/// Why a request was refused to keep the API within its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over its token's rate (429).
    RateLimited,
    /// An upload over the concurrency limit (503).
    Busy,
    /// An upload past its total deadline (408).
    Deadline,
    /// An upload body idle past its timeout (408).
    IdleBody,
}

/// A request was refused for `why`.
pub fn refused(why: Refusal) {
    let value = match why {
        Refusal::RateLimited => "rate_limited",
        Refusal::Busy => "busy",
        Refusal::Deadline => "deadline",
        Refusal::IdleBody => "idle_body",
    };
    count(&REFUSED, Some(value), 1);
}

/// The projector decoded an event.
pub fn projector_event() {
    count(&PROJECTOR_EVENTS, None, 1);
}

/// The projector skipped an event of a settled generation written since it
/// started.
pub fn late_event() {
    count(&LATE_EVENTS, None, 1);
}

/// The projector skipped a record it cannot read as an event.
pub fn skipped_event() {
    count(&UNREADABLE_EVENTS, None, 1);
}

/// The projector wrote a snapshot.
pub fn snapshot_written() {
    count(&SNAPSHOTS, None, 1);
}

/// A snapshot was not delivered.
pub fn snapshot_failed() {
    count(&SNAPSHOT_FAILURES, None, 1);
}

/// What the projector holds now.
pub fn projection(folds: usize, settled: usize) {
    metrics::gauge!(FOLDS.0).set(folds as f64);
    metrics::gauge!(SETTLED.0).set(settled as f64);
}

/// What the read model holds now.
pub fn read_model(file_bytes: u64, in_flight: usize) {
    metrics::gauge!(FILE_BYTES.0).set(file_bytes as f64);
    metrics::gauge!(IN_FLIGHT.0).set(in_flight as f64);
}

/// An artifact completed `secs` after its creation.
pub fn end_to_end(secs: f64) {
    metrics::histogram!(END_TO_END_SECONDS.0).record(secs);
}

/// How a webhook delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Answered 2xx.
    Delivered,
    /// Given up after its attempts.
    Failed,
    /// Not allowed by the URL policy.
    Refused,
}

/// A webhook delivery ended with `outcome`.
pub fn webhook_delivery(outcome: WebhookOutcome) {
    let value = match outcome {
        WebhookOutcome::Delivered => "delivered",
        WebhookOutcome::Failed => "failed",
        WebhookOutcome::Refused => "refused",
    };
    count(&WEBHOOK_DELIVERIES, Some(value), 1);
}

/// A webhook receiver answered after `took`.
pub fn webhook_request(took: std::time::Duration) {
    metrics::histogram!(WEBHOOK_REQUEST_SECONDS.0).record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_and_described_once() {
        let mut names: Vec<&str> = COUNTERS.iter().map(|c| c.name).collect();
        names.extend(GAUGES.iter().map(|(n, _)| *n));
        names.push(END_TO_END_SECONDS.0);
        names.push(WEBHOOK_REQUEST_SECONDS.0);
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "a metric is defined twice");
        for c in COUNTERS {
            assert!(c.name.ends_with("_total"), "{}", c.name);
            assert!(!c.help.is_empty(), "{} has no help", c.name);
        }
        assert!(GAUGES.iter().all(|(_, help)| !help.is_empty()));
    }
}
