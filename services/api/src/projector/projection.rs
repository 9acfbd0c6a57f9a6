//! What the projector knows: the folds of artifacts still moving, and the
//! settled generations of those whose fold was dropped, until the read
//! model's table answers for them.

use crate::readmodel::StatusTable;
use artifact_domain::{
    ArtifactControl, ArtifactId, ArtifactStatus, ControlAction, DeadLetter, Generation,
    PipelineEvent, RetryScheduled, StatusView,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What the projector knows: the folds of artifacts still moving, and the
/// settled generation of those whose fold was dropped, until the table
/// holds their settled snapshot.
#[derive(Default)]
pub(super) struct Projection {
    pub(super) folds: HashMap<ArtifactId, ArtifactStatus>,
    pub(super) settled: HashMap<ArtifactId, Generation>,
    /// The last snapshot of each of those, for a new generation's fold to
    /// take the history over from before the table holds it.
    settled_views: HashMap<ArtifactId, StatusView>,
    /// Erased artifacts: none of their events is folded again.
    pub(super) erased: HashSet<ArtifactId>,
    table: Option<Arc<StatusTable>>,
}

/// What a control did to the projection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Controlled {
    /// Nothing (an older generation's cancel, a settled generation's, an
    /// artifact erased before).
    Nothing,
    /// The fold changed: its snapshot is written.
    Changed,
    /// The artifact is erased: its status gets a tombstone.
    Erased,
}

impl Projection {
    pub(super) fn with_table(table: Arc<StatusTable>) -> Self {
        Self {
            table: Some(table),
            ..Self::default()
        }
    }

    /// The settled generation known for an artifact without a fold.
    fn settled_generation(&self, id: ArtifactId) -> Option<Generation> {
        self.settled
            .get(&id)
            .copied()
            .or_else(|| self.table.as_ref()?.settled_generation(id))
    }

    /// Folds one event and returns the artifact's fold, or `None` for an
    /// event of a generation at or below a settled one without a fold: a
    /// duplicate of an event folded before, not folded again.
    pub(super) fn apply(&mut self, event: PipelineEvent) -> Option<&ArtifactStatus> {
        let id = event.artifact_id();
        if self.erased.contains(&id) {
            return None;
        }
        let status = self.fold_for(id, event.generation())?;
        status.apply(event);
        Some(status)
    }

    /// Folds a scheduled retry, as [`Projection::apply`] an event.
    pub(super) fn retry(&mut self, r: RetryScheduled) -> Option<&ArtifactStatus> {
        let status = self.fold_for(r.artifact_id, r.generation)?;
        status.retry(r);
        Some(status)
    }

    /// Links a dead letter to its artifact's fold; whether the fold
    /// changed. An artifact without a fold gets one, unless its generation
    /// settled: a settled snapshot carries the letters of the generations
    /// before it, and its own generation ended without one.
    pub(super) fn dead_letter(&mut self, id: ArtifactId, letter: DeadLetter) -> bool {
        if self.erased.contains(&id) {
            return false;
        }
        if !self.folds.contains_key(&id) && self.settled_generation(id).is_some() {
            tracing::info!(artifact_id = %id, topic = %letter.topic, offset = letter.offset, "dead letter of a settled generation not linked again");
            return false;
        }
        let Some(fold) = self.fold_for(id, Generation::FIRST) else {
            return false;
        };
        let before = fold.dead_letters().to_vec();
        fold.dead_letter(letter);
        fold.dead_letters() != before
    }

    /// The artifact's fold, made for `generation` if it has none, taking
    /// over what its last snapshot alone knows (history, dead letters,
    /// retries whose records were deleted); `None` for an erased artifact
    /// or a generation at or below a settled one without a fold.
    fn fold_for(&mut self, id: ArtifactId, generation: Generation) -> Option<&mut ArtifactStatus> {
        if self.erased.contains(&id) {
            return None;
        }
        if !self.folds.contains_key(&id) {
            if self
                .settled_generation(id)
                .is_some_and(|settled| generation <= settled)
            {
                return None;
            }
            self.settled.remove(&id);
            let previous = self.settled_views.remove(&id).or_else(|| {
                let table = self.table.as_ref()?;
                table.get(id).unwrap_or_else(|e| {
                    tracing::warn!(artifact_id = %id, error = %e, "last snapshot unreadable: its history is not carried over");
                    None
                })
            });
            let mut fold = ArtifactStatus::empty(id, generation);
            if let Some(previous) = previous {
                fold.carry_over(&previous);
            }
            self.folds.insert(id, fold);
        }
        self.folds.get_mut(&id)
    }

    /// Folds an operator's control: a cancel marks its generation (unless
    /// it settled already), an erasure drops everything of the artifact
    /// for good.
    pub(super) fn control(&mut self, control: ArtifactControl) -> Controlled {
        let id = control.artifact_id;
        if self.erased.contains(&id) {
            return Controlled::Nothing;
        }
        match control.action {
            ControlAction::Erased => {
                self.erased.insert(id);
                self.folds.remove(&id);
                self.settled.remove(&id);
                self.settled_views.remove(&id);
                Controlled::Erased
            }
            ControlAction::Cancelled => {
                let generation = control.generation;
                let Some(fold) = self.fold_for(id, generation) else {
                    return Controlled::Nothing;
                };
                let before = (fold.generation(), fold.cancelled_at());
                fold.cancel(generation, control.at);
                if (fold.generation(), fold.cancelled_at()) == before {
                    Controlled::Nothing
                } else {
                    Controlled::Changed
                }
            }
        }
    }

    /// Forgets the settled generations the table now holds a settled
    /// snapshot of (at that generation or a newer one).
    pub(super) fn forget_shown(&mut self) {
        let Some(table) = &self.table else { return };
        self.settled
            .retain(|id, g| table.settled_generation(*id).is_none_or(|shown| shown < *g));
        let settled = &self.settled;
        self.settled_views.retain(|id, _| settled.contains_key(id));
    }

    /// Drops the folds of `delivered` snapshots that are settled and still
    /// the last written for their artifact (an artifact written again since
    /// has that write's own report to come).
    pub(super) fn drop_settled(
        &mut self,
        written: &mut HashMap<ArtifactId, u64>,
        delivered: Vec<(ArtifactId, u64)>,
    ) {
        for (id, fingerprint) in delivered {
            let settled = self.folds.get(&id).filter(|f| f.is_settled());
            if let Some(fold) = settled
                && written.get(&id) == Some(&fingerprint)
            {
                self.settled.insert(id, fold.generation());
                self.settled_views.insert(id, fold.view());
                self.folds.remove(&id);
                written.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projector::writer::fingerprint;
    use artifact_domain::*;

    fn id(n: u128) -> ArtifactId {
        uuid::Uuid::from_u128(n).to_string().parse().unwrap()
    }

    fn created(id: ArtifactId, generation: i64) -> PipelineEvent {
        PipelineEvent::Created(ArtifactCreated {
            artifact_id: id,
            generation: Generation::new(generation).unwrap(),
            storage_location: "file:///blobs/x".into(),
            declared_content_type: None,
            filename: None,
            size_bytes: None,
            sha256: None,
            created_at: 1,
        })
    }

    fn failed_at_mime(id: ArtifactId) -> PipelineEvent {
        PipelineEvent::MimeDetected(StageEvent {
            artifact_id: id,
            generation: Generation::FIRST,
            context: ArtifactContext::default(),
            outcome: Outcome::permanent("unreadable"),
            result: None,
            processed_at: 2,
        })
    }

    #[test]
    fn settled_folds_are_dropped_once_their_last_snapshot_is_delivered() {
        let (settled, moving) = (id(1), id(2));
        let mut p = Projection::default();
        for e in [
            created(settled, 1),
            failed_at_mime(settled),
            created(moving, 1),
        ] {
            assert!(p.apply(e).is_some());
        }
        let mut written = HashMap::from([
            (settled, fingerprint(b"final")),
            (moving, fingerprint(b"pending")),
        ]);
        // An older snapshot's delivery, and a fold that is not settled: kept.
        p.drop_settled(
            &mut written,
            vec![
                (settled, fingerprint(b"older")),
                (moving, fingerprint(b"pending")),
            ],
        );
        assert_eq!(p.folds.len(), 2);
        // The settled fold's last snapshot delivered: dropped, its
        // generation kept.
        p.drop_settled(&mut written, vec![(settled, fingerprint(b"final"))]);
        assert!(!p.folds.contains_key(&settled));
        assert!(!written.contains_key(&settled));
        assert_eq!(p.settled.get(&settled), Some(&Generation::FIRST));
        assert!(p.folds.contains_key(&moving));
        // Its events again: not folded, no fold comes back.
        assert!(p.apply(failed_at_mime(settled)).is_none());
        assert!(p.apply(created(settled, 1)).is_none());
        assert!(!p.folds.contains_key(&settled));
        // A new generation folds again.
        let fold = p.apply(created(settled, 2)).expect("a newer generation");
        assert_eq!(fold.generation().get(), 2);
        assert!(!p.settled.contains_key(&settled));
    }

    fn control(id: ArtifactId, action: ControlAction, generation: i64) -> ArtifactControl {
        ArtifactControl {
            artifact_id: id,
            action,
            generation: Generation::new(generation).unwrap(),
            at: 9,
        }
    }

    #[test]
    fn a_cancel_ends_the_fold_cancelled_and_an_erasure_drops_the_artifact_for_good() {
        let (a, done) = (id(1), id(2));
        let mut p = Projection::default();
        p.apply(created(a, 1)).unwrap();
        assert_eq!(
            p.control(control(a, ControlAction::Cancelled, 1)),
            Controlled::Changed
        );
        assert_eq!(p.folds[&a].state(), ArtifactState::Cancelled);
        assert_eq!(
            p.control(control(a, ControlAction::Cancelled, 1)),
            Controlled::Nothing,
            "the same cancel again"
        );
        // A settled generation is not cancelled after the fact.
        p.settled.insert(done, Generation::FIRST);
        assert_eq!(
            p.control(control(done, ControlAction::Cancelled, 1)),
            Controlled::Nothing
        );
        assert!(!p.folds.contains_key(&done));
        // Erased: gone, and no later event or control brings it back.
        assert_eq!(
            p.control(control(a, ControlAction::Erased, 1)),
            Controlled::Erased
        );
        assert!(p.folds.is_empty());
        assert!(p.apply(failed_at_mime(a)).is_none());
        assert!(p.apply(created(a, 2)).is_none());
        assert_eq!(
            p.control(control(a, ControlAction::Cancelled, 2)),
            Controlled::Nothing
        );
        assert!(p.folds.is_empty());
    }

    #[test]
    fn the_table_answers_for_the_settled_generations_it_holds() {
        let table = Arc::new(StatusTable::create(&std::env::temp_dir()).expect("table"));
        let mut p = Projection::with_table(table.clone());
        let (done, unfinished) = (id(1), id(2));
        let fold = p.apply(created(done, 1)).unwrap().clone();
        let mut settled = fold.clone();
        settled.apply(failed_at_mime(done));
        p.apply(failed_at_mime(done)).unwrap();
        let mut written = HashMap::from([(done, fingerprint(b"final"))]);
        p.drop_settled(&mut written, vec![(done, fingerprint(b"final"))]);
        assert_eq!(p.settled.get(&done), Some(&Generation::FIRST));
        // Until the table holds the settled snapshot the projector keeps
        // the generation; then the table answers for it.
        p.forget_shown();
        assert_eq!(p.settled.len(), 1);
        table.upsert(&[fold.view()]).unwrap();
        p.forget_shown();
        assert_eq!(p.settled.len(), 1, "an unsettled snapshot does not answer");
        table.upsert(&[settled.view()]).unwrap();
        p.forget_shown();
        assert!(p.settled.is_empty());
        assert!(p.apply(failed_at_mime(done)).is_none());
        assert!(p.apply(created(done, 1)).is_none());
        assert!(p.folds.is_empty());
        assert_eq!(p.apply(created(done, 2)).unwrap().generation().get(), 2);

        // A final snapshot with a step still to come (mime-detector's
        // failure folded before the creation): its events are folded.
        let mut first = ArtifactStatus::empty(unfinished, Generation::FIRST);
        first.apply(failed_at_mime(unfinished));
        assert!(first.view().state.is_terminal());
        table.upsert(&[first.view()]).unwrap();
        assert!(p.apply(created(unfinished, 1)).is_some());
        let fold = p.apply(failed_at_mime(unfinished)).expect("folded");
        assert!(fold.is_settled());
    }
}
