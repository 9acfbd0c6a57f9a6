//! The stage SDK of the artifact pipeline. A stage implements
//! [`stage::StageLogic`] and hands it to [`service::StageArgs::run`]; the
//! exactly-once [`runner`] does the rest: decoding, keyed dedup state
//! ([`dedup`]), retries ([`retry`]), dead letters and transactions. The
//! service start-up also serves logs, health and metrics ([`telemetry`]),
//! which the API uses too. Stages reach their bytes through the blob port,
//! re-exported here as [`blob`]; the Kafka plumbing under all of it is
//! `artifact-kafka`.

pub use artifact_blob as blob;

pub mod control;
pub mod counters;
pub mod dedup;
mod logfields;
pub mod otel;
pub mod retry;
pub mod runner;
pub mod service;
pub mod stage;
mod stage_metrics;
pub mod telemetry;

#[doc(hidden)]
pub use mimalloc;

/// Makes mimalloc the binary's allocator, as every service of the pipeline
/// does: it costs the runner's per-record path, lopdf and the API less CPU
/// than glibc's malloc for some more resident memory (docs/BENCHMARKS.md,
/// "What the defaults rest on").
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::mimalloc::MiMalloc = $crate::mimalloc::MiMalloc;
    };
}
