//! Records and events for the runner's unit tests, built without a broker.

use super::item::{Item, Source};
use artifact_domain::{ArtifactCreated, ArtifactId, Generation, Outcome, ParseResult, Parsed};
use rdkafka::message::{OwnedMessage, Timestamp};

/// An input record of partition `partition` at `offset`, first delivery.
pub(crate) fn item(partition: i32, offset: i64) -> Item {
    with_bytes(partition, offset, b"input bytes".to_vec())
}

/// An input record with these bytes.
pub(crate) fn with_bytes(partition: i32, offset: i64, payload: Vec<u8>) -> Item {
    keyed(partition, offset, "key", payload)
}

/// An input record with this key and these bytes.
pub(crate) fn keyed(partition: i32, offset: i64, key: &str, payload: Vec<u8>) -> Item {
    Item {
        msg: OwnedMessage::new(
            Some(payload),
            Some(key.as_bytes().to_vec()),
            "t.created".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        ),
        source: Source::Input,
        delivery: 1,
        epoch: 0,
    }
}

pub(crate) fn created(id: ArtifactId, generation: i64) -> ArtifactCreated {
    ArtifactCreated {
        artifact_id: id,
        generation: Generation::new(generation).expect("a valid generation"),
        storage_location: "file:///blobs/uploads/x".into(),
        declared_content_type: None,
        filename: Some("x.pdf".into()),
        size_bytes: Some(3),
        sha256: None,
        created_at: 1,
    }
}

/// A parse outcome, as the summarizer reads it.
pub(crate) fn parsed_after(id: ArtifactId, generation: i64, outcome: Outcome) -> Parsed {
    let c = created(id, generation);
    Parsed {
        artifact_id: id,
        generation: c.generation,
        context: (&c).into(),
        result: outcome.lets_pipeline_continue().then(|| ParseResult {
            text_location: "file:///blobs/t".into(),
            page_count: Some(1),
            word_count: 2,
            char_count: 9,
            preview: "some text".into(),
            title: None,
            author: None,
            creator: None,
            producer: None,
            creation_date: None,
            modification_date: None,
            ocr_pages: Vec::new(),
            ocr_confidence: None,
            pages: Vec::new(),
        }),
        outcome,
        processed_at: 2,
    }
}
