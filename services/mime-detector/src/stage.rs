//! mime-detector as a pipeline stage: reads the first bytes of the blob,
//! detects the type, and passes it on in the context.

use crate::detect;
use artifact_domain::{ArtifactCreated, MimeDetection, Stage};
use artifact_runtime::blob::BlobStore;
use artifact_runtime::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};

/// The stage.
pub struct MimeStage {
    /// Where the artifacts are.
    pub blobs: BlobStore,
}

impl StageLogic for MimeStage {
    const STAGE: Stage = Stage::MimeDetector;
    type Input = ArtifactCreated;
    type Result = MimeDetection;

    async fn process(
        &self,
        input: &ArtifactCreated,
        _ctx: &RecordContext,
    ) -> Result<Processed<MimeDetection>, StageError> {
        let head = self
            .blobs
            .read_prefix(&input.storage_location, crate::SNIFF_BYTES)
            .await?;
        let d = detect(&head, input.declared_content_type.as_deref());
        let mut context = input.context();
        context.detected_content_type = Some(d.detected.clone());
        Ok(Processed::succeeded(
            MimeDetection {
                detected_content_type: d.detected,
                declared_content_type: input.declared_content_type.clone(),
                agrees: d.agrees,
                method: d.method,
            },
            context,
        ))
    }
}
