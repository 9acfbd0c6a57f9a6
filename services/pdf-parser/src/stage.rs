//! pdf-parser as a pipeline stage. PDFs get page count, Info metadata and
//! their text (pages with too little text OCRed); images are OCRed; HTML,
//! office documents, EPUB and e-mail get their text (see [`Format`]);
//! text/plain and text/markdown are decoded to UTF-8; any other type is
//! skipped with the reason. The full text is written as a
//! UTF-8 blob at a location derived from (artifact id, generation), so a
//! replay overwrites it; so is each page's (slide's, sheet's, chapter's)
//! text beside it, up to [`ParseStage::max_page_texts`] pages. Text of either kind is cut to
//! [`Limits::max_chars`]. A file over [`Limits::max_bytes`] is refused
//! before it is read. PDFs are parsed in worker processes under a memory
//! limit ([`ParserPool`]), each given the time limit from when a worker
//! takes it and killed past it; so are the other formats but plain text,
//! read on a blocking thread with the limit as deadline. HTML is decoded
//! to UTF-8 before it goes to a worker. Every parse error is a permanent failure.

use crate::worker::{ParserPool, PoolError};
use crate::{Extracted, Format, Limits, ParseError, extract_plain, extract_text};
use artifact_domain::{
    ArtifactContext, ArtifactId, Generation, LocationVerified, PageText, ParseResult, Stage,
    page_text_location,
};
use artifact_runtime::blob::{BlobError, BlobStore};
use artifact_runtime::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};
use futures::{StreamExt, TryStreamExt, stream};
use std::time::{Duration, Instant};

/// Characters of text kept in the outcome's preview.
pub const PREVIEW_CHARS: usize = 280;

/// The stage.
pub struct ParseStage {
    /// Where artifacts are read and texts written.
    pub blobs: BlobStore,
    /// Bounds per document.
    pub limits: Limits,
    /// Time limit per document.
    pub timeout: Duration,
    /// The workers that parse PDFs.
    pub parser: ParserPool,
    /// Pages whose text is written as its own blob at most, the first
    /// ones; the whole text holds them all.
    pub max_page_texts: usize,
}

/// Page texts written at once: an object store's PUTs overlap.
const PAGE_WRITES_AT_ONCE: usize = 8;

impl ParseStage {
    /// Writes the text of each of the first [`ParseStage::max_page_texts`]
    /// pages beside the whole text at `text_location`, unsynced like it.
    async fn write_pages(
        &self,
        extracted: &Extracted,
        text_location: &str,
    ) -> Result<Vec<PageText>, BlobError> {
        let mut writes = Vec::new();
        for (text, number) in extracted.pages.iter().take(self.max_page_texts).zip(1u32..) {
            let ocr = extracted.ocr_pages.contains(&(number as usize));
            writes.push(self.write_page(text, number, ocr, text_location));
        }
        stream::iter(writes)
            .buffered(PAGE_WRITES_AT_ONCE)
            .try_collect()
            .await
    }

    async fn write_page(
        &self,
        text: &str,
        number: u32,
        ocr: bool,
        text_location: &str,
    ) -> Result<PageText, BlobError> {
        let location = page_text_location(text_location, number);
        self.blobs.put_unsynced(&location, text.as_bytes()).await?;
        Ok(PageText {
            number: number as i32,
            char_count: text.chars().count() as i64,
            ocr,
            text_location: location,
        })
    }
}

impl StageLogic for ParseStage {
    const STAGE: Stage = Stage::PdfParser;
    type Input = LocationVerified;
    type Result = ParseResult;

    /// The file's verified size, up to the read limit; the limit when unknown.
    fn input_bytes(&self, input: &LocationVerified) -> u64 {
        let max = self.limits.max_bytes as u64;
        let size = input.result.as_ref().map(|r| r.size_bytes);
        size.or(input.context.size_bytes)
            .map_or(max, |s| (s.max(0) as u64).min(max))
    }

    /// An erased artifact's text, written while it was parsed, goes.
    /// The page texts too: those of pages 1, 2… as long as they exist.
    async fn discard(&self, context: &ArtifactContext) {
        let Some(text) = &context.text_location else {
            return;
        };
        if let Err(e) = self.blobs.delete(text).await {
            tracing::warn!(error = %e, "the text of an erased artifact was not deleted");
        }
        for number in 1..=self.max_page_texts as u32 {
            let page = page_text_location(text, number);
            let gone = match self.blobs.exists(&page).await {
                Ok(false) => break,
                Ok(true) => self.blobs.delete(&page).await,
                Err(e) => Err(e),
            };
            if let Err(e) = gone {
                tracing::warn!(error = %e, "the page texts of an erased artifact were not all deleted");
                break;
            }
        }
    }

    async fn process(
        &self,
        input: &LocationVerified,
        _ctx: &RecordContext,
    ) -> Result<Processed<ParseResult>, StageError> {
        let context = input.context();
        let mime = context
            .detected_content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        let kind = mime
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let Some(format) = Format::from_mime(&kind) else {
            return Ok(Processed::skipped(
                format!("{kind} is not parseable"),
                context,
            ));
        };
        if format == Format::Image && self.parser.settings().ocr.languages.is_empty() {
            return Ok(Processed::skipped(
                format!("{kind} needs OCR, which is off (PARSE_OCR_LANGUAGES)"),
                context,
            ));
        }
        // The declared charset, when the declared type is the detected one.
        let declared = context.declared_content_type.as_deref().unwrap_or_default();
        let charset = [mime.as_str(), declared]
            .into_iter()
            .filter(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|e| e.trim().eq_ignore_ascii_case(&kind))
            })
            .flat_map(|t| t.split(';').skip(1))
            .find_map(|p| {
                let (name, value) = p.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("charset")
                    .then(|| value.trim().to_owned())
            });
        let max_bytes = self.limits.max_bytes;
        let too_large = |size: Option<i64>| {
            let size = match size {
                Some(size) => format!("has {size} bytes, over the limit of {max_bytes}"),
                None => format!("is larger than the limit of {max_bytes} bytes"),
            };
            StageError::Permanent(format!(
                "the file {size} (PARSE_MAX_BYTES); raise the limit or split the file"
            ))
        };
        if let Some(size) = context.size_bytes.filter(|&s| s > max_bytes as i64) {
            return Err(too_large(Some(size)));
        }
        let bytes = match self
            .blobs
            .read_all(&context.storage_location, max_bytes as u64)
            .await
        {
            Err(BlobError::TooLarge { .. }) => return Err(too_large(None)),
            read => read?,
        };
        let timed_out = || {
            StageError::Permanent(format!(
                "parsing took longer than the limit of {:?} (PARSE_TIMEOUT_MS)",
                self.timeout
            ))
        };
        let parsed = if format == Format::Html {
            match extract_text(&bytes, charset.as_deref()) {
                Ok(html) => {
                    self.parser
                        .extract(format, html.as_bytes(), &self.limits, self.timeout)
                        .await
                }
                Err(e) => Err(e.into()),
            }
        } else if format != Format::Text {
            self.parser
                .extract(format, &bytes, &self.limits, self.timeout)
                .await
        } else {
            let limits = Limits {
                deadline: Instant::now().checked_add(self.timeout),
                ..self.limits.clone()
            };
            let work = tokio::task::spawn_blocking(move || {
                extract_plain(&bytes, charset.as_deref(), &limits)
            });
            match tokio::time::timeout(self.timeout, work).await {
                Err(_) => Err(ParseError::Timeout.into()),
                Ok(Err(join)) => {
                    return Err(StageError::Permanent(format!("parser failed: {join}")));
                }
                Ok(Ok(result)) => result.map_err(PoolError::from),
            }
        };
        let extracted = match parsed {
            Ok(x) => x,
            Err(PoolError::Parse(ParseError::Timeout)) => return Err(timed_out()),
            Err(PoolError::Parse(e)) => return Err(StageError::Permanent(e.to_string())),
            Err(e @ PoolError::Start(_)) => return Err(StageError::Retriable(e.to_string())),
        };
        let text = extracted.full_text();
        let text_location = self
            .blobs
            .location(&text_path(input.artifact_id(), input.generation()));
        // Made durable for the whole batch in `before_commit`.
        self.blobs
            .put_unsynced(&text_location, text.as_bytes())
            .await?;
        let pages = if format.has_pages() {
            self.write_pages(&extracted, &text_location).await?
        } else {
            Vec::new()
        };
        let m = &extracted.metadata;
        let result = ParseResult {
            text_location: text_location.clone(),
            page_count: (extracted.page_count > 0).then_some(extracted.page_count as i32),
            word_count: extracted.word_count() as i64,
            char_count: extracted.char_count() as i64,
            preview: extracted.preview(PREVIEW_CHARS),
            title: m.title.clone(),
            author: m.author.clone(),
            creator: m.creator.clone(),
            producer: m.producer.clone(),
            creation_date: m.creation_date.clone(),
            modification_date: m.modification_date.clone(),
            ocr_pages: extracted.ocr_pages.iter().map(|&p| p as i32).collect(),
            ocr_confidence: extracted.ocr_confidence.map(|c| c.round() as i32),
            pages,
        };
        let mut context = context;
        context.text_location = Some(text_location);
        Ok(Processed::succeeded(result, context))
    }

    async fn before_commit(&self) -> Result<(), StageError> {
        Ok(self.blobs.sync().await?)
    }
}

/// Where an artifact generation's text goes: `texts/<aa>/<id>-<generation>.txt`,
/// `aa` being the id's first two hex digits. 256 shard directories are made
/// once and reused; a directory per artifact would cost a new directory
/// inode per document, on ext4 the dearest part of writing it.
fn text_path(id: ArtifactId, generation: Generation) -> String {
    let id = id.to_string();
    format!("texts/{}/{id}-{generation}.txt", &id[..2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_sharded_by_the_ids_first_two_hex_digits() {
        let id: ArtifactId = "0f8fad5b-d9cb-469f-a165-70867728950e".parse().unwrap();
        assert_eq!(
            text_path(id, Generation::new(3).unwrap()),
            "texts/0f/0f8fad5b-d9cb-469f-a165-70867728950e-3.txt"
        );
    }
}
