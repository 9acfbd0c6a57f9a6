//! The LLM backend against a real HTTP server in this process, on
//! 127.0.0.1, speaking the `POST /v1/chat/completions` shape of an
//! OpenAI-compatible API ([`common::ChatServer`]).

mod common;

use artifact_domain::{ArtifactId, Outcome};
use artifact_runtime::blob::BlobStore;
use artifact_runtime::stage::{StageError, StageLogic};
use common::{Call, ChatServer, Reply, parsed, record};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use summarizer::SummaryOptions;
use summarizer::budget::BudgetLimits;
use summarizer::chunk::chunks;
use summarizer::llm::{LlmConfig, LlmSummarizer};
use summarizer::stage::{Backend, SummaryStage};

fn config(base_url: &str) -> LlmConfig {
    LlmConfig {
        base_url: base_url.parse().unwrap(),
        model: "test-model-1".into(),
        api_key: Some("sk-test-123".into()),
        timeout: Duration::from_secs(10),
        chunk_chars: 12_000,
        max_chunks: 32,
        concurrency: 4,
        max_tokens: Some(300),
        temperature: Some(0.0),
        max_summary_chars: 600,
        attempt: BudgetLimits {
            time: Duration::from_secs(10),
            requests: 64,
        },
        // High enough not to hold the tests that are not about it.
        rate_per_second: 1000.0,
    }
}

fn llm(cfg: LlmConfig) -> LlmSummarizer {
    LlmSummarizer::new(cfg).unwrap()
}

fn retriable(r: Result<Option<String>, StageError>) -> String {
    match r {
        Err(StageError::Retriable(reason)) => reason,
        other => panic!("expected a retriable failure, got {other:?}"),
    }
}

fn permanent(r: Result<Option<String>, StageError>) -> String {
    match r {
        Err(StageError::Permanent(reason)) => reason,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

const TEXT: &str = "Kafka transactions make the outputs of a stage atomic with its offsets. \
    The dedup state skips replays of records already processed.\n\n\
    Compacted topics keep the latest state per artifact.";

#[tokio::test]
async fn one_request_with_model_key_and_text() {
    let server =
        ChatServer::start(|_, _| Reply::completion("  The pipeline is\n exactly once. ")).await;
    let s = llm(config(&server.base_url));

    let summary = s.summarize(TEXT).await.unwrap();

    assert_eq!(summary.as_deref(), Some("The pipeline is exactly once."));
    assert_eq!(s.method(), "llm:test-model-1");
    let calls = server.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.authorization.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    assert_eq!(call.body["model"], "test-model-1");
    assert_eq!(call.body["temperature"], 0.0);
    assert_eq!(call.body["max_tokens"], 300);
    assert_eq!(call.body["messages"][0]["role"], "system");
    assert_eq!(call.body["messages"][1]["role"], "user");
    let prompt = call.user_prompt();
    assert!(prompt.contains("at most 600 characters"), "{prompt}");
    assert!(prompt.ends_with(TEXT), "the whole text is sent: {prompt}");
}

#[tokio::test]
async fn trailing_slash_and_no_key() {
    let server = ChatServer::start(|_, _| Reply::completion("Fine.")).await;
    let s = llm(LlmConfig {
        api_key: None,
        ..config(&format!("{}/", server.base_url))
    });
    assert_eq!(s.summarize(TEXT).await.unwrap().as_deref(), Some("Fine."));
    let calls = server.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].authorization, None);
}

#[tokio::test]
async fn text_without_letters_sends_nothing() {
    let server = ChatServer::start(|_, _| Reply::completion("Never.")).await;
    let s = llm(config(&server.base_url));
    assert_eq!(s.summarize("").await.unwrap(), None);
    assert_eq!(s.summarize(" \n\n ... --- \u{c}").await.unwrap(), None);
    assert!(server.calls().is_empty());
}

#[tokio::test]
async fn summary_is_bounded() {
    let long = "This sentence is part of a long answer. ".repeat(40);
    let server = ChatServer::start(move |_, _| Reply::completion(&long)).await;
    let s = llm(LlmConfig {
        max_summary_chars: 100,
        ..config(&server.base_url)
    });
    let summary = s.summarize(TEXT).await.unwrap().unwrap();
    assert!(summary.chars().count() <= 100, "{summary}");
    assert!(summary.starts_with("This sentence is part of a long answer."));
}

/// Paragraphs tagged `P00`, `P01`, … so that the server can tell which
/// reached it.
fn tagged_text(paragraphs: usize, words: usize) -> String {
    (0..paragraphs)
        .map(|i| {
            let body = (0..words)
                .map(|w| format!("word{w}"))
                .collect::<Vec<_>>()
                .join(" ");
            format!("P{i:02} starts here. {body}.")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn tags(prompt: &str) -> Vec<String> {
    prompt
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| {
            w.len() == 3 && w.starts_with('P') && w[1..].chars().all(|c| c.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn long_text_is_mapped_then_reduced() {
    // Each map answer names the paragraphs it saw; the reduce answers "Whole.".
    let server = ChatServer::start(|_, call| {
        let prompt = call.user_prompt();
        if prompt.starts_with("The following is part") {
            Reply::completion(&format!("Saw {}.", tags(prompt).join(" ")))
        } else {
            Reply::completion("Whole.")
        }
    })
    .await;
    let text = tagged_text(12, 40);
    let cfg = LlmConfig {
        chunk_chars: 700,
        max_summary_chars: 100,
        ..config(&server.base_url)
    };
    let expected_chunks = chunks(&text, cfg.chunk_chars);
    assert!(expected_chunks.len() > 2, "the text needs several chunks");
    let s = llm(cfg);

    let summary = s.summarize(&text).await.unwrap();

    assert_eq!(summary.as_deref(), Some("Whole."));
    let calls = server.calls();
    let n = expected_chunks.len();
    assert_eq!(calls.len(), n + 1, "{n} map requests and one reduce");
    let (maps, reduces): (Vec<&Call>, Vec<&Call>) = calls
        .iter()
        .partition(|c| c.user_prompt().starts_with("The following is part"));
    assert_eq!(maps.len(), n);
    assert_eq!(reduces.len(), 1);
    // Every paragraph went to exactly one map request; each part once.
    let mut seen: Vec<String> = maps.iter().flat_map(|c| tags(c.user_prompt())).collect();
    seen.sort();
    let all: Vec<String> = (0..12).map(|i| format!("P{i:02}")).collect();
    assert_eq!(seen, all);
    for i in 1..=n {
        let label = format!("part {i} of {n} ");
        assert_eq!(
            maps.iter()
                .filter(|c| c.user_prompt().contains(&label))
                .count(),
            1,
            "{label}"
        );
    }
    // The reduce got every partial summary, in the text's order.
    let reduce = reduces[0].user_prompt();
    assert!(
        reduce.contains("Combine them into one summary of the whole text"),
        "{reduce}"
    );
    assert_eq!(tags(reduce), all, "{reduce}");
}

#[tokio::test]
async fn partial_summaries_too_long_for_one_request_are_combined_in_rounds() {
    // Every answer is exactly 100 characters; a chunk of 202 holds two.
    let answer = format!("{}.", "x".repeat(99));
    let server = ChatServer::start(move |_, _| Reply::completion(&answer)).await;
    // Eight paragraphs of about 150 characters: one chunk each.
    let text = tagged_text(8, 20);
    let cfg = LlmConfig {
        chunk_chars: 202,
        max_summary_chars: 100,
        ..config(&server.base_url)
    };
    assert_eq!(chunks(&text, cfg.chunk_chars).len(), 8);
    let s = llm(cfg);

    let summary = s.summarize(&text).await.unwrap().unwrap();

    assert_eq!(summary.chars().count(), 100);
    let prompts: Vec<String> = server
        .calls()
        .iter()
        .map(|c| c.user_prompt().to_owned())
        .collect();
    let count = |prefix: &str| prompts.iter().filter(|p| p.starts_with(prefix)).count();
    assert_eq!(count("The following is part"), 8);
    // 8 partials → 4 groups of two → 2 groups → one final request.
    assert_eq!(
        count("The following are summaries of consecutive parts of a longer text"),
        4 + 2
    );
    assert_eq!(
        count("The following are summaries of consecutive parts of one text"),
        1
    );
    assert_eq!(prompts.len(), 15);
}

#[tokio::test]
async fn map_requests_run_concurrently_within_the_limit() {
    let server = ChatServer::start(|_, call| Reply {
        delay: Duration::from_millis(150),
        ..Reply::completion(&format!("Saw {}.", tags(call.user_prompt()).join(" ")))
    })
    .await;
    let text = tagged_text(9, 40);
    let s = llm(LlmConfig {
        chunk_chars: 300,
        max_summary_chars: 100,
        concurrency: 3,
        ..config(&server.base_url)
    });
    s.summarize(&text).await.unwrap().unwrap();
    let max = server.max_in_flight();
    assert!(
        (2..=3).contains(&max),
        "at most 3 at once, and more than one: {max}"
    );
}

#[tokio::test]
async fn text_over_the_chunk_limit_fails_permanently_without_requests() {
    let server = ChatServer::start(|_, _| Reply::completion("Never.")).await;
    let s = llm(LlmConfig {
        chunk_chars: 300,
        max_summary_chars: 100,
        max_chunks: 3,
        ..config(&server.base_url)
    });
    let reason = permanent(s.summarize(&tagged_text(9, 40)).await);
    assert!(reason.contains("more than LLM_MAX_CHUNKS=3"), "{reason}");
    assert!(server.calls().is_empty());
}

#[tokio::test]
async fn rate_limited_without_retry_after_then_succeeds_on_the_retry() {
    let server = ChatServer::start(|n, _| {
        if n == 0 {
            Reply::error(429, "Rate limit reached for requests")
        } else {
            Reply::completion("After the wait.")
        }
    })
    .await;
    let s = llm(config(&server.base_url));

    // The runner retries a retriable failure; here the test is the runner.
    let reason = retriable(s.summarize(TEXT).await);
    assert_eq!(
        reason,
        "the LLM endpoint answered 429 Too Many Requests: Rate limit reached for requests"
    );
    assert_eq!(
        s.summarize(TEXT).await.unwrap().as_deref(),
        Some("After the wait.")
    );
    assert_eq!(server.calls().len(), 2);
}

#[tokio::test]
async fn retry_after_in_seconds_is_waited_then_the_request_sent_again() {
    let server = ChatServer::start(|n, _| {
        if n == 0 {
            Reply::error(429, "Rate limit reached for requests").retry_after("1")
        } else {
            Reply::completion("After the wait.")
        }
    })
    .await;
    let s = llm(config(&server.base_url));

    let summary = s.summarize(TEXT).await.unwrap();

    assert_eq!(summary.as_deref(), Some("After the wait."));
    let calls = server.calls();
    assert_eq!(calls.len(), 2, "sent again within the same attempt");
    let gap = calls[1].received - calls[0].received;
    assert!(gap >= Duration::from_secs(1), "sent again after {gap:?}");
    assert_eq!(calls[1].body, calls[0].body, "the same request");
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_waited() {
    let asked = Arc::new(Mutex::new(None));
    let date = asked.clone();
    let server = ChatServer::start(move |n, _| {
        if n == 0 {
            let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
            *date.lock().unwrap() = Some(httpdate::parse_http_date(&at).unwrap());
            Reply::error(503, "Overloaded").retry_after(at)
        } else {
            Reply::completion("After the date.")
        }
    })
    .await;
    let s = llm(config(&server.base_url));

    let summary = s.summarize(TEXT).await.unwrap();

    assert_eq!(summary.as_deref(), Some("After the date."));
    let calls = server.calls();
    assert_eq!(calls.len(), 2);
    let asked = asked.lock().unwrap().unwrap();
    assert!(
        calls[1].received_at >= asked,
        "sent again at {:?}, before the date {asked:?}",
        calls[1].received_at
    );
}

#[tokio::test]
async fn a_retry_after_past_the_budget_fails_retriably_and_holds_the_stage() {
    let server = ChatServer::start(|_, _| {
        Reply::error(429, "Rate limit reached for requests").retry_after("60")
    })
    .await;
    let s = llm(LlmConfig {
        timeout: Duration::from_secs(2),
        attempt: BudgetLimits {
            time: Duration::from_secs(2),
            requests: 64,
        },
        ..config(&server.base_url)
    });

    let reason = retriable(s.summarize(TEXT).await);
    assert_eq!(
        reason,
        "this attempt's LLM budget of 2000 ms (LLM_ATTEMPT_BUDGET_MS) ends before the wait the \
         LLM endpoint asked for: the LLM endpoint answered 429 Too Many Requests \
         (Retry-After: 60): Rate limit reached for requests"
    );
    assert_eq!(server.calls().len(), 1);

    // Another record of the stage (the stage shares one summarizer) is held
    // by the same pause: it fails without sending anything.
    let other = s.clone();
    let reason = retriable(other.summarize("Another text.").await);
    assert!(
        reason.contains("ends before the pause the LLM endpoint asked for (Retry-After)"),
        "{reason}"
    );
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn re_sends_count_against_the_attempts_requests() {
    let server = ChatServer::start(|_, _| Reply::error(429, "Slow down").retry_after("0")).await;
    let s = llm(LlmConfig {
        attempt: BudgetLimits {
            time: Duration::from_secs(10),
            requests: 3,
        },
        ..config(&server.base_url)
    });
    let reason = retriable(s.summarize(TEXT).await);
    assert_eq!(
        reason,
        "this attempt sent its 3 LLM requests (LLM_ATTEMPT_MAX_REQUESTS) without finishing the \
         summary; the last answer: the LLM endpoint answered 429 Too Many Requests \
         (Retry-After: 0): Slow down"
    );
    assert_eq!(server.calls().len(), 3);
}

#[tokio::test]
async fn a_request_is_cut_off_at_the_attempts_time_budget() {
    let server = ChatServer::start(|_, _| Reply {
        delay: Duration::from_secs(5),
        ..Reply::completion("Too late.")
    })
    .await;
    let s = llm(LlmConfig {
        timeout: Duration::from_secs(10),
        attempt: BudgetLimits {
            time: Duration::from_millis(300),
            requests: 64,
        },
        ..config(&server.base_url)
    });
    let reason = retriable(s.summarize(TEXT).await);
    let endpoint = format!("{}/chat/completions", server.base_url);
    assert_eq!(
        reason,
        format!(
            "this attempt's LLM budget of 300 ms (LLM_ATTEMPT_BUDGET_MS) ran out during a \
             request to {endpoint}"
        )
    );
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn the_rate_limit_is_shared_by_the_records_processed_at_once() {
    let server = ChatServer::start(|_, _| Reply::completion("Fine.")).await;
    // One request every two seconds, and three seconds per attempt: of
    // three records at once, the first goes now, the second after two
    // seconds, and the third, four seconds away, is refused unsent.
    let s = llm(LlmConfig {
        rate_per_second: 0.5,
        timeout: Duration::from_secs(3),
        attempt: BudgetLimits {
            time: Duration::from_secs(3),
            requests: 64,
        },
        ..config(&server.base_url)
    });

    let records = (0..3).map(|_| s.summarize(TEXT));
    let (mut done, mut refused) = (0, Vec::new());
    for summary in futures::future::join_all(records).await {
        match summary {
            Ok(summary) => {
                assert_eq!(summary.as_deref(), Some("Fine."));
                done += 1;
            }
            Err(e) => refused.push(e),
        }
    }

    assert_eq!(done, 2, "refused: {refused:?}");
    assert_eq!(
        refused,
        [StageError::Retriable(
            "this attempt's LLM budget of 3000 ms (LLM_ATTEMPT_BUDGET_MS) ends before the \
             stage's rate limit lets a request go (LLM_RATE_PER_SECOND=0.5, shared by the \
             records processed at once)"
                .into()
        )]
    );
    assert_eq!(server.calls().len(), 2, "the third request was not sent");
}

#[tokio::test]
async fn a_rate_limit_wait_past_the_budget_fails_retriably() {
    let server = ChatServer::start(|_, _| Reply::completion("Fine.")).await;
    // One request every two seconds; an attempt has one second.
    let s = llm(LlmConfig {
        rate_per_second: 0.5,
        timeout: Duration::from_secs(1),
        attempt: BudgetLimits {
            time: Duration::from_secs(1),
            requests: 64,
        },
        ..config(&server.base_url)
    });
    assert_eq!(s.summarize(TEXT).await.unwrap().as_deref(), Some("Fine."));
    let reason = retriable(s.summarize(TEXT).await);
    assert_eq!(
        reason,
        "this attempt's LLM budget of 1000 ms (LLM_ATTEMPT_BUDGET_MS) ends before the stage's \
         rate limit lets a request go (LLM_RATE_PER_SECOND=0.5, shared by the records processed \
         at once)"
    );
    assert_eq!(server.calls().len(), 1, "the second request was not sent");
}

#[tokio::test]
async fn server_errors_are_retriable() {
    for status in [500, 502, 503] {
        let server =
            ChatServer::start(move |_, _| Reply::error(status, "The server had an error")).await;
        let reason = retriable(llm(config(&server.base_url)).summarize(TEXT).await);
        assert!(reason.contains(&format!("answered {status}")), "{reason}");
        assert!(reason.ends_with("The server had an error"), "{reason}");
    }
}

#[tokio::test]
async fn client_errors_are_permanent_with_the_servers_message() {
    let server = ChatServer::start(|_, _| {
        Reply::error(
            400,
            "This model's maximum context length is 8192 tokens. Please reduce the length.",
        )
    })
    .await;
    let reason = permanent(llm(config(&server.base_url)).summarize(TEXT).await);
    assert_eq!(
        reason,
        "the LLM endpoint answered 400 Bad Request: This model's maximum context length is \
         8192 tokens. Please reduce the length."
    );

    let server = ChatServer::start(|_, _| Reply::error(401, "Incorrect API key provided")).await;
    let reason = permanent(llm(config(&server.base_url)).summarize(TEXT).await);
    assert!(
        reason.contains("401 Unauthorized: Incorrect API key provided (check LLM_API_KEY)"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_failing_part_fails_the_whole_summary() {
    let server = ChatServer::start(|_, call| {
        if tags(call.user_prompt()).contains(&"P04".to_owned()) {
            Reply::error(400, "part P04 refused")
        } else {
            Reply::completion("Part summary.")
        }
    })
    .await;
    let s = llm(LlmConfig {
        chunk_chars: 300,
        max_summary_chars: 100,
        concurrency: 2,
        ..config(&server.base_url)
    });
    let reason = permanent(s.summarize(&tagged_text(9, 40)).await);
    assert!(reason.ends_with("part P04 refused"), "{reason}");
    let reduces = server
        .calls()
        .iter()
        .filter(|c| c.user_prompt().contains("Combine"))
        .count();
    assert_eq!(reduces, 0, "no reduce after a failed part");
}

#[tokio::test]
async fn empty_200_is_retriable() {
    let server = ChatServer::start(|_, _| Reply::json(200, json!({"choices": []}))).await;
    let reason = retriable(llm(config(&server.base_url)).summarize(TEXT).await);
    assert!(reason.contains("without choices"), "{reason}");

    let server = ChatServer::start(|_, _| Reply::completion("   ")).await;
    let reason = retriable(llm(config(&server.base_url)).summarize(TEXT).await);
    assert!(reason.contains("empty message"), "{reason}");
}

#[tokio::test]
async fn a_slow_server_times_out_as_retriable() {
    let server = ChatServer::start(|_, _| Reply {
        delay: Duration::from_secs(5),
        ..Reply::completion("Too late.")
    })
    .await;
    let s = llm(LlmConfig {
        timeout: Duration::from_millis(300),
        ..config(&server.base_url)
    });
    // The reason names the timeout: the answer due in 5 s was not awaited.
    let reason = retriable(s.summarize(TEXT).await);
    assert!(
        reason.contains("did not answer within 300 ms (LLM_TIMEOUT_MS)"),
        "{reason}"
    );
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_retriable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = llm(config(&format!("http://127.0.0.1:{port}/v1")));
    let reason = retriable(s.summarize(TEXT).await);
    assert!(
        reason.starts_with("cannot connect to the LLM endpoint"),
        "{reason}"
    );
}

#[tokio::test]
async fn the_stage_records_the_llm_method_and_skips_empty_texts() {
    let server = ChatServer::start(|_, _| Reply::completion("A stage summary.")).await;
    let root = std::env::temp_dir().join(format!("summarizer-llm-{}", ArtifactId::new_random()));
    std::fs::create_dir_all(&root).unwrap();
    let blobs = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
    let text = blobs.location("texts/a.txt");
    blobs.put(&text, TEXT.as_bytes()).await.unwrap();
    let empty = blobs.location("texts/empty.txt");
    blobs.put(&empty, b" \n ").await.unwrap();
    let stage = SummaryStage {
        blobs,
        options: SummaryOptions::default(),
        max_text_bytes: 1 << 20,
        backend: Backend::Llm(Box::new(llm(config(&server.base_url)))),
        attempt_timeout: Duration::from_secs(30),
    };

    let done = stage.process(&parsed(Some(text)), &record()).await.unwrap();
    assert_eq!(done.outcome, Outcome::Succeeded);
    let result = done.result.unwrap();
    assert_eq!(result.method, "llm:test-model-1");
    assert_eq!(result.summary, "A stage summary.");

    let done = stage
        .process(&parsed(Some(empty)), &record())
        .await
        .unwrap();
    assert_eq!(
        done.outcome,
        Outcome::skipped("the extracted text is empty")
    );
    let done = stage.process(&parsed(None), &record()).await.unwrap();
    assert_eq!(done.outcome, Outcome::skipped("no text to summarize"));
    assert_eq!(server.calls().len(), 1, "only the text reached the server");
    std::fs::remove_dir_all(&root).unwrap();
}
