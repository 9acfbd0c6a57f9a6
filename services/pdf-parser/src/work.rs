//! The work one document may cost, beyond what lopdf spends loading it.
//!
//! Two bounds, both ending extraction with an error:
//! - bytes of decompressed content: each page's content, each form every
//!   time it is drawn, and each font's ToUnicode CMap and embedded program
//!   once. Reading and interpreting content costs time in proportion to
//!   its bytes (an operator or a glyph takes at least one byte), so this
//!   bounds CPU whatever the per-page operator budget leaves
//!   ([`ParseError::TooMuchContent`]);
//! - the deadline, checked between pages, fonts and forms and every
//!   [`TICK_INTERVAL`] operators or glyphs, so that a parse the caller has
//!   given up on stops and frees its memory ([`ParseError::Timeout`]).

use crate::{Limits, ParseError};
use std::time::Instant;

/// Operators and glyphs between two looks at the clock: often enough to
/// stop within a millisecond or so, rarely enough to cost nothing.
pub(crate) const TICK_INTERVAL: u32 = 4096;

/// What is left of one document's work budget.
pub(crate) struct Work {
    content_left: usize,
    content_limit: usize,
    deadline: Option<Instant>,
    ticks: u32,
}

impl Work {
    pub fn new(limits: &Limits) -> Self {
        Work {
            content_left: limits.max_content_bytes,
            content_limit: limits.max_content_bytes,
            deadline: limits.deadline,
            ticks: 0,
        }
    }

    /// Charges `bytes` of decompressed content; an error once the
    /// document's total exceeds the limit.
    pub fn decompressed(&mut self, bytes: usize) -> Result<(), ParseError> {
        match self.content_left.checked_sub(bytes) {
            Some(left) => {
                self.content_left = left;
                Ok(())
            }
            None => {
                self.content_left = 0;
                Err(ParseError::TooMuchContent {
                    limit: self.content_limit,
                })
            }
        }
    }

    /// An error once the deadline has passed.
    pub fn check_deadline(&self) -> Result<(), ParseError> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(ParseError::Timeout),
            _ => Ok(()),
        }
    }

    /// Counts one step of interpretation (an operator, a glyph) and looks
    /// at the clock every [`TICK_INTERVAL`] steps.
    #[inline]
    pub fn tick(&mut self) -> Result<(), ParseError> {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(TICK_INTERVAL) {
            self.check_deadline()
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_charged_up_to_the_limit() {
        let mut work = Work::new(&Limits {
            max_content_bytes: 10,
            ..Limits::default()
        });
        assert_eq!(work.decompressed(6), Ok(()));
        assert_eq!(work.decompressed(4), Ok(()));
        assert_eq!(
            work.decompressed(1),
            Err(ParseError::TooMuchContent { limit: 10 })
        );
    }

    #[test]
    fn the_clock_is_read_every_interval_of_ticks() {
        let mut work = Work::new(&Limits {
            deadline: Some(Instant::now()),
            ..Limits::default()
        });
        assert_eq!(work.check_deadline(), Err(ParseError::Timeout));
        for _ in 1..TICK_INTERVAL {
            assert_eq!(work.tick(), Ok(()));
        }
        assert_eq!(work.tick(), Err(ParseError::Timeout));
        let unbounded = Work::new(&Limits::default());
        assert_eq!(unbounded.check_deadline(), Ok(()));
    }
}
