//! Pausing a stage and its circuit breaker, against the real broker and
//! registry. `artifactctl stage pause` holds a running stage's new input
//! back while it stays ready, keeps its partitions and shows the backlog
//! as lag; `stage resume` drains it. The summarizer, pointed at an LLM
//! server on 127.0.0.1 that answers 503, trips its breaker instead of
//! failing its artifacts, probes, and completes every one once the server
//! answers 200 again; a record that keeps failing on its own does not keep
//! the breaker open after the server recovered.

use artifact_domain::*;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::{StageProcess, TestEnv, chat_completion, parsed_text, wait_until};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");

/// Runs `artifactctl stage <args>` on the env's topics; its stdout.
fn artifactctl(env: &TestEnv, args: &[&str]) -> String {
    let out = std::process::Command::new(Path::new(BIN).with_file_name("artifactctl"))
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.conn.kafka_bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &env.conn.schema_registry_url)
        .env("TOPIC_PREFIX", &env.conn.topic_prefix)
        .arg("stage")
        .args(args)
        .output()
        .expect("artifactctl runs");
    assert!(
        out.status.success(),
        "artifactctl stage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Records of `topic` the stages' group has not committed.
fn group_lag(env: &TestEnv, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer =
        artifact_kafka::client::consumer_config(&env.conn, "test-lag", &env.stage_group())
            .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..env.partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut lag = 0;
    for e in committed.elements() {
        let (_, end) = consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
        lag += end - e.offset().to_raw().unwrap_or(0).max(0);
    }
    Ok(lag)
}

async fn outputs(env: &TestEnv) -> usize {
    env.read_all(&env.names.output(Stage::MimeDetector))
        .map_or(0, |v| v.len())
}

/// Produces `n` artifacts and waits until the stage processed them.
async fn processed_first(env: &TestEnv, n: usize) -> anyhow::Result<()> {
    let before: Vec<ArtifactCreated> = (0..n)
        .map(|i| TestEnv::created(&format!("before-{i}")))
        .collect();
    env.produce_created(&before).await?;
    wait_until(
        "the first artifacts processed",
        Duration::from_secs(60),
        || async { outputs(env).await == n },
    )
    .await
}

/// Whether `stage` reports the operator's pause.
async fn paused(stage: &StageProcess) -> bool {
    stage
        .exported_metric("artifact_stage_paused", &["cause=\"operator\""])
        .await
        == Some(1.0)
}

/// Waits until `stage`'s own lag gauge counts the `backlog` (its
/// consumer's view of the end of the partitions it owns: it has seen those
/// records and holds them back), then checks that nothing past `done`
/// outputs was processed and that the stage stays ready.
async fn holds_backlog(
    env: &TestEnv,
    stage: &StageProcess,
    done: usize,
    backlog: i64,
) -> anyhow::Result<()> {
    let input = env.names.input(Stage::MimeDetector);
    wait_until(
        "the stage's lag gauge showing the backlog",
        Duration::from_secs(60),
        || async {
            stage
                .metric(
                    "artifact_pipeline_consumer_lag",
                    &[&format!("topic=\"{input}\"")],
                )
                .await
                == backlog as f64
        },
    )
    .await?;
    assert_eq!(outputs(env).await, done, "nothing processed while paused");
    assert_eq!(
        group_lag(env, &input)?,
        backlog,
        "the group's lag is the backlog"
    );
    assert!(stage.is_ready().await, "a paused stage stays ready");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_stage_shows_its_backlog_and_resume_drains_it() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(2).await?;
    let stage = StageProcess::start(&env, Path::new(BIN), &[])?;
    let input = env.names.input(Stage::MimeDetector);

    processed_first(&env, 3).await?;

    let said = artifactctl(&env, &["pause", "mime-detector", "--reason", "maintenance"]);
    assert!(said.contains("mime-detector paused"), "{said}");
    wait_until(
        "the stage reports the pause",
        Duration::from_secs(30),
        || async { paused(&stage).await },
    )
    .await?;

    let backlog: Vec<ArtifactCreated> = (0..5)
        .map(|i| TestEnv::created(&format!("held-{i}")))
        .collect();
    env.produce_created(&backlog).await?;
    holds_backlog(&env, &stage, 3, 5).await?;
    let status = artifactctl(&env, &["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("mime-detector"))
        .unwrap_or_default();
    assert!(
        line.contains("paused") && line.contains("maintenance"),
        "{status}"
    );

    let resumed = artifactctl(&env, &["resume", "mime-detector"]);
    assert!(resumed.contains("mime-detector resumed"), "{resumed}");
    wait_until("the backlog drained", Duration::from_secs(60), || async {
        outputs(&env).await == 8 && group_lag(&env, &input).is_ok_and(|l| l == 0)
    })
    .await?;
    assert!(!paused(&stage).await, "resumed");
    let status = artifactctl(&env, &["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("mime-detector") && l.contains("running")),
        "{status}"
    );
    Ok(())
}

/// A pause holds across rebalances: a replica that joins a paused stage
/// holds its partitions too, and once the replica that was paused first
/// leaves, the newcomer owns every partition, holds the whole backlog, and
/// drains it once on resume.
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_holds_across_a_rebalance() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(4).await?;
    let input = env.names.input(Stage::MimeDetector);
    let instance = |name: &str| vec![("INSTANCE_ID", name.to_owned())];
    let mut first = StageProcess::start(&env, Path::new(BIN), &instance("first"))?;
    processed_first(&env, 4).await?;

    artifactctl(&env, &["pause", "mime-detector"]);
    wait_until(
        "the first replica paused",
        Duration::from_secs(30),
        || async { paused(&first).await },
    )
    .await?;
    let second = StageProcess::start(&env, Path::new(BIN), &instance("second"))?;
    wait_until(
        "the joining replica paused",
        Duration::from_secs(60),
        || async { paused(&second).await },
    )
    .await?;
    let backlog: Vec<ArtifactCreated> = (0..6)
        .map(|i| TestEnv::created(&format!("held-{i}")))
        .collect();
    env.produce_created(&backlog).await?;
    assert!(first.terminate(Duration::from_secs(30)), "a clean exit");
    // The replica left owns all four partitions once it holds the whole
    // backlog.
    holds_backlog(&env, &second, 4, 6).await?;

    artifactctl(&env, &["resume", "mime-detector"]);
    wait_until("the backlog drained", Duration::from_secs(60), || async {
        outputs(&env).await == 10 && group_lag(&env, &input).is_ok_and(|l| l == 0)
    })
    .await?;
    let out: Vec<MimeDetected> = env
        .read_decoded(&env.names.output(Stage::MimeDetector))
        .await?;
    let ids: std::collections::HashSet<_> = out.iter().map(|o| o.artifact_id).collect();
    assert_eq!(ids.len(), 10, "each artifact processed once: {out:?}");
    Ok(())
}

/// An OpenAI-compatible endpoint that answers 503 while `failing` is set,
/// and always to a text holding [`STUCK`], counting the requests.
#[derive(Default)]
struct Llm {
    failing: AtomicBool,
    requests: AtomicUsize,
}

/// Marks the text of a record the LLM never summarizes.
const STUCK: &str = "fails-on-its-own";

async fn chat(State(llm): State<Arc<Llm>>, body: String) -> Response {
    llm.requests.fetch_add(1, Ordering::Relaxed);
    if llm.failing.load(Ordering::Relaxed) || body.contains(STUCK) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/json")],
            json!({"error": {"message": "overloaded", "type": "test_error"}}).to_string(),
        )
            .into_response();
    }
    (
        [("content-type", "application/json")],
        chat_completion("breaker-model", "A summary after the outage."),
    )
        .into_response()
}

/// A failing LLM server on loopback, a summarizer with a small breaker in
/// front of it, and parsed texts for it.
struct Breaking {
    llm: Arc<Llm>,
    env: TestEnv,
    root: PathBuf,
    inputs: Vec<Parsed>,
}

impl Breaking {
    /// `texts` parsed texts over `partitions` partitions, the LLM failing.
    async fn new(partitions: usize, texts: &[String]) -> anyhow::Result<Self> {
        let llm = Arc::new(Llm::default());
        llm.failing.store(true, Ordering::Relaxed);
        let env = TestEnv::new(partitions).await?;
        let root = std::env::temp_dir().join(format!("breaker-{}", uuid::Uuid::new_v4().simple()));
        let mut inputs = vec![];
        for (i, text) in texts.iter().enumerate() {
            let path = root.join("texts").join(format!("{i}.txt"));
            std::fs::create_dir_all(path.parent().unwrap())?;
            std::fs::write(&path, text)?;
            inputs.push(parsed_text(format!("file://{}", path.display())));
        }
        Ok(Breaking {
            llm,
            env,
            root,
            inputs,
        })
    }

    async fn produce(&self) -> anyhow::Result<()> {
        self.env
            .produce_events(
                &self.env.names.input(Stage::Summarizer),
                EventSchema::Parsed,
                &self.inputs,
            )
            .await
    }

    /// The summarizer, against the LLM server.
    async fn start(&self, instance: &str) -> anyhow::Result<StageProcess> {
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(self.llm.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let llm_url = format!("http://{}/v1", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let bin = PathBuf::from(BIN).with_file_name("summarizer");
        anyhow::ensure!(
            bin.exists(),
            "{} is not built (cargo build --workspace --bins)",
            bin.display()
        );
        // Without the breaker, three deliveries of two attempts would fail
        // every artifact within a second.
        let vars = vec![
            ("BLOB_STORE_URL", format!("file://{}", self.root.display())),
            ("SUMMARIZER_BACKEND", "llm".to_owned()),
            ("LLM_BASE_URL", llm_url),
            ("LLM_MODEL", "breaker-model".to_owned()),
            ("LLM_API_KEY", "sk-breaker".to_owned()),
            ("RETRY_INLINE_ATTEMPTS", "2".to_owned()),
            ("RETRY_INLINE_BACKOFF_MS", "20".to_owned()),
            ("RETRY_MAX_DELIVERIES", "3".to_owned()),
            ("RETRY_DELAY_MS", "100".to_owned()),
            ("BREAKER_WINDOW", "4".to_owned()),
            ("BREAKER_THRESHOLD", "0.5".to_owned()),
            ("BREAKER_PROBE_MS", "200".to_owned()),
            ("BREAKER_PROBE_MAX_MS", "1000".to_owned()),
            ("INSTANCE_ID", instance.to_owned()),
        ];
        StageProcess::start(&self.env, &bin, &vars)
    }

    /// Every outcome written so far, once there are `n`.
    async fn outcomes(&self, n: usize) -> anyhow::Result<Vec<Summarized>> {
        let output = self.env.names.output(Stage::Summarizer);
        wait_until(
            "every artifact decided",
            Duration::from_secs(60),
            || async { self.env.read_all(&output).is_ok_and(|v| v.len() >= n) },
        )
        .await?;
        self.env.read_decoded::<Summarized>(&output).await
    }
}

impl Drop for Breaking {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn breaker_open(stage: &StageProcess, open: bool) -> anyhow::Result<()> {
    let want = if open { 1.0 } else { 0.0 };
    wait_until(
        if open {
            "the breaker open"
        } else {
            "the breaker closed"
        },
        Duration::from_secs(60),
        || async {
            stage
                .metric("artifact_stage_paused", &["cause=\"breaker\""])
                .await
                == want
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_trips_on_an_llm_outage_and_no_artifact_fails() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let texts: Vec<String> = (0..6)
        .map(|i| format!("Notes {i}: each stage runs as its own service."))
        .collect();
    let b = Breaking::new(2, &texts).await?;
    let (env, llm) = (&b.env, &b.llm);
    let stage = b.start("summarizer-breaker-test").await?;
    b.produce().await?;

    breaker_open(&stage, true).await?;
    // Probes keep going, one record at a time.
    let at_open = llm.requests.load(Ordering::Relaxed);
    wait_until(
        "probes of the open breaker",
        Duration::from_secs(30),
        || async { llm.requests.load(Ordering::Relaxed) >= at_open + 3 },
    )
    .await?;
    assert!(stage.is_ready().await, "a tripped stage stays ready");
    wait_until(
        "the breaker's report in stage status",
        Duration::from_secs(30),
        || async {
            artifactctl(env, &["status"]).lines().any(|l| {
                l.contains("tripped") && l.contains("summarizer-breaker-test") && l.contains("503")
            })
        },
    )
    .await?;
    let output = env.names.output(Stage::Summarizer);
    let outcomes = env.read_decoded::<Summarized>(&output).await?;
    assert!(
        outcomes.is_empty(),
        "nothing decided while open: {outcomes:?}"
    );

    llm.failing.store(false, Ordering::Relaxed);
    let outcomes = b.outcomes(b.inputs.len()).await?;
    assert_eq!(
        outcomes.len(),
        b.inputs.len(),
        "one outcome each: {outcomes:?}"
    );
    for o in &outcomes {
        assert_eq!(o.outcome, Outcome::Succeeded, "no artifact FAILED: {o:?}");
    }
    breaker_open(&stage, false).await?;
    wait_until(
        "the breaker's report closed",
        Duration::from_secs(30),
        || async { !artifactctl(env, &["status"]).contains("tripped") },
    )
    .await?;
    Ok(())
}

/// One partition, its first record failing on its own: it is the only
/// record a probe can take, so after failing a few probes in a row its
/// attempt counts as a delivery, the next record probes, the breaker
/// closes, and the record's last delivery fails it as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_failing_on_its_own_does_not_keep_the_breaker_open() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let mut texts = vec![format!("Notes: {STUCK}.")];
    texts.extend((0..5).map(|i| format!("Notes {i}: each stage runs as its own service.")));
    let b = Breaking::new(1, &texts).await?;
    // Produced before the stage starts, so that its first batch holds them
    // all and the breaker opens while the failing record is the first.
    b.produce().await?;
    let stage = b.start("summarizer-stuck-probe-test").await?;
    breaker_open(&stage, true).await?;
    b.llm.failing.store(false, Ordering::Relaxed);

    let outcomes = b.outcomes(b.inputs.len()).await?;
    let stuck = b.inputs[0].artifact_id;
    for o in &outcomes {
        if o.artifact_id == stuck {
            assert!(
                matches!(&o.outcome, Outcome::Failed { reason, .. } if reason.contains("503")),
                "its deliveries ran out: {o:?}"
            );
        } else {
            assert_eq!(o.outcome, Outcome::Succeeded, "{o:?}");
        }
    }
    assert_eq!(
        outcomes.len(),
        b.inputs.len(),
        "one outcome each: {outcomes:?}"
    );
    breaker_open(&stage, false).await?;
    Ok(())
}
