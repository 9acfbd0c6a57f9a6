//! The summarizer binary with `SUMMARIZER_BACKEND=llm` against the real
//! broker and registry, pointed at an OpenAI-compatible chat-completions
//! server on 127.0.0.1 run by this test in place of the external API.
//! Parsed events go in; Summarized outcomes come out: a success recording
//! `llm:<model>`, a 429 with `Retry-After` waited out into a success, and a 400 that
//! ends as `failed(permanent)` with the server's message, after one request.

use artifact_domain::*;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::{StageProcess, TestEnv, parsed_text, wait_until};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MODEL: &str = "kafka-test-model";
const KEY: &str = "sk-kafka-test";

/// What the server saw: per marker in the prompt, the requests, and every
/// Authorization header and model.
#[derive(Default)]
struct Seen {
    by_marker: HashMap<&'static str, usize>,
    authorizations: Vec<Option<String>>,
    models: Vec<String>,
}

const SUCCEED: &str = "MARKER-SUCCEED";
const RATE_LIMIT_ONCE: &str = "MARKER-RATE-LIMIT-ONCE";
const REJECT: &str = "MARKER-REJECT";

/// Answers by the marker in the user prompt: `REJECT` gets a 400 with an
/// OpenAI error body, `RATE_LIMIT_ONCE` a 429 the first time and a
/// completion afterwards, anything else a completion.
async fn chat(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, body: String) -> Response {
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let prompt = body["messages"][1]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let marker = [SUCCEED, RATE_LIMIT_ONCE, REJECT]
        .into_iter()
        .find(|m| prompt.contains(m))
        .unwrap_or("none");
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.authorizations.push(
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        seen.models
            .push(body["model"].as_str().unwrap_or("").to_owned());
        let n = seen.by_marker.entry(marker).or_default();
        *n += 1;
        *n
    };
    let error = |status: StatusCode, message: &str| {
        let mut response = (
            status,
            [("content-type", "application/json")],
            json!({"error": {"message": message, "type": "test_error"}}).to_string(),
        )
            .into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", "1".parse().unwrap());
        }
        response
    };
    let completion = |content: &str| {
        (
            [("content-type", "application/json")],
            json!({
                "id": "chatcmpl-kafka",
                "object": "chat.completion",
                "created": 1,
                "model": MODEL,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop"
                }]
            })
            .to_string(),
        )
            .into_response()
    };
    match marker {
        REJECT => error(
            StatusCode::BAD_REQUEST,
            "Invalid request: this text is refused",
        ),
        RATE_LIMIT_ONCE if n == 1 => error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached for requests",
        ),
        RATE_LIMIT_ONCE => completion("Summarized after a rate limit."),
        _ => completion("An LLM summary of the notes."),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn summarizer_with_the_llm_backend() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let llm_url = format!("http://{}/v1", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let env = TestEnv::new(2).await?;
    let root = std::env::temp_dir().join(format!("llm-blobs-{}", uuid::Uuid::new_v4().simple()));
    let mut inputs = HashMap::new();
    for marker in [SUCCEED, RATE_LIMIT_ONCE, REJECT] {
        let path = root.join("texts").join(format!("{marker}.txt"));
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(
            &path,
            format!("{marker}: the notes say that each stage runs as its own service."),
        )?;
        inputs.insert(marker, parsed_text(format!("file://{}", path.display())));
    }

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_test-stage")).with_file_name("summarizer");
    anyhow::ensure!(
        bin.exists(),
        "{} is not built (cargo build --workspace --bins)",
        bin.display()
    );
    let vars = vec![
        ("BLOB_STORE_URL", format!("file://{}", root.display())),
        ("SUMMARIZER_BACKEND", "llm".to_owned()),
        ("LLM_BASE_URL", llm_url),
        ("LLM_MODEL", MODEL.to_owned()),
        ("LLM_API_KEY", KEY.to_owned()),
        ("LLM_TIMEOUT_MS", "10000".to_owned()),
        ("RETRY_INLINE_ATTEMPTS", "3".to_owned()),
        ("RETRY_INLINE_BACKOFF_MS", "50".to_owned()),
        ("RETRY_MAX_DELIVERIES", "2".to_owned()),
        ("RETRY_DELAY_MS", "200".to_owned()),
    ];
    let mut stage = StageProcess::start(&env, &bin, &vars)?;

    env.produce_events(
        &env.names.input(Stage::Summarizer),
        EventSchema::Parsed,
        inputs.values(),
    )
    .await?;

    let output = env.names.output(Stage::Summarizer);
    let outcomes = || async {
        env.read_decoded::<Summarized>(&output)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.artifact_id, s))
            .collect::<HashMap<_, _>>()
    };
    wait_until(
        "a Summarized outcome for every input",
        Duration::from_secs(90),
        || async {
            let out = outcomes().await;
            inputs.values().all(|i| out.contains_key(&i.artifact_id))
        },
    )
    .await?;
    let out = outcomes().await;

    let ok = &out[&inputs[SUCCEED].artifact_id];
    assert_eq!(ok.outcome, Outcome::Succeeded);
    let result = ok.result.as_ref().expect("a summary");
    assert_eq!(result.method, format!("llm:{MODEL}"));
    assert_eq!(result.summary, "An LLM summary of the notes.");
    assert_eq!(
        ok.context.text_location,
        inputs[SUCCEED].context.text_location
    );

    let retried = &out[&inputs[RATE_LIMIT_ONCE].artifact_id];
    assert_eq!(retried.outcome, Outcome::Succeeded, "{retried:?}");
    assert_eq!(
        retried.result.as_ref().map(|r| r.method.as_str()),
        Some("llm:kafka-test-model")
    );
    assert_eq!(
        retried.result.as_ref().map(|r| r.summary.as_str()),
        Some("Summarized after a rate limit.")
    );

    let rejected = &out[&inputs[REJECT].artifact_id];
    match &rejected.outcome {
        Outcome::Failed {
            kind: FailureKind::Permanent,
            reason,
        } => assert!(
            reason.ends_with(
                "the LLM endpoint answered 400 Bad Request: Invalid request: this text is refused"
            ),
            "{reason}"
        ),
        other => panic!("expected failed(permanent), got {other:?}"),
    }
    assert!(rejected.result.is_none());

    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.by_marker.get(SUCCEED), Some(&1));
        assert_eq!(
            seen.by_marker.get(RATE_LIMIT_ONCE),
            Some(&2),
            "a 429 with Retry-After: 1, then the request again after the wait"
        );
        assert_eq!(
            seen.by_marker.get(REJECT),
            Some(&1),
            "a permanent failure is not retried"
        );
        assert!(
            seen.authorizations
                .iter()
                .all(|a| a.as_deref() == Some(&format!("Bearer {KEY}")[..])),
            "{:?}",
            seen.authorizations
        );
        assert!(seen.models.iter().all(|m| m == MODEL), "{:?}", seen.models);
    }
    assert!(stage.is_running(), "the summarizer did not crash");
    // The 429 was waited out within its attempt, not retried by the runner.
    assert_eq!(
        stage
            .exported_metric(
                "artifact_summarizer_llm_waits_total",
                &["cause=\"retry_after\""]
            )
            .await,
        Some(1.0)
    );
    for (result, n) in [("ok", 2.0), ("rate_limited", 1.0), ("refused", 1.0)] {
        let label = format!("result=\"{result}\"");
        assert_eq!(
            stage
                .exported_metric("artifact_summarizer_llm_requests_total", &[&label])
                .await,
            Some(n),
            "{result}"
        );
    }
    assert_eq!(
        stage
            .metric("artifact_stage_retries_total", &["summarizer"])
            .await,
        0.0,
        "no retry by the runner"
    );
    server.abort();
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
