//! `bench-console`: the server time of the console's pages with a large
//! read model. The API's router is called in process (no socket, no
//! browser): the time is from request to the last byte of the body, for
//! each page, over `--rounds` calls; p50 and p99 are printed. The table is
//! filled with `--artifacts` snapshots like the pipeline's (a filename, a
//! four-stage timeline, a summary): mostly COMPLETED (on file), a few
//! FAILED at pdf-parser, some IN_PROGRESS (in memory). Kafka and the
//! registry are not used; run it on an otherwise idle machine.
//!
//! Usage: `bench-console [--artifacts N] [--rounds N]`

use artifact_api::http::auth::{Access, Tokens};
use artifact_api::http::completions::Completions;
use artifact_api::http::events::StreamSlots;
use artifact_api::http::limits::{Limits, UploadSlots};
use artifact_api::http::{AppState, router};
use artifact_api::readmodel::StatusTable;
use artifact_blob::BlobStore;
use artifact_domain::{
    ArtifactContext, ArtifactId, ArtifactState, Generation, Outcome, Stage, StageRecord, StatusView,
};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::TopicNames;
use axum::body::Body;
use axum::http::{Request, header};
use clap::Parser;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

#[derive(Parser)]
struct Args {
    /// Artifacts in the read model.
    #[arg(long, default_value_t = 100_000)]
    artifacts: usize,
    /// Calls per page.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

const TOKEN: &str = "bench-token";

fn snapshot(i: usize) -> StatusView {
    let (state, failed) = match i % 100 {
        0 => (ArtifactState::Failed, true),
        1..=4 => (ArtifactState::InProgress, false),
        _ => (ArtifactState::Completed, false),
    };
    let t0 = 1_780_000_000_000 + i as i64 * 1000;
    let stages = if failed {
        3
    } else if state == ArtifactState::InProgress {
        2
    } else {
        4
    };
    let timeline = Stage::ALL[..stages]
        .iter()
        .enumerate()
        .map(|(n, s)| StageRecord {
            stage: *s,
            outcome: if failed && *s == Stage::PdfParser {
                Outcome::permanent("the PDF could not be parsed: unexpected end of file")
            } else {
                Outcome::Succeeded
            },
            processed_at: t0 + 40 * (n as i64 + 1),
            attempts: Some(1),
            last_error: None,
            next_retry_at: None,
        })
        .collect();
    let id = ArtifactId::new_random();
    StatusView {
        artifact_id: id,
        generation: Generation::FIRST,
        state,
        current_stage: (state == ArtifactState::InProgress).then_some(Stage::PdfParser),
        failed_stage: failed.then_some(Stage::PdfParser),
        failure_reason: failed
            .then(|| "the PDF could not be parsed: unexpected end of file".into()),
        context: ArtifactContext {
            storage_location: format!("file:///var/lib/artifacts/uploads/{id}"),
            declared_content_type: Some("application/pdf".into()),
            filename: Some(format!("report-{i:06}.pdf")),
            detected_content_type: Some(
                if i.is_multiple_of(7) {
                    "image/png"
                } else {
                    "application/pdf"
                }
                .into(),
            ),
            size_bytes: Some(40_000 + (i as i64 % 5000)),
            sha256: Some("ab".repeat(32)),
            text_location: Some(format!("file:///var/lib/artifacts/texts/{id}-1.txt")),
        },
        page_count: Some(3),
        word_count: Some(1200),
        summary: (stages == 4).then(|| "A quarterly report on revenue and costs. ".repeat(12)),
        summary_method: (stages == 4).then(|| "extractive".into()),
        timeline,
        created_at: Some(t0),
        updated_at: t0 + 160,
        cancelled_at: None,
        next_retry_at: None,
        dead_letters: Vec::new(),
        history: Vec::new(),
    }
}

fn state(table: Arc<StatusTable>, blobs: &std::path::Path) -> anyhow::Result<AppState> {
    let limits = Limits::for_tests(1 << 20);
    Ok(AppState {
        names: TopicNames::from_config(&ConnectionConfig::local("bench-console")),
        codec: Arc::new(AvroCodec::new("http://127.0.0.1:1")?),
        producer: rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()?,
        blobs: BlobStore::from_url(&format!("file://{}", blobs.display()))?,
        table,
        access: Access::new(Tokens::parse(TOKEN), false, None)?,
        uploads: UploadSlots::new(limits.concurrent_uploads),
        streams: StreamSlots::new(limits.event_streams),
        limits,
        completions: Completions::default(),
        controls: artifact_runtime::control::ArtifactControls::none(),
        operations: artifact_api::reprocess::Operations::default(),
        pipeline: Arc::new(artifact_api::ui::stages::PipelineView::new(
            ConnectionConfig::local("bench-console"),
            String::new(),
            Duration::from_millis(500),
        )),
        webhooks: artifact_api::webhooks::Webhooks::default(),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("bench-console-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let table = Arc::new(StatusTable::create(&dir)?);
    let filled = Instant::now();
    let mut sample = None;
    for start in (0..args.artifacts).step_by(5000) {
        let views: Vec<_> = (start..(start + 5000).min(args.artifacts))
            .map(snapshot)
            .collect();
        sample.get_or_insert_with(|| views[5].artifact_id);
        table.upsert(&views)?;
    }
    eprintln!(
        "bench-console: {} artifacts in the read model in {:.1}s",
        table.len(),
        filled.elapsed().as_secs_f64()
    );
    let app = router(state(table, &dir)?);

    let login = Request::post("/ui/login")
        .header(header::HOST, "bench")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={TOKEN}")))?;
    let resp = app.clone().oneshot(login).await?;
    let cookie = resp
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("the login set no cookie ({})", resp.status()))?
        .to_owned();

    let id = sample.expect("at least one artifact");
    let pages = [
        ("list", "/ui/artifacts".to_owned()),
        ("list, FAILED", "/ui/artifacts?state=FAILED".to_owned()),
        (
            "list, stage filter",
            "/ui/artifacts?stage=pdf-parser".to_owned(),
        ),
        (
            "list, no match (scan budget)",
            "/ui/artifacts?q=no-such-file".to_owned(),
        ),
        ("artifact", format!("/ui/artifacts/{id}")),
        ("confirm", format!("/ui/artifacts/{id}/reprocess")),
    ];
    println!(
        "{:<30} {:>10} {:>10} {:>10}",
        "page", "p50 ms", "p99 ms", "bytes"
    );
    for (name, path) in pages {
        let mut times = Vec::with_capacity(args.rounds);
        let mut bytes = 0;
        for _ in 0..args.rounds {
            let req = Request::get(&path)
                .header(header::HOST, "bench")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())?;
            let t = Instant::now();
            let resp = app.clone().oneshot(req).await?;
            anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.status());
            bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await?
                .len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{name:<30} {:>10.2} {:>10.2} {bytes:>10}",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
