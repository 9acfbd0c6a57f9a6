//! Loading a PDF with lopdf, safely, and extracting its pages and metadata.
//!
//! Safety against hostile files: lopdf runs on a thread with a large stack
//! (a dedicated one, unless the caller's was started with such a stack:
//! deep nesting cannot overflow the caller's stack) inside
//! `catch_unwind` (a panic becomes [`ParseError::Malformed`]); streams are
//! decompressed under bounds; the page tree is walked iteratively, each
//! node once (lopdf's own walk gives up on cycles), so cycles and depth are
//! harmless; forms are followed with a depth limit and
//! a per-page operator budget (see [`crate::layout`]); a page's text stops
//! growing once past what [`Limits::max_chars`] leaves; all pages share one
//! budget of decompressed content and the deadline (see [`crate::work`]),
//! checked before every page.

use crate::fonts::deref;
use crate::layout::DocumentText;
use crate::work::Work;
use crate::{Extracted, Limits, Metadata, ParseError};
use lopdf::{Document, LoadOptions, Object, ObjectId};
use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, PoisonError};

/// Stack for the parsing thread: generous, since lopdf's parser recurses.
pub const PARSER_STACK: usize = 64 << 20;

thread_local! {
    /// Whether this thread was started with a stack of `PARSER_STACK`.
    static LARGE_STACK: Cell<bool> = const { Cell::new(false) };
}

/// Declares that the calling thread was started with a stack of at least
/// [`PARSER_STACK`] bytes, so that PDFs parsed on it are parsed in place
/// rather than on a thread started for each document (mapping and
/// unmapping the stack, the allocator's thread heap: about 100 µs, 40 %
/// of the time of a one-page PDF). pdf-parser starts its runtime's threads
/// with such stacks and declares them with this.
pub fn large_stack_thread() {
    LARGE_STACK.with(|large| large.set(true));
}

/// Decompression bound for object and cross-reference streams.
const LOAD_STREAM_LIMIT: usize = 64 << 20;

pub(crate) fn extract_pdf(bytes: &[u8], limits: &Limits) -> Result<Extracted, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    guarded(|| extract(bytes, limits))
}

/// Runs `work` on a thread with a large stack (this one if declared so by
/// [`large_stack_thread`]), turning a panic into [`ParseError::Malformed`].
fn guarded<T: Send>(work: impl FnOnce() -> Result<T, ParseError> + Send) -> Result<T, ParseError> {
    if LARGE_STACK.with(Cell::get) {
        return contained(work);
    }
    let slot = Mutex::new(Some(work));
    // Captures only `&slot`, so it is `Copy`: usable on this thread if no
    // parser thread can be started.
    let run = || {
        let work = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        match work {
            Some(work) => contained(work),
            None => Err(ParseError::Malformed("parser ran twice".into())),
        }
    };
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("pdf-parser".into())
            .stack_size(PARSER_STACK)
            .spawn_scoped(scope, run)
        {
            Ok(handle) => handle.join().unwrap_or_else(|p| Err(panicked(&*p))),
            Err(_) => run(),
        }
    })
}

/// Runs `work` on this thread, turning a panic into [`ParseError::Malformed`].
fn contained<T>(work: impl FnOnce() -> Result<T, ParseError>) -> Result<T, ParseError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|p| Err(panicked(&*p)))
}

fn panicked(payload: &(dyn std::any::Any + Send)) -> ParseError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    ParseError::Malformed(format!("parser panicked: {message}"))
}

fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ParseError> {
    let options = LoadOptions {
        max_decompressed_size: Some(LOAD_STREAM_LIMIT),
        ..LoadOptions::default()
    };
    // lopdf tries the empty user password itself; a document it could not
    // open that way still has /Encrypt in its trailer.
    let doc = Document::load_mem_with_options(bytes, options)
        .map_err(|e| ParseError::Malformed(e.to_string()))?;
    if doc.is_encrypted() {
        return Err(ParseError::Encrypted);
    }
    let pages = page_ids(&doc);
    if pages.is_empty() {
        return Err(ParseError::Malformed(
            "no readable pages (the page tree is missing or empty)".into(),
        ));
    }
    if pages.len() > limits.max_pages {
        return Err(ParseError::TooManyPages {
            pages: pages.len(),
            limit: limits.max_pages,
        });
    }
    let mut reader = DocumentText::new(&doc, Work::new(limits));
    let mut texts = Vec::with_capacity(pages.len());
    let mut chars_left = limits.max_chars;
    let mut truncated = false;
    for (number, page_id) in pages.iter().enumerate() {
        // The form feed between pages counts as a character: without room
        // for it, the rest is dropped.
        if number > 0 && chars_left == 0 {
            truncated = true;
            break;
        }
        let budget = chars_left - usize::from(number > 0);
        // Read up to just past the budget, so that a longer page is known
        // to be cut.
        let text = reader.page_text(*page_id, budget).map_err(|e| match e {
            ParseError::Malformed(e) => ParseError::Malformed(format!("page {}: {e}", number + 1)),
            e => e,
        })?;
        let count = text.chars().count();
        if count > budget {
            texts.push(text.chars().take(budget).collect());
            truncated = true;
            break;
        }
        chars_left = budget - count;
        texts.push(text);
    }
    Ok(Extracted {
        pages: texts,
        page_count: pages.len(),
        metadata: metadata(&doc),
        truncated,
        ocr_pages: Vec::new(),
        ocr_confidence: None,
    })
}

/// The pages in document order. An iterative depth-first walk that expands
/// each node once: cycles cannot loop, depth cannot overflow the stack, and
/// a page reached twice is kept once.
fn page_ids(doc: &Document) -> Vec<ObjectId> {
    let Ok(root) = doc
        .catalog()
        .and_then(|c| c.get(b"Pages"))
        .and_then(Object::as_reference)
    else {
        return Vec::new();
    };
    let mut pages = Vec::new();
    let mut visited = HashSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !visited.insert(id) {
            continue;
        }
        let Ok(node) = doc.get_dictionary(id) else {
            continue;
        };
        match deref(doc, node.get(b"Kids")).and_then(Object::as_array) {
            Ok(kids) if !node.has_type(b"Page") => {
                stack.extend(kids.iter().rev().filter_map(|k| k.as_reference().ok()));
            }
            _ if id != root => pages.push(id),
            _ => {}
        }
    }
    pages
}

/// Characters kept of each Info entry. The entries travel in the stage's
/// outcome and in every status snapshot of the artifact, whose records a
/// title of megabytes would push past what Kafka takes.
pub(crate) const MAX_INFO_CHARS: usize = 1000;

fn metadata(doc: &Document) -> Metadata {
    let info = deref(doc, doc.trailer.get(b"Info"))
        .and_then(Object::as_dict)
        .ok();
    let field = |key: &[u8]| -> Option<String> {
        let value = deref(doc, info?.get(key)).ok()?;
        let text = lopdf::decode_text_string(value).ok()?;
        let text: String = text
            .trim_matches(char::from(0))
            .trim()
            .chars()
            .take(MAX_INFO_CHARS)
            .collect();
        (!text.is_empty()).then_some(text)
    };
    Metadata {
        title: field(b"Title"),
        author: field(b"Author"),
        creator: field(b"Creator"),
        producer: field(b"Producer"),
        creation_date: field(b"CreationDate"),
        modification_date: field(b"ModDate"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_malformed() {
        let result: Result<(), _> = guarded(|| panic!("boom in lopdf"));
        assert_eq!(
            result,
            Err(ParseError::Malformed(
                "parser panicked: boom in lopdf".into()
            ))
        );
        let formatted: Result<(), _> = guarded(|| panic!("page {}", 3));
        assert_eq!(
            formatted,
            Err(ParseError::Malformed("parser panicked: page 3".into()))
        );
        assert_eq!(guarded(|| Ok(7)), Ok(7));
    }

    #[test]
    fn a_thread_declared_large_parses_in_place() {
        let caller = std::thread::current().id();
        let elsewhere = guarded(|| Ok(std::thread::current().id())).unwrap();
        assert_ne!(elsewhere, caller, "an undeclared thread hands the work on");
        std::thread::Builder::new()
            .stack_size(PARSER_STACK)
            .spawn(|| {
                large_stack_thread();
                let caller = std::thread::current().id();
                assert_eq!(guarded(|| Ok(std::thread::current().id())), Ok(caller));
                let result: Result<(), _> = guarded(|| panic!("boom in place"));
                assert_eq!(
                    result,
                    Err(ParseError::Malformed(
                        "parser panicked: boom in place".into()
                    ))
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
