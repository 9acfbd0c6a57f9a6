//! Bulk reprocess on the real stack, every service as its own process.
//!
//! - Artifacts that failed at the summarizer (an LLM endpoint on loopback
//!   refusing them with a 400) are counted by a dry run, which changes
//!   nothing, then reprocessed `--from summarizer` through artifactctl once
//!   the endpoint answers: they complete at generation 2 with the text
//!   generation 1 extracted, and pdf-parser skips the carried-over inputs
//!   instead of parsing again. A restart at summarizer of an artifact that
//!   failed at pdf-parser is refused.
//! - The API is killed while an operation (one start a second) is half
//!   way; the restarted API finishes it, and each artifact ends at
//!   generation 2, summarized once.

use artifact_domain::{ArtifactState, Stage, Summarized};
use artifact_pipeline_tests::pipeline::Pipeline;
use artifact_pipeline_tests::{chat_completion, header, wait_until};
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use rdkafka::message::Message;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

const TEXT: &str = "Each stage runs as its own service and commits its outputs, \
    its dedup state and its input offsets in one Kafka transaction. \
    An operator may reprocess many artifacts at once, from any stage.";

async fn upload(
    p: &Pipeline,
    name: &str,
    body: &[u8],
    content_type: &str,
) -> anyhow::Result<String> {
    Pipeline::accepted_id(
        p.upload_raw(body.to_vec(), content_type, name, None)
            .await?,
    )
    .await
}

/// An OpenAI-compatible endpoint that refuses every request with a 400
/// until `accept` is set, then answers each with a completion.
async fn llm(accept: Arc<AtomicBool>) -> anyhow::Result<String> {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let accept = accept.clone();
            async move {
                if accept.load(Ordering::SeqCst) {
                    (
                        [("content-type", "application/json")],
                        chat_completion(
                            "reprocess-model",
                            "A summary written after the reprocess.",
                        ),
                    )
                        .into_response()
                } else {
                    (
                        StatusCode::BAD_REQUEST,
                        [("content-type", "application/json")],
                        json!({"error": {"message": "refused for now", "type": "test_error"}})
                            .to_string(),
                    )
                        .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn post_reprocess(p: &Pipeline, body: Value) -> anyhow::Result<(u16, Value)> {
    let resp = p
        .http
        .post(p.url("/v1/reprocess"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

async fn operation(p: &Pipeline, op: &str) -> Option<Value> {
    let r = p
        .http
        .get(p.url(&format!("/v1/reprocess/{op}")))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_artifacts_are_reprocessed_from_the_summarizer_without_parsing_again()
-> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let accept = Arc::new(AtomicBool::new(false));
    let llm_url = llm(accept.clone()).await?;
    let p = Pipeline::start_with(
        Path::new(BIN_DIR_OF).parent().unwrap(),
        &[
            ("SUMMARIZER_BACKEND", "llm".into()),
            ("LLM_BASE_URL", llm_url),
            ("LLM_MODEL", "reprocess-model".into()),
        ],
    )
    .await?;
    let doc: Value = p.get_json("/openapi.json").await?;
    assert!(doc["paths"]["/v1/reprocess"]["post"].is_object());
    assert!(doc["paths"]["/v1/reprocess/{op}"]["get"].is_object());

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(upload(&p, &format!("notes-{i}.txt"), TEXT.as_bytes(), "text/plain").await?);
    }
    let corrupt = upload(&p, "corrupt.pdf", b"%PDF-1.7 not really", "application/pdf").await?;
    for id in &ids {
        let v = p.wait_final(id, 1).await?;
        assert_eq!(v.state, ArtifactState::Failed);
        assert_eq!(v.failed_stage, Some(Stage::Summarizer));
    }
    let v = p.wait_final(&corrupt, 1).await?;
    assert_eq!(v.failed_stage, Some(Stage::PdfParser), "{v:?}");
    let parser = &p.stages["pdf-parser"];
    let parsed_before = parser
        .metric("artifact_stage_outcomes_total", &["outcome=\"succeeded\""])
        .await;

    // A dry run counts, and changes nothing.
    let created_before = p.env.read_all(&p.env.names.created())?.len();
    let out = p.artifactctl(&[
        "reprocess",
        "--state",
        "FAILED",
        "--stage",
        "summarizer",
        "--from",
        "summarizer",
        "--dry-run",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)?.lines().next(),
        Some("would reprocess 3 artifact(s); 0 cannot start there")
    );
    let (status, dry) = post_reprocess(
        &p,
        json!({"state": "failed", "from": "summarizer", "dry_run": true}),
    )
    .await?;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["selected"].as_u64(), dry["refused"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        p.env.read_all(&p.env.names.created())?.len(),
        created_before
    );
    for id in &ids {
        assert_eq!(p.status(id).await.expect("status").generation.get(), 1);
    }

    // The one that failed at pdf-parser has no text to summarize.
    let (status, refused) =
        post_reprocess(&p, json!({"ids": [corrupt], "from": "summarizer"})).await?;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("pdf-parser did not succeed"),
        "{refused}"
    );
    // An empty selector would pick everything: refused.
    let (status, _) = post_reprocess(&p, json!({"from": "summarizer"})).await?;
    assert_eq!(status, 400);

    accept.store(true, Ordering::SeqCst);
    let out = p.artifactctl(&[
        "reprocess",
        "--state",
        "FAILED",
        "--stage",
        "summarizer",
        "--from",
        "summarizer",
        "--wait",
        "--timeout",
        "120",
    ])?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("finished: selected 3, started 3, skipped 0, done 3"),
        "{stdout}"
    );
    for id in &ids {
        let v = p.status(id).await.expect("status");
        assert_eq!(
            (v.generation.get(), v.state),
            (2, ArtifactState::Completed),
            "{v:?}"
        );
        assert_eq!(v.summary_method.as_deref(), Some("llm:reprocess-model"));
        let text = v.context.text_location.clone().unwrap_or_default();
        assert!(
            text.ends_with(&format!("{id}-1.txt")),
            "generation 1's text: {text}"
        );
        let stages: Vec<Stage> = v.timeline.iter().map(|r| r.stage).collect();
        assert_eq!(
            stages,
            Stage::ALL,
            "the carried-over outcomes are in the timeline"
        );
    }
    // Each restart's copies are one transaction: in the partition of each
    // copy of the parse outcome, a commit marker takes the next offset.
    let parsed = p.env.names.output(Stage::PdfParser);
    let records = p.env.read_all(&parsed)?;
    for id in &ids {
        let copy = records
            .iter()
            .rfind(|m| {
                m.key() == Some(id.as_bytes())
                    && header(m, artifact_kafka::headers::RESTART_FROM).is_some()
            })
            .expect("the parse outcome's copy");
        let next = match records
            .iter()
            .filter(|m| m.partition() == copy.partition() && m.offset() > copy.offset())
            .map(|m| m.offset())
            .min()
        {
            Some(o) => o,
            None => p.env.watermarks(&parsed, copy.partition())?.1,
        };
        assert!(
            next > copy.offset() + 1,
            "a transaction's marker follows the copy at {}",
            copy.offset()
        );
    }
    // pdf-parser parsed nothing more; it skipped each carried-over input.
    assert_eq!(
        parser
            .metric("artifact_stage_outcomes_total", &["outcome=\"succeeded\""])
            .await,
        parsed_before
    );
    assert!(
        parser
            .metric(
                "artifact_stage_skipped_total",
                &["reason=\"restarted_later\""]
            )
            .await
            >= 3.0
    );
    let v = p.status(&corrupt).await.expect("status");
    assert_eq!(v.generation.get(), 1, "not selected");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operation_survives_an_api_restart_without_starting_an_artifact_twice()
-> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let mut p = Pipeline::start_with(
        Path::new(BIN_DIR_OF).parent().unwrap(),
        &[("REPROCESS_STARTS_PER_SECOND", "1".into())],
    )
    .await?;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(upload(&p, &format!("r-{i}.txt"), TEXT.as_bytes(), "text/plain").await?);
    }
    for id in &ids {
        assert_eq!(p.wait_final(id, 1).await?.state, ArtifactState::Completed);
    }
    let (status, accepted) = post_reprocess(&p, json!({"state": "COMPLETED"})).await?;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["selected"], 6);
    let op = accepted["operation_id"].as_str().unwrap().to_owned();

    wait_until(
        "the operation half way",
        Duration::from_secs(30),
        || async {
            operation(&p, &op)
                .await
                .is_some_and(|v| v["started"].as_u64() >= Some(1))
        },
    )
    .await?;
    p.api.as_mut().expect("api").kill9();
    let before = operation_started(&p, &ids).await;
    assert!(
        before < 6,
        "the operation was not half way when the API was killed"
    );
    p.start_api().await?;
    wait_until(
        "the operation finished",
        Duration::from_secs(120),
        || async {
            operation(&p, &op)
                .await
                .is_some_and(|v| v["state"] == "FINISHED")
        },
    )
    .await?;
    let v = operation(&p, &op).await.expect("operation");
    assert_eq!(
        (
            v["selected"].as_u64(),
            v["started"].as_u64(),
            v["done"].as_u64()
        ),
        (Some(6), Some(6), Some(6)),
        "{v}"
    );
    for id in &ids {
        let v = p.wait_final(id, 2).await?;
        assert_eq!(v.state, ArtifactState::Completed);
    }
    // One summary of generation 2 each: started once.
    let summaries: Vec<Summarized> = p
        .env
        .read_decoded(&p.env.names.output(Stage::Summarizer))
        .await?;
    for id in &ids {
        let n = summaries
            .iter()
            .filter(|s| s.artifact_id.to_string() == *id && s.generation.get() == 2)
            .count();
        assert_eq!(n, 1, "{id}");
        assert!(
            !summaries
                .iter()
                .any(|s| s.artifact_id.to_string() == *id && s.generation.get() > 2),
            "{id} started twice"
        );
    }
    Ok(())
}

/// How many of the artifacts have a generation-2 ArtifactCreated in the
/// log.
async fn operation_started(p: &Pipeline, ids: &[String]) -> usize {
    let created = p.env.read_all(&p.env.names.created()).unwrap_or_default();
    ids.iter()
        .filter(|id| {
            created.iter().any(|m| {
                m.key() == Some(id.as_bytes())
                    && artifact_pipeline_tests::header(m, artifact_kafka::headers::OPERATION)
                        .is_some()
            })
        })
        .count()
}
