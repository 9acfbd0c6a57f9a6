//! Why an artifact's text could not be extracted.

use thiserror::Error;

/// A failure to extract text. Every variant is permanent: the same bytes
/// fail the same way on every try (see [`ParseError::is_permanent`]).
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
        "the PDF has {pages} pages, over the limit of {limit}; raise max_pages or split the file"
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
}

impl ParseError {
    /// Whether retrying cannot help. True for every variant: they all depend
    /// only on the bytes and the limits.
    pub fn is_permanent(&self) -> bool {
        match self {
            ParseError::Encrypted
            | ParseError::Malformed(_)
            | ParseError::TooLarge { .. }
            | ParseError::TooManyPages { .. }
            | ParseError::Empty => true,
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
        ];
        for e in &errors {
            assert!(e.is_permanent());
            assert!(!e.to_string().is_empty());
        }
        assert!(errors[2].to_string().contains("10 bytes"));
        assert!(errors[1].to_string().contains("no trailer"));
    }
}
