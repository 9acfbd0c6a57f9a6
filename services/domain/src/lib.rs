//! The artifact pipeline's domain: what an artifact is, which stages it goes
//! through, what a stage's outcome can be, which transitions are legal, how the
//! read model folds events into a status, and how a stage decides whether an
//! event is new, a duplicate or stale.
//!
//! Pure Rust: no Kafka, no async runtime, no HTTP, no Avro. The serde shapes of
//! the event types match `schemas/*.avsc` field for field, so adapters can
//! encode them with any serde data format.

pub mod attempts;
pub mod control;
pub mod dedup;
pub mod events;
pub mod ids;
pub mod outcome;
pub mod reprocess;
pub mod stage;
pub mod status;

pub use attempts::{DeadLetter, GenerationSummary, RetryScheduled};
pub use control::{ArtifactControl, ControlAction, control_skip};
pub use dedup::{DedupDecision, decide};
pub use events::{
    ArtifactContext, ArtifactCreated, LocationCheck, LocationVerified, MimeDetected, MimeDetection,
    PageText, ParseResult, Parsed, PipelineEvent, StageEvent, Summarized, SummaryResult,
    page_text_location,
};
pub use ids::{ArtifactId, Generation, InvalidArtifactId, InvalidGeneration};
pub use outcome::{FailureKind, Outcome};
pub use reprocess::{ReprocessItem, ReprocessOperation, Selector, missing_output};
pub use stage::Stage;
pub use status::{ArtifactState, ArtifactStatus, IllegalTransition, StageRecord, StatusView};
