//! The fixed chain of stages every artifact goes through.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One step of the pipeline, in processing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    /// Detects the real MIME type from the bytes.
    MimeDetector,
    /// Verifies the storage location: existence, size, SHA-256.
    LocationLogger,
    /// Extracts page count, metadata and text.
    PdfParser,
    /// Summarizes the extracted text.
    Summarizer,
}

impl Stage {
    /// Every stage, in processing order.
    pub const ALL: [Stage; 4] = [
        Stage::MimeDetector,
        Stage::LocationLogger,
        Stage::PdfParser,
        Stage::Summarizer,
    ];

    /// The stage's name: its consumer group, client id and metric label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::MimeDetector => "mime-detector",
            Stage::LocationLogger => "location-logger",
            Stage::PdfParser => "pdf-parser",
            Stage::Summarizer => "summarizer",
        }
    }

    /// Position in the chain, from 0.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stage before this one, if any.
    pub fn previous(self) -> Option<Stage> {
        self.index().checked_sub(1).map(|i| Stage::ALL[i])
    }

    /// The stage after this one, if any.
    pub fn next(self) -> Option<Stage> {
        Stage::ALL.get(self.index() + 1).copied()
    }

    /// The event this stage emits, as named in its output topic
    /// (`<prefix>.<event>`).
    pub fn output_event(self) -> &'static str {
        match self {
            Stage::MimeDetector => "mime-detected",
            Stage::LocationLogger => "location-verified",
            Stage::PdfParser => "parsed",
            Stage::Summarizer => "summarized",
        }
    }

    /// The event this stage consumes, as named in its input topic.
    pub fn input_event(self) -> &'static str {
        match self.previous() {
            None => "created",
            Some(prev) => prev.output_event(),
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of the pipeline's stages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown stage {0:?}: expected one of mime-detector, location-logger, pdf-parser, summarizer"
)]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| UnknownStage(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_order_and_neighbours() {
        assert_eq!(Stage::MimeDetector.previous(), None);
        assert_eq!(Stage::Summarizer.next(), None);
        for pair in Stage::ALL.windows(2) {
            assert_eq!(pair[0].next(), Some(pair[1]));
            assert_eq!(pair[1].previous(), Some(pair[0]));
            assert!(pair[0] < pair[1]);
        }
    }

    #[test]
    fn topics_chain_each_stage_to_the_next() {
        assert_eq!(Stage::MimeDetector.input_event(), "created");
        for pair in Stage::ALL.windows(2) {
            assert_eq!(pair[1].input_event(), pair[0].output_event());
        }
    }

    #[test]
    fn names_parse_back() {
        for st in Stage::ALL {
            assert_eq!(st.name().parse::<Stage>().unwrap(), st);
        }
        assert!("pdf".parse::<Stage>().is_err());
    }
}
