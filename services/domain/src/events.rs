//! The events of the pipeline. Field names and shapes match `schemas/*.avsc`.
//!
//! Every outcome event carries the artifact id, the generation, the context
//! later stages need (event-carried state: no stage joins against another
//! topic), the outcome and, on success, the stage's result.

use crate::{ArtifactId, Generation, Outcome, Stage};
use serde::{Deserialize, Serialize};

/// An artifact entered the pipeline: written by the API on upload, or by any
/// external producer to `artifact.created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactCreated {
    /// The artifact's id; also the record key.
    pub artifact_id: ArtifactId,
    /// Run counter; 1 for a first upload, bumped by reprocess.
    pub generation: Generation,
    /// Where the bytes are: `file:///…` or `s3://bucket/key`.
    pub storage_location: String,
    /// The MIME type the uploader declared, if any.
    pub declared_content_type: Option<String>,
    /// The uploader's file name, for display only (never used as a path).
    pub filename: Option<String>,
    /// Size in bytes as measured on upload, if known.
    pub size_bytes: Option<i64>,
    /// Lowercase hex SHA-256 of the bytes as measured on upload, if known.
    pub sha256: Option<String>,
    /// When the artifact was created, in milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// What later stages need to know about an artifact, carried forward by each
/// stage and enriched with what it learned.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArtifactContext {
    /// Where the bytes are.
    pub storage_location: String,
    /// The MIME type the uploader declared, if any.
    pub declared_content_type: Option<String>,
    /// The uploader's file name, for display only.
    pub filename: Option<String>,
    /// The MIME type detected from the bytes, once mime-detector ran.
    pub detected_content_type: Option<String>,
    /// Size in bytes: declared on upload, verified by location-logger.
    pub size_bytes: Option<i64>,
    /// Lowercase hex SHA-256: declared on upload, verified by location-logger.
    pub sha256: Option<String>,
    /// Where the extracted text is, once pdf-parser wrote it.
    pub text_location: Option<String>,
}

impl From<&ArtifactCreated> for ArtifactContext {
    fn from(c: &ArtifactCreated) -> Self {
        ArtifactContext {
            storage_location: c.storage_location.clone(),
            declared_content_type: c.declared_content_type.clone(),
            filename: c.filename.clone(),
            detected_content_type: None,
            size_bytes: c.size_bytes,
            sha256: c.sha256.clone(),
            text_location: None,
        }
    }
}

/// One stage's outcome for one artifact generation, with the stage's result
/// `R` on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageEvent<R> {
    /// The artifact's id; also the record key.
    pub artifact_id: ArtifactId,
    /// The generation this outcome belongs to.
    pub generation: Generation,
    /// Context for later stages, including what this stage learned.
    pub context: ArtifactContext,
    /// Succeeded, skipped or failed.
    pub outcome: Outcome,
    /// The stage's result; present when the outcome is a success.
    pub result: Option<R>,
    /// When the stage finished, in milliseconds since the Unix epoch.
    pub processed_at: i64,
}

/// mime-detector's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MimeDetection {
    /// The type detected from the bytes.
    pub detected_content_type: String,
    /// The type the uploader declared, if any.
    pub declared_content_type: Option<String>,
    /// Whether declared and detected agree (false when nothing was declared).
    pub agrees: bool,
    /// How the type was decided, e.g. `magic:pdf` or `text:utf-8`.
    pub method: String,
}

/// location-logger's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationCheck {
    /// The resolved location that was read.
    pub resolved_location: String,
    /// Size in bytes as read.
    pub size_bytes: i64,
    /// Lowercase hex SHA-256 of the bytes as read.
    pub sha256: String,
}

/// pdf-parser's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseResult {
    /// Where the full extracted text (UTF-8) was written.
    pub text_location: String,
    /// Number of pages (absent for plain text).
    pub page_count: Option<i32>,
    /// Number of whitespace-separated words in the text.
    pub word_count: i64,
    /// Number of characters in the text.
    pub char_count: i64,
    /// The first characters of the text.
    pub preview: String,
    /// Document title from the PDF Info dictionary.
    pub title: Option<String>,
    /// Document author.
    pub author: Option<String>,
    /// The application that created the original document.
    pub creator: Option<String>,
    /// The application that produced the PDF.
    pub producer: Option<String>,
    /// Creation date as written in the PDF.
    pub creation_date: Option<String>,
    /// Modification date as written in the PDF.
    pub modification_date: Option<String>,
    /// The pages whose text OCR recognised, numbered from 1 (an image's
    /// pages too); empty when none was.
    #[serde(default)]
    pub ocr_pages: Vec<i32>,
    /// Mean confidence (0–100, rounded) of the words OCR recognised;
    /// absent when OCR found none.
    #[serde(default)]
    pub ocr_confidence: Option<i32>,
    /// The pages (slides, sheets, chapters) whose text was written as its
    /// own blob, in order; empty for formats without pages.
    #[serde(default)]
    pub pages: Vec<PageText>,
}

/// One page's text, written beside the whole text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageText {
    /// The page's number, from 1.
    pub number: i32,
    /// Number of characters in the page's text.
    pub char_count: i64,
    /// Whether OCR recognised the page's text.
    pub ocr: bool,
    /// Where the page's UTF-8 text was written: [`page_text_location`].
    pub text_location: String,
}

/// Where page `number`'s text goes, beside the whole text at
/// `text_location` (`….txt` becomes `….p<number>.txt`).
pub fn page_text_location(text_location: &str, number: u32) -> String {
    let stem = text_location.strip_suffix(".txt").unwrap_or(text_location);
    format!("{stem}.p{number}.txt")
}

impl ParseResult {
    /// A result of `word_count` words and `char_count` characters at
    /// `text_location`, with no pages, preview, metadata or OCR: a plain
    /// text's, as tests and benchmarks make them.
    pub fn text_only(text_location: String, word_count: i64, char_count: i64) -> Self {
        ParseResult {
            text_location,
            page_count: None,
            word_count,
            char_count,
            preview: String::new(),
            title: None,
            author: None,
            creator: None,
            producer: None,
            creation_date: None,
            modification_date: None,
            ocr_pages: Vec::new(),
            ocr_confidence: None,
            pages: Vec::new(),
        }
    }
}

/// summarizer's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryResult {
    /// `extractive` or `llm:<model>`.
    pub method: String,
    /// The summary text (bounded in size).
    pub summary: String,
}

/// mime-detector's outcome event.
pub type MimeDetected = StageEvent<MimeDetection>;
/// location-logger's outcome event.
pub type LocationVerified = StageEvent<LocationCheck>;
/// pdf-parser's outcome event.
pub type Parsed = StageEvent<ParseResult>;
/// summarizer's outcome event.
pub type Summarized = StageEvent<SummaryResult>;

/// Any event the read model folds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineEvent {
    /// See [`ArtifactCreated`].
    Created(ArtifactCreated),
    /// See [`MimeDetected`].
    MimeDetected(MimeDetected),
    /// See [`LocationVerified`].
    LocationVerified(LocationVerified),
    /// See [`Parsed`].
    Parsed(Parsed),
    /// See [`Summarized`].
    Summarized(Summarized),
}

impl PipelineEvent {
    /// The artifact the event is about.
    pub fn artifact_id(&self) -> ArtifactId {
        match self {
            PipelineEvent::Created(e) => e.artifact_id,
            PipelineEvent::MimeDetected(e) => e.artifact_id,
            PipelineEvent::LocationVerified(e) => e.artifact_id,
            PipelineEvent::Parsed(e) => e.artifact_id,
            PipelineEvent::Summarized(e) => e.artifact_id,
        }
    }

    /// The generation the event belongs to.
    pub fn generation(&self) -> Generation {
        match self {
            PipelineEvent::Created(e) => e.generation,
            PipelineEvent::MimeDetected(e) => e.generation,
            PipelineEvent::LocationVerified(e) => e.generation,
            PipelineEvent::Parsed(e) => e.generation,
            PipelineEvent::Summarized(e) => e.generation,
        }
    }

    /// The stage that emitted it (`None` for [`ArtifactCreated`]).
    pub fn stage(&self) -> Option<Stage> {
        match self {
            PipelineEvent::Created(_) => None,
            PipelineEvent::MimeDetected(_) => Some(Stage::MimeDetector),
            PipelineEvent::LocationVerified(_) => Some(Stage::LocationLogger),
            PipelineEvent::Parsed(_) => Some(Stage::PdfParser),
            PipelineEvent::Summarized(_) => Some(Stage::Summarizer),
        }
    }

    /// The outcome, for stage events.
    pub fn outcome(&self) -> Option<&Outcome> {
        match self {
            PipelineEvent::Created(_) => None,
            PipelineEvent::MimeDetected(e) => Some(&e.outcome),
            PipelineEvent::LocationVerified(e) => Some(&e.outcome),
            PipelineEvent::Parsed(e) => Some(&e.outcome),
            PipelineEvent::Summarized(e) => Some(&e.outcome),
        }
    }

    /// When it happened (created or processed), in epoch milliseconds.
    pub fn timestamp(&self) -> i64 {
        match self {
            PipelineEvent::Created(e) => e.created_at,
            PipelineEvent::MimeDetected(e) => e.processed_at,
            PipelineEvent::LocationVerified(e) => e.processed_at,
            PipelineEvent::Parsed(e) => e.processed_at,
            PipelineEvent::Summarized(e) => e.processed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pages_text_sits_beside_the_whole_text() {
        assert_eq!(
            page_text_location("s3://b/texts/0f/0f8f-2.txt", 12),
            "s3://b/texts/0f/0f8f-2.p12.txt"
        );
        assert_eq!(page_text_location("file:///t", 1), "file:///t.p1.txt");
    }
}
