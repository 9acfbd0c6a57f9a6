//! One trace from upload to summary in a real OTLP receiver: the four
//! stages and artifact-api (with its projector) export their spans to
//! Jaeger (scripts/traces-receiver, started by scripts/test), and the test
//! reads the trace back through Jaeger's query API.

use artifact_pipeline_tests::header;
use artifact_pipeline_tests::pipeline::{Pipeline, TOKEN, fixtures};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

/// The receiver's OTLP endpoint and query URL, or `None` (the test is
/// skipped, by name) when scripts/traces-receiver is not up; under
/// `ARTIFACT_STACK=required` a missing receiver fails the test.
fn receiver() -> Option<(String, String)> {
    let vars = (
        std::env::var("TRACES_OTLP_ENDPOINT"),
        std::env::var("TRACES_QUERY_URL"),
    );
    if let (Ok(otlp), Ok(query)) = vars {
        return Some((otlp, query));
    }
    if std::env::var("ARTIFACT_STACK").is_ok_and(|v| v == "required") {
        panic!(
            "the traces test needs TRACES_OTLP_ENDPOINT and TRACES_QUERY_URL (scripts/traces-receiver up)"
        );
    }
    eprintln!(
        "SKIPPED traces: no OTLP receiver; eval \"$(scripts/traces-receiver up | sed 's/^/export /')\""
    );
    None
}

/// A span as Jaeger's query API returns it.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    parent: Option<String>,
    service: String,
    name: String,
    tags: HashMap<String, Value>,
}

/// The spans of trace `trace_id` (none while Jaeger does not know it).
async fn spans(http: &reqwest::Client, query: &str, trace_id: &str) -> Vec<Span> {
    let Ok(r) = http
        .get(format!("{query}/api/traces/{trace_id}"))
        .send()
        .await
    else {
        return vec![];
    };
    let Ok(body) = r.json::<Value>().await else {
        return vec![];
    };
    let Some(trace) = body["data"].get(0) else {
        return vec![];
    };
    let services: HashMap<&str, &str> = trace["processes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str(), v["serviceName"].as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Span {
            id: s["spanID"].as_str().unwrap_or_default().to_owned(),
            parent: s["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str())
                .map(str::to_owned),
            service: services
                .get(s["processID"].as_str().unwrap_or_default())
                .copied()
                .unwrap_or_default()
                .to_owned(),
            name: s["operationName"].as_str().unwrap_or_default().to_owned(),
            tags: s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    (
                        t["key"].as_str().unwrap_or_default().to_owned(),
                        t["value"].clone(),
                    )
                })
                .collect(),
        })
        .collect()
}

const STAGES: [&str; 4] = [
    "mime-detector",
    "location-logger",
    "pdf-parser",
    "summarizer",
];

/// Whether the trace holds the upload's spans, a span of every stage and
/// the projector's fold of the summary.
fn complete(spans: &[Span], summarized: &str) -> bool {
    let api = |pred: &dyn Fn(&str) -> bool| {
        spans
            .iter()
            .any(|x| x.service == "artifact-api" && pred(&x.name))
    };
    STAGES.iter().all(|s| spans.iter().any(|x| x.service == *s))
        && api(&|n| n == "POST /v1/artifacts")
        && api(&|n| n.starts_with("send "))
        && api(&|n| n == format!("fold {summarized}"))
}

/// `span`'s ancestors, nearest first, as far as the trace holds them.
fn ancestors<'a>(spans: &'a [Span], span: &'a Span) -> Vec<&'a Span> {
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut chain = vec![];
    let mut at = span;
    while let Some(parent) = at.parent.as_deref().and_then(|p| by_id.get(p)) {
        assert!(chain.len() < spans.len(), "a cycle of parents");
        chain.push(*parent);
        at = parent;
    }
    chain
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_an_upload_to_its_summary() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let Some((otlp, query)) = receiver() else {
        return Ok(());
    };
    let p = Pipeline::start_with(
        Path::new(BIN_DIR_OF).parent().unwrap(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
            // Export within a fraction of a second rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    )
    .await?;

    // The caller's own trace: the upload continues it.
    let caller_trace = format!("{:032x}", rand::random::<u128>() | 1);
    let caller_span = "00f067aa0ba902b7";
    let resp = p
        .http
        .post(p.url("/v1/artifacts?filename=report.pdf"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/pdf")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .body(std::fs::read(fixtures().join("text/fpdf2-3.pdf"))?)
        .send()
        .await?;
    let id = Pipeline::accepted_id(resp).await?;
    p.wait_final(&id, 1).await?;

    // The created event carries the upload's context, in the caller's trace.
    let created = p.env.read_all(&p.env.names.created())?;
    let tp = header(&created[0], "traceparent").expect("ArtifactCreated carries a traceparent");
    assert!(tp.starts_with(&format!("00-{caller_trace}-")), "{tp}");

    let summarized = p.env.names.output(artifact_domain::Stage::Summarizer);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let trace = loop {
        let trace = spans(&http, &query, &caller_trace).await;
        if complete(&trace, &summarized) {
            break trace;
        }
        let seen: Vec<(&str, &str)> = trace
            .iter()
            .map(|s| (s.service.as_str(), s.name.as_str()))
            .collect();
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out waiting for the trace in Jaeger with every stage and the projector's fold; it holds {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The upload: the API's server span, a child of the caller's span.
    let upload = trace
        .iter()
        .find(|s| s.service == "artifact-api" && s.name == "POST /v1/artifacts")
        .expect("the upload's span");
    assert_eq!(upload.parent.as_deref(), Some(caller_span));
    // Jaeger writes integers as JSON strings.
    assert_eq!(upload.tags["http.response.status_code"], "202");

    // Each stage's processing is a child of the one before it (the first
    // of the API's send), and every chain reaches the upload.
    let mut before = trace
        .iter()
        .find(|s| s.service == "artifact-api" && s.name.starts_with("send "))
        .expect("the API's send span");
    assert_eq!(before.parent.as_deref(), Some(upload.id.as_str()));
    for stage in STAGES {
        let span = trace
            .iter()
            .find(|s| s.service == stage)
            .unwrap_or_else(|| panic!("no span of {stage}"));
        assert_eq!(
            span.parent.as_deref(),
            Some(before.id.as_str()),
            "{stage}'s parent is {} of {}",
            before.name,
            before.service
        );
        assert!(
            ancestors(&trace, span).iter().any(|a| a.id == upload.id),
            "{stage} reaches the upload"
        );
        // Messaging attributes, as OpenTelemetry's conventions name them.
        assert_eq!(span.tags["span.kind"], "consumer", "{stage}");
        assert_eq!(span.tags["messaging.system"], "kafka");
        assert_eq!(span.tags["messaging.kafka.message.key"], id.as_str());
        assert_eq!(
            span.tags["messaging.consumer.group.name"],
            format!("{}.{stage}", p.env.conn.topic_prefix)
        );
        for key in [
            "messaging.destination.name",
            "messaging.destination.partition.id",
            "messaging.kafka.offset",
        ] {
            assert!(span.tags.contains_key(key), "{stage} lacks {key}");
        }
        before = span;
    }
    // The projector's fold of the summary is the summarizer's child.
    let fold = trace
        .iter()
        .find(|s| s.name == format!("fold {summarized}"))
        .expect("the fold of the summary");
    assert_eq!(fold.parent.as_deref(), Some(before.id.as_str()));
    assert_eq!(fold.tags["messaging.destination.name"], summarized.as_str());
    Ok(())
}
