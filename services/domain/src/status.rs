//! The read model: folding an artifact's events into its status, and the
//! artifact state machine that says which transitions are legal in order.
//!
//! The fold is order-insensitive: events arrive from several topics and may
//! come late, twice, or from a superseded generation. For one artifact the
//! fold keeps the newest generation only, and for each stage of it one event,
//! chosen by a fixed precedence, so any permutation of the same events (with
//! duplicates) folds to the same status.

use crate::attempts::{
    DeadLetter, GenerationSummary, Retry, RetryScheduled, merge_dead_letters, merge_history,
};
use crate::events::{ArtifactContext, ArtifactCreated, PipelineEvent};
use crate::{ArtifactId, Generation, Outcome, Stage};
use serde::{Deserialize, Serialize};

/// Where an artifact stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ArtifactState {
    /// Created; no stage has reported yet.
    Pending,
    /// At least one stage reported; the chain has not ended.
    InProgress,
    /// The last stage reported success or a skip.
    Completed,
    /// A stage failed permanently; later stages do not run.
    Failed,
    /// An operator cancelled the generation; stages skip its inputs.
    Cancelled,
}

impl ArtifactState {
    /// Whether no further stage outcome is expected for this generation.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ArtifactState::Completed | ArtifactState::Failed | ArtifactState::Cancelled
        )
    }
}

/// One line of an artifact's per-stage timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage.
    pub stage: Stage,
    /// What it did.
    pub outcome: Outcome,
    /// When it finished, in epoch milliseconds; for a retry still to come,
    /// when the failed delivery was put on the retry topic.
    pub processed_at: i64,
    /// Deliveries of the stage's input so far (retries included); absent
    /// in snapshots from before it was counted.
    #[serde(default)]
    pub attempts: Option<i32>,
    /// The error of the last delivery that failed retriably, if one did.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the next delivery is due (epoch ms), while a retry is pending:
    /// the outcome is then `FAILED`/`RETRIABLE` with the last error.
    #[serde(default)]
    pub next_retry_at: Option<i64>,
}

impl StageRecord {
    /// Whether this line is a retry still to come rather than an outcome.
    pub fn is_retry_pending(&self) -> bool {
        self.next_retry_at.is_some()
    }
}

/// The read-model snapshot of one artifact, as written to the status topic
/// (`schemas/artifact-status.avsc`) and served by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// The artifact.
    pub artifact_id: ArtifactId,
    /// The newest generation seen.
    pub generation: Generation,
    /// Where it stands.
    pub state: ArtifactState,
    /// The stage it waits on; `None` once final.
    pub current_stage: Option<Stage>,
    /// The stage that failed permanently, if any.
    pub failed_stage: Option<Stage>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// The newest context known (location, types, size, digest, text location).
    pub context: ArtifactContext,
    /// Page count, once pdf-parser succeeded on a PDF.
    pub page_count: Option<i32>,
    /// Word count of the extracted text.
    pub word_count: Option<i64>,
    /// The summary, once summarizer succeeded.
    pub summary: Option<String>,
    /// `extractive` or `llm:<model>`.
    pub summary_method: Option<String>,
    /// Per-stage outcomes of this generation, in stage order.
    pub timeline: Vec<StageRecord>,
    /// When this generation was created (epoch ms).
    pub created_at: Option<i64>,
    /// The latest timestamp among the folded events (epoch ms).
    pub updated_at: i64,
    /// When an operator cancelled this generation (epoch ms), if one did.
    #[serde(default)]
    pub cancelled_at: Option<i64>,
    /// When the pending retry of the current stage is due (epoch ms), if
    /// one is pending.
    #[serde(default)]
    pub next_retry_at: Option<i64>,
    /// The artifact's dead letters, any generation, newest first (at most
    /// [`crate::attempts::DEAD_LETTERS_MAX`]).
    #[serde(default)]
    pub dead_letters: Vec<DeadLetter>,
    /// Earlier generations, newest first (at most
    /// [`crate::attempts::HISTORY_MAX`]).
    #[serde(default)]
    pub history: Vec<GenerationSummary>,
}

impl ArtifactStatus {
    /// The snapshot of this status.
    pub fn view(&self) -> StatusView {
        let parse = match self.stage_event(Stage::PdfParser) {
            Some(PipelineEvent::Parsed(p)) => p.result.as_ref(),
            _ => None,
        };
        let summary = match self.stage_event(Stage::Summarizer) {
            Some(PipelineEvent::Summarized(s)) => s.result.as_ref(),
            _ => None,
        };
        let failure = self.failure();
        let timeline = self.timeline();
        StatusView {
            artifact_id: self.artifact_id,
            generation: self.generation,
            state: self.state(),
            current_stage: self.current_stage(),
            failed_stage: failure.map(|f| f.0),
            failure_reason: failure.map(|f| f.1.to_owned()),
            context: self.context().unwrap_or_default(),
            page_count: parse.and_then(|p| p.page_count),
            word_count: parse.map(|p| p.word_count),
            summary: summary.map(|s| s.summary.clone()),
            summary_method: summary.map(|s| s.method.clone()),
            next_retry_at: timeline.iter().filter_map(|r| r.next_retry_at).min(),
            timeline,
            created_at: self.created.as_ref().map(|c| c.created_at),
            updated_at: self.updated_at().unwrap_or_default(),
            cancelled_at: self.cancelled_at,
            dead_letters: self.dead_letters.clone(),
            history: self.history.clone(),
        }
    }
}

impl StatusView {
    /// Whether the snapshot's generation is over for good, told from the
    /// snapshot alone: the same answer as [`ArtifactStatus::is_settled`] on
    /// the fold it was taken from. Any event of this generation or an older
    /// one is then a duplicate of one the snapshot already reflects.
    pub fn is_settled(&self) -> bool {
        chain_settled(
            self.state,
            self.failed_stage,
            self.created_at.is_some(),
            |s| {
                self.timeline
                    .iter()
                    .any(|r| r.stage == s && !r.is_retry_pending())
            },
        )
    }
}

/// Whether a generation in `state` (failed at `failed_stage`, if failed) is
/// over for good: final, with its creation and every stage up to the one
/// that ended the chain `recorded`.
fn chain_settled(
    state: ArtifactState,
    failed_stage: Option<Stage>,
    created: bool,
    recorded: impl Fn(Stage) -> bool,
) -> bool {
    let last = match (state, failed_stage) {
        // Outcomes of a cancelled generation may still come (records in
        // flight); they are recorded in the log but change nothing here.
        (ArtifactState::Cancelled, _) => return created,
        (ArtifactState::Completed, _) => Stage::Summarizer,
        (ArtifactState::Failed, Some(stage)) => stage,
        _ => return false,
    };
    created
        && Stage::ALL
            .into_iter()
            .filter(|s| s.index() <= last.index())
            .all(recorded)
}

/// Why an event is not the legal next step for an artifact, in order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    /// The event belongs to an older generation than the artifact's.
    #[error("generation {event} is older than the artifact's generation {current}")]
    StaleGeneration {
        /// The event's generation.
        event: Generation,
        /// The artifact's generation.
        current: Generation,
    },
    /// A newer generation must start with `ArtifactCreated`.
    #[error("generation {event} starts with a {stage} outcome instead of ArtifactCreated")]
    GenerationWithoutCreation {
        /// The event's generation.
        event: Generation,
        /// The stage that reported.
        stage: Stage,
    },
    /// The same step was already recorded for this generation.
    #[error("{step} was already recorded for generation {generation}")]
    AlreadyRecorded {
        /// `created` or the stage name.
        step: String,
        /// The generation.
        generation: Generation,
    },
    /// The artifact already reached a final state in this generation.
    #[error("artifact is already {state:?}; {stage} cannot report for this generation")]
    AfterTerminal {
        /// The final state.
        state: ArtifactState,
        /// The stage that reported.
        stage: Stage,
    },
    /// The step before this one has not (successfully) happened yet.
    #[error("{stage} reported before {waiting_for} let it run")]
    OutOfOrder {
        /// The stage that reported.
        stage: Stage,
        /// `created` or the stage name it should have waited for.
        waiting_for: String,
    },
}

/// The folded status of one artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactStatus {
    artifact_id: ArtifactId,
    generation: Generation,
    created: Option<ArtifactCreated>,
    stages: [Option<PipelineEvent>; 4],
    /// When this generation was cancelled, if it was.
    cancelled_at: Option<i64>,
    /// Per stage, its newest retry of this generation.
    retries: [Option<Retry>; 4],
    /// The artifact's dead letters, any generation.
    dead_letters: Vec<DeadLetter>,
    /// Its earlier generations.
    history: Vec<GenerationSummary>,
}

impl ArtifactStatus {
    /// An empty status for an artifact at a generation.
    pub fn empty(artifact_id: ArtifactId, generation: Generation) -> Self {
        ArtifactStatus {
            artifact_id,
            generation,
            created: None,
            stages: [None, None, None, None],
            cancelled_at: None,
            retries: [None, None, None, None],
            dead_letters: Vec::new(),
            history: Vec::new(),
        }
    }

    /// Moves the fold on to a newer `generation`: what it knew of its own
    /// goes to the history, the dead letters stay.
    fn supersede(&mut self, generation: Generation) {
        let mut next = Self::empty(self.artifact_id, generation);
        next.dead_letters = std::mem::take(&mut self.dead_letters);
        next.history = std::mem::take(&mut self.history);
        if self.created.is_some()
            || self.stages.iter().any(Option::is_some)
            || self.retries.iter().any(Option::is_some)
            || self.cancelled_at.is_some()
        {
            merge_history(&mut next.history, &[GenerationSummary::of(&self.view())]);
        }
        *self = next;
    }

    /// Folds a scheduled retry in: the newest delivery per stage and
    /// generation is kept; an older generation's is ignored, a newer one
    /// moves the fold on.
    pub fn retry(&mut self, r: RetryScheduled) {
        if r.artifact_id != self.artifact_id || r.generation < self.generation {
            return;
        }
        if r.generation > self.generation {
            self.supersede(r.generation);
        }
        let new = Retry {
            delivery: r.delivery,
            error: r.error,
            not_before: r.not_before,
            at: r.at,
        };
        let slot = &mut self.retries[r.stage.index()];
        if slot.as_ref().is_none_or(|old| new.rank() > old.rank()) {
            *slot = Some(new);
        }
    }

    /// Links one of the artifact's dead letters, whatever its generation.
    pub fn dead_letter(&mut self, d: DeadLetter) {
        merge_dead_letters(&mut self.dead_letters, &[d]);
    }

    /// Takes over what only an earlier snapshot of the artifact knows: its
    /// history and dead letters, the snapshot's own generation if older
    /// than the fold's, and its retries if the same. A newer snapshot
    /// moves the fold on to its generation.
    pub fn carry_over(&mut self, previous: &StatusView) {
        if previous.artifact_id != self.artifact_id {
            return;
        }
        if previous.generation > self.generation {
            self.supersede(previous.generation);
        }
        merge_history(&mut self.history, &previous.history);
        merge_dead_letters(&mut self.dead_letters, &previous.dead_letters);
        if previous.generation < self.generation {
            merge_history(&mut self.history, &[GenerationSummary::of(previous)]);
            return;
        }
        for r in &previous.timeline {
            let Some(attempts) = r.attempts.and_then(|a| u32::try_from(a).ok()) else {
                continue;
            };
            let (delivery, not_before) = match r.next_retry_at {
                Some(t) => (attempts + 1, t),
                None if attempts > 1 => (attempts, 0),
                None => continue,
            };
            self.retry(RetryScheduled {
                artifact_id: self.artifact_id,
                generation: self.generation,
                stage: r.stage,
                delivery,
                error: r.last_error.clone().unwrap_or_default(),
                not_before,
                at: r.processed_at,
            });
        }
    }

    /// Folds a cancel of `generation` (at `at`, epoch ms) in: the fold's
    /// generation, if the same, ends `CANCELLED`; a newer one starts a
    /// cancelled fold (its events may come later); an older one changes
    /// nothing.
    pub fn cancel(&mut self, generation: Generation, at: i64) {
        if generation < self.generation {
            return;
        }
        if generation > self.generation {
            self.supersede(generation);
        }
        self.cancelled_at = Some(self.cancelled_at.map_or(at, |old| old.max(at)));
    }

    /// When this generation was cancelled, if it was.
    pub fn cancelled_at(&self) -> Option<i64> {
        self.cancelled_at
    }

    /// Folds events of one artifact, in any order. `None` when there are none.
    pub fn fold<I: IntoIterator<Item = PipelineEvent>>(events: I) -> Option<Self> {
        let mut status: Option<Self> = None;
        for event in events {
            match status.as_mut() {
                Some(s) => s.apply(event),
                None => {
                    let mut s = Self::empty(event.artifact_id(), event.generation());
                    s.apply(event);
                    status = Some(s);
                }
            }
        }
        status
    }

    /// Folds one event in. Events of another artifact are ignored; an older
    /// generation is ignored; a newer one replaces everything known.
    pub fn apply(&mut self, event: PipelineEvent) {
        if event.artifact_id() != self.artifact_id || event.generation() < self.generation {
            return;
        }
        if event.generation() > self.generation {
            self.supersede(event.generation());
        }
        match event {
            PipelineEvent::Created(c) => {
                let replace = match &self.created {
                    None => true,
                    Some(old) => created_rank(&c) > created_rank(old),
                };
                if replace {
                    self.created = Some(c);
                }
            }
            other => {
                let idx = other.stage().map(Stage::index).unwrap_or_default();
                let replace = match &self.stages[idx] {
                    None => true,
                    Some(old) => event_rank(&other) > event_rank(old),
                };
                if replace {
                    self.stages[idx] = Some(other);
                }
            }
        }
    }

    /// Checks whether `event` is the legal next step, as it would be if every
    /// event arrived in order exactly once. The fold accepts events that fail
    /// this check (they may just be early); this says what is out of place.
    pub fn check_transition(&self, event: &PipelineEvent) -> Result<(), IllegalTransition> {
        let (gen_e, gen_s) = (event.generation(), self.generation);
        if gen_e < gen_s {
            return Err(IllegalTransition::StaleGeneration {
                event: gen_e,
                current: gen_s,
            });
        }
        let fresh = gen_e > gen_s;
        let Some(stage) = event.stage() else {
            return if !fresh && self.created.is_some() {
                Err(IllegalTransition::AlreadyRecorded {
                    step: "created".into(),
                    generation: gen_e,
                })
            } else {
                Ok(())
            };
        };
        if fresh {
            return Err(IllegalTransition::GenerationWithoutCreation {
                event: gen_e,
                stage,
            });
        }
        if self.stages[stage.index()].is_some() {
            return Err(IllegalTransition::AlreadyRecorded {
                step: stage.name().into(),
                generation: gen_e,
            });
        }
        let state = self.state();
        if state.is_terminal() {
            return Err(IllegalTransition::AfterTerminal { state, stage });
        }
        let predecessor_done = match stage.previous() {
            None => self.created.is_some(),
            Some(prev) => self
                .stage_outcome(prev)
                .is_some_and(Outcome::lets_pipeline_continue),
        };
        if !predecessor_done {
            return Err(IllegalTransition::OutOfOrder {
                stage,
                waiting_for: stage
                    .previous()
                    .map_or("created".into(), |p| p.name().into()),
            });
        }
        Ok(())
    }

    /// The artifact.
    pub fn artifact_id(&self) -> ArtifactId {
        self.artifact_id
    }

    /// The newest generation seen.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The creation event of this generation, if seen.
    pub fn created(&self) -> Option<&ArtifactCreated> {
        self.created.as_ref()
    }

    /// The recorded event of a stage in this generation.
    pub fn stage_event(&self, stage: Stage) -> Option<&PipelineEvent> {
        self.stages[stage.index()].as_ref()
    }

    /// The recorded outcome of a stage in this generation.
    pub fn stage_outcome(&self, stage: Stage) -> Option<&Outcome> {
        self.stage_event(stage).and_then(PipelineEvent::outcome)
    }

    /// Where the artifact stands.
    pub fn state(&self) -> ArtifactState {
        let outcomes = || Stage::ALL.into_iter().filter_map(|s| self.stage_outcome(s));
        if self.cancelled_at.is_some() {
            ArtifactState::Cancelled
        } else if outcomes().any(Outcome::is_permanent_failure) {
            ArtifactState::Failed
        } else if self
            .stage_outcome(Stage::Summarizer)
            .is_some_and(Outcome::lets_pipeline_continue)
        {
            ArtifactState::Completed
        } else if outcomes().next().is_some() || self.retries.iter().any(Option::is_some) {
            ArtifactState::InProgress
        } else {
            ArtifactState::Pending
        }
    }

    /// The stage the artifact waits on: the first without a success or skip.
    /// `None` once the state is final.
    pub fn current_stage(&self) -> Option<Stage> {
        if self.state().is_terminal() {
            return None;
        }
        Stage::ALL.into_iter().find(|s| {
            !self
                .stage_outcome(*s)
                .is_some_and(Outcome::lets_pipeline_continue)
        })
    }

    /// Whether this generation is over for good: the state is final and the
    /// creation and every stage up to the one that ended the chain are
    /// recorded. Each step reports once per generation (stages dedup their
    /// outcomes), so any later event of this generation is a duplicate of
    /// one already folded; only a newer generation can change the status.
    pub fn is_settled(&self) -> bool {
        chain_settled(
            self.state(),
            self.failure().map(|(stage, _)| stage),
            self.created.is_some(),
            |s| self.stages[s.index()].is_some(),
        )
    }

    /// The stage that failed permanently, with its reason.
    pub fn failure(&self) -> Option<(Stage, &str)> {
        Stage::ALL
            .into_iter()
            .find_map(|s| match self.stage_outcome(s) {
                Some(o) if o.is_permanent_failure() => Some((s, o.reason().unwrap_or_default())),
                _ => None,
            })
    }

    /// The per-stage timeline of this generation, in stage order: each
    /// stage's outcome with the deliveries it took, or, while a retry is
    /// pending, its last error and when the retry is due.
    pub fn timeline(&self) -> Vec<StageRecord> {
        Stage::ALL
            .into_iter()
            .filter_map(|s| {
                let retry = self.retries[s.index()].as_ref();
                let as_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
                match self.stage_event(s).and_then(|e| Some((e, e.outcome()?))) {
                    Some((e, outcome)) => Some(StageRecord {
                        stage: s,
                        outcome: outcome.clone(),
                        processed_at: e.timestamp(),
                        attempts: Some(as_i32(retry.map_or(1, |r| r.delivery.max(1)))),
                        last_error: retry.map(|r| r.error.clone()),
                        next_retry_at: None,
                    }),
                    // A stage after a final state gets no retry line: the
                    // retry will be skipped.
                    None if self.state().is_terminal() => None,
                    None => retry.map(|r| StageRecord {
                        stage: s,
                        outcome: Outcome::retriable(r.error.clone()),
                        processed_at: r.at,
                        attempts: Some(as_i32(r.delivery.saturating_sub(1))),
                        last_error: Some(r.error.clone()),
                        next_retry_at: Some(r.not_before),
                    }),
                }
            })
            .collect()
    }

    /// The artifact's dead letters, newest first.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// Its earlier generations, newest first.
    pub fn history(&self) -> &[GenerationSummary] {
        &self.history
    }

    /// The newest context known: the latest stage's, else the creation's.
    pub fn context(&self) -> Option<ArtifactContext> {
        Stage::ALL
            .into_iter()
            .rev()
            .find_map(|s| match self.stage_event(s)? {
                PipelineEvent::MimeDetected(e) => Some(e.context.clone()),
                PipelineEvent::LocationVerified(e) => Some(e.context.clone()),
                PipelineEvent::Parsed(e) => Some(e.context.clone()),
                PipelineEvent::Summarized(e) => Some(e.context.clone()),
                PipelineEvent::Created(_) => None,
            })
            .or_else(|| self.created.as_ref().map(ArtifactContext::from))
    }

    /// The latest timestamp among the recorded events and retries.
    pub fn updated_at(&self) -> Option<i64> {
        let created = self.created.iter().map(|c| c.created_at);
        let stages = self.stages.iter().flatten().map(PipelineEvent::timestamp);
        let retries = self.retries.iter().flatten().map(|r| r.at);
        created.chain(stages).chain(retries).max()
    }

    /// Milliseconds from creation to the latest folded event, once the
    /// generation completed and its creation is known (the two can arrive
    /// in either order, from different topics).
    pub fn completion_ms(&self) -> Option<i64> {
        let created = self.created.as_ref()?.created_at;
        (self.state() == ArtifactState::Completed)
            .then(|| (self.updated_at().unwrap_or(created) - created).max(0))
    }
}

/// Precedence among two creation events of the same generation.
fn created_rank(c: &ArtifactCreated) -> (i64, String) {
    (c.created_at, format!("{c:?}"))
}

/// Precedence among two events of the same stage and generation: outcome
/// precedence, then the later one, then a total tie-break on content.
fn event_rank(e: &PipelineEvent) -> (u8, i64, String) {
    (
        e.outcome().map(Outcome::precedence).unwrap_or_default(),
        e.timestamp(),
        format!("{e:?}"),
    )
}

#[cfg(test)]
mod tests;
