//! What the read model knows besides outcomes: a stage's delayed retries
//! (one per failed delivery, from its retry topic), the artifact's dead
//! letters, and a bounded summary of its earlier generations. Each merges
//! by a fixed precedence, so the fold stays order-insensitive.

use crate::status::{ArtifactState, StatusView};
use crate::{ArtifactId, Generation, Stage};
use serde::{Deserialize, Serialize};

/// Earlier generations kept in a status snapshot, newest first.
pub const HISTORY_MAX: usize = 10;

/// Dead letters linked in a status snapshot, newest first.
pub const DEAD_LETTERS_MAX: usize = 10;

/// A delivery of a stage's input that failed retriably and was put on the
/// stage's retry topic for a later one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryScheduled {
    /// The artifact.
    pub artifact_id: ArtifactId,
    /// Its generation.
    pub generation: Generation,
    /// The stage that will retry.
    pub stage: Stage,
    /// The delivery the retry will be (2 for the first retry).
    pub delivery: u32,
    /// The error of the delivery before.
    pub error: String,
    /// Not before this time (epoch ms).
    pub not_before: i64,
    /// When it was scheduled (epoch ms).
    pub at: i64,
}

/// The newest retry of a stage known for a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retry {
    pub delivery: u32,
    pub error: String,
    pub not_before: i64,
    pub at: i64,
}

impl Retry {
    /// Precedence among two retries of one stage and generation: the later
    /// delivery, then a total tie-break.
    pub(crate) fn rank(&self) -> (u32, i64, i64, &str) {
        (self.delivery, self.not_before, self.at, &self.error)
    }
}

/// Where one of the artifact's dead letters is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The stage that wrote it.
    pub stage: Stage,
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why the stage could not process the record.
    pub error: String,
    /// When it was written (epoch ms).
    pub at: i64,
}

/// How an earlier generation of the artifact ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationSummary {
    /// The generation.
    pub generation: Generation,
    /// Its last state known (not final if a newer generation began first).
    pub state: ArtifactState,
    /// The stage that failed permanently, if any.
    pub failed_stage: Option<Stage>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// `extractive` or `llm:<model>`, if it summarized.
    pub summary_method: Option<String>,
    /// When it was created (epoch ms).
    pub created_at: Option<i64>,
    /// The latest timestamp of its events (epoch ms).
    pub updated_at: i64,
}

impl GenerationSummary {
    /// The summary of a snapshot's generation.
    pub fn of(v: &StatusView) -> Self {
        GenerationSummary {
            generation: v.generation,
            state: v.state,
            failed_stage: v.failed_stage,
            failure_reason: v.failure_reason.clone(),
            summary_method: v.summary_method.clone(),
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }

    /// Precedence among two summaries of one generation: a final state,
    /// then the later, then a total tie-break.
    fn rank(&self) -> (bool, i64, String) {
        (
            self.state.is_terminal(),
            self.updated_at,
            format!("{self:?}"),
        )
    }
}

/// `into` with `more` merged in: one summary per generation (the higher
/// ranked), newest first, at most [`HISTORY_MAX`].
pub(crate) fn merge_history(into: &mut Vec<GenerationSummary>, more: &[GenerationSummary]) {
    for s in more {
        match into.iter_mut().find(|o| o.generation == s.generation) {
            Some(old) if s.rank() > old.rank() => *old = s.clone(),
            Some(_) => {}
            None => into.push(s.clone()),
        }
    }
    into.sort_by_key(|s| std::cmp::Reverse(s.generation));
    into.truncate(HISTORY_MAX);
}

/// `into` with `more` merged in: each letter once, newest first, at most
/// [`DEAD_LETTERS_MAX`].
pub(crate) fn merge_dead_letters(into: &mut Vec<DeadLetter>, more: &[DeadLetter]) {
    for d in more {
        if !into
            .iter()
            .any(|o| (&o.topic, o.partition, o.offset) == (&d.topic, d.partition, d.offset))
        {
            into.push(d.clone());
        }
    }
    into.sort_by(|a, b| {
        (b.at, &b.topic, b.partition, b.offset).cmp(&(a.at, &a.topic, a.partition, a.offset))
    });
    into.truncate(DEAD_LETTERS_MAX);
}
