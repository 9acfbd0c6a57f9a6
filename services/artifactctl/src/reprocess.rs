//! `reprocess`: a bulk reprocess through artifact-api (`POST /v1/reprocess`),
//! and with `--wait` its progress (`GET /v1/reprocess/{op}`) as a progress
//! bar on a terminal, as a line per change otherwise.

use crate::api::Api;
use crate::exit;
use anyhow::Context;
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

/// Runs `artifactctl reprocess`; with `json`, one JSON document on stdout
/// (the API's answer, or with `--wait` the operation's final progress).
/// Exit code: [`exit::USAGE`] for a selector that picks nothing or that the
/// API calls bad (400), [`exit::TIMEOUT`] for a `--wait` that ran out of
/// time, [`exit::FAILURE`] when some selected artifacts were skipped.
pub async fn run(api: &Api, a: ReprocessArgs, json: bool) -> anyhow::Result<u8> {
    if a.state.is_none()
        && a.stage.is_none()
        && a.detected_type.is_none()
        && a.created_from.is_none()
        && a.created_to.is_none()
        && a.ids.is_empty()
    {
        return Err(exit::Failure::Usage(
            "nothing to reprocess: give a selector (--state, --stage, --type, --created-from, --created-to or --id)".into(),
        )
        .into());
    }
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
        return Err(refused("reprocess refused", status, &v));
    }
    if a.dry_run {
        if json {
            crate::read::print_json(&v)?;
            return Ok(exit::OK);
        }
        println!(
            "would reprocess {} artifact(s); {} cannot start there",
            v["selected"], v["refused"]
        );
        for e in v["refused_examples"].as_array().into_iter().flatten() {
            println!("  {}", e.as_str().unwrap_or_default());
        }
        return Ok(exit::OK);
    }
    let op = v["operation_id"].as_str().unwrap_or_default().to_owned();
    if !a.wait {
        if json {
            crate::read::print_json(&v)?;
        } else {
            println!("operation {op}: {} artifact(s) selected", v["selected"]);
        }
        return Ok(exit::OK);
    }
    if !json {
        println!("operation {op}: {} artifact(s) selected", v["selected"]);
    }
    let last = wait(api, &op, Duration::from_secs(a.timeout), json).await?;
    if json {
        crate::read::print_json(&last)?;
    }
    if last["skipped"].as_u64().unwrap_or_default() > 0 {
        eprintln!(
            "error: operation {op} skipped {} artifact(s): gone, or their earlier outcomes no longer in the log",
            last["skipped"]
        );
        return Ok(exit::FAILURE);
    }
    Ok(exit::OK)
}

/// The error for an API answer that is not a success; a 400 is a bad
/// selector, a usage error.
fn refused(what: &str, status: u16, v: &Value) -> anyhow::Error {
    let detail = v["detail"]
        .as_str()
        .map_or_else(|| v.to_string(), str::to_owned);
    match reqwest::StatusCode::from_u16(status) {
        Ok(s) if s == reqwest::StatusCode::BAD_REQUEST => {
            exit::Failure::Usage(format!("{what}: {status}: {detail}")).into()
        }
        Ok(s) => exit::http(what, s, &detail),
        Err(_) => anyhow::anyhow!("{what}: {status}: {detail}"),
    }
}

/// Follows the operation until it finishes; its last progress. The bar
/// (stderr, a terminal, not `json`) or a line per change on stderr.
async fn wait(api: &Api, op: &str, timeout: Duration, json: bool) -> anyhow::Result<Value> {
    let url = format!("{}/v1/reprocess/{op}", api.url);
    let deadline = Instant::now() + timeout;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
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
            return Err(refused(&format!("progress of {op}"), status, &v));
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
            if !json {
                println!("operation {op} finished: {last}");
            }
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(exit::Failure::Timeout(format!(
                "operation {op} not finished within {timeout:?}: {last}"
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
