//! summarizer as a pipeline stage: reads the extracted text blob and writes
//! its summary, by the built-in extractive summarizer (deterministic, no
//! network) or, when configured, by an OpenAI-compatible endpoint
//! ([`crate::llm`]). Artifacts without text (parse skipped, empty text) get a
//! `skipped` outcome.

use crate::llm::LlmSummarizer;
use crate::{SummaryOptions, summarize_until};
use artifact_domain::{Outcome, Parsed, Stage, SummaryResult};
use artifact_runtime::blob::{BlobError, BlobStore};
use artifact_runtime::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};
use std::time::{Duration, Instant};

/// Who writes the summaries.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The built-in extractive summarizer; method `extractive`.
    Extractive,
    /// An OpenAI-compatible endpoint; method `llm:<model>`.
    Llm(Box<LlmSummarizer>),
}

/// The stage.
pub struct SummaryStage {
    /// Where the texts are.
    pub blobs: BlobStore,
    /// Summary length (the LLM backend uses `max_chars` only).
    pub options: SummaryOptions,
    /// Largest text read, in bytes.
    pub max_text_bytes: u64,
    /// Who writes the summaries.
    pub backend: Backend,
    /// The runner's time limit of one processing attempt
    /// (`PROCESSING_TIMEOUT_MS`): the extractive work stops there too
    /// instead of running on in its thread after the attempt was given up.
    pub attempt_timeout: Duration,
}

impl StageLogic for SummaryStage {
    const STAGE: Stage = Stage::Summarizer;
    type Input = Parsed;
    type Result = SummaryResult;

    /// The text's UTF-8 bytes at most (4 per character), up to the read limit.
    fn input_bytes(&self, input: &Parsed) -> u64 {
        input.result.as_ref().map_or(0, |r| {
            (r.char_count.max(0) as u64)
                .saturating_mul(4)
                .min(self.max_text_bytes)
        })
    }

    async fn process(
        &self,
        input: &Parsed,
        _ctx: &RecordContext,
    ) -> Result<Processed<SummaryResult>, StageError> {
        let deadline = Instant::now() + self.attempt_timeout;
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
        let bytes = match self.blobs.read_all(&location, self.max_text_bytes).await {
            Err(BlobError::TooLarge { .. }) => {
                return Err(StageError::Permanent(format!(
                    "the extracted text is larger than the limit of {} bytes \
                     (SUMMARY_MAX_TEXT_BYTES); raise the limit or lower pdf-parser's PARSE_MAX_CHARS",
                    self.max_text_bytes
                )));
            }
            read => read?,
        };
        // The text is UTF-8 as pdf-parser wrote it; only a damaged one is
        // copied to be repaired.
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        let (method, summary) = match &self.backend {
            Backend::Extractive => {
                let options = self.options.clone();
                let summary =
                    tokio::task::spawn_blocking(move || summarize_until(&text, &options, deadline))
                        .await
                        .map_err(|e| StageError::Permanent(format!("summarizer failed: {e}")))?
                        .map_err(|_| {
                            StageError::Retriable(format!(
                                "the extractive summary was stopped at the attempt's time limit \
                                 of {} ms (PROCESSING_TIMEOUT_MS)",
                                self.attempt_timeout.as_millis()
                            ))
                        })?;
                ("extractive".to_owned(), summary)
            }
            Backend::Llm(llm) => (llm.method(), llm.summarize(&text).await?),
        };
        Ok(match summary {
            None => Processed::skipped("the extracted text is empty", context),
            Some(summary) => Processed::succeeded(SummaryResult { method, summary }, context),
        })
    }
}
