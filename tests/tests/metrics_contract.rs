//! The metrics contract between the services and the monitoring files: every
//! metric that the Grafana dashboards (`deploy/grafana/*.json`) and the
//! alerting rules (`deploy/prometheus/rules.yml`) query must be exported by
//! the service that owns it, under exactly that name.
//!
//! The names are read from those files here (PromQL expressions of panel
//! targets, template-variable queries and rules), not listed by hand, so a
//! dashboard or alert that queries a metric nobody exports fails this test.
//!
//! * Stage metrics (`artifact_stage_*`, `artifact_pipeline_consumer_lag`,
//!   the process's `process_*`):
//!   the real `mime-detector` binary runs against the local stack and is fed
//!   a document, a duplicate of it, a missing blob (inline and topic retries,
//!   then a permanent failure) and an undecodable record (dead letter).
//!   Counters appear in `/metrics` only from their first increment on, which
//!   is why every path a dashboard panel shows is exercised.
//! * API metrics (`artifact_api_*`, `artifact_pipeline_end_to_end_seconds`):
//!   the four stages and `artifact-api` run, a text is uploaded through the
//!   API and summarized, and the API's `/metrics` is read. If the
//!   `artifact-api` binary is missing or is the old placeholder that exits at
//!   once, that half is skipped with a message.
//! * Lag exporter metrics (kafka_exporter's `kafka_*` names,
//!   `artifact_pipeline_time_to_drain_seconds`): `artifactctl lag-exporter`
//!   runs beside `mime-detector`, which is fed a document.
//! * Metrics of other exporters (`kube_*` from kube-state-metrics, `up` from
//!   Prometheus itself) are not ours to check and are left out.
//!
//! Needs the local stack (`deploy/local/stack up`) and the workspace's
//! binaries (`cargo build --workspace --bins`).

use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "metrics-contract-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_test-stage")).with_file_name(name)
}

/// PromQL of every dashboard under deploy/grafana: each panel target's
/// `expr`, and each template variable's query (`label_values(<metric>, …)`).
fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, file: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if matches!(k.as_str(), "expr" | "query" | "definition")
                        && let Some(s) = v.as_str()
                    {
                        out.push((file.to_owned(), s.to_owned()));
                    }
                    walk(v, file, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, file, out)),
            _ => {}
        }
    }
    let dir = repo().join("deploy/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboard in {}", dir.display());
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).expect("dashboard readable");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", f.display()));
        walk(&json, &f.display().to_string(), &mut out);
    }
    out
}

/// The `expr:` of every rule in a Prometheus rules file: a one-line value or
/// a block scalar (`expr: |`), whose lines are those indented deeper than
/// the key.
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start().trim_start_matches("- ");
        if let Some(rest) = body.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = String::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let ind = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && ind <= indent {
                        break;
                    }
                    block.push_str(l.trim());
                    block.push('\n');
                    i += 1;
                }
                out.push(block);
                continue;
            }
            out.push(rest.trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
        i += 1;
    }
    out
}

/// Metric names a PromQL expression selects: identifiers outside string
/// literals, label matchers `{…}` and ranges `[…]`, with a histogram's
/// `_bucket`/`_sum`/`_count` suffix taken off. Label names of `by (…)` and
/// function names come along; callers keep the prefixes they own.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut plain = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                plain.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                for d in chars.by_ref() {
                    if d == close {
                        break;
                    }
                }
                plain.push(' ');
            }
            c => plain.push(c),
        }
    }
    plain
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        .map(base_name)
        .collect()
}

fn base_name(name: &str) -> String {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
        .to_owned()
}

/// Every metric name the dashboards and the rules use.
fn used_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (_, e) in dashboard_exprs() {
        names.extend(metric_names(&e));
    }
    let rules_path = repo().join("deploy/prometheus/rules.yml");
    let rules = std::fs::read_to_string(&rules_path).expect("rules.yml readable");
    let exprs = rule_exprs(&rules);
    assert!(
        !exprs.is_empty(),
        "no expr found in {}",
        rules_path.display()
    );
    for e in exprs {
        names.extend(metric_names(&e));
    }
    names
}

fn owned_by_stages(name: &str) -> bool {
    name.starts_with("artifact_stage_")
        || name == "artifact_pipeline_consumer_lag"
        || name.starts_with("process_")
}

fn owned_by_lag_exporter(name: &str) -> bool {
    name.starts_with("kafka_") || name == "artifact_pipeline_time_to_drain_seconds"
}

fn owned_by_api(name: &str) -> bool {
    name.starts_with("artifact_api_") || name == "artifact_pipeline_end_to_end_seconds"
}

/// Names of the samples in a Prometheus text exposition, histogram suffixes
/// taken off.
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(base_name)
        .collect()
}

fn missing(wanted: &BTreeSet<String>, scrape: Option<&str>) -> Vec<String> {
    let have = scrape.map(exported).unwrap_or_default();
    wanted.difference(&have).cloned().collect()
}

#[test]
fn the_monitoring_files_name_metrics_of_known_owners() {
    let names = used_names();
    // Anything of ours must belong to the stages or to the API; an
    // `artifact_*` name that neither exports is a typo or a metric that was
    // never built.
    let orphans: Vec<_> = names
        .iter()
        .filter(|n| {
            n.starts_with("artifact_")
                && !owned_by_stages(n)
                && !owned_by_api(n)
                && !owned_by_lag_exporter(n)
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "dashboards or rules use artifact metrics no service owns: {orphans:?}"
    );
    // The parser found the ones every panel row is built on.
    for n in [
        "kafka_consumergroup_lag",
        "artifact_pipeline_time_to_drain_seconds",
        "process_cpu_seconds_total",
        "artifact_stage_records_consumed_total",
        "artifact_stage_outcomes_total",
        "artifact_stage_processing_seconds",
    ] {
        assert!(names.contains(n), "{n} not found among {names:?}");
    }
}

#[test]
fn promql_names_are_found_outside_matchers_strings_and_ranges() {
    let e = r#"histogram_quantile(0.99, sum by (stage, le) (rate(artifact_stage_processing_seconds_bucket{namespace=~"$namespace", stage=~"x_total"}[$__rate_interval]))) / on (consumer_group) label_replace(up, "a", "$1", "b", "(.*)")"#;
    let names = metric_names(e);
    assert!(names.contains("artifact_stage_processing_seconds"));
    assert!(names.contains("up"));
    assert!(!names.contains("x_total"));
    assert!(!names.iter().any(|n| n.contains("rate_interval")));
    let rules = "rules:\n  - alert: A\n    expr: |\n      sum(a_total)\n      > 0\n    for: 5m\n  - record: b\n    expr: c_total > 1\n";
    assert_eq!(
        rule_exprs(rules),
        vec!["sum(a_total)\n> 0\n".to_owned(), "c_total > 1".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stage_metrics_used_by_dashboards_and_alerts_are_exported() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let wanted: BTreeSet<String> = used_names()
        .into_iter()
        .filter(|n| owned_by_stages(n))
        .collect();
    anyhow::ensure!(
        !wanted.is_empty(),
        "no stage metric found in the dashboards"
    );

    let path = bin("mime-detector");
    anyhow::ensure!(
        path.exists(),
        "{} is not built (cargo build --workspace --bins)",
        path.display()
    );
    let env = TestEnv::new(2).await?;
    let blobs = std::env::temp_dir().join(format!(
        "metrics-contract-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(blobs.join("uploads"))?;
    let doc = blobs.join("uploads/notes.txt");
    std::fs::write(
        &doc,
        "Dashboards and alerts read what the stages export. Nothing else.",
    )?;
    let stage = StageProcess::start(
        &env,
        &path,
        &[
            ("BLOB_STORE_URL", format!("file://{}", blobs.display())),
            ("INSTANCE_ID", "metrics-contract".to_owned()),
            ("RETRY_INLINE_ATTEMPTS", "2".to_owned()),
            ("RETRY_INLINE_BACKOFF_MS", "10".to_owned()),
            ("RETRY_MAX_DELIVERIES", "2".to_owned()),
            ("RETRY_DELAY_MS", "200".to_owned()),
        ],
    )?;

    // A document (succeeded), the same event again (skipped as a duplicate),
    // a blob that never appears (inline retry, retry topic, then
    // failed_permanent), and bytes that are no Avro at all (dead letter).
    let mut ok = TestEnv::created("notes.txt");
    ok.storage_location = format!("file://{}", doc.display());
    ok.declared_content_type = Some("text/plain".into());
    let mut absent = TestEnv::created("absent.pdf");
    absent.storage_location = format!("file://{}/uploads/never-written.pdf", blobs.display());
    env.produce_created(&[ok.clone(), ok, absent]).await?;
    env.produce_raw(
        &env.names.created(),
        "not-avro",
        b"this is not an Avro record",
    )
    .await?;

    // Every counter path has run once the outcomes include the permanent
    // failure; the lag gauge follows within librdkafka's 5 s statistics.
    let waited = wait_until(
        "every stage metric the dashboards use in /metrics",
        Duration::from_secs(120),
        // Counters are exported at zero from the start: wait for the paths
        // themselves, not only for the names.
        || async {
            missing(&wanted, stage.metrics().await.as_deref()).is_empty()
                && stage
                    .metric("artifact_stage_outcomes_total", &["failed_permanent"])
                    .await
                    >= 1.0
                && stage
                    .metric("artifact_stage_outcomes_total", &["succeeded"])
                    .await
                    >= 1.0
        },
    )
    .await;
    let scrape = stage.metrics().await.unwrap_or_default();
    let absent_names = missing(&wanted, Some(&scrape));
    assert!(
        waited.is_ok() && absent_names.is_empty(),
        "mime-detector does not export {absent_names:?}, which the dashboards or rules use.\n\
         It exports: {:?}",
        exported(&scrape)
    );
    assert!(
        stage
            .metric("artifact_stage_outcomes_total", &["succeeded"])
            .await
            >= 1.0,
        "the document was not processed"
    );
    let _ = std::fs::remove_dir_all(&blobs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_exporter_metrics_used_by_dashboards_and_alerts_are_exported() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let wanted: BTreeSet<String> = used_names()
        .into_iter()
        .filter(|n| owned_by_lag_exporter(n))
        .collect();
    anyhow::ensure!(!wanted.is_empty(), "no lag exporter metric found");
    let env = TestEnv::new(2).await?;
    let blobs = std::env::temp_dir().join(format!(
        "metrics-contract-lag-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(blobs.join("uploads"))?;
    let doc = blobs.join("uploads/notes.txt");
    std::fs::write(&doc, "The lag exporter reads offsets from the broker.")?;
    let _stage = StageProcess::start(
        &env,
        &bin("mime-detector"),
        &[
            ("BLOB_STORE_URL", format!("file://{}", blobs.display())),
            (
                "CONSUMER_GROUP",
                format!("{}.mime-detector", env.conn.topic_prefix),
            ),
        ],
    )?;
    let exporter = StageProcess::start_args(
        &env,
        &bin("artifactctl"),
        &["lag-exporter"],
        &[
            (
                "LAG_EXPORTER_GROUP_PREFIX",
                format!("{}.", env.conn.topic_prefix),
            ),
            ("LAG_EXPORTER_INTERVAL_SECONDS", "1".to_owned()),
        ],
    )?;
    let mut ok = TestEnv::created("notes.txt");
    ok.storage_location = format!("file://{}", doc.display());
    env.produce_created(&[ok]).await?;
    // The committed offset appears once the stage has processed the
    // document; the drain time after two reads.
    let waited = wait_until(
        "every lag exporter metric the dashboards use in /metrics",
        Duration::from_secs(120),
        || async { missing(&wanted, exporter.metrics().await.as_deref()).is_empty() },
    )
    .await;
    let scrape = exporter.metrics().await.unwrap_or_default();
    let absent_names = missing(&wanted, Some(&scrape));
    assert!(
        waited.is_ok() && absent_names.is_empty(),
        "artifactctl lag-exporter does not export {absent_names:?}, which the dashboards or rules use.\n\
         It exports: {:?}",
        exported(&scrape)
    );
    let _ = std::fs::remove_dir_all(&blobs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn api_metrics_used_by_dashboards_are_exported() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let wanted: BTreeSet<String> = used_names()
        .into_iter()
        .filter(|n| owned_by_api(n))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let api_bin = bin("artifact-api");
    if !api_bin.exists() {
        eprintln!(
            "SKIPPED: {} is not built, so the API metrics {wanted:?} are not checked",
            api_bin.display()
        );
        return Ok(());
    }
    let env = TestEnv::new(2).await?;
    let blobs = std::env::temp_dir().join(format!(
        "metrics-contract-api-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&blobs)?;
    let common = |name: &str| {
        vec![
            ("BLOB_STORE_URL", format!("file://{}", blobs.display())),
            (
                "CONSUMER_GROUP",
                format!("{}.{name}", env.conn.topic_prefix),
            ),
            ("INSTANCE_ID", format!("metrics-contract-{name}")),
        ]
    };
    let mut stages = vec![];
    for name in [
        "mime-detector",
        "location-logger",
        "pdf-parser",
        "summarizer",
    ] {
        stages.push(StageProcess::start(&env, &bin(name), &common(name))?);
    }
    let mut vars = common("api");
    vars.push(("API_TOKENS", TOKEN.to_owned()));
    vars.push((
        "PROJECTOR_GROUP",
        format!("{}.projector", env.conn.topic_prefix),
    ));
    let mut api = StageProcess::start(&env, &api_bin, &vars)?;
    let ready = wait_until("artifact-api ready", Duration::from_secs(60), || {
        api.is_ready()
    })
    .await;
    if ready.is_err() && !api.is_running() {
        // The placeholder binary validated its configuration and exited.
        eprintln!(
            "SKIPPED: {} exits at once (the API is not built yet), so the API metrics {wanted:?} are not checked",
            api_bin.display()
        );
        return Ok(());
    }
    ready?;

    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/v1/artifacts?filename=notes.txt", api.http))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("The API measures each artifact from its creation to its summary. The dashboard shows that latency.")
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "upload answered {}", resp.status());
    let body: serde_json::Value = resp.json().await?;
    let status_url = format!(
        "{}{}",
        api.http,
        body["status_url"].as_str().expect("status_url")
    );
    wait_until("the upload COMPLETED", Duration::from_secs(120), || async {
        let Ok(r) = http.get(&status_url).bearer_auth(TOKEN).send().await else {
            return false;
        };
        r.json::<serde_json::Value>()
            .await
            .is_ok_and(|v| v["state"] == "COMPLETED")
    })
    .await?;

    let waited = wait_until(
        "every API metric the dashboards use in /metrics",
        Duration::from_secs(30),
        || async { missing(&wanted, api.metrics().await.as_deref()).is_empty() },
    )
    .await;
    let scrape = api.metrics().await.unwrap_or_default();
    let absent_names = missing(&wanted, Some(&scrape));
    assert!(
        waited.is_ok() && absent_names.is_empty(),
        "artifact-api does not export {absent_names:?}, which the dashboards or rules use.\n\
         It exports: {:?}",
        exported(&scrape)
    );
    for s in &mut stages {
        assert!(s.is_running(), "a stage crashed");
    }
    let _ = std::fs::remove_dir_all(&blobs);
    Ok(())
}
