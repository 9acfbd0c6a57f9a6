//! Every metric a stage exports, defined once: its name, help text and
//! labels. The runner records them through the functions here, and
//! [`describe`] exports their help and every counter series at zero from
//! the start, from the same definitions (a series that appears with its
//! first increment has no earlier sample for a rate to compare with).

use crate::counters::Counter;
use std::time::Duration;

const RECORDS_CONSUMED: Counter = Counter {
    name: "artifact_stage_records_consumed_total",
    help: "Input and retry records whose batch committed.",
    label: Some(("source", &["input", "retry"])),
};
const RECORDS_PRODUCED: Counter = Counter {
    name: "artifact_stage_records_produced_total",
    help: "Records the stage committed, by kind.",
    label: Some((
        "kind",
        &["output", "dedup", "tombstone", "erasure", "retry", "dlq"],
    )),
};
const SKIPPED: Counter = Counter {
    name: "artifact_stage_skipped_total",
    help: "Inputs not processed: a duplicate, a stale generation, a failed upstream stage, a cancelled generation, an erased artifact, a tombstone, or a carried-over outcome of a generation restarted at a later stage.",
    label: Some((
        "reason",
        &[
            "duplicate",
            "stale",
            "upstream_failed",
            "cancelled",
            "erased",
            "tombstone",
            "restarted_later",
        ],
    )),
};
const OUTCOMES: Counter = Counter {
    name: "artifact_stage_outcomes_total",
    help: "Outcomes the stage committed, by kind.",
    label: Some((
        "outcome",
        &[
            "succeeded",
            "skipped",
            "failed_retriable",
            "failed_permanent",
        ],
    )),
};
const RETRIES: Counter = Counter {
    name: "artifact_stage_retries_total",
    help: "Retries: in process, or through the retry topic.",
    label: Some(("kind", &["inline", "topic"])),
};
const DLQ_RECORDS: Counter = Counter {
    name: "artifact_stage_dlq_records_total",
    help: "Records sent to the stage's dead-letter topic.",
    label: None,
};
const DEDUP_EXPIRED: Counter = Counter {
    name: "artifact_stage_dedup_expired_total",
    help: "Dedup entries dropped after the retention.",
    label: None,
};
const BATCH_FAILURES: Counter = Counter {
    name: "artifact_stage_batch_failures_total",
    help: "Batches that did not commit and were read again.",
    label: None,
};

const COUNTERS: [&Counter; 8] = [
    &RECORDS_CONSUMED,
    &RECORDS_PRODUCED,
    &SKIPPED,
    &OUTCOMES,
    &RETRIES,
    &DLQ_RECORDS,
    &DEDUP_EXPIRED,
    &BATCH_FAILURES,
];

const RESTORING: (&str, &str) = (
    "artifact_stage_restoring_partitions",
    "Partitions whose dedup state is being restored.",
);
const RESTORE_REMAINING: (&str, &str) = (
    "artifact_stage_restore_remaining_records",
    "Records the restores under way have left to read (an estimate).",
);
const DEDUP_KEYS: (&str, &str) = (
    "artifact_stage_dedup_keys",
    "Artifacts in the stage's dedup state.",
);
const PAUSED: (&str, &str) = (
    "artifact_stage_paused",
    "1 while the stage holds its input back, by cause: operator (artifactctl stage pause) or breaker (its dependency fails).",
);
/// The gauge of consumer lag, labelled by group, topic and partition.
pub(crate) const CONSUMER_LAG: (&str, &str) = (
    "artifact_pipeline_consumer_lag",
    "Records of an assigned partition not yet handed to the stage.",
);
const PROCESSING_SECONDS: (&str, &str) = (
    "artifact_stage_processing_seconds",
    "Time of one processing attempt of one record.",
);
const BEFORE_COMMIT_SECONDS: (&str, &str) = (
    "artifact_stage_before_commit_seconds",
    "Time of the stage's before-commit step of a batch.",
);
const COMMIT_SECONDS: (&str, &str) = (
    "artifact_stage_transaction_commit_seconds",
    "Time from a batch's first record sent to its transaction committed.",
);
const RESTORE_SECONDS: (&str, &str) = (
    "artifact_stage_restore_seconds",
    "Time to restore one partition's dedup state.",
);

/// Exports every metric's help text and every counter series of `stage`
/// at zero.
pub(crate) fn describe(stage: &'static str) {
    for c in COUNTERS {
        c.describe(&[("stage", stage)]);
    }
    for (name, help) in [
        DEDUP_KEYS,
        CONSUMER_LAG,
        RESTORING,
        RESTORE_REMAINING,
        PAUSED,
    ] {
        metrics::describe_gauge!(name, help);
    }
    for cause in ["operator", "breaker"] {
        paused(stage, cause, false);
    }
    for (name, help) in [
        PROCESSING_SECONDS,
        BEFORE_COMMIT_SECONDS,
        COMMIT_SECONDS,
        RESTORE_SECONDS,
    ] {
        metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
    }
}

fn count(c: &Counter, stage: &'static str, value: Option<&'static str>, n: u64) {
    c.add(&[("stage", stage)], value, n);
}

/// Records of a committed batch, from `source` (`input` or `retry`).
pub(crate) fn consumed(stage: &'static str, source: &'static str, n: u64) {
    count(&RECORDS_CONSUMED, stage, Some(source), n);
}

/// Records of a kind a committed batch wrote; dead letters and retry
/// copies also count as such.
pub(crate) fn produced(stage: &'static str, kind: &'static str, n: u64) {
    count(&RECORDS_PRODUCED, stage, Some(kind), n);
    match kind {
        "dlq" => count(&DLQ_RECORDS, stage, None, n),
        "retry" => retried(stage, "topic", n),
        _ => {}
    }
}

/// Inputs a committed batch skipped, for `reason`.
pub(crate) fn skipped(stage: &'static str, reason: &'static str, n: u64) {
    count(&SKIPPED, stage, Some(reason), n);
}

/// Outcomes of a kind a committed batch wrote.
pub(crate) fn outcomes(stage: &'static str, outcome: &'static str, n: u64) {
    count(&OUTCOMES, stage, Some(outcome), n);
}

/// Retries of a kind (`inline` or `topic`).
pub(crate) fn retried(stage: &'static str, kind: &'static str, n: u64) {
    count(&RETRIES, stage, Some(kind), n);
}

/// Dedup entries expired by a rotation.
pub(crate) fn dedup_expired(stage: &'static str, n: u64) {
    count(&DEDUP_EXPIRED, stage, None, n);
}

/// A batch that did not commit.
pub(crate) fn batch_failed(stage: &'static str) {
    count(&BATCH_FAILURES, stage, None, 1);
}

/// The artifacts in the dedup state now.
pub(crate) fn dedup_keys(stage: &'static str, keys: usize) {
    metrics::gauge!(DEDUP_KEYS.0, "stage" => stage).set(keys as f64);
}

/// The restores under way and the records they have left.
pub(crate) fn restoring(stage: &'static str, partitions: usize, remaining: i64) {
    metrics::gauge!(RESTORING.0, "stage" => stage).set(partitions as f64);
    metrics::gauge!(RESTORE_REMAINING.0, "stage" => stage).set(remaining as f64);
}

/// Whether `stage` holds its input back for `cause`.
pub(crate) fn paused(stage: &'static str, cause: &'static str, paused: bool) {
    metrics::gauge!(PAUSED.0, "stage" => stage, "cause" => cause).set(f64::from(u8::from(paused)));
}

/// The histogram of processing attempts of `stage`.
pub(crate) fn processing_time(stage: &'static str) -> metrics::Histogram {
    metrics::histogram!(PROCESSING_SECONDS.0, "stage" => stage)
}

/// A batch's before-commit step took `took`.
pub(crate) fn before_commit_time(stage: &'static str, took: Duration) {
    metrics::histogram!(BEFORE_COMMIT_SECONDS.0, "stage" => stage).record(took.as_secs_f64());
}

/// A batch's transaction took `secs` to commit.
pub(crate) fn commit_time(stage: &'static str, secs: f64) {
    metrics::histogram!(COMMIT_SECONDS.0, "stage" => stage).record(secs);
}

/// A partition's dedup state took `secs` to restore.
pub(crate) fn restore_time(stage: &'static str, secs: f64) {
    metrics::histogram!(RESTORE_SECONDS.0, "stage" => stage).record(secs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_and_described_once() {
        Counter::check_all(&COUNTERS);
    }
}
