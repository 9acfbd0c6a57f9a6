//! The pure steps that build a batch's records, without a broker.

use super::*;
use crate::runner::testing::{created, item, with_bytes};
use crate::stage::Processed;
use artifact_domain::{ArtifactContext, ArtifactCreated};
use artifact_kafka::trace::TRACEPARENT;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

const NOW: i64 = 1_000_000;
const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn topics() -> StageTopics {
    StageTopics {
        output: "t.parsed".into(),
        dedup: "t.pdf-parser.dedup".into(),
        retry: "t.pdf-parser.retry".into(),
        dlq: "t.pdf-parser.dlq".into(),
    }
}

fn records(topics: &StageTopics, max_record_bytes: usize) -> Records<'_> {
    Records {
        stage: Stage::PdfParser,
        topics,
        policy: RetryPolicy::default(),
        max_record_bytes,
        now_ms: NOW,
    }
}

/// Encodes as JSON: the build step only needs bytes of the right size.
struct Json;

impl Encode<String> for Json {
    fn outcome(&self, event: &StageEvent<String>) -> Result<Vec<u8>, BatchError> {
        Ok(serde_json::to_vec(event).unwrap())
    }
    fn dedup(&self, entry: &DedupEntry) -> Result<Vec<u8>, BatchError> {
        Ok(serde_json::to_vec(entry).unwrap())
    }
}

fn succeeded(result: &str) -> Done<String> {
    Done::Ok(Processed::succeeded(
        result.to_owned(),
        ArtifactContext::default(),
    ))
}

fn attempted(done: Done<String>) -> Option<Attempted<String>> {
    Some(Attempted {
        done,
        trace: vec![(TRACEPARENT, TP.into())],
    })
}

/// Builds the records of one processed record.
fn build_one(it: Item, input: ArtifactCreated, done: Done<String>, max: usize) -> Built {
    let topics = topics();
    let r = records(&topics, max);
    let items = [it];
    let d = r.dispositions(&items, vec![Plan::Process(input)], vec![attempted(done)]);
    r.build(&items, d, &[], &Json).unwrap()
}

fn header<'a>(out: &'a Out, name: &str) -> Option<&'a str> {
    out.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

fn outcome_of(out: &Out) -> serde_json::Value {
    serde_json::from_slice(out.payload.as_ref().unwrap()).unwrap()
}

#[test]
fn a_success_writes_its_outcome_and_dedup_entry() {
    let id = ArtifactId::new_random();
    let built = build_one(item(3, 7), created(id, 2), succeeded("text"), 1 << 20);
    let kinds: Vec<_> = built.outs.iter().map(|o| o.kind).collect();
    assert_eq!(kinds, ["output", "dedup"]);
    let (output, dedup) = (&built.outs[0], &built.outs[1]);
    assert_eq!(&*output.topic, "t.parsed");
    assert_eq!(&*dedup.topic, "t.pdf-parser.dedup");
    for o in [output, dedup] {
        assert_eq!(o.partition, 3, "the input's partition number");
        assert_eq!(o.key.as_deref(), Some(id.to_string().as_bytes()));
    }
    assert_eq!(
        header(output, TRACEPARENT),
        Some(TP),
        "the processing's context"
    );
    let event = outcome_of(output);
    assert_eq!(event["result"], "text");
    assert_eq!(event["processed_at"], NOW);
    assert_eq!(built.recorded, vec![((3, id), Generation::new(2).unwrap())]);
    assert_eq!(built.outcome_labels, ["succeeded"]);
}

#[test]
fn a_permanent_failure_is_an_outcome_that_says_why() {
    let id = ArtifactId::new_random();
    let built = build_one(
        item(0, 1),
        created(id, 1),
        Done::Permanent("not a PDF".into()),
        1 << 20,
    );
    assert_eq!(built.outcome_labels, ["failed_permanent"]);
    let event = outcome_of(&built.outs[0]);
    assert!(
        event["outcome"].to_string().contains("not a PDF"),
        "{event}"
    );
    assert_eq!(built.recorded.len(), 1);
}

#[test]
fn a_retriable_failure_is_copied_to_the_retry_topic_with_its_next_delivery() {
    let built = build_one(
        item(2, 40),
        created(ArtifactId::new_random(), 1),
        Done::Retriable("store unavailable".into()),
        1 << 20,
    );
    assert_eq!(built.outs.len(), 1, "no outcome and no dedup entry");
    let copy = &built.outs[0];
    assert_eq!(
        (copy.kind, &*copy.topic, copy.partition),
        ("retry", "t.pdf-parser.retry", 2)
    );
    assert_eq!(copy.payload.as_deref(), Some(&b"input bytes"[..]));
    assert_eq!(header(copy, headers::ATTEMPT), Some("2"));
    let delay = RetryPolicy::default().topic_delay_for(2).as_millis() as i64;
    assert_eq!(
        header(copy, headers::NOT_BEFORE),
        Some(&*(NOW + delay).to_string())
    );
    assert_eq!(header(copy, headers::ERROR), Some("store unavailable"));
    assert_eq!(header(copy, headers::SOURCE_OFFSET), Some("40"));
    assert!(built.recorded.is_empty() && built.outcome_labels.is_empty());
}

#[test]
fn the_last_delivery_gives_up_with_a_permanent_failure() {
    let mut it = item(0, 1);
    it.delivery = RetryPolicy::default().max_deliveries;
    let built = build_one(
        it,
        created(ArtifactId::new_random(), 1),
        Done::Retriable("store unavailable".into()),
        1 << 20,
    );
    assert_eq!(built.outcome_labels, ["failed_permanent"]);
    let reason = outcome_of(&built.outs[0])["outcome"].to_string();
    assert!(
        reason.contains("gave up after 4 deliveries: store unavailable"),
        "{reason}"
    );
}

#[test]
fn a_retry_copy_that_would_not_fit_fails_instead() {
    let big = with_bytes(0, 1, vec![b'x'; 5_000]);
    let built = build_one(
        big,
        created(ArtifactId::new_random(), 1),
        Done::Retriable("timeout".into()),
        4_096,
    );
    assert_eq!(built.outcome_labels, ["failed_permanent"]);
    let reason = outcome_of(&built.outs[0])["outcome"].to_string();
    assert!(
        reason.contains("too large to copy to the retry topic"),
        "{reason}"
    );
}

#[test]
fn an_outcome_too_large_for_a_record_becomes_a_failure_naming_the_sizes() {
    let built = build_one(
        item(0, 1),
        created(ArtifactId::new_random(), 1),
        succeeded(&"w".repeat(5_000)),
        2_048,
    );
    assert_eq!(built.outcome_labels, ["failed_permanent"]);
    let output = &built.outs[0];
    assert!(output.size() <= 2_048);
    let reason = outcome_of(output)["outcome"].to_string();
    assert!(
        reason.contains("more than the 2048 a record may have"),
        "{reason}"
    );
    assert_eq!(built.outs[1].kind, "dedup");
}

#[test]
fn an_input_whose_context_alone_is_too_large_is_a_dead_letter() {
    let mut input = created(ArtifactId::new_random(), 1);
    input.filename = Some("f".repeat(5_000));
    let context = ArtifactContext::from(&input);
    let done = Done::Ok(Processed::succeeded("ok".to_owned(), context));
    let built = build_one(item(0, 1), input, done, 2_048);
    assert_eq!(built.outs.len(), 1);
    let letter = &built.outs[0];
    assert_eq!((letter.kind, &*letter.topic), ("dlq", "t.pdf-parser.dlq"));
    assert_eq!(header(letter, headers::ERROR_KIND), Some("oversized"));
    assert!(built.recorded.is_empty() && built.outcome_labels.is_empty());
}

#[test]
fn undecodable_records_are_dead_letters_and_oversized_ones_keep_only_headers() {
    let topics = topics();
    let r = records(&topics, 2_048);
    let items = [item(1, 5), with_bytes(1, 6, vec![0; 4_000])];
    let plans: Vec<Plan<ArtifactCreated>> = vec![
        Plan::DeadLetter("bad magic byte".into()),
        Plan::DeadLetter("bad magic byte".into()),
    ];
    let d = r.dispositions::<_, String>(&items, plans, vec![None, None]);
    let built = r.build(&items, d, &[], &Json).unwrap();
    let (small, large) = (&built.outs[0], &built.outs[1]);
    assert_eq!(small.payload.as_deref(), Some(&b"input bytes"[..]));
    assert_eq!(header(small, headers::ERROR_KIND), Some("undecodable"));
    assert_eq!(header(small, headers::SOURCE_PARTITION), Some("1"));
    assert_eq!(header(small, headers::STAGE), Some("pdf-parser"));
    assert_eq!(large.payload, None);
    assert_eq!(header(large, headers::PAYLOAD_OMITTED), Some("4000"));
}

#[test]
fn tombstones_come_first_and_skips_are_counted() {
    let topics = topics();
    let r = records(&topics, 1 << 20);
    let id = ArtifactId::new_random();
    let items = [item(0, 1), item(0, 2), item(0, 3)];
    let plans = vec![
        Plan::Skip("duplicate"),
        Plan::Process(created(id, 1)),
        Plan::Skip("duplicate"),
    ];
    let done = vec![None, attempted(succeeded("ok")), None];
    let d = r.dispositions(&items, plans, done);
    let built = r.build(&items, d, &[(0, id)], &Json).unwrap();
    let kinds: Vec<_> = built.outs.iter().map(|o| o.kind).collect();
    assert_eq!(kinds, ["tombstone", "output", "dedup"]);
    assert_eq!(built.outs[0].payload, None);
    assert_eq!(built.skipped.get("duplicate"), Some(&2));
}

#[test]
fn a_retry_record_keeps_naming_where_it_was_first_read() {
    let mut h = OwnedHeaders::new();
    for (k, v) in [
        (headers::SOURCE_TOPIC, "t.created"),
        (headers::SOURCE_PARTITION, "2"),
        (headers::SOURCE_OFFSET, "17"),
        (headers::ATTEMPT, "2"),
    ] {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let it = Item {
        msg: OwnedMessage::new(
            Some(b"input bytes".to_vec()),
            None,
            "t.pdf-parser.retry".into(),
            Timestamp::NotAvailable,
            2,
            3,
            Some(h),
        ),
        source: Source::Retry,
        delivery: 2,
        epoch: 0,
    };
    let built = build_one(
        it,
        created(ArtifactId::new_random(), 1),
        Done::Retriable("again".into()),
        1 << 20,
    );
    let copy = &built.outs[0];
    assert_eq!(header(copy, headers::SOURCE_TOPIC), Some("t.created"));
    assert_eq!(header(copy, headers::SOURCE_OFFSET), Some("17"));
    assert_eq!(header(copy, headers::ATTEMPT), Some("3"));
}
