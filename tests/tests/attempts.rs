//! Attempts, dead letters and earlier generations in the status, on the
//! real stack with every service as its own process: the summarizer's LLM
//! (a chat-completions server on loopback run by this test) answers 503
//! until the test lets it succeed, and meanwhile the status shows the
//! pending retry (attempts, last error, when it is due); the completed
//! status keeps the attempts; a reprocess keeps generation 1 in the
//! history; a record a stage could not decode is linked to its artifact.

use artifact_domain::{ArtifactState, Stage, StatusView};
use artifact_pipeline_tests::pipeline::{Pipeline, TOKEN};
use artifact_pipeline_tests::{chat_completion, wait_until};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rdkafka::message::Message;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");
const MODEL: &str = "attempts-model";

/// 503 until `healthy`, then a completion.
async fn chat(State(healthy): State<Arc<AtomicBool>>) -> Response {
    if healthy.load(Ordering::SeqCst) {
        (
            [("content-type", "application/json")],
            chat_completion(MODEL, "Summarized once the LLM came back."),
        )
            .into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded, try later").into_response()
    }
}

/// Runs the built artifactctl against the pipeline's API.
fn ctl(p: &Pipeline, args: &[&str]) -> std::io::Result<std::process::Output> {
    std::process::Command::new(Path::new(BIN_DIR_OF).with_file_name("artifactctl"))
        .args(args)
        .args(["--api-url", &p.api_url])
        .env_remove("ARTIFACT_API_TOKEN")
        .output()
}

fn summarizer_line(v: &StatusView) -> Option<&artifact_domain::StageRecord> {
    v.timeline.iter().find(|r| r.stage == Stage::Summarizer)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_shows_attempts_pending_retries_dead_letters_and_history() -> anyhow::Result<()>
{
    artifact_pipeline_tests::needs_stack!();
    let healthy = Arc::new(AtomicBool::new(false));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(healthy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let llm_url = format!("http://{}/v1", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let p = Pipeline::start_with(
        Path::new(BIN_DIR_OF).parent().unwrap(),
        &[
            ("SUMMARIZER_BACKEND", "llm".into()),
            ("LLM_BASE_URL", llm_url),
            ("LLM_MODEL", MODEL.into()),
            ("LLM_API_KEY", "sk-attempts".into()),
            ("RETRY_INLINE_ATTEMPTS", "1".into()),
            ("RETRY_MAX_DELIVERIES", "1000".into()),
            ("RETRY_DELAY_MS", "200".into()),
        ],
    )
    .await?;
    let id = Pipeline::accepted_id(
        p.upload_raw(
            b"Each stage runs as its own service. A failing dependency is retried later.".to_vec(),
            "text/plain",
            "retried.txt",
            None,
        )
        .await?,
    )
    .await?;

    // While the LLM fails, a retry is pending: not plain IN_PROGRESS.
    wait_until(
        "two failed summarizer deliveries and a retry pending",
        Duration::from_secs(120),
        || async {
            p.status(&id).await.is_some_and(|v| {
                summarizer_line(&v).is_some_and(|r| r.attempts >= Some(2) && r.is_retry_pending())
            })
        },
    )
    .await?;
    let v = p.status(&id).await.expect("status");
    assert_eq!(v.state, ArtifactState::InProgress);
    assert_eq!(v.current_stage, Some(Stage::Summarizer));
    let line = summarizer_line(&v).unwrap();
    assert!(
        line.last_error
            .as_deref()
            .is_some_and(|e| e.contains("503")),
        "{line:?}"
    );
    assert!(line.outcome.reason().is_some_and(|e| e.contains("503")));
    assert_eq!(v.next_retry_at, line.next_retry_at);
    assert!(line.next_retry_at.unwrap() >= line.processed_at, "{line:?}");
    for earlier in v.timeline.iter().filter(|r| r.stage != Stage::Summarizer) {
        assert_eq!(earlier.attempts, Some(1), "{earlier:?}");
        assert!(!earlier.is_retry_pending());
    }
    // artifactctl's table says so too.
    let out = ctl(&p, &["get", &id, "--token", TOKEN])?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = String::from_utf8(out.stdout)?;
    assert!(table.contains("next retry"), "{table}");
    assert!(table.contains("retrying"), "{table}");

    // The LLM is back: the next delivery completes, and the status keeps
    // how many deliveries it took and the last error.
    healthy.store(true, Ordering::SeqCst);
    let done = p.wait_final(&id, 1).await?;
    assert_eq!(done.state, ArtifactState::Completed, "{done:?}");
    assert_eq!(done.next_retry_at, None);
    let line = summarizer_line(&done).unwrap();
    assert!(line.attempts >= Some(3), "{line:?}");
    assert!(!line.is_retry_pending());
    assert!(
        line.last_error
            .as_deref()
            .is_some_and(|e| e.contains("503"))
    );
    assert_eq!(done.summary_method.as_deref(), Some("llm:attempts-model"));

    // A reprocess: generation 1 stays in the history.
    let resp = p
        .http
        .post(p.url(&format!("/v1/artifacts/{id}/reprocess")))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    let second = p.wait_final(&id, 2).await?;
    assert_eq!(second.state, ArtifactState::Completed);
    assert_eq!(summarizer_line(&second).unwrap().attempts, Some(1));
    assert_eq!(second.history.len(), 1, "{:?}", second.history);
    let first = &second.history[0];
    assert_eq!(first.generation.get(), 1);
    assert_eq!(first.state, ArtifactState::Completed);
    assert_eq!(first.summary_method.as_deref(), Some("llm:attempts-model"));
    assert_eq!(first.failed_stage, None);

    // A record mime-detector cannot decode, keyed by an artifact id: a dead
    // letter, linked in that artifact's status.
    let broken = uuid::Uuid::new_v4().to_string();
    p.env
        .produce_raw(&p.env.names.created(), &broken, b"not avro at all")
        .await?;
    wait_until(
        "the dead letter linked to its artifact",
        Duration::from_secs(60),
        || async {
            p.status(&broken)
                .await
                .is_some_and(|v| !v.dead_letters.is_empty())
        },
    )
    .await?;
    let v = p.status(&broken).await.expect("status");
    let link = &v.dead_letters[0];
    assert_eq!(link.stage, Stage::MimeDetector);
    assert_eq!(link.topic, p.env.names.dlq(Stage::MimeDetector));
    let letters = p.env.read_all(&link.topic)?;
    let letter = letters
        .iter()
        .find(|m| m.partition() == link.partition && m.offset() == link.offset)
        .expect("the linked record is in the dead-letter topic");
    assert_eq!(letter.key(), Some(broken.as_bytes()));
    assert!(!link.error.is_empty());

    // artifactctl against the real API: JSON, and an exit code per outcome,
    // flags before or after the subcommand.
    let out = ctl(&p, &["--output", "json", "get", &id, "--token", TOKEN])?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: StatusView = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v.generation.get(), 2);
    assert_eq!(v.history.len(), 1);
    let out = ctl(
        &p,
        &[
            "list",
            "--state",
            "COMPLETED",
            "--output",
            "json",
            "--token",
            TOKEN,
        ],
    )?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["artifact_id"] == id.as_str()),
        "{page}"
    );
    let unauthorised = ctl(&p, &["get", &id])?;
    assert_eq!(unauthorised.status.code(), Some(4), "{unauthorised:?}");
    let unknown = uuid::Uuid::new_v4().to_string();
    let not_found = ctl(&p, &["get", &unknown, "--token", TOKEN])?;
    assert_eq!(not_found.status.code(), Some(3), "{not_found:?}");
    let cancel_final = ctl(&p, &["cancel", &id, "--token", TOKEN])?;
    assert_eq!(
        cancel_final.status.code(),
        Some(1),
        "a final generation cannot be cancelled: {cancel_final:?}"
    );
    server.abort();
    Ok(())
}
