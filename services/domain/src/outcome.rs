//! What a stage did with an artifact: succeeded, skipped it, or failed.

use serde::{Deserialize, Serialize};

/// Whether trying again may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureKind {
    /// A transient condition (unreachable store, timeout); a retry may succeed.
    Retriable,
    /// The input itself is bad (corrupt, encrypted, unsupported); retrying cannot help.
    Permanent,
}

/// A stage's outcome for one artifact generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "OutcomeRecord", try_from = "OutcomeRecord")]
pub enum Outcome {
    /// The stage did its work.
    Succeeded,
    /// The stage does not apply to this artifact (e.g. parsing an image).
    Skipped {
        /// Why the stage did not apply.
        reason: String,
    },
    /// The stage could not do its work.
    Failed {
        /// Retriable or permanent.
        kind: FailureKind,
        /// What went wrong, for people.
        reason: String,
    },
}

impl Outcome {
    /// A permanent failure with a reason.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Outcome::Failed {
            kind: FailureKind::Permanent,
            reason: reason.into(),
        }
    }

    /// A retriable failure with a reason.
    pub fn retriable(reason: impl Into<String>) -> Self {
        Outcome::Failed {
            kind: FailureKind::Retriable,
            reason: reason.into(),
        }
    }

    /// A skip with a reason.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Outcome::Skipped {
            reason: reason.into(),
        }
    }

    /// Whether the next stage should run on this outcome (success or skip).
    pub fn lets_pipeline_continue(&self) -> bool {
        !matches!(self, Outcome::Failed { .. })
    }

    /// Whether this is a permanent failure.
    pub fn is_permanent_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Failed {
                kind: FailureKind::Permanent,
                ..
            }
        )
    }

    /// A short label: `succeeded`, `skipped`, `failed_retriable`, `failed_permanent`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Failed {
                kind: FailureKind::Retriable,
                ..
            } => "failed_retriable",
            Outcome::Failed {
                kind: FailureKind::Permanent,
                ..
            } => "failed_permanent",
        }
    }

    /// The reason, for skips and failures.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded => None,
            Outcome::Skipped { reason } | Outcome::Failed { reason, .. } => Some(reason),
        }
    }

    /// A total order used to pick one outcome deterministically when two
    /// differ for the same stage and generation: permanent failure wins, then
    /// success, then skip, then retriable failure.
    pub(crate) fn precedence(&self) -> u8 {
        match self {
            Outcome::Failed {
                kind: FailureKind::Retriable,
                ..
            } => 0,
            Outcome::Skipped { .. } => 1,
            Outcome::Succeeded => 2,
            Outcome::Failed {
                kind: FailureKind::Permanent,
                ..
            } => 3,
        }
    }
}

/// The wire shape of [`Outcome`] (the `Outcome` record in every schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// SUCCEEDED, SKIPPED or FAILED.
    pub status: OutcomeStatus,
    /// Set when `status` is FAILED.
    pub failure_kind: Option<FailureKind>,
    /// Set when `status` is SKIPPED or FAILED.
    pub reason: Option<String>,
}

/// The `status` symbol of an [`OutcomeRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeStatus {
    /// See [`Outcome::Succeeded`].
    Succeeded,
    /// See [`Outcome::Skipped`].
    Skipped,
    /// See [`Outcome::Failed`].
    Failed,
}

/// An outcome record whose fields contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outcome record is inconsistent: {0}")]
pub struct InvalidOutcome(&'static str);

impl From<Outcome> for OutcomeRecord {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Succeeded => OutcomeRecord {
                status: OutcomeStatus::Succeeded,
                failure_kind: None,
                reason: None,
            },
            Outcome::Skipped { reason } => OutcomeRecord {
                status: OutcomeStatus::Skipped,
                failure_kind: None,
                reason: Some(reason),
            },
            Outcome::Failed { kind, reason } => OutcomeRecord {
                status: OutcomeStatus::Failed,
                failure_kind: Some(kind),
                reason: Some(reason),
            },
        }
    }
}

impl TryFrom<OutcomeRecord> for Outcome {
    type Error = InvalidOutcome;

    fn try_from(r: OutcomeRecord) -> Result<Self, Self::Error> {
        match (r.status, r.failure_kind) {
            (OutcomeStatus::Succeeded, None) => Ok(Outcome::Succeeded),
            (OutcomeStatus::Skipped, None) => Ok(Outcome::Skipped {
                reason: r.reason.unwrap_or_default(),
            }),
            (OutcomeStatus::Failed, Some(kind)) => Ok(Outcome::Failed {
                kind,
                reason: r.reason.unwrap_or_default(),
            }),
            (OutcomeStatus::Failed, None) => Err(InvalidOutcome("FAILED without failure_kind")),
            (_, Some(_)) => Err(InvalidOutcome("failure_kind set on a non-FAILED outcome")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_round_trips() {
        for o in [
            Outcome::Succeeded,
            Outcome::skipped("not a pdf"),
            Outcome::retriable("store timed out"),
            Outcome::permanent("encrypted"),
        ] {
            let json = serde_json::to_value(&o).unwrap();
            assert_eq!(serde_json::from_value::<Outcome>(json).unwrap(), o);
        }
    }

    #[test]
    fn wire_shape_names_fields_like_the_schema() {
        let json = serde_json::to_value(Outcome::permanent("encrypted")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "FAILED", "failure_kind": "PERMANENT", "reason": "encrypted"})
        );
    }

    #[test]
    fn inconsistent_records_are_rejected() {
        let bad = serde_json::json!({"status": "FAILED", "failure_kind": null, "reason": "x"});
        assert!(serde_json::from_value::<Outcome>(bad).is_err());
        let bad =
            serde_json::json!({"status": "SUCCEEDED", "failure_kind": "PERMANENT", "reason": null});
        assert!(serde_json::from_value::<Outcome>(bad).is_err());
    }

    #[test]
    fn labels_and_continuation() {
        assert!(Outcome::Succeeded.lets_pipeline_continue());
        assert!(Outcome::skipped("x").lets_pipeline_continue());
        assert!(!Outcome::retriable("x").lets_pipeline_continue());
        assert!(!Outcome::permanent("x").lets_pipeline_continue());
        assert_eq!(Outcome::permanent("x").label(), "failed_permanent");
        assert!(Outcome::permanent("x").is_permanent_failure());
        assert!(!Outcome::retriable("x").is_permanent_failure());
        assert_eq!(Outcome::Succeeded.reason(), None);
        assert_eq!(Outcome::skipped("why").reason(), Some("why"));
    }
}
