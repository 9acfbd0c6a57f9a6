//! Cancel and erase on the real stack, every service as its own process:
//! an artifact held before the summarizer (stopped) is cancelled and ends
//! `CANCELLED` with no summary for its generation, then a reprocess runs;
//! erased artifacts (one final, one mid-pipeline) leave no blob, on every
//! compacted topic their key's latest record is a tombstone, and once the
//! topics are compacted no value of theirs remains; the API answers 404.

use artifact_domain::{ArtifactState, Stage};
use artifact_pipeline_tests::pipeline::{Pipeline, TOKEN};
use artifact_pipeline_tests::wait_until;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

async fn start() -> anyhow::Result<Pipeline> {
    Pipeline::start(Path::new(BIN_DIR_OF).parent().unwrap()).await
}

const TEXT: &str = "Each stage runs as its own service and commits its outputs, \
    its dedup state and its input offsets in one Kafka transaction. \
    An operator may cancel an artifact's generation or erase the artifact.";

async fn upload(p: &Pipeline, name: &str) -> anyhow::Result<String> {
    Pipeline::accepted_id(
        p.upload_raw(TEXT.as_bytes().to_vec(), "text/plain", name, None)
            .await?,
    )
    .await
}

/// Waits until the artifact waits on the summarizer (every earlier stage
/// reported).
async fn wait_for_summarizer(p: &Pipeline, id: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("{id} waiting on the summarizer"),
        Duration::from_secs(90),
        || async {
            p.status(id)
                .await
                .is_some_and(|v| v.current_stage == Some(Stage::Summarizer))
        },
    )
    .await
}

/// Waits until the (restarted) summarizer has skipped `n` inputs for
/// `reason`.
async fn wait_for_skips(p: &Pipeline, reason: &str, n: f64) -> anyhow::Result<()> {
    let s = &p.stages["summarizer"];
    let label = format!("reason=\"{reason}\"");
    wait_until(
        &format!("the summarizer skipping {n} input(s) as {reason}"),
        Duration::from_secs(90),
        || async { s.metric("artifact_stage_skipped_total", &[&label]).await >= n },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_stops_an_artifact_mid_pipeline_and_a_reprocess_runs_again() -> anyhow::Result<()>
{
    artifact_pipeline_tests::needs_stack!();
    let mut p = start().await?;
    // The OpenAPI document covers both operations.
    let doc: serde_json::Value = p.get_json("/openapi.json").await?;
    assert!(doc["paths"]["/v1/artifacts/{id}/cancel"]["post"].is_object());
    assert!(doc["paths"]["/v1/artifacts/{id}"]["delete"].is_object());

    p.stages.remove("summarizer");
    let id = upload(&p, "held.txt").await?;
    wait_for_summarizer(&p, &id).await?;

    let cancel = p.url(&format!("/v1/artifacts/{id}/cancel"));
    let resp = p.http.post(&cancel).send().await?;
    assert_eq!(resp.status(), 202, "{}", resp.text().await?);
    wait_until(
        "the artifact CANCELLED",
        Duration::from_secs(30),
        || async {
            p.status(&id)
                .await
                .is_some_and(|v| v.state == ArtifactState::Cancelled)
        },
    )
    .await?;
    let v = p.status(&id).await.expect("status");
    assert_eq!(v.generation.get(), 1);
    assert!(v.cancelled_at.is_some());
    assert_eq!(v.current_stage, None);
    let stages: Vec<Stage> = v.timeline.iter().map(|r| r.stage).collect();
    assert_eq!(
        stages,
        [Stage::MimeDetector, Stage::LocationLogger, Stage::PdfParser],
        "the timeline keeps what ran before the cancel"
    );
    // A final generation is not cancelled again.
    assert_eq!(p.http.post(&cancel).send().await?.status(), 409);

    // The summarizer comes back and skips the cancelled generation's input.
    p.start_stage("summarizer")?;
    wait_for_skips(&p, "cancelled", 1.0).await?;
    let summarized = p.env.read_all(&p.env.names.output(Stage::Summarizer))?;
    assert!(
        !summarized.iter().any(|m| m.key() == Some(id.as_bytes())),
        "no summary was written for the cancelled generation"
    );
    assert_eq!(
        p.status(&id).await.expect("status").state,
        ArtifactState::Cancelled
    );

    // A reprocess starts generation 2, which runs to the end.
    let resp = p
        .http
        .post(p.url(&format!("/v1/artifacts/{id}/reprocess")))
        .send()
        .await?;
    assert_eq!(resp.status(), 202, "{}", resp.text().await?);
    let v = p.wait_final(&id, 2).await?;
    assert_eq!(v.state, ArtifactState::Completed);
    assert!(v.summary.is_some());
    assert_eq!(v.cancelled_at, None);
    Ok(())
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn erased_artifacts_leave_no_blob_status_or_dedup_entry() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let mut p = start().await?;
    let done = upload(&p, "done.txt").await?;
    let kept = upload(&p, "kept.txt").await?;
    for id in [&done, &kept] {
        assert_eq!(p.wait_final(id, 1).await?.state, ArtifactState::Completed);
    }
    // One more, held before the summarizer when it is erased.
    p.stages.remove("summarizer");
    let moving = upload(&p, "moving.txt").await?;
    wait_for_summarizer(&p, &moving).await?;
    let blobs = p.blobs.clone();
    let named = |id: &str| {
        files(&blobs)
            .into_iter()
            .filter(|f| f.to_string_lossy().contains(id))
            .count()
    };
    assert_eq!(named(&done), 2, "the upload and its text");
    assert_eq!(named(&moving), 2);

    let resp = p
        .http
        .delete(p.url(&format!("/v1/artifacts/{done}")))
        .send()
        .await?;
    assert_eq!(resp.status(), 202, "{}", resp.text().await?);
    // The other through artifactctl.
    let out = std::process::Command::new(Path::new(BIN_DIR_OF).with_file_name("artifactctl"))
        .args(["--api-url", &p.api_url, "--token", TOKEN, "erase", &moving])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        format!("{moving}: ERASED (generation 1)")
    );
    for id in [&done, &moving] {
        wait_until(
            &format!("{id} answered 404"),
            Duration::from_secs(30),
            || async {
                p.http
                    .get(p.url(&format!("/v1/artifacts/{id}")))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 404)
            },
        )
        .await?;
        assert_eq!(named(id), 0, "no blob of {id} remains");
    }

    // The summarizer comes back: the erased artifact's input is skipped,
    // so nothing of it is written again.
    p.start_stage("summarizer")?;
    wait_for_skips(&p, "erased", 1.0).await?;
    assert_eq!(named(&moving), 0);
    // An erase may be retried (one that failed part way); an erased
    // artifact cannot be cancelled.
    let again = p
        .http
        .delete(p.url(&format!("/v1/artifacts/{done}")))
        .send()
        .await?;
    assert_eq!(again.status(), 202, "{}", again.text().await?);
    let cancel = p
        .http
        .post(p.url(&format!("/v1/artifacts/{done}/cancel")))
        .send()
        .await?;
    assert_eq!(cancel.status(), 404);

    // On every compacted topic that held them, the latest record of their
    // key is a tombstone, so compaction leaves nothing of them; the
    // artifact left alone keeps its records.
    let names = &p.env.names;
    let mut topics = vec![names.created(), names.status()];
    for s in Stage::ALL {
        topics.push(names.output(s));
        topics.push(names.dedup(s));
    }
    for topic in &topics {
        let records = p.env.read_all(topic)?;
        for id in [&done, &moving] {
            let last = records.iter().rfind(|m| m.key() == Some(id.as_bytes()));
            assert!(
                last.is_none_or(|m| m.payload().is_none()),
                "{topic}: the latest record of {id} is not a tombstone"
            );
        }
        let kept_last = records.iter().rfind(|m| m.key() == Some(kept.as_bytes()));
        assert!(
            kept_last.is_some_and(|m| m.payload().is_some()),
            "{topic}: {kept} lost its record"
        );
    }

    // Compaction then leaves no value of theirs. The cleaner is made eager
    // on these topics (any dirty share, segments rolled after 100 ms), and
    // a tombstone of another key on every partition, written again on each
    // look, rolls the segments holding their records.
    for topic in &topics {
        p.env
            .set_topic_configs(
                topic,
                &[("min.cleanable.dirty.ratio", "0.01"), ("segment.ms", "100")],
            )
            .await?;
    }
    let erased = [done.as_bytes(), moving.as_bytes()];
    wait_until(
        "compaction removing every value of the erased artifacts",
        Duration::from_secs(180),
        || async {
            for topic in &topics {
                for partition in 0..p.env.partitions as i32 {
                    let roll = FutureRecord::<str, [u8]>::to(topic)
                        .key("roll")
                        .partition(partition);
                    if p.env
                        .producer
                        .send(roll, Duration::from_secs(10))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
            topics.iter().all(|topic| {
                p.env.read_all(topic).is_ok_and(|records| {
                    !records.iter().any(|m| {
                        m.payload().is_some() && m.key().is_some_and(|k| erased.contains(&k))
                    })
                })
            })
        },
    )
    .await?;
    for topic in &topics {
        let records = p.env.read_all(topic)?;
        assert!(
            records
                .iter()
                .any(|m| m.key() == Some(kept.as_bytes()) && m.payload().is_some()),
            "{topic}: compaction kept {kept}'s value"
        );
    }
    assert_eq!(
        p.status(&kept).await.expect("kept").state,
        ArtifactState::Completed
    );
    assert_eq!(p.listed("/v1/artifacts").await?, [kept.as_str()]);
    Ok(())
}
