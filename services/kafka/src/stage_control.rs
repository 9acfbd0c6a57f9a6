//! The values of `<prefix>.stage-control` (`schemas/stage-control.avsc`), a
//! compacted topic: the record keyed by a stage's name is the operator's
//! pause or resume of that stage, followed by every replica; a record keyed
//! `<stage>/<instance>` is one replica's circuit breaker saying it opened
//! or closed, for `artifactctl stage status`.

use serde::{Deserialize, Serialize};

/// `cause` of an operator's record.
pub const OPERATOR: &str = "operator";
/// `cause` of a breaker's record.
pub const BREAKER: &str = "breaker";

/// One record's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageControl {
    /// The stage's name.
    pub stage: String,
    /// Whether new input is held back.
    pub paused: bool,
    /// [`OPERATOR`] or [`BREAKER`].
    pub cause: String,
    /// Why, in words.
    pub reason: Option<String>,
    /// The replica of a breaker's record.
    pub instance: Option<String>,
    /// When it was written (epoch milliseconds).
    pub updated_at: i64,
}

impl StageControl {
    /// The record key: the stage's name for the operator's record,
    /// `<stage>/<instance>` for a breaker's.
    pub fn key(&self) -> String {
        match &self.instance {
            Some(i) => format!("{}/{i}", self.stage),
            None => self.stage.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_record_is_keyed_by_stage_and_a_breakers_by_replica() {
        let mut c = StageControl {
            stage: "summarizer".into(),
            paused: true,
            cause: OPERATOR.into(),
            reason: None,
            instance: None,
            updated_at: 1,
        };
        assert_eq!(c.key(), "summarizer");
        c.instance = Some("summarizer-0".into());
        assert_eq!(c.key(), "summarizer/summarizer-0");
    }
}
