use super::*;
use crate::FailureKind;
use crate::events::*;
use proptest::prelude::*;

fn g(n: i64) -> Generation {
    Generation::new(n).unwrap()
}

fn created(id: ArtifactId, generation: Generation) -> PipelineEvent {
    PipelineEvent::Created(ArtifactCreated {
        artifact_id: id,
        generation,
        storage_location: format!("file:///blobs/{id}/{generation}"),
        declared_content_type: Some("application/pdf".into()),
        filename: Some("report.pdf".into()),
        size_bytes: Some(1234),
        sha256: None,
        created_at: 1_000 * i64::from(generation.get()),
    })
}

fn stage_event(
    id: ArtifactId,
    generation: Generation,
    stage: Stage,
    outcome: Outcome,
) -> PipelineEvent {
    let ctx = ArtifactContext {
        storage_location: format!("file:///blobs/{id}/{generation}"),
        detected_content_type: Some("application/pdf".into()),
        ..Default::default()
    };
    let ok = matches!(outcome, Outcome::Succeeded);
    let at = 1_000 * i64::from(generation.get()) + 10 * (stage.index() as i64 + 1);
    match stage {
        Stage::MimeDetector => PipelineEvent::MimeDetected(StageEvent {
            artifact_id: id,
            generation,
            context: ctx,
            outcome,
            result: ok.then(|| MimeDetection {
                detected_content_type: "application/pdf".into(),
                declared_content_type: Some("application/pdf".into()),
                agrees: true,
                method: "magic:pdf".into(),
            }),
            processed_at: at,
        }),
        Stage::LocationLogger => PipelineEvent::LocationVerified(StageEvent {
            artifact_id: id,
            generation,
            context: ctx,
            outcome,
            result: ok.then(|| LocationCheck {
                resolved_location: "/blobs/x".into(),
                size_bytes: 1234,
                sha256: "ab".repeat(32),
            }),
            processed_at: at,
        }),
        Stage::PdfParser => PipelineEvent::Parsed(StageEvent {
            artifact_id: id,
            generation,
            context: ctx,
            outcome,
            result: None,
            processed_at: at,
        }),
        Stage::Summarizer => PipelineEvent::Summarized(StageEvent {
            artifact_id: id,
            generation,
            context: ctx,
            outcome,
            result: ok.then(|| SummaryResult {
                method: "extractive".into(),
                summary: "short".into(),
            }),
            processed_at: at,
        }),
    }
}

/// A whole successful run of one generation, in order.
fn full_run(id: ArtifactId, generation: Generation) -> Vec<PipelineEvent> {
    let mut v = vec![created(id, generation)];
    v.extend(Stage::ALL.map(|s| stage_event(id, generation, s, Outcome::Succeeded)));
    v
}

#[test]
fn in_order_run_walks_every_state() {
    let id = ArtifactId::new_random();
    let run = full_run(id, g(1));
    let mut s = ArtifactStatus::empty(id, g(1));
    assert_eq!(s.state(), ArtifactState::Pending);
    let mut seen = vec![];
    for e in run {
        s.check_transition(&e).unwrap();
        s.apply(e);
        seen.push((s.state(), s.current_stage()));
    }
    assert_eq!(
        seen,
        vec![
            (ArtifactState::Pending, Some(Stage::MimeDetector)),
            (ArtifactState::InProgress, Some(Stage::LocationLogger)),
            (ArtifactState::InProgress, Some(Stage::PdfParser)),
            (ArtifactState::InProgress, Some(Stage::Summarizer)),
            (ArtifactState::Completed, None),
        ]
    );
    assert_eq!(s.timeline().len(), 4);
    assert_eq!(s.updated_at(), Some(1_040));
}

#[test]
fn skipped_stages_let_the_chain_complete() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::empty(id, g(1));
    s.apply(created(id, g(1)));
    s.apply(stage_event(
        id,
        g(1),
        Stage::MimeDetector,
        Outcome::Succeeded,
    ));
    s.apply(stage_event(
        id,
        g(1),
        Stage::LocationLogger,
        Outcome::Succeeded,
    ));
    let skip = stage_event(
        id,
        g(1),
        Stage::PdfParser,
        Outcome::skipped("image/png is not parseable"),
    );
    s.check_transition(&skip).unwrap();
    s.apply(skip);
    let sum = stage_event(id, g(1), Stage::Summarizer, Outcome::skipped("no text"));
    s.check_transition(&sum).unwrap();
    s.apply(sum);
    assert_eq!(s.state(), ArtifactState::Completed);
}

#[test]
fn permanent_failure_is_final_and_named() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::empty(id, g(1));
    s.apply(created(id, g(1)));
    s.apply(stage_event(
        id,
        g(1),
        Stage::MimeDetector,
        Outcome::Succeeded,
    ));
    s.apply(stage_event(
        id,
        g(1),
        Stage::LocationLogger,
        Outcome::Succeeded,
    ));
    s.apply(stage_event(
        id,
        g(1),
        Stage::PdfParser,
        Outcome::permanent("corrupt xref"),
    ));
    assert_eq!(s.state(), ArtifactState::Failed);
    assert_eq!(s.current_stage(), None);
    assert_eq!(s.failure(), Some((Stage::PdfParser, "corrupt xref")));
    let late = stage_event(id, g(1), Stage::Summarizer, Outcome::Succeeded);
    assert_eq!(
        s.check_transition(&late),
        Err(IllegalTransition::AfterTerminal {
            state: ArtifactState::Failed,
            stage: Stage::Summarizer
        })
    );
}

#[test]
fn retriable_failure_keeps_the_artifact_in_progress_at_that_stage() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::empty(id, g(1));
    s.apply(created(id, g(1)));
    s.apply(stage_event(
        id,
        g(1),
        Stage::MimeDetector,
        Outcome::retriable("store timeout"),
    ));
    assert_eq!(s.state(), ArtifactState::InProgress);
    assert_eq!(s.current_stage(), Some(Stage::MimeDetector));
    // A later success of the same stage wins over the retriable failure.
    s.apply(stage_event(
        id,
        g(1),
        Stage::MimeDetector,
        Outcome::Succeeded,
    ));
    assert_eq!(
        s.stage_outcome(Stage::MimeDetector),
        Some(&Outcome::Succeeded)
    );
    assert_eq!(s.current_stage(), Some(Stage::LocationLogger));
}

#[test]
fn every_illegal_transition_is_named() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::empty(id, g(2));
    s.apply(created(id, g(2)));

    // Stale generation.
    assert!(matches!(
        s.check_transition(&created(id, g(1))),
        Err(IllegalTransition::StaleGeneration { .. })
    ));
    // Duplicate creation.
    assert!(matches!(
        s.check_transition(&created(id, g(2))),
        Err(IllegalTransition::AlreadyRecorded { .. })
    ));
    // Newer generation starting with a stage event.
    assert!(matches!(
        s.check_transition(&stage_event(
            id,
            g(3),
            Stage::MimeDetector,
            Outcome::Succeeded
        )),
        Err(IllegalTransition::GenerationWithoutCreation { .. })
    ));
    // A newer generation's creation is legal.
    assert_eq!(s.check_transition(&created(id, g(3))), Ok(()));
    // Skipping ahead.
    for stage in [Stage::LocationLogger, Stage::PdfParser, Stage::Summarizer] {
        assert!(matches!(
            s.check_transition(&stage_event(id, g(2), stage, Outcome::Succeeded)),
            Err(IllegalTransition::OutOfOrder { .. })
        ));
    }
    // Stage before creation.
    let empty = ArtifactStatus::empty(id, g(2));
    assert_eq!(
        empty.check_transition(&stage_event(
            id,
            g(2),
            Stage::MimeDetector,
            Outcome::Succeeded
        )),
        Err(IllegalTransition::OutOfOrder {
            stage: Stage::MimeDetector,
            waiting_for: "created".into()
        })
    );
    // Stage after a retriable failure of its predecessor.
    s.apply(stage_event(
        id,
        g(2),
        Stage::MimeDetector,
        Outcome::retriable("x"),
    ));
    assert!(matches!(
        s.check_transition(&stage_event(
            id,
            g(2),
            Stage::LocationLogger,
            Outcome::Succeeded
        )),
        Err(IllegalTransition::OutOfOrder { .. })
    ));
    // Duplicate stage outcome.
    assert!(matches!(
        s.check_transition(&stage_event(
            id,
            g(2),
            Stage::MimeDetector,
            Outcome::Succeeded
        )),
        Err(IllegalTransition::AlreadyRecorded { .. })
    ));
    // After completion.
    let mut done = ArtifactStatus::fold(full_run(id, g(2))).unwrap();
    assert_eq!(done.state(), ArtifactState::Completed);
    done.stages[Stage::Summarizer.index()] = None;
    done.apply(stage_event(
        id,
        g(2),
        Stage::Summarizer,
        Outcome::skipped("no text"),
    ));
    assert!(matches!(
        done.check_transition(&stage_event(
            id,
            g(2),
            Stage::Summarizer,
            Outcome::Succeeded
        )),
        Err(IllegalTransition::AlreadyRecorded { .. })
    ));
}

#[test]
fn newer_generation_replaces_and_older_is_ignored() {
    let id = ArtifactId::new_random();
    let mut events = full_run(id, g(1));
    events.push(created(id, g(2)));
    let s = ArtifactStatus::fold(events).unwrap();
    assert_eq!(s.generation(), g(2));
    assert_eq!(s.state(), ArtifactState::Pending);
    assert!(s.timeline().is_empty());

    let mut s2 = s.clone();
    for e in full_run(id, g(1)) {
        s2.apply(e);
    }
    assert_eq!(
        s2, s,
        "generation 1 events after generation 2 change nothing"
    );
}

#[test]
fn events_of_another_artifact_are_ignored() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::fold(full_run(id, g(1))).unwrap();
    let before = s.clone();
    s.apply(created(ArtifactId::new_random(), g(5)));
    assert_eq!(s, before);
}

#[test]
fn context_comes_from_the_latest_stage_else_creation() {
    let id = ArtifactId::new_random();
    let s = ArtifactStatus::fold([created(id, g(1))]).unwrap();
    assert_eq!(s.context().unwrap().filename.as_deref(), Some("report.pdf"));
    let s = ArtifactStatus::fold(full_run(id, g(1))).unwrap();
    assert_eq!(
        s.context().unwrap().detected_content_type.as_deref(),
        Some("application/pdf")
    );
    assert_eq!(ArtifactStatus::fold(Vec::new()), None);
}

#[test]
fn conflicting_outcomes_for_one_stage_resolve_the_same_either_way() {
    let id = ArtifactId::new_random();
    let a = stage_event(id, g(1), Stage::PdfParser, Outcome::permanent("bad"));
    let b = stage_event(id, g(1), Stage::PdfParser, Outcome::Succeeded);
    let ab = ArtifactStatus::fold([a.clone(), b.clone()]).unwrap();
    let ba = ArtifactStatus::fold([b, a]).unwrap();
    assert_eq!(ab, ba);
    assert_eq!(
        ab.stage_outcome(Stage::PdfParser).unwrap().label(),
        "failed_permanent"
    );
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Succeeded),
        1 => "[a-z]{1,6}".prop_map(Outcome::skipped),
        1 => "[a-z]{1,6}".prop_map(|r| Outcome::Failed { kind: FailureKind::Permanent, reason: r }),
        1 => "[a-z]{1,6}".prop_map(|r| Outcome::Failed { kind: FailureKind::Retriable, reason: r }),
    ]
}

/// Events of one artifact over up to three generations: each generation has a
/// creation and a prefix of the stages with arbitrary outcomes.
fn arb_run() -> impl Strategy<Value = Vec<PipelineEvent>> {
    arb_generations(arb_outcome(), false)
}

/// Events of one artifact over up to three generations, each a creation and
/// then a prefix of the stages in order with outcomes from `outcome`; with
/// `chain`, a generation also ends at its first permanent failure, as the
/// stages write them.
fn arb_generations(
    outcome: impl Strategy<Value = Outcome>,
    chain: bool,
) -> impl Strategy<Value = Vec<PipelineEvent>> {
    let id = ArtifactId::from_uuid(uuid::Uuid::from_u128(42));
    proptest::collection::vec((0usize..=4, proptest::collection::vec(outcome, 4)), 1..=3).prop_map(
        move |gens| {
            let mut events = vec![];
            for (i, (stages, outcomes)) in gens.into_iter().enumerate() {
                let generation = g(i as i64 + 1);
                events.push(created(id, generation));
                for (stage, outcome) in Stage::ALL.into_iter().zip(outcomes).take(stages) {
                    let ends = chain && outcome.is_permanent_failure();
                    events.push(stage_event(id, generation, stage, outcome));
                    if ends {
                        break;
                    }
                }
            }
            events
        },
    )
}

proptest! {
    #[test]
    fn any_permutation_with_duplicates_folds_to_the_in_order_status(
        (events, order, dups) in arb_run().prop_flat_map(|ev| {
            let n = ev.len();
            (
                Just(ev),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                proptest::collection::vec(0..n, 0..6),
            )
        })
    ) {
        // The history of a superseded generation is what was known of it
        // when the newer one began; the rest does not depend on order.
        let mut in_order = ArtifactStatus::fold(events.clone()).unwrap();
        let shuffled = order.iter().chain(dups.iter()).map(|&i| events[i].clone());
        let mut folded = ArtifactStatus::fold(shuffled).unwrap();
        in_order.history.clear();
        folded.history.clear();
        prop_assert_eq!(&folded, &in_order);
        prop_assert_eq!(folded.state(), in_order.state());
        prop_assert_eq!(folded.timeline(), in_order.timeline());
    }

    #[test]
    fn fold_keeps_only_the_newest_generation(events in arb_run()) {
        let newest = events.iter().map(PipelineEvent::generation).max().unwrap();
        let s = ArtifactStatus::fold(events).unwrap();
        prop_assert_eq!(s.generation(), newest);
        prop_assert!(s.created().is_some());
    }
}

#[test]
fn the_view_names_state_failure_and_results() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::fold(full_run(id, g(1))).unwrap();
    let v = s.view();
    assert_eq!(v.state, ArtifactState::Completed);
    assert_eq!(v.summary.as_deref(), Some("short"));
    assert_eq!(v.summary_method.as_deref(), Some("extractive"));
    assert_eq!(v.timeline.len(), 4);
    assert_eq!(v.created_at, Some(1_000));
    assert_eq!(v.updated_at, 1_040);
    assert_eq!(v.failed_stage, None);

    s.apply(created(id, g(2)));
    s.apply(stage_event(
        id,
        g(2),
        Stage::MimeDetector,
        Outcome::permanent("unreadable"),
    ));
    let v = s.view();
    assert_eq!(v.generation, g(2));
    assert_eq!(v.state, ArtifactState::Failed);
    assert_eq!(v.failed_stage, Some(Stage::MimeDetector));
    assert_eq!(v.failure_reason.as_deref(), Some("unreadable"));
    assert_eq!(
        v.summary, None,
        "a new generation starts without the old results"
    );
}

#[test]
fn a_generation_settles_when_its_chain_has_ended_and_every_step_is_in() {
    let id = ArtifactId::new_random();
    let run = full_run(id, g(1));
    // In order: settled with the summarizer's outcome, not before.
    let mut s = ArtifactStatus::empty(id, g(1));
    for (i, e) in run.iter().cloned().enumerate() {
        s.apply(e);
        assert_eq!(s.is_settled(), i == run.len() - 1, "after event {i}");
    }
    // The summarizer's outcome first: completed, but the earlier steps are
    // still to come, so not settled.
    let mut early = ArtifactStatus::empty(id, g(1));
    early.apply(run[4].clone());
    assert_eq!(early.state(), ArtifactState::Completed);
    assert!(!early.is_settled());
    // A permanent failure settles once the steps before it are in.
    let mut failed = ArtifactStatus::empty(id, g(1));
    failed.apply(stage_event(
        id,
        g(1),
        Stage::LocationLogger,
        Outcome::permanent("missing blob"),
    ));
    failed.apply(created(id, g(1)));
    assert_eq!(failed.state(), ArtifactState::Failed);
    assert!(!failed.is_settled(), "mime-detector has not reported yet");
    failed.apply(run[1].clone());
    assert!(failed.is_settled());
    // A newer generation unsettles it.
    failed.apply(created(id, g(2)));
    assert!(!failed.is_settled());
}

fn arb_final_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Succeeded),
        1 => "[a-z]{1,6}".prop_map(Outcome::skipped),
        1 => "[a-z]{1,6}".prop_map(Outcome::permanent),
    ]
}

/// Events of one artifact over up to three generations as the stages write
/// them: a creation, then each stage once and in order until one fails
/// permanently, or until the run stops early (still in progress).
fn arb_chain() -> impl Strategy<Value = Vec<PipelineEvent>> {
    arb_generations(arb_final_outcome(), true)
}

/// A chain and an order in which its events arrive.
fn arb_chain_arriving() -> impl Strategy<Value = (Vec<PipelineEvent>, Vec<usize>)> {
    arb_chain().prop_flat_map(|ev| {
        let n = ev.len();
        (Just(ev), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
    })
}

proptest! {
    #[test]
    fn once_settled_no_event_of_that_generation_changes_the_status(
        (events, order) in arb_chain_arriving()
    ) {
        let arrived: Vec<PipelineEvent> = order.iter().map(|&i| events[i].clone()).collect();
        for k in 1..=arrived.len() {
            let settled = ArtifactStatus::fold(arrived[..k].iter().cloned()).unwrap();
            if !settled.is_settled() {
                continue;
            }
            prop_assert!(settled.state().is_terminal());
            // The rest of that generation (and older ones), and every event
            // already folded again: nothing moves.
            let mut later = settled.clone();
            for e in arrived[k..]
                .iter()
                .filter(|e| e.generation() <= settled.generation())
                .chain(&arrived[..k])
                .cloned()
            {
                later.apply(e);
            }
            prop_assert_eq!(&later, &settled);
        }
        // Not vacuous: a newest generation whose chain ended settles.
        let all = ArtifactStatus::fold(events.clone()).unwrap();
        prop_assert_eq!(all.is_settled(), all.state().is_terminal());
    }

    #[test]
    fn a_snapshot_tells_whether_its_fold_was_settled(
        (events, order) in arb_chain_arriving()
    ) {
        let arrived: Vec<PipelineEvent> = order.iter().map(|&i| events[i].clone()).collect();
        let mut settled_seen = false;
        for k in 1..=arrived.len() {
            let fold = ArtifactStatus::fold(arrived[..k].iter().cloned()).unwrap();
            prop_assert_eq!(fold.view().is_settled(), fold.is_settled(), "after {} events", k);
            settled_seen |= fold.is_settled();
        }
        let all = ArtifactStatus::fold(events.clone()).unwrap();
        prop_assert!(settled_seen || !all.state().is_terminal());
    }
}

#[test]
fn completion_is_timed_once_both_the_creation_and_the_summary_are_known() {
    let id = ArtifactId::new_random();
    let mut summary_first = ArtifactStatus::empty(id, g(1));
    summary_first.apply(stage_event(id, g(1), Stage::Summarizer, Outcome::Succeeded));
    assert_eq!(summary_first.completion_ms(), None, "creation unknown");
    summary_first.apply(created(id, g(1)));
    assert_eq!(summary_first.completion_ms(), Some(40));

    let mut created_first = ArtifactStatus::empty(id, g(1));
    created_first.apply(created(id, g(1)));
    created_first.apply(stage_event(
        id,
        g(1),
        Stage::MimeDetector,
        Outcome::Succeeded,
    ));
    assert_eq!(created_first.completion_ms(), None, "not completed");
    created_first.apply(stage_event(id, g(1), Stage::Summarizer, Outcome::Succeeded));
    assert_eq!(created_first.completion_ms(), Some(40));
}

#[test]
fn a_cancelled_generation_ends_cancelled_whatever_comes_after_and_a_newer_one_runs() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::fold([
        created(id, g(1)),
        stage_event(id, g(1), Stage::MimeDetector, Outcome::Succeeded),
    ])
    .unwrap();
    assert!(!s.is_settled());
    s.cancel(g(1), 5_000);
    assert_eq!(s.state(), ArtifactState::Cancelled);
    assert!(s.state().is_terminal());
    assert_eq!(s.current_stage(), None);
    assert!(s.is_settled(), "created and cancelled: nothing changes it");
    // A record in flight finishes: recorded, but the state stays.
    s.apply(stage_event(
        id,
        g(1),
        Stage::LocationLogger,
        Outcome::Succeeded,
    ));
    let v = s.view();
    assert_eq!(v.state, ArtifactState::Cancelled);
    assert_eq!(v.cancelled_at, Some(5_000));
    assert_eq!(v.timeline.len(), 2);
    assert!(v.is_settled());
    // The same cancel again keeps the later time; a reprocess runs.
    s.cancel(g(1), 4_000);
    assert_eq!(s.cancelled_at(), Some(5_000));
    s.apply(created(id, g(2)));
    assert_eq!(s.state(), ArtifactState::Pending);
    assert_eq!(s.view().cancelled_at, None);
}

#[test]
fn a_cancel_folds_the_same_in_any_order() {
    let id = ArtifactId::new_random();
    let events = [
        created(id, g(1)),
        stage_event(id, g(1), Stage::MimeDetector, Outcome::Succeeded),
    ];
    let mut early = ArtifactStatus::empty(id, g(1));
    early.cancel(g(1), 7);
    for e in events.clone() {
        early.apply(e);
    }
    let mut late = ArtifactStatus::fold(events).unwrap();
    late.cancel(g(1), 7);
    assert_eq!(early.view(), late.view());
    // A cancel of a generation not seen yet waits for its events.
    let mut ahead = ArtifactStatus::fold([created(id, g(1))]).unwrap();
    ahead.cancel(g(2), 9);
    assert_eq!(ahead.generation(), g(2));
    assert_eq!(ahead.state(), ArtifactState::Cancelled);
    assert!(!ahead.is_settled(), "its creation is still to come");
    ahead.apply(created(id, g(2)));
    assert!(ahead.is_settled());
}

fn retry(id: ArtifactId, generation: Generation, stage: Stage, delivery: u32) -> RetryScheduled {
    RetryScheduled {
        artifact_id: id,
        generation,
        stage,
        delivery,
        error: format!("store unavailable ({delivery})"),
        not_before: 5_000 + i64::from(delivery),
        at: 2_000 + i64::from(delivery),
    }
}

#[test]
fn a_pending_retry_shows_its_attempts_error_and_due_time_until_the_outcome() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::empty(id, g(1));
    s.apply(created(id, g(1)));
    s.retry(retry(id, g(1), Stage::MimeDetector, 2));
    assert_eq!(s.state(), ArtifactState::InProgress, "an attempt was made");
    s.retry(retry(id, g(1), Stage::MimeDetector, 3));
    // An older retry record read late changes nothing.
    s.retry(retry(id, g(1), Stage::MimeDetector, 2));
    let v = s.view();
    assert_eq!(v.next_retry_at, Some(5_003));
    let line = &v.timeline[0];
    assert_eq!(line.stage, Stage::MimeDetector);
    assert!(line.is_retry_pending());
    assert_eq!(line.attempts, Some(2), "two deliveries failed");
    assert_eq!(line.last_error.as_deref(), Some("store unavailable (3)"));
    assert_eq!(line.outcome, Outcome::retriable("store unavailable (3)"));
    assert_eq!(s.updated_at(), Some(2_003));
    assert!(!v.is_settled());

    // The third delivery succeeds: an outcome with three attempts.
    s.apply(stage_event(
        id,
        g(1),
        Stage::MimeDetector,
        Outcome::Succeeded,
    ));
    let v = s.view();
    assert_eq!(v.next_retry_at, None);
    assert_eq!(v.timeline[0].outcome, Outcome::Succeeded);
    assert_eq!(v.timeline[0].attempts, Some(3));
    assert_eq!(v.timeline[0].next_retry_at, None);
    assert_eq!(
        v.timeline[0].last_error.as_deref(),
        Some("store unavailable (3)")
    );
}

/// One event applied to a fold.
type Step = Box<dyn Fn(&mut ArtifactStatus)>;

#[test]
fn retries_and_outcomes_fold_the_same_in_any_order() {
    let id = ArtifactId::new_random();
    let mut events: Vec<Step> = vec![
        Box::new(move |s| s.apply(created(id, g(1)))),
        Box::new(move |s| s.retry(retry(id, g(1), Stage::MimeDetector, 2))),
        Box::new(move |s| {
            s.apply(stage_event(
                id,
                g(1),
                Stage::MimeDetector,
                Outcome::Succeeded,
            ))
        }),
        Box::new(move |s| s.retry(retry(id, g(1), Stage::LocationLogger, 2))),
        Box::new(move |s| s.retry(retry(id, g(1), Stage::LocationLogger, 3))),
    ];
    let fold = |order: &[usize], events: &[Step]| {
        let mut s = ArtifactStatus::empty(id, g(1));
        for &i in order {
            events[i](&mut s);
        }
        s
    };
    let in_order = fold(&[0, 1, 2, 3, 4], &events);
    for order in [[4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [3, 2, 4, 0, 1]] {
        assert_eq!(fold(&order, &events), in_order, "{order:?}");
    }
    let v = in_order.view();
    assert_eq!(v.timeline[0].attempts, Some(2));
    assert_eq!(v.timeline[1].attempts, Some(2));
    assert_eq!(v.timeline[1].next_retry_at, Some(5_003));
    // A retry of an older generation is ignored, a newer one moves on.
    events.push(Box::new(move |s| {
        s.retry(retry(id, g(2), Stage::MimeDetector, 2))
    }));
    let moved = fold(&[0, 1, 2, 3, 4, 5], &events);
    assert_eq!(moved.generation(), g(2));
    assert_eq!(moved.history().len(), 1);
}

#[test]
fn a_final_state_shows_no_pending_retry() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::empty(id, g(1));
    s.apply(created(id, g(1)));
    s.retry(retry(id, g(1), Stage::MimeDetector, 2));
    s.cancel(g(1), 3_000);
    let v = s.view();
    assert_eq!(v.state, ArtifactState::Cancelled);
    assert!(v.timeline.is_empty());
    assert_eq!(v.next_retry_at, None);
    assert!(v.is_settled());
}

#[test]
fn earlier_generations_are_kept_newest_first_and_bounded() {
    let id = ArtifactId::new_random();
    let mut s = ArtifactStatus::empty(id, g(1));
    for e in full_run(id, g(1)) {
        s.apply(e);
    }
    s.apply(created(id, g(2)));
    s.apply(stage_event(
        id,
        g(2),
        Stage::MimeDetector,
        Outcome::permanent("unreadable"),
    ));
    s.apply(created(id, g(3)));
    let h = s.view().history;
    assert_eq!(
        h.iter().map(|h| h.generation.get()).collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(h[0].state, ArtifactState::Failed);
    assert_eq!(h[0].failed_stage, Some(Stage::MimeDetector));
    assert_eq!(h[0].failure_reason.as_deref(), Some("unreadable"));
    assert_eq!(h[1].state, ArtifactState::Completed);
    assert_eq!(h[1].summary_method.as_deref(), Some("extractive"));

    for n in 4..=20 {
        s.apply(created(id, g(n)));
    }
    let h = s.view().history;
    assert_eq!(h.len(), crate::attempts::HISTORY_MAX);
    assert_eq!(h[0].generation, g(19));
    assert_eq!(h[9].generation, g(10));
}

#[test]
fn a_new_fold_takes_history_dead_letters_and_retries_over_from_the_last_snapshot() {
    let id = ArtifactId::new_random();
    let letter = |offset| DeadLetter {
        stage: Stage::PdfParser,
        topic: "artifact.pdf-parser.dlq".into(),
        partition: 3,
        offset,
        error: "undecodable".into(),
        at: offset,
    };
    let mut first = ArtifactStatus::empty(id, g(1));
    for e in full_run(id, g(1)) {
        first.apply(e);
    }
    first.dead_letter(letter(7));
    first.dead_letter(letter(7));
    assert_eq!(first.dead_letters().len(), 1, "one letter, linked once");
    let done = first.view();

    // Generation 2 starts in a fold of its own (the first one was dropped
    // once settled): the snapshot of generation 1 becomes its history.
    let mut second = ArtifactStatus::empty(id, g(2));
    second.apply(created(id, g(2)));
    second.retry(retry(id, g(2), Stage::MimeDetector, 2));
    second.carry_over(&done);
    let v = second.view();
    assert_eq!(v.history, vec![GenerationSummary::of(&done)]);
    assert_eq!(v.dead_letters, vec![letter(7)]);

    // A restart: the fold of generation 2 is rebuilt from the events left
    // (the retry record was deleted once processed) and the snapshot.
    let mut rebuilt = ArtifactStatus::empty(id, g(2));
    rebuilt.carry_over(&v);
    rebuilt.apply(created(id, g(2)));
    assert_eq!(rebuilt.view(), v);
    rebuilt.apply(stage_event(
        id,
        g(2),
        Stage::MimeDetector,
        Outcome::Succeeded,
    ));
    assert_eq!(rebuilt.view().timeline[0].attempts, Some(2));

    // An older generation's fold carrying over a newer snapshot moves on.
    let mut stale = ArtifactStatus::empty(id, g(1));
    stale.carry_over(&v);
    assert_eq!(stale.generation(), g(2));
    for offset in 100..120 {
        second.dead_letter(letter(offset));
    }
    assert_eq!(
        second.dead_letters().len(),
        crate::attempts::DEAD_LETTERS_MAX
    );
    assert_eq!(second.dead_letters()[0].offset, 119, "newest first");
}
