//! The Avro decoding of every event type, through the codec the stages and
//! the API read records with (`AvroCodec::decode`), with the writer schemas
//! of `schemas/` registered in the real registry at `SCHEMA_REGISTRY_URL`
//! (once, under `fuzz-<schema>-value` subjects; each id is then cached).
//! Input: a byte choosing the event type, then the Avro body, sent framed
//! with that type's schema id. No input may panic or hang the decoder.
#![no_main]

use artifact_domain::dedup::DedupEntry;
use artifact_domain::outcome::OutcomeStatus;
use artifact_domain::*;
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::schemas::{EventSchema, RegistryAdmin};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::OnceLock;

struct Decoding {
    runtime: tokio::runtime::Runtime,
    codec: AvroCodec,
    /// The schema id of each of `EventSchema::ALL`.
    ids: Vec<u32>,
}

fn decoding() -> &'static Decoding {
    static DECODING: OnceLock<Decoding> = OnceLock::new();
    DECODING.get_or_init(|| {
        let url = std::env::var("SCHEMA_REGISTRY_URL")
            .expect("SCHEMA_REGISTRY_URL names the registry (deploy/local/stack up prints it)");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let admin = RegistryAdmin::new(&url);
        let ids = runtime.block_on(async {
            let mut ids = Vec::new();
            for schema in EventSchema::ALL {
                let subject = format!("fuzz-{schema:?}-value");
                let registered = admin
                    .register(&subject, schema.avsc())
                    .await
                    .unwrap_or_else(|e| panic!("register {subject}: {e}"));
                ids.push(registered.id);
            }
            ids
        });
        let codec = AvroCodec::new(&url).expect("a codec");
        if let Some(dir) = std::env::var_os("FUZZ_AVRO_WRITE_SEEDS") {
            runtime.block_on(write_seeds(&codec, std::path::Path::new(&dir)));
        }
        Decoding {
            runtime,
            codec,
            ids,
        }
    })
}

fn decode<T: DeserializeOwned + 'static>(d: &Decoding, framed: &[u8]) {
    let _ = d.runtime.block_on(d.codec.decode::<T>(Some(framed)));
}

/// Writes one record of each event type (several outcomes of the stage
/// events), encoded by the codec, as inputs of this target into `dir`:
/// the seed corpus (`FUZZ_AVRO_WRITE_SEEDS=fuzz/seeds/avro_decode
/// scripts/fuzz 1 avro_decode`).
async fn write_seeds(codec: &AvroCodec, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("the seed directory");
    let created = ArtifactCreated {
        artifact_id: "0f8fad5b-d9cb-469f-a165-70867728950e".parse().unwrap(),
        generation: Generation::FIRST,
        storage_location: "file:///data/blobs/uploads/a.pdf".into(),
        declared_content_type: None,
        filename: Some("a.pdf".into()),
        size_bytes: Some(1),
        sha256: None,
        created_at: 1,
    };
    let mime = MimeDetection {
        detected_content_type: "application/pdf".into(),
        declared_content_type: Some("application/pdf".into()),
        agrees: true,
        method: "magic:pdf".into(),
    };
    let location = LocationCheck {
        resolved_location: "/data/blobs/uploads/a.pdf".into(),
        size_bytes: 12345,
        sha256: "ab".repeat(32),
    };
    let parse = ParseResult {
        text_location: "file:///data/blobs/texts/0f/x-1.txt".into(),
        page_count: Some(3),
        word_count: 500,
        char_count: 3000,
        preview: "A preview".into(),
        title: Some("Title".into()),
        author: None,
        creator: Some("LaTeX".into()),
        producer: None,
        creation_date: Some("D:20240102".into()),
        modification_date: None,
        ocr_pages: Vec::new(),
        ocr_confidence: None,
        pages: Vec::new(),
    };
    let summary = SummaryResult {
        method: "extractive".into(),
        summary: "A summary.".into(),
    };
    let failed = Outcome::permanent("the PDF is damaged");
    let skipped = Outcome::skipped("image/png is not parseable");
    let parsed = event(Outcome::Succeeded, Some(parse));
    let status = ArtifactStatus::fold([
        PipelineEvent::Created(created.clone()),
        PipelineEvent::Parsed(parsed.clone()),
    ])
    .unwrap()
    .view();
    let mut seeds: Vec<(EventSchema, &str, Vec<u8>)> = Vec::new();
    use EventSchema as S;
    seeds.push((
        S::ArtifactCreated,
        "created",
        framed(&codec, S::ArtifactCreated, &created).await,
    ));
    seeds.push((
        S::MimeDetected,
        "mime",
        framed(
            &codec,
            S::MimeDetected,
            &event(Outcome::Succeeded, Some(mime)),
        )
        .await,
    ));
    seeds.push((
        S::LocationVerified,
        "location",
        framed(
            &codec,
            S::LocationVerified,
            &event(Outcome::Succeeded, Some(location)),
        )
        .await,
    ));
    seeds.push((
        S::LocationVerified,
        "location-failed",
        framed(
            &codec,
            S::LocationVerified,
            &event::<LocationCheck>(failed.clone(), None),
        )
        .await,
    ));
    seeds.push((
        S::Parsed,
        "parsed",
        framed(&codec, S::Parsed, &parsed).await,
    ));
    seeds.push((
        S::Parsed,
        "parsed-skipped",
        framed(&codec, S::Parsed, &event::<ParseResult>(skipped, None)).await,
    ));
    seeds.push((
        S::Summarized,
        "summarized",
        framed(
            &codec,
            S::Summarized,
            &event(Outcome::Succeeded, Some(summary)),
        )
        .await,
    ));
    seeds.push((
        S::Summarized,
        "summarized-failed",
        framed(&codec, S::Summarized, &event::<SummaryResult>(failed, None)).await,
    ));
    let dedup = DedupEntry {
        artifact_id: created.artifact_id,
        generation: Generation::FIRST,
        outcome_status: OutcomeStatus::Succeeded,
        processed_at: 1,
    };
    seeds.push((
        S::DedupEntry,
        "dedup",
        framed(&codec, S::DedupEntry, &dedup).await,
    ));
    seeds.push((
        S::ArtifactStatus,
        "status",
        framed(&codec, S::ArtifactStatus, &status).await,
    ));
    for (schema, name, body) in seeds {
        let index = EventSchema::ALL.iter().position(|s| *s == schema).unwrap() as u8;
        let mut input = vec![index];
        input.extend_from_slice(&body);
        std::fs::write(dir.join(name), input).expect("write a seed");
    }
}

/// `value` encoded for this target's subject of `schema`, without the framing.
async fn framed<T: Serialize>(codec: &AvroCodec, schema: EventSchema, value: &T) -> Vec<u8> {
    let topic = format!("fuzz-{schema:?}");
    codec
        .encode(&topic, schema, value)
        .await
        .expect("encode a seed")[5..]
        .to_vec()
}

fn context() -> ArtifactContext {
    ArtifactContext {
        storage_location: "file:///data/blobs/uploads/a.pdf".into(),
        declared_content_type: Some("application/pdf".into()),
        filename: Some("report ü.pdf".into()),
        detected_content_type: Some("application/pdf".into()),
        size_bytes: Some(12345),
        sha256: Some("ab".repeat(32)),
        text_location: Some("file:///data/blobs/texts/0f/x-1.txt".into()),
    }
}

fn event<R>(outcome: Outcome, result: Option<R>) -> StageEvent<R> {
    StageEvent {
        artifact_id: "0f8fad5b-d9cb-469f-a165-70867728950e".parse().unwrap(),
        generation: Generation::new(2).unwrap(),
        context: context(),
        outcome,
        result,
        processed_at: 1_700_000_000_000,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let d = decoding();
    let index = usize::from(choice) % EventSchema::ALL.len();
    let mut framed = vec![0];
    framed.extend_from_slice(&d.ids[index].to_be_bytes());
    framed.extend_from_slice(body);
    match EventSchema::ALL[index] {
        EventSchema::ArtifactCreated => decode::<ArtifactCreated>(d, &framed),
        EventSchema::MimeDetected => decode::<MimeDetected>(d, &framed),
        EventSchema::LocationVerified => decode::<LocationVerified>(d, &framed),
        EventSchema::Parsed => decode::<Parsed>(d, &framed),
        EventSchema::Summarized => decode::<Summarized>(d, &framed),
        EventSchema::DedupEntry => decode::<DedupEntry>(d, &framed),
        EventSchema::ArtifactStatus => decode::<StatusView>(d, &framed),
        EventSchema::ArtifactControl => decode::<ArtifactControl>(d, &framed),
        EventSchema::StageControl => {
            decode::<artifact_kafka::stage_control::StageControl>(d, &framed)
        }
        EventSchema::ReprocessOperation => decode::<ReprocessOperation>(d, &framed),
        EventSchema::WebhookSubscription => {
            decode::<artifact_api::webhooks::Subscription>(d, &framed)
        }
    }
});
