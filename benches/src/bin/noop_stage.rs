//! `noop-stage`: any of the four stages with no work of its own. It reads
//! the stage's real input topic and writes a fixed, minimal success result
//! through the runner (dedup, transactions, retries), so four of them chained
//! measure the runtime's cost per hop alone. `bench-peers` runs them beside
//! a Kafka Streams chain of the same shape (docs/BENCHMARKS.md).

use artifact_domain::{
    ArtifactCreated, LocationCheck, LocationVerified, MimeDetected, MimeDetection, ParseResult,
    Parsed, Stage, SummaryResult,
};
use artifact_kafka::config::ConnectionConfig;
use artifact_runtime::runner::RunnerConfig;
use artifact_runtime::service::run_stage;
use artifact_runtime::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};
use clap::Parser;

artifact_runtime::global_allocator!();

#[derive(Debug, Parser)]
struct Config {
    /// The stage to stand in for: its topics and group name follow from it.
    #[arg(long, env = "NOOP_STAGE")]
    stage: Stage,
    #[command(flatten)]
    conn: ConnectionConfig,
    #[command(flatten)]
    runner: RunnerConfig,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:0")]
    http_addr: std::net::SocketAddr,
}

/// A stage whose result is `make(input)`, at once.
macro_rules! noop_stage {
    ($name:ident, $stage:expr, $input:ty, $result:ty, $make:expr) => {
        struct $name;

        impl StageLogic for $name {
            const STAGE: Stage = $stage;
            type Input = $input;
            type Result = $result;

            async fn process(
                &self,
                input: &$input,
                _ctx: &RecordContext,
            ) -> Result<Processed<$result>, StageError> {
                let make: fn(&$input) -> $result = $make;
                Ok(Processed::succeeded(make(input), input.context()))
            }
        }
    };
}

noop_stage!(
    Mime,
    Stage::MimeDetector,
    ArtifactCreated,
    MimeDetection,
    |i| {
        MimeDetection {
            detected_content_type: "text/plain".into(),
            declared_content_type: i.declared_content_type.clone(),
            agrees: true,
            method: "noop".into(),
        }
    }
);

noop_stage!(
    Location,
    Stage::LocationLogger,
    MimeDetected,
    LocationCheck,
    |i| {
        LocationCheck {
            resolved_location: i.context.storage_location.clone(),
            size_bytes: i.context.size_bytes.unwrap_or(0),
            sha256: String::new(),
        }
    }
);

noop_stage!(
    Parse,
    Stage::PdfParser,
    LocationVerified,
    ParseResult,
    |_| { ParseResult::text_only(String::new(), 0, 0) }
);

noop_stage!(Summary, Stage::Summarizer, Parsed, SummaryResult, |_| {
    SummaryResult {
        method: "noop".into(),
        summary: String::new(),
    }
});

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let (conn, runner, http) = (cfg.conn, cfg.runner, cfg.http_addr);
    match cfg.stage {
        Stage::MimeDetector => run_stage(Mime, conn, runner, http).await?,
        Stage::LocationLogger => run_stage(Location, conn, runner, http).await?,
        Stage::PdfParser => run_stage(Parse, conn, runner, http).await?,
        Stage::Summarizer => run_stage(Summary, conn, runner, http).await?,
    }
    Ok(())
}
