//! `reprocess`: a bulk reprocess through artifact-api (`POST /v1/reprocess`),
//! and with `--wait` its progress (`GET /v1/reprocess/{op}`) as a progress
//! bar on a terminal, as a line per change otherwise.

use crate::api::Api;
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// What `artifactctl reprocess` asks for.
#[derive(Debug, clap::Args)]
pub struct ReprocessArgs {
    /// Artifacts in this state (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED).
    #[arg(long)]
    pub state: Option<String>,
    /// Artifacts that failed at this stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// Artifacts of this detected MIME type.
    #[arg(long = "type")]
    pub detected_type: Option<String>,
    /// Artifacts created at or after this time (epoch milliseconds).
    #[arg(long)]
    pub created_from: Option<i64>,
    /// Artifacts created before this time (epoch milliseconds).
    #[arg(long)]
    pub created_to: Option<i64>,
    /// These artifacts.
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// The stage the new generations start at; the earlier stages'
    /// outcomes are carried over (default: the first stage).
    #[arg(long)]
    pub from: Option<String>,
    /// Only counts the artifacts it would reprocess.
    #[arg(long)]
    pub dry_run: bool,
    /// Waits until every new generation reached a final state.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

impl Api {
    async fn send_json(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .authorized(rb)
            .send()
            .await
            .with_context(|| format!("artifact-api at {} did not answer", self.url))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        Ok((status, value))
    }
}

/// Runs `artifactctl reprocess`.
pub async fn run(api: &Api, a: ReprocessArgs) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "state": a.state,
        "failed_stage": a.stage,
        "detected_type": a.detected_type,
        "created_from": a.created_from,
        "created_to": a.created_to,
        "ids": a.ids,
        "from": a.from,
        "dry_run": a.dry_run,
    });
    let url = format!("{}/v1/reprocess", api.url);
    let (status, v) = api.send_json(api.http().post(url).json(&body)).await?;
    if !(200..300).contains(&status) {
        let detail = v["detail"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_owned);
        bail!("reprocess refused: {status}: {detail}");
    }
    if a.dry_run {
        println!(
            "would reprocess {} artifact(s); {} cannot start there",
            v["selected"], v["refused"]
        );
        for e in v["refused_examples"].as_array().into_iter().flatten() {
            println!("  {}", e.as_str().unwrap_or_default());
        }
        return Ok(());
    }
    let op = v["operation_id"].as_str().unwrap_or_default().to_owned();
    println!("operation {op}: {} artifact(s) selected", v["selected"]);
    if a.wait {
        wait(api, &op, Duration::from_secs(a.timeout)).await?;
    }
    Ok(())
}

/// Follows the operation until it finishes.
async fn wait(api: &Api, op: &str, timeout: Duration) -> anyhow::Result<()> {
    let url = format!("{}/v1/reprocess/{op}", api.url);
    let deadline = Instant::now() + timeout;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} done {msg} [{elapsed}]")
                .expect("template"),
        );
        b
    });
    let mut last = String::new();
    loop {
        let (status, v) = api.send_json(api.http().get(&url)).await?;
        if status != 200 {
            bail!("progress of {op}: {status}: {v}");
        }
        let n = |k: &str| v[k].as_u64().unwrap_or_default();
        let line = format!(
            "selected {}, started {}, skipped {}, done {}",
            n("selected"),
            n("started"),
            n("skipped"),
            n("done")
        );
        match &bar {
            Some(b) => {
                b.set_length(n("selected"));
                b.set_position(n("done") + n("skipped"));
                b.set_message(format!(
                    "(started {}, skipped {})",
                    n("started"),
                    n("skipped")
                ));
            }
            None if line != last => eprintln!("{op}: {line}"),
            None => {}
        }
        last = line;
        if v["state"] == "FINISHED" {
            if let Some(b) = bar {
                b.finish();
            }
            println!("operation {op} finished: {last}");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("operation {op} not finished within {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
