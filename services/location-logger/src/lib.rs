//! location-logger: resolves an artifact's storage location, checks that the
//! blob exists, streams its SHA-256, compares size and digest with what the
//! uploader declared, and logs one structured record.
//!
//! A location outside the storage root or with a scheme the store does not
//! serve is a permanent failure. A missing blob is retriable (stores can be
//! eventually consistent): the runner retries it in process and through the
//! retry topic, and after the configured deliveries it becomes permanent.

use artifact_domain::{LocationCheck, MimeDetected, Stage};
use artifact_runtime::blob::BlobStore;
use artifact_runtime::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};

/// The stage.
pub struct LocationStage {
    /// Where the artifacts are.
    pub blobs: BlobStore,
}

impl StageLogic for LocationStage {
    const STAGE: Stage = Stage::LocationLogger;
    type Input = MimeDetected;
    type Result = LocationCheck;

    async fn process(
        &self,
        input: &MimeDetected,
        _ctx: &RecordContext,
    ) -> Result<Processed<LocationCheck>, StageError> {
        let location = &input.context.storage_location;
        let resolved = self
            .blobs
            .resolve(location)
            .map_err(|e| StageError::Permanent(e.to_string()))?;
        let digest = self.blobs.digest(location).await?;
        let size = digest.size as i64;
        if let Some(declared) = input.context.size_bytes
            && declared != size
        {
            return Err(StageError::Permanent(format!(
                "blob at {location} has {size} bytes, but {declared} were declared on upload"
            )));
        }
        if let Some(declared) = &input.context.sha256
            && !declared.eq_ignore_ascii_case(&digest.sha256)
        {
            return Err(StageError::Permanent(format!(
                "blob at {location} has SHA-256 {}, but {declared} was declared on upload",
                digest.sha256
            )));
        }
        tracing::info!(
            artifact_id = %input.artifact_id(),
            generation = %input.generation(),
            location = %location,
            resolved = %resolved,
            size_bytes = size,
            sha256 = %digest.sha256,
            "artifact location verified"
        );
        let mut context = input.context();
        context.size_bytes = Some(size);
        context.sha256 = Some(digest.sha256.clone());
        Ok(Processed::succeeded(
            LocationCheck {
                resolved_location: resolved.to_string(),
                size_bytes: size,
                sha256: digest.sha256,
            },
            context,
        ))
    }
}
