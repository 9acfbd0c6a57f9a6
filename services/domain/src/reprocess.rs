//! Bulk reprocess: which artifacts an operator's selector picks, whether
//! each can restart at a later stage, and the durable operation record
//! (`schemas/reprocess-operation.avsc`, in the compacted
//! `<prefix>.operations` topic keyed by operation id) whose progress the
//! executor writes back.
//!
//! Each selected artifact gets the generation after the one it had when
//! selected, fixed in the record: an executor that resumes after a crash
//! publishes the same generation again, which every stage's dedup treats
//! as a duplicate, so no artifact is started twice by one operation.

use crate::{ArtifactId, ArtifactState, Generation, Stage, StatusView};
use serde::{Deserialize, Serialize};

/// Which artifacts an operation picks: every criterion given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selector {
    /// In this state.
    pub state: Option<ArtifactState>,
    /// Failed at this stage.
    pub failed_stage: Option<Stage>,
    /// Of this detected MIME type (exactly, e.g. `application/pdf`).
    pub detected_type: Option<String>,
    /// Created at or after this time (epoch ms).
    pub created_from: Option<i64>,
    /// Created before this time (epoch ms).
    pub created_to: Option<i64>,
    /// One of these artifacts (empty: any).
    #[serde(default)]
    pub ids: Vec<ArtifactId>,
}

impl Selector {
    /// Whether no criterion is given (it would pick every artifact).
    pub fn is_empty(&self) -> bool {
        *self == Selector::default()
    }

    /// Whether the artifact's snapshot meets every criterion given.
    pub fn matches(&self, v: &StatusView) -> bool {
        let created = |f: fn(i64, i64) -> bool, bound: Option<i64>| {
            bound.is_none_or(|b| v.created_at.is_some_and(|c| f(c, b)))
        };
        self.state.is_none_or(|s| s == v.state)
            && self.failed_stage.is_none_or(|s| v.failed_stage == Some(s))
            && self
                .detected_type
                .as_ref()
                .is_none_or(|t| v.context.detected_content_type.as_ref() == Some(t))
            && created(|c, b| c >= b, self.created_from)
            && created(|c, b| c < b, self.created_to)
            && (self.ids.is_empty() || self.ids.contains(&v.artifact_id))
    }
}

/// Why the artifact's current generation cannot restart at `from`: the
/// stages before it must each have let the pipeline go on (succeeded or
/// skipped), since their outcomes are what the new generation starts
/// from. `None` when it can.
pub fn missing_output(v: &StatusView, from: Stage) -> Option<String> {
    if v.created_at.is_none() {
        return Some(format!(
            "generation {} has no ArtifactCreated in the read model",
            v.generation
        ));
    }
    Stage::ALL[..from.index()].iter().find_map(|&s| {
        match v.timeline.iter().find(|r| r.stage == s) {
            Some(r) if r.outcome.lets_pipeline_continue() => None,
            Some(_) => Some(format!(
                "{s} did not succeed in generation {}",
                v.generation
            )),
            None => Some(format!("{s} has no outcome in generation {}", v.generation)),
        }
    })
}

/// One selected artifact and the generation the operation starts for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReprocessItem {
    /// The artifact.
    pub artifact_id: ArtifactId,
    /// The new generation: the one after the artifact's when selected.
    pub generation: Generation,
}

impl ReprocessItem {
    /// Whether the new generation still needs publishing, given the
    /// artifact's generation now (`None`: no longer in the read model).
    pub fn needs_start(&self, current: Option<Generation>) -> bool {
        current.is_some_and(|g| g < self.generation)
    }

    /// Whether the new generation reached a final state (or was replaced
    /// by a newer one, or the artifact is gone), given the artifact's
    /// generation and state now.
    pub fn is_done(&self, current: Option<(Generation, ArtifactState)>) -> bool {
        match current {
            None => true,
            Some((g, state)) => {
                g > self.generation || (g == self.generation && state.is_terminal())
            }
        }
    }
}

/// The durable record of a bulk reprocess; the latest per operation id
/// holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReprocessOperation {
    /// The operation's id (UUID); also the record key.
    pub operation_id: String,
    /// What the operator asked for.
    pub selector: Selector,
    /// The stage each new generation starts at.
    pub from_stage: Stage,
    /// The selected artifacts, in id order.
    pub items: Vec<ReprocessItem>,
    /// How many of `items`, from the first, the executor went through.
    pub started: i32,
    /// Those it did not start: the artifact was gone, or its earlier
    /// outcomes were no longer in the log.
    #[serde(default)]
    pub skipped: Vec<ArtifactId>,
    /// How many new generations reached a final state.
    pub done: i32,
    /// When the operation was recorded (epoch ms).
    pub created_at: i64,
    /// When its progress was last written (epoch ms).
    pub updated_at: i64,
    /// When every started generation reached a final state (epoch ms).
    pub finished_at: Option<i64>,
}

impl ReprocessOperation {
    /// How many artifacts were selected.
    pub fn selected(&self) -> usize {
        self.items.len()
    }

    /// Whether the executor is through with it.
    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some()
    }

    /// How many items `done` says are done ([`ReprocessItem::is_done`]);
    /// skipped items do not count.
    pub fn count_done(&self, done: impl Fn(&ReprocessItem) -> bool) -> usize {
        let skipped: std::collections::HashSet<&ArtifactId> = self.skipped.iter().collect();
        self.items
            .iter()
            .filter(|i| !skipped.contains(&i.artifact_id) && done(i))
            .count()
    }

    /// Whether every item was gone through and is done or skipped.
    pub fn is_complete(&self, done: usize) -> bool {
        self.started as usize == self.items.len() && done + self.skipped.len() >= self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArtifactContext, Outcome, StageRecord};

    fn g(n: u32) -> Generation {
        Generation::new(n.into()).unwrap()
    }

    fn view(state: ArtifactState, stages: &[(Stage, Outcome)]) -> StatusView {
        StatusView {
            artifact_id: ArtifactId::new_random(),
            generation: g(1),
            state,
            current_stage: None,
            failed_stage: stages
                .iter()
                .find(|(_, o)| o.is_permanent_failure())
                .map(|(s, _)| *s),
            failure_reason: None,
            context: ArtifactContext {
                detected_content_type: Some("application/pdf".into()),
                ..ArtifactContext::default()
            },
            page_count: None,
            word_count: None,
            summary: None,
            summary_method: None,
            timeline: stages
                .iter()
                .map(|(s, o)| StageRecord {
                    stage: *s,
                    outcome: o.clone(),
                    processed_at: 5,
                    attempts: None,
                    last_error: None,
                    next_retry_at: None,
                })
                .collect(),
            created_at: Some(1_000),
            updated_at: 5,
            cancelled_at: None,
            next_retry_at: None,
            dead_letters: Vec::new(),
            history: Vec::new(),
        }
    }

    fn failed_at(stage: Stage) -> StatusView {
        let mut stages: Vec<(Stage, Outcome)> = Stage::ALL[..stage.index()]
            .iter()
            .map(|s| (*s, Outcome::Succeeded))
            .collect();
        stages.push((stage, Outcome::permanent("broken")));
        view(ArtifactState::Failed, &stages)
    }

    #[test]
    fn every_criterion_given_must_hold() {
        let v = failed_at(Stage::PdfParser);
        let all = |s: Selector| s.matches(&v);
        assert!(all(Selector {
            state: Some(ArtifactState::Failed),
            ..Selector::default()
        }));
        assert!(!all(Selector {
            state: Some(ArtifactState::Completed),
            ..Selector::default()
        }));
        assert!(all(Selector {
            state: Some(ArtifactState::Failed),
            failed_stage: Some(Stage::PdfParser),
            detected_type: Some("application/pdf".into()),
            ..Selector::default()
        }));
        assert!(!all(Selector {
            state: Some(ArtifactState::Failed),
            failed_stage: Some(Stage::Summarizer),
            ..Selector::default()
        }));
        assert!(!all(Selector {
            detected_type: Some("text/plain".into()),
            ..Selector::default()
        }));
        assert!(all(Selector {
            ids: vec![ArtifactId::new_random(), v.artifact_id],
            ..Selector::default()
        }));
        assert!(!all(Selector {
            ids: vec![ArtifactId::new_random()],
            ..Selector::default()
        }));
    }

    #[test]
    fn the_created_range_includes_its_start_and_excludes_its_end() {
        let v = failed_at(Stage::PdfParser); // created at 1 000
        let range = |from, to| Selector {
            created_from: from,
            created_to: to,
            ..Selector::default()
        };
        assert!(range(Some(1_000), Some(1_001)).matches(&v));
        assert!(range(None, Some(1_001)).matches(&v));
        assert!(!range(Some(1_001), None).matches(&v));
        assert!(!range(None, Some(1_000)).matches(&v));
        let mut unknown = v.clone();
        unknown.created_at = None;
        assert!(!range(Some(0), None).matches(&unknown), "no creation time");
        assert!(Selector::default().is_empty());
        assert!(!range(Some(0), None).is_empty());
    }

    #[test]
    fn a_restart_needs_every_earlier_stage_to_have_let_the_pipeline_go_on() {
        let at_pdf = failed_at(Stage::PdfParser);
        assert_eq!(missing_output(&at_pdf, Stage::MimeDetector), None);
        assert_eq!(missing_output(&at_pdf, Stage::PdfParser), None);
        assert_eq!(
            missing_output(&at_pdf, Stage::Summarizer).as_deref(),
            Some("pdf-parser did not succeed in generation 1")
        );
        let at_summary = failed_at(Stage::Summarizer);
        assert_eq!(missing_output(&at_summary, Stage::Summarizer), None);
        let skipped = view(
            ArtifactState::Completed,
            &[
                (Stage::MimeDetector, Outcome::Succeeded),
                (Stage::LocationLogger, Outcome::Succeeded),
                (Stage::PdfParser, Outcome::skipped("not a document")),
                (Stage::Summarizer, Outcome::skipped("no text")),
            ],
        );
        assert_eq!(missing_output(&skipped, Stage::Summarizer), None);
        let pending = view(ArtifactState::Pending, &[]);
        assert_eq!(
            missing_output(&pending, Stage::LocationLogger).as_deref(),
            Some("mime-detector has no outcome in generation 1")
        );
        let mut uncreated = at_summary;
        uncreated.created_at = None;
        assert!(missing_output(&uncreated, Stage::MimeDetector).is_some());
    }

    #[test]
    fn an_item_is_started_once_and_done_when_its_generation_is_final() {
        let item = ReprocessItem {
            artifact_id: ArtifactId::new_random(),
            generation: g(2),
        };
        assert!(item.needs_start(Some(g(1))));
        assert!(!item.needs_start(Some(g(2))), "already started");
        assert!(!item.needs_start(Some(g(3))), "a newer one replaced it");
        assert!(!item.needs_start(None), "gone");
        assert!(!item.is_done(Some((g(1), ArtifactState::Failed))));
        assert!(!item.is_done(Some((g(2), ArtifactState::InProgress))));
        assert!(item.is_done(Some((g(2), ArtifactState::Completed))));
        assert!(item.is_done(Some((g(2), ArtifactState::Cancelled))));
        assert!(item.is_done(Some((g(3), ArtifactState::Pending))));
        assert!(item.is_done(None));
    }

    #[test]
    fn an_operation_completes_when_every_item_is_done_or_skipped() {
        let items: Vec<ReprocessItem> = (0..3)
            .map(|_| ReprocessItem {
                artifact_id: ArtifactId::new_random(),
                generation: g(2),
            })
            .collect();
        let mut op = ReprocessOperation {
            operation_id: "op".into(),
            selector: Selector::default(),
            from_stage: Stage::Summarizer,
            items: items.clone(),
            started: 2,
            skipped: vec![items[2].artifact_id],
            done: 0,
            created_at: 1,
            updated_at: 1,
            finished_at: None,
        };
        let final_but_first = |i: &ReprocessItem| {
            i.is_done(Some(if i.artifact_id == items[0].artifact_id {
                (g(2), ArtifactState::InProgress)
            } else {
                (g(2), ArtifactState::Completed)
            }))
        };
        // The skipped one is final at generation 2 here, yet not counted.
        assert_eq!(op.count_done(final_but_first), 1);
        assert_eq!(op.count_done(|_| true), 2);
        assert!(!op.is_complete(2), "not every item gone through");
        op.started = 3;
        assert!(op.is_complete(2));
        assert!(!op.is_complete(1));
    }
}
