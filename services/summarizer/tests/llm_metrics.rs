//! The LLM backend's metrics, read from the process's Prometheus recorder
//! after requests to a real HTTP server on 127.0.0.1. In a test binary of
//! its own: the recorder is process-wide, and other tests would add to it.

mod common;

use artifact_runtime::telemetry::metrics_handle;
use common::{ChatServer, Reply};
use std::time::Duration;
use summarizer::budget::BudgetLimits;
use summarizer::llm::{LlmConfig, LlmSummarizer};
use summarizer::llm_metrics;

fn config(base_url: &str, rate_per_second: f64, requests: u32) -> LlmConfig {
    LlmConfig {
        base_url: base_url.parse().unwrap(),
        model: "m".into(),
        api_key: None,
        timeout: Duration::from_secs(10),
        chunk_chars: 12_000,
        max_chunks: 32,
        concurrency: 4,
        max_tokens: None,
        temperature: None,
        max_summary_chars: 600,
        attempt: BudgetLimits {
            time: Duration::from_secs(10),
            requests,
        },
        rate_per_second,
    }
}

/// The value of the series `series` (name and labels as rendered).
fn value(rendered: &str, series: &str) -> f64 {
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{rendered}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn requests_waits_and_budgets_are_counted() {
    let handle = metrics_handle();
    llm_metrics::describe();
    let server = ChatServer::start(|n, _| match n {
        0 => Reply::error(429, "Slow down").retry_after("1"),
        1 => Reply::completion("Fine."),
        2 => Reply::error(400, "Bad request"),
        _ => Reply::error(429, "Slow down").retry_after("0"),
    })
    .await;
    // One request a second: a 429 with a one-second pause, the request sent
    // again, then a second text held by the rate limit and refused.
    let s = LlmSummarizer::new(config(&server.base_url, 1.0, 10)).unwrap();
    assert_eq!(
        s.summarize("A text.").await.unwrap().as_deref(),
        Some("Fine.")
    );
    assert!(s.summarize("Another text.").await.is_err());
    // An attempt allowed a single request, answered 429.
    let once = LlmSummarizer::new(config(&server.base_url, 1000.0, 1)).unwrap();
    assert!(once.summarize("A third text.").await.is_err());
    assert_eq!(server.calls().len(), 4);

    let text = handle.render();
    let requests = "artifact_summarizer_llm_requests_total";
    assert!(
        text.contains(&format!(
            "# HELP {requests} Requests sent to the LLM endpoint, by how they ended."
        )),
        "{text}"
    );
    assert_eq!(value(&text, &format!("{requests}{{result=\"ok\"}}")), 1.0);
    assert_eq!(
        value(&text, &format!("{requests}{{result=\"rate_limited\"}}")),
        2.0
    );
    assert_eq!(
        value(&text, &format!("{requests}{{result=\"refused\"}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("{requests}{{result=\"timeout\"}}")),
        0.0
    );
    let waits = "artifact_summarizer_llm_waits_total";
    assert_eq!(
        value(&text, &format!("{waits}{{cause=\"retry_after\"}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("{waits}{{cause=\"rate_limit\"}}")),
        1.0
    );
    let budget = "artifact_summarizer_llm_budget_exhausted_total";
    assert_eq!(
        value(&text, &format!("{budget}{{budget=\"requests\"}}")),
        1.0
    );
    assert_eq!(value(&text, &format!("{budget}{{budget=\"time\"}}")), 0.0);
    assert_eq!(
        value(&text, "artifact_summarizer_llm_request_seconds_count"),
        4.0
    );
    assert!(
        value(
            &text,
            "artifact_summarizer_llm_wait_seconds_sum{cause=\"rate_limit\"}"
        ) > 0.0
    );
}
