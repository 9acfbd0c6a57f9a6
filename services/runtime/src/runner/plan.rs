//! What the runner does with each record of a batch, decided before any of
//! it is processed: decode it, then (a pure step) process it, skip it as a
//! duplicate, a stale generation or the input of a failed upstream stage,
//! or send it to the dead-letter topic.

use super::item::Item;
use crate::stage::StageInput;
use artifact_domain::{ArtifactId, DedupDecision, Generation, Stage, decide};
use artifact_kafka::client::header;
use artifact_kafka::codec::{AvroCodec, CodecError};
use artifact_kafka::headers;
use rdkafka::message::Message;
use std::collections::HashMap;

/// What the runner does with one record.
#[derive(Debug)]
pub(crate) enum Plan<I> {
    /// Undecodable: a dead letter naming the error.
    DeadLetter(String),
    /// Not processed, for this reason (a metric label).
    Skip(&'static str),
    /// Processed.
    Process(I),
    /// Not processed: fails permanently, for this reason.
    Fail(I, String),
}

/// A dedup key: the partition number and the artifact.
pub(crate) type Key = (i32, ArtifactId);

/// Decodes every record of the batch. A registry that fails to answer is
/// an outage (`Err`): the batch is read again later; a record the registry
/// says cannot be decoded is a dead letter.
pub(crate) async fn decode<I: StageInput>(
    codec: &AvroCodec,
    items: &[Item],
) -> Result<Vec<Result<I, String>>, CodecError> {
    let mut decoded = Vec::with_capacity(items.len());
    for it in items {
        match codec.decode::<I>(it.msg.payload()).await {
            Err(e) if e.is_retriable() => return Err(e),
            Err(e) => decoded.push(Err(e.to_string())),
            Ok(input) => decoded.push(Ok(input)),
        }
    }
    Ok(decoded)
}

/// Makes every record the plan would process fail for `reason` instead.
pub(crate) fn refuse<I>(plans: Vec<Plan<I>>, reason: &str) -> Vec<Plan<I>> {
    plans
        .into_iter()
        .map(|p| match p {
            Plan::Process(input) => Plan::Fail(input, reason.to_owned()),
            other => other,
        })
        .collect()
}

/// Skips every record that starts a generation at a stage after `stage`
/// (header [`headers::RESTART_FROM`]): a copy of an outcome this stage
/// wrote for the generation before, carried over, not to be redone.
pub(crate) fn skip_restarted_later<I>(
    items: &[Item],
    plans: Vec<Plan<I>>,
    stage: Stage,
) -> Vec<Plan<I>> {
    items
        .iter()
        .zip(plans)
        .map(|(it, p)| match p {
            Plan::Process(_) if restarts_after(it, stage) => Plan::Skip("restarted_later"),
            other => other,
        })
        .collect()
}

fn restarts_after(it: &Item, stage: Stage) -> bool {
    header(&it.msg, headers::RESTART_FROM)
        .and_then(|s| s.parse::<Stage>().ok())
        .is_some_and(|from| from > stage)
}

/// Plans each decoded record of a batch, in order. `seen` is the newest
/// generation already processed for a key (the dedup state, and the batch
/// still committing); an earlier record of this batch counts too.
/// `controlled` says why an artifact's generation is not processed, if an
/// operator cancelled or erased it. A tombstone (an erased artifact's
/// input) is skipped, not a dead letter.
pub(crate) fn plan<I: StageInput>(
    items: &[Item],
    decoded: Vec<Result<I, String>>,
    seen: impl Fn(Key) -> Option<Generation>,
    controlled: impl Fn(ArtifactId, Generation) -> Option<&'static str>,
) -> Vec<Plan<I>> {
    let mut pending: HashMap<Key, Generation> = HashMap::new();
    items
        .iter()
        .zip(decoded)
        .map(|(it, decoded)| {
            if it.msg.payload().is_none() {
                return Plan::Skip("tombstone");
            }
            let input = match decoded {
                Err(e) => return Plan::DeadLetter(e),
                Ok(input) => input,
            };
            if let Some(reason) = controlled(input.artifact_id(), input.generation()) {
                return Plan::Skip(reason);
            }
            if input
                .upstream_outcome()
                .is_some_and(|o| !o.lets_pipeline_continue())
            {
                return Plan::Skip("upstream_failed");
            }
            let key = (it.partition(), input.artifact_id());
            let last = seen(key).max(pending.get(&key).copied());
            match decide(last, input.generation()) {
                DedupDecision::Duplicate => Plan::Skip("duplicate"),
                DedupDecision::Stale => Plan::Skip("stale"),
                DedupDecision::Process => {
                    pending.insert(key, input.generation());
                    Plan::Process(input)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::testing::{created, item, parsed_after};
    use artifact_domain::{ArtifactCreated, Outcome, Parsed};

    fn labels<I>(plans: &[Plan<I>]) -> Vec<String> {
        plans
            .iter()
            .map(|p| match p {
                Plan::DeadLetter(e) => format!("dlq: {e}"),
                Plan::Skip(r) => format!("skip: {r}"),
                Plan::Process(_) => "process".into(),
                Plan::Fail(_, r) => format!("fail: {r}"),
            })
            .collect()
    }

    #[test]
    fn new_generations_are_processed_and_repeats_skipped() {
        let a = ArtifactId::new_random();
        let items = [item(0, 10), item(0, 11), item(0, 12), item(1, 13)];
        let decoded: Vec<Result<ArtifactCreated, String>> = vec![
            Ok(created(a, 2)),
            Ok(created(a, 2)), // again in the same batch
            Ok(created(a, 1)), // older than one just planned
            Ok(created(a, 2)), // another partition: another key
        ];
        let plans = plan(&items, decoded, |_| None, |_, _| None);
        assert_eq!(
            labels(&plans),
            ["process", "skip: duplicate", "skip: stale", "process"]
        );
    }

    #[test]
    fn what_was_seen_decides_duplicates_and_stale_generations() {
        let (a, b, c) = (
            ArtifactId::new_random(),
            ArtifactId::new_random(),
            ArtifactId::new_random(),
        );
        let seen = |(p, id): Key| match (p, id) {
            (0, id) if id == a => Some(Generation::new(3).unwrap()),
            (0, id) if id == b => Some(Generation::new(1).unwrap()),
            _ => None,
        };
        let items = [item(0, 1), item(0, 2), item(0, 3), item(0, 4)];
        let decoded = vec![
            Ok(created(a, 3)),
            Ok(created(a, 2)),
            Ok(created(b, 2)),
            Ok(created(c, 1)),
        ];
        assert_eq!(
            labels(&plan(&items, decoded, seen, |_, _| None)),
            ["skip: duplicate", "skip: stale", "process", "process"]
        );
    }

    #[test]
    fn undecodable_records_are_dead_letters_and_failed_upstreams_skipped() {
        let a = ArtifactId::new_random();
        let items = [item(0, 1), item(0, 2), item(0, 3)];
        let decoded: Vec<Result<Parsed, String>> = vec![
            Err("bad magic byte".into()),
            Ok(parsed_after(a, 1, Outcome::permanent("corrupt"))),
            Ok(parsed_after(a, 1, Outcome::Succeeded)),
        ];
        assert_eq!(
            labels(&plan(&items, decoded, |_| None, |_, _| None)),
            ["dlq: bad magic byte", "skip: upstream_failed", "process"]
        );
    }

    #[test]
    fn records_restarting_at_a_later_stage_are_skipped_by_earlier_ones() {
        use rdkafka::message::{Header, OwnedHeaders};
        let a = ArtifactId::new_random();
        let restarting = |offset, from: &str| {
            let mut it = item(0, offset);
            it.msg = rdkafka::message::OwnedMessage::new(
                Some(b"input bytes".to_vec()),
                Some(b"key".to_vec()),
                "t.parsed".into(),
                rdkafka::Timestamp::NotAvailable,
                0,
                offset,
                Some(OwnedHeaders::new().insert(Header {
                    key: headers::RESTART_FROM,
                    value: Some(from),
                })),
            );
            it
        };
        let items = [
            restarting(1, "summarizer"),
            restarting(2, "location-logger"),
            restarting(3, "not-a-stage"),
            item(0, 4),
        ];
        let decoded: Vec<Result<Parsed, String>> = (1..=4)
            .map(|g| Ok(parsed_after(a, g, Outcome::Succeeded)))
            .collect();
        let at = |stage| {
            let plans = plan(&items, decoded.clone(), |_| None, |_, _| None);
            labels(&skip_restarted_later(&items, plans, stage))
        };
        assert_eq!(
            at(Stage::LocationLogger),
            ["skip: restarted_later", "process", "process", "process"]
        );
        assert_eq!(
            at(Stage::Summarizer),
            ["process", "process", "process", "process"]
        );
    }

    #[test]
    fn cancelled_and_erased_inputs_and_tombstones_are_skipped() {
        use crate::runner::item::Item;
        let (cancelled, erased, other) = (
            ArtifactId::new_random(),
            ArtifactId::new_random(),
            ArtifactId::new_random(),
        );
        let controlled = |id: ArtifactId, generation: Generation| {
            if id == erased {
                Some("erased")
            } else if id == cancelled && generation.get() <= 1 {
                Some("cancelled")
            } else {
                None
            }
        };
        let mut tombstone: Item = item(0, 5);
        tombstone.msg = rdkafka::message::OwnedMessage::new(
            None,
            Some(b"key".to_vec()),
            "t.created".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            5,
            None,
        );
        let items = [item(0, 1), item(0, 2), item(0, 3), item(0, 4), tombstone];
        let decoded: Vec<Result<ArtifactCreated, String>> = vec![
            Ok(created(cancelled, 1)),
            Ok(created(cancelled, 2)), // a reprocess after the cancel
            Ok(created(erased, 3)),
            Ok(created(other, 1)),
            Err("no value".into()),
        ];
        assert_eq!(
            labels(&plan(&items, decoded, |_| None, controlled)),
            [
                "skip: cancelled",
                "process",
                "skip: erased",
                "process",
                "skip: tombstone"
            ]
        );
    }
}
