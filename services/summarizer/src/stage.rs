//! summarizer as a pipeline stage: reads the extracted text blob and writes
//! the built-in extractive summary (deterministic, no network). Artifacts
//! without text (parse skipped, empty text) get a `skipped` outcome.

use crate::{SummaryOptions, summarize};
use artifact_domain::{Outcome, Parsed, Stage, SummaryResult};
use artifact_runtime::blob::BlobStore;
use artifact_runtime::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};

/// The stage.
pub struct SummaryStage {
    /// Where the texts are.
    pub blobs: BlobStore,
    /// Summary length.
    pub options: SummaryOptions,
    /// Largest text read, in bytes.
    pub max_text_bytes: u64,
}

impl StageLogic for SummaryStage {
    const STAGE: Stage = Stage::Summarizer;
    type Input = Parsed;
    type Result = SummaryResult;

    async fn process(
        &self,
        input: &Parsed,
        _ctx: &RecordContext,
    ) -> Result<Processed<SummaryResult>, StageError> {
        let context = input.context();
        if let Outcome::Skipped { reason } = &input.outcome {
            return Ok(Processed::skipped(
                format!("no text to summarize: {reason}"),
                context,
            ));
        }
        let Some(location) = input.result.as_ref().map(|r| r.text_location.clone()) else {
            return Ok(Processed::skipped("no text to summarize", context));
        };
        let bytes = self.blobs.read_all(&location, self.max_text_bytes).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let options = self.options.clone();
        let summary = tokio::task::spawn_blocking(move || summarize(&text, &options))
            .await
            .map_err(|e| StageError::Permanent(format!("summarizer failed: {e}")))?;
        Ok(match summary {
            None => Processed::skipped("the extracted text is empty", context),
            Some(summary) => Processed::succeeded(
                SummaryResult {
                    method: "extractive".into(),
                    summary,
                },
                context,
            ),
        })
    }
}
