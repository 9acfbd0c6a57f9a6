//! The keyed dedup decision every stage makes before processing an event,
//! and the entry a stage keeps per artifact to make it.

use crate::outcome::OutcomeStatus;
use crate::{ArtifactId, Generation};
use serde::{Deserialize, Serialize};

/// The value of a dedup-topic record (`schemas/dedup-entry.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// The artifact; also the record key.
    pub artifact_id: ArtifactId,
    /// The newest generation processed.
    pub generation: Generation,
    /// The kind of outcome emitted for it.
    pub outcome_status: OutcomeStatus,
    /// When it was processed (epoch milliseconds).
    pub processed_at: i64,
}

/// What a stage does with an incoming event, given the newest generation it
/// already processed for the same artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DedupDecision {
    /// Never processed this generation, and it is not older than one that was: process.
    Process,
    /// This generation was already processed: skip, the outcome exists.
    Duplicate,
    /// A newer generation was already processed: skip, this run is superseded.
    Stale,
}

impl DedupDecision {
    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            DedupDecision::Process => "process",
            DedupDecision::Duplicate => "duplicate",
            DedupDecision::Stale => "stale",
        }
    }
}

/// Decides on `incoming` given the newest processed generation `last`.
pub fn decide(last: Option<Generation>, incoming: Generation) -> DedupDecision {
    match last {
        None => DedupDecision::Process,
        Some(last) if incoming > last => DedupDecision::Process,
        Some(last) if incoming == last => DedupDecision::Duplicate,
        Some(_) => DedupDecision::Stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: i64) -> Generation {
        Generation::new(n).unwrap()
    }

    #[test]
    fn first_sight_is_processed() {
        assert_eq!(decide(None, g(1)), DedupDecision::Process);
        assert_eq!(decide(None, g(5)), DedupDecision::Process);
    }

    #[test]
    fn same_generation_is_a_duplicate() {
        assert_eq!(decide(Some(g(1)), g(1)), DedupDecision::Duplicate);
        assert_eq!(decide(Some(g(4)), g(4)), DedupDecision::Duplicate);
    }

    #[test]
    fn newer_generation_is_processed_older_is_stale() {
        assert_eq!(decide(Some(g(1)), g(2)), DedupDecision::Process);
        assert_eq!(decide(Some(g(2)), g(1)), DedupDecision::Stale);
    }

    #[test]
    fn the_same_event_three_times_is_processed_once() {
        let mut last = None;
        let mut processed = 0;
        for _ in 0..3 {
            if decide(last, g(1)) == DedupDecision::Process {
                processed += 1;
                last = Some(g(1));
            }
        }
        assert_eq!(processed, 1);
    }
}
