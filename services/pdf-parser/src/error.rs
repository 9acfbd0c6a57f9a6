//! Why an artifact's text could not be extracted.

use thiserror::Error;

/// A failure to extract text. Every variant is permanent: the same bytes
/// fail the same way on every try (see [`ParseError::is_permanent`]), a
/// [`ParseError::Timeout`] at least on a machine no faster.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The PDF is encrypted with a non-empty user password.
    #[error("the PDF is encrypted with a user password; upload a copy without a password")]
    Encrypted,
    /// The bytes are not a PDF we can read (damaged, truncated, or the parser
    /// failed on them).
    #[error("the PDF is damaged or not a PDF: {0}")]
    Malformed(String),
    /// The input is larger than [`crate::Limits::max_bytes`].
    #[error(
        "the file has {size} bytes, over the limit of {limit}; raise max_bytes or split the file"
    )]
    TooLarge {
        /// The input's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The PDF has more pages than [`crate::Limits::max_pages`].
    #[error(
        "the document has {pages} pages, over the limit of {limit}; raise max_pages or split the file"
    )]
    TooManyPages {
        /// The document's page count.
        pages: usize,
        /// The limit.
        limit: usize,
    },
    /// There is nothing to extract: the file has no bytes.
    #[error("the file is empty (0 bytes); upload it again")]
    Empty,
    /// Reading the PDF would decompress more than
    /// [`crate::Limits::max_content_bytes`]: its pages' content, its forms
    /// each time they are drawn, and its fonts' CMaps and programs.
    #[error(
        "the PDF's page content (forms counted each time they are drawn) and fonts decompress to \
         more than {limit} bytes, the limit of work per document; raise max_content_bytes or \
         split the file"
    )]
    TooMuchContent {
        /// The limit in bytes.
        limit: usize,
    },
    /// Extraction was still running at [`crate::Limits::deadline`] and
    /// stopped there.
    #[error(
        "extracting the text took longer than its time limit; raise the limit or split the file"
    )]
    Timeout,
    /// The parse worker ran out of its address space
    /// ([`crate::worker::WorkerSettings::memory_limit`]) reading the
    /// document: lopdf builds every object of a PDF when it loads it.
    #[error(
        "reading the PDF needs more memory than the parser's limit of {limit} bytes \
         (PARSE_WORKER_MEMORY_BYTES): it holds too many objects or inflates too far; \
         raise the limit or split the file"
    )]
    OutOfMemory {
        /// The limit in bytes.
        limit: u64,
    },
    /// The parse worker died on the document (abort, stack overflow,
    /// signal); the reason says how.
    #[error("the parser process died reading the PDF: {0}")]
    WorkerDied(String),
    /// A document other than a PDF is damaged or not of its type.
    #[error("the document is damaged or not of its type: {0}")]
    BadDocument(String),
    /// A zip-based document's entry inflates more than
    /// [`crate::Limits::max_zip_ratio`] times its compressed size.
    #[error(
        "the archive's entry {name:?} inflates to more than {limit} times its {compressed} \
         compressed bytes (PARSE_MAX_ZIP_RATIO): refused as a zip bomb"
    )]
    ZipBomb {
        /// The entry's name.
        name: String,
        /// Its compressed size.
        compressed: u64,
        /// The ratio allowed.
        limit: u64,
    },
    /// A zip-based document's entries together inflate past
    /// [`crate::Limits::max_content_bytes`].
    #[error(
        "the archive's entries inflate to more than {limit} bytes, the limit of work per \
         document (PARSE_MAX_CONTENT_BYTES); raise it or split the file"
    )]
    ArchiveTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// An image has more pixels than OCR takes.
    #[error(
        "the image is {width}×{height} pixels, over the limit of {limit} pixels for OCR \
         (PARSE_OCR_MAX_PIXELS); scale it down"
    )]
    ImageTooLarge {
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
        /// The limit in pixels.
        limit: u64,
    },
    /// Rendering a page or recognising its text failed.
    #[error("OCR failed: {0}")]
    Ocr(String),
}

impl ParseError {
    /// Whether retrying cannot help. True for every variant: they depend
    /// only on the bytes and the limits (a timeout also on the machine's
    /// speed, and a retry gets no more time than the first try).
    pub fn is_permanent(&self) -> bool {
        match self {
            ParseError::Encrypted
            | ParseError::Malformed(_)
            | ParseError::TooLarge { .. }
            | ParseError::TooManyPages { .. }
            | ParseError::Empty
            | ParseError::TooMuchContent { .. }
            | ParseError::Timeout
            | ParseError::OutOfMemory { .. }
            | ParseError::WorkerDied(_)
            | ParseError::BadDocument(_)
            | ParseError::ZipBomb { .. }
            | ParseError::ArchiveTooLarge { .. }
            | ParseError::ImageTooLarge { .. }
            | ParseError::Ocr(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened_and_all_are_permanent() {
        let errors = [
            ParseError::Encrypted,
            ParseError::Malformed("no trailer".into()),
            ParseError::TooLarge { size: 10, limit: 5 },
            ParseError::TooManyPages { pages: 3, limit: 2 },
            ParseError::Empty,
            ParseError::TooMuchContent { limit: 1024 },
            ParseError::Timeout,
            ParseError::OutOfMemory { limit: 1 << 30 },
            ParseError::WorkerDied("its stack overflowed".into()),
        ];
        for e in &errors {
            assert!(e.is_permanent());
            assert!(!e.to_string().is_empty());
        }
        assert!(errors[2].to_string().contains("10 bytes"));
        assert!(errors[1].to_string().contains("no trailer"));
        assert!(errors[5].to_string().contains("more than 1024 bytes"));
        assert!(errors[6].to_string().contains("time limit"));
        assert!(errors[7].to_string().contains("limit of 1073741824 bytes"));
        assert!(errors[8].to_string().contains("stack overflowed"));
    }
}
