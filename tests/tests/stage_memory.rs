//! `STAGE_MAX_INFLIGHT_BYTES` bounds the input bodies a stage holds at once:
//! pdf-parser reads eight 12 MiB files under a 16 MiB budget one or so at a
//! time (its peak RSS stays near its idle RSS plus the budget), and a file
//! that cannot fit alone fails permanently, naming the setting.

use artifact_domain::*;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 16 * MIB;

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_test-stage")).with_file_name(name)
}

fn verified(dir: &std::path::Path, name: &str, bytes: u64) -> anyhow::Result<LocationVerified> {
    let path = dir.join(name);
    let line = b"plain words of a long text file read whole by the parser\n";
    let mut body = Vec::with_capacity(bytes as usize);
    while (body.len() as u64) < bytes {
        body.extend_from_slice(line);
    }
    body.truncate(bytes as usize);
    std::fs::write(&path, &body)?;
    let location = format!("file://{}", path.display());
    Ok(StageEvent {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        context: ArtifactContext {
            storage_location: location.clone(),
            detected_content_type: Some("text/plain".into()),
            size_bytes: Some(bytes as i64),
            ..Default::default()
        },
        outcome: Outcome::Succeeded,
        result: Some(LocationCheck {
            resolved_location: path.display().to_string(),
            size_bytes: bytes as i64,
            sha256: "0".repeat(64),
        }),
        processed_at: 1,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn input_bodies_held_at_once_stay_within_the_stage_budget() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let dir = std::env::temp_dir().join(format!("stage-memory-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let vars = [
        ("BLOB_STORE_URL", format!("file://{}", dir.display())),
        ("CONSUMER_GROUP", env.stage_group()),
        ("STAGE_CONCURRENCY", "8".to_owned()),
        ("STAGE_MAX_INFLIGHT_BYTES", BUDGET.to_string()),
        ("PARSE_MAX_CHARS", "1000".to_owned()),
        ("RETRY_INLINE_ATTEMPTS", "1".to_owned()),
    ];
    let mut stage = StageProcess::start(&env, &bin("pdf-parser"), &vars)?;
    wait_until("pdf-parser ready", Duration::from_secs(60), || {
        stage.is_ready()
    })
    .await?;
    let idle = stage.peak_rss_bytes().expect("a running stage's RSS");

    let mut events = vec![verified(&dir, "too-large.txt", BUDGET + 1)?];
    for i in 0..8 {
        events.push(verified(&dir, &format!("doc-{i}.txt"), 12 * MIB)?);
    }
    let topic = env.names.output(Stage::LocationLogger);
    env.produce_events(&topic, EventSchema::LocationVerified, &events)
        .await?;

    let out = env.names.output(Stage::PdfParser);
    let mut parsed: Vec<Parsed> = vec![];
    wait_until("an outcome for each file", Duration::from_secs(120), || {
        let got = futures::executor::block_on(env.read_decoded::<Parsed>(&out));
        if let Ok(got) = got {
            parsed = got;
        }
        std::future::ready(parsed.len() >= events.len())
    })
    .await?;
    let peak = stage.peak_rss_bytes().expect("a running stage's RSS");
    assert!(stage.is_running(), "pdf-parser died");
    eprintln!(
        "pdf-parser RSS: idle {} MiB, peak {} MiB",
        idle / MIB,
        peak / MIB
    );

    assert_eq!(parsed.len(), events.len(), "one outcome each");
    for p in &parsed {
        let large = p.artifact_id == events[0].artifact_id;
        match &p.outcome {
            Outcome::Failed {
                kind: FailureKind::Permanent,
                reason,
            } if large => assert!(reason.contains("STAGE_MAX_INFLIGHT_BYTES"), "{reason}"),
            Outcome::Succeeded if !large => {}
            other => panic!("{} (too large: {large}): {other:?}", p.artifact_id),
        }
    }
    // A file is read into a growing buffer, then copied once as text: about
    // twice the budget at most, plus allocator slack (without the budget
    // the eight files take over 160 MiB).
    assert!(
        peak < idle + 2 * BUDGET + 32 * MIB,
        "peak RSS {} MiB over idle {} MiB + twice the budget",
        peak / MIB,
        idle / MIB
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
