//! The `Stage` trait: what a stage service implements. A stage names itself,
//! says what it reads, and turns one input event into an outcome. Decoding,
//! dedup, retries, dead letters, transactions and offsets are the runner's
//! ([`crate::runner`]); a stage never sees Kafka or Avro.

use artifact_domain::events::StageEvent;
use artifact_domain::{ArtifactContext, ArtifactCreated, ArtifactId, Generation, Outcome, Stage};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;

/// What the runner tells a stage about the record it processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordContext {
    /// The topic the record came from (input or retry topic).
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// 1 for the first attempt; counts in-process and retry-topic attempts.
    pub attempt: u32,
    /// The W3C `traceparent` of this processing step's span when traces
    /// are exported, else the input's (empty when it has none).
    pub traceparent: String,
}

/// A stage's successful answer: a success or a skip, with the stage's result
/// and the context passed on to later stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed<R> {
    /// [`Outcome::Succeeded`] or [`Outcome::Skipped`]; failures are [`StageError`]s.
    pub outcome: Outcome,
    /// The result, present on success.
    pub result: Option<R>,
    /// The input's context, enriched with what this stage learned.
    pub context: ArtifactContext,
}

impl<R> Processed<R> {
    /// A success with its result.
    pub fn succeeded(result: R, context: ArtifactContext) -> Self {
        Processed {
            outcome: Outcome::Succeeded,
            result: Some(result),
            context,
        }
    }

    /// A skip with its reason.
    pub fn skipped(reason: impl Into<String>, context: ArtifactContext) -> Self {
        Processed {
            outcome: Outcome::skipped(reason),
            result: None,
            context,
        }
    }
}

/// Why a stage could not process an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Transient: the runner retries in process, then through the retry
    /// topic, then gives up with a permanent failure.
    #[error("retriable: {0}")]
    Retriable(String),
    /// The input itself is bad: the runner emits `failed(permanent)` at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<crate::blob::BlobError> for StageError {
    /// A blob that may appear or become readable later (not found, I/O) is
    /// retriable; a location the store refuses or a blob over a limit is not.
    fn from(e: crate::blob::BlobError) -> Self {
        if e.is_retriable() {
            StageError::Retriable(e.to_string())
        } else {
            StageError::Permanent(e.to_string())
        }
    }
}

/// An event a stage can read: it names its artifact, generation and context.
pub trait StageInput: DeserializeOwned + Send + Sync + 'static {
    /// The artifact.
    fn artifact_id(&self) -> ArtifactId;
    /// The generation.
    fn generation(&self) -> Generation;
    /// The context to carry forward.
    fn context(&self) -> ArtifactContext;
    /// The previous stage's outcome (`None` for `ArtifactCreated`).
    fn upstream_outcome(&self) -> Option<&Outcome>;
}

impl StageInput for ArtifactCreated {
    fn artifact_id(&self) -> ArtifactId {
        self.artifact_id
    }
    fn generation(&self) -> Generation {
        self.generation
    }
    fn context(&self) -> ArtifactContext {
        ArtifactContext::from(self)
    }
    fn upstream_outcome(&self) -> Option<&Outcome> {
        None
    }
}

impl<R: DeserializeOwned + Send + Sync + 'static> StageInput for StageEvent<R> {
    fn artifact_id(&self) -> ArtifactId {
        self.artifact_id
    }
    fn generation(&self) -> Generation {
        self.generation
    }
    fn context(&self) -> ArtifactContext {
        self.context.clone()
    }
    fn upstream_outcome(&self) -> Option<&Outcome> {
        Some(&self.outcome)
    }
}

/// A stage of the pipeline.
pub trait StageLogic: Send + Sync + 'static {
    /// Which stage this is: its name is the consumer group, client id and
    /// metric label; its topics follow from it.
    const STAGE: Stage;
    /// The event it reads.
    type Input: StageInput;
    /// Its result on success.
    type Result: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Processes one input. Only called when the input is new (not a
    /// duplicate or stale) and the previous stage did not fail. Side effects
    /// must be idempotent: write to locations derived from
    /// `(artifact_id, generation)` so a replay overwrites.
    fn process(
        &self,
        input: &Self::Input,
        ctx: &RecordContext,
    ) -> impl Future<Output = Result<Processed<Self::Result>, StageError>> + Send;

    /// The bytes of its body `process` holds in memory for this input (a
    /// blob it reads whole), as far as the input tells. The runner holds
    /// at most `STAGE_MAX_INFLIGHT_BYTES` of them at once, and fails an
    /// input that cannot fit alone without processing it. By default 0.
    fn input_bytes(&self, _input: &Self::Input) -> u64 {
        0
    }

    /// Called once per batch, after `process` has run for each of its new
    /// inputs and before their outcomes are committed: a stage whose
    /// `process` wrote without waiting for the disk (for instance with
    /// [`crate::blob::BlobStore::put_unsynced`]) makes those writes durable
    /// here, once for the whole batch, so no outcome names a blob that a
    /// crash of the machine could lose. An error of either kind fails the
    /// batch: nothing of it is committed, and the runner reads it again after
    /// a pause. By default there is nothing to do.
    fn before_commit(&self) -> impl Future<Output = Result<(), StageError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Called for a processed input whose outcome is not written because an
    /// operator erased its artifact meanwhile, with the context that outcome
    /// carried: a stage that wrote blobs for it deletes them. By default
    /// there is nothing to do.
    fn discard(&self, _context: &ArtifactContext) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
