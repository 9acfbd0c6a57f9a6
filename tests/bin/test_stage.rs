//! `test-stage`: a stage for testing the runner. It reads `ArtifactCreated`
//! (as mime-detector does) and behaves by the artifact's `filename`:
//! `fail-until-N` fails retriably until attempt N, `fail-always` always
//! fails retriably, `permanent` fails permanently, `panic` panics,
//! `oversized` succeeds with a result larger than a record may be, `abort`
//! aborts the process, `oom` asks for 16 GiB at once (which a memory limit
//! refuses: the process aborts);
//! anything else succeeds at once (after `TEST_STAGE_DELAY_MS`). While the file named
//! by `TEST_STAGE_HOLD_COMMITS_WHILE` exists, every batch fails before its
//! commit, as a stage whose writes cannot be made durable does.

use artifact_domain::{ArtifactCreated, MimeDetection, Stage};
use artifact_kafka::config::ConnectionConfig;
use artifact_runtime::runner::RunnerConfig;
use artifact_runtime::service::run_stage;
use artifact_runtime::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};
use clap::Parser;
use std::time::Duration;

artifact_runtime::global_allocator!();

#[derive(Debug, Parser)]
struct Config {
    #[command(flatten)]
    conn: ConnectionConfig,
    #[command(flatten)]
    runner: RunnerConfig,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:0")]
    http_addr: std::net::SocketAddr,
    /// Time each successful record takes, in milliseconds.
    #[arg(long, env = "TEST_STAGE_DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
    /// While this file exists, `before_commit` fails.
    #[arg(long, env = "TEST_STAGE_HOLD_COMMITS_WHILE")]
    hold_commits_while: Option<std::path::PathBuf>,
}

struct TestStage {
    delay: Duration,
    hold_commits_while: Option<std::path::PathBuf>,
}

impl StageLogic for TestStage {
    const STAGE: Stage = Stage::MimeDetector;
    type Input = ArtifactCreated;
    type Result = MimeDetection;

    async fn process(
        &self,
        input: &ArtifactCreated,
        ctx: &RecordContext,
    ) -> Result<Processed<MimeDetection>, StageError> {
        let behaviour = input.filename.as_deref().unwrap_or_default();
        if let Some(n) = behaviour.strip_prefix("fail-until-") {
            let n: u32 = n.parse().unwrap_or(1);
            if ctx.attempt < n {
                return Err(StageError::Retriable(format!(
                    "attempt {} < {n}",
                    ctx.attempt
                )));
            }
        }
        match behaviour {
            "fail-always" => return Err(StageError::Retriable("never heals".into())),
            "permanent" => return Err(StageError::Permanent("bad input".into())),
            "panic" => panic!("test stage asked to panic"),
            "abort" => std::process::abort(),
            "oom" => {
                let huge = vec![0u8; 16 << 30];
                std::hint::black_box(&huge);
            }
            _ => {}
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut context = input.context();
        context.detected_content_type = Some("application/octet-stream".into());
        Ok(Processed::succeeded(
            MimeDetection {
                detected_content_type: "application/octet-stream".into(),
                declared_content_type: input.declared_content_type.clone(),
                agrees: false,
                method: if behaviour == "oversized" {
                    "x".repeat(1_100_000)
                } else {
                    format!("test:attempt-{}", ctx.attempt)
                },
            },
            context,
        ))
    }

    async fn before_commit(&self) -> Result<(), StageError> {
        match &self.hold_commits_while {
            Some(f) if f.exists() => Err(StageError::Retriable(format!("{} exists", f.display()))),
            _ => Ok(()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let stage = TestStage {
        delay: Duration::from_millis(cfg.delay_ms),
        hold_commits_while: cfg.hold_commits_while,
    };
    run_stage(stage, cfg.conn, cfg.runner, cfg.http_addr).await?;
    Ok(())
}
