//! `upload`: files streamed from disk to artifact-api, several at once,
//! each with a progress bar by bytes on a terminal; with `--wait`, until
//! each artifact is final. One file's failure does not stop the others;
//! the exit code says how it went.

use crate::api::{Accepted, Api};
use crate::exit;
use artifact_domain::{ArtifactState, StatusView};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// What `artifactctl upload` asks for.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// Files to upload.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Declared MIME type (default: from the file extension, if known).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Waits until every artifact reached a final state, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// How many files upload at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
}

/// One file's outcome, as `--output json` prints it.
#[derive(Debug, serde::Serialize)]
struct FileOutcome {
    file: PathBuf,
    artifact_id: Option<String>,
    generation: Option<u32>,
    /// Why the upload failed.
    error: Option<String>,
    /// With `--wait`: the artifact's last status seen (final unless the
    /// wait ran out of time).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusView>,
}

/// Runs `artifactctl upload`; the exit code, the first that applies: an
/// upload failed (its code, or [`exit::FAILURE`] if failures differ),
/// `--wait` ran out of time, an artifact ended FAILED or CANCELLED.
pub async fn run(api: &Api, a: UploadArgs, json: bool) -> anyhow::Result<u8> {
    let bars = MultiProgress::with_draw_target(if !json && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{msg:20!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("template");
    let mut outcomes: Vec<(usize, anyhow::Result<Accepted>)> =
        futures::stream::iter(a.files.iter().enumerate())
            .map(|(i, f)| {
                let (bars, style, content_type) = (&bars, &style, a.content_type.as_deref());
                async move {
                    let bar = bars.add(
                        ProgressBar::new(0)
                            .with_style(style.clone())
                            .with_message(f.display().to_string()),
                    );
                    let r = api.upload(f, content_type, None, &bar).await;
                    bar.finish_and_clear();
                    bars.remove(&bar);
                    bars.suspend(|| match &r {
                        Ok(acc) if !json => println!(
                            "uploaded {} as {} (generation {})",
                            f.display(),
                            acc.artifact_id,
                            acc.generation
                        ),
                        Ok(_) => {}
                        Err(e) => eprintln!("error: {e:#}"),
                    });
                    (i, r)
                }
            })
            .buffer_unordered(usize::from(a.parallel))
            .collect()
            .await;
    outcomes.sort_by_key(|(i, _)| *i);

    let failed: Vec<u8> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().map(exit::code))
        .collect();
    let mut code = match failed.first() {
        None => exit::OK,
        Some(c) if failed.iter().all(|f| f == c) => *c,
        Some(_) => exit::FAILURE,
    };
    if !failed.is_empty() {
        eprintln!(
            "error: {} of {} uploads failed",
            failed.len(),
            outcomes.len()
        );
    }

    let ids: Vec<(String, u32, String)> = outcomes
        .iter()
        .filter_map(|(i, r)| r.as_ref().ok().map(|acc| (*i, acc)))
        .map(|(i, acc)| {
            let name = a.files[i]
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            (acc.artifact_id.clone(), acc.generation, name)
        })
        .collect();
    let waited = if a.wait && !ids.is_empty() {
        let timeout = Duration::from_secs(a.timeout);
        let w = api.wait(&ids, timeout, json).await?;
        let ended_badly = w
            .done
            .iter()
            .any(|v| matches!(v.state, ArtifactState::Failed | ArtifactState::Cancelled));
        if w.timed_out {
            eprintln!(
                "error: {} of {} artifacts reached a final state within {timeout:?}",
                w.done.len(),
                ids.len()
            );
        }
        if code == exit::OK && w.timed_out {
            code = exit::TIMEOUT;
        } else if code == exit::OK && ended_badly {
            code = exit::FAILURE;
        }
        if !json {
            println!();
            for (id, _, name) in &ids {
                match w.latest.get(id) {
                    Some(v) => println!("{name}: {}", final_line(v)),
                    None => println!("{name}: not seen by the API yet"),
                }
            }
        }
        Some(w.latest)
    } else {
        None
    };

    if json {
        let doc: Vec<FileOutcome> = outcomes
            .into_iter()
            .map(|(i, r)| {
                let file = a.files[i].clone();
                match r {
                    Ok(acc) => FileOutcome {
                        file,
                        status: waited
                            .as_ref()
                            .and_then(|l| l.get(&acc.artifact_id).cloned()),
                        artifact_id: Some(acc.artifact_id),
                        generation: Some(acc.generation),
                        error: None,
                    },
                    Err(e) => FileOutcome {
                        file,
                        artifact_id: None,
                        generation: None,
                        error: Some(format!("{e:#}")),
                        status: None,
                    },
                }
            })
            .collect();
        crate::read::print_json(&doc)?;
    }
    Ok(code)
}

/// How an artifact ended (or where it is, if not final).
fn final_line(v: &StatusView) -> String {
    if v.state == ArtifactState::Cancelled {
        return "CANCELLED".into();
    }
    if !v.state.is_terminal() {
        return format!("not final yet ({:?})", v.state);
    }
    match (&v.failed_stage, &v.summary) {
        (Some(stage), _) => format!(
            "FAILED at {stage}: {}",
            v.failure_reason.as_deref().unwrap_or_default()
        ),
        (None, Some(s)) => format!("COMPLETED, summary: {s}"),
        (None, None) => {
            let why = v
                .timeline
                .iter()
                .rev()
                .find_map(|r| r.outcome.reason())
                .unwrap_or_default();
            format!("COMPLETED without a summary ({why})")
        }
    }
}
