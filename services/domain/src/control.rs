//! Operator controls of one artifact, kept in the compacted
//! `<prefix>.artifact-control` topic keyed by artifact id
//! (`schemas/artifact-control.avsc`): a cancelled generation, or an erased
//! artifact. Stages skip the inputs they cover; the projector marks the
//! generation `CANCELLED` or drops the artifact.

use crate::{ArtifactId, Generation};
use serde::{Deserialize, Serialize};

/// What an operator did to an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ControlAction {
    /// Its generation `generation` and every older one are cancelled.
    Cancelled,
    /// The artifact is erased: every generation, for good.
    Erased,
}

/// The value of an artifact-control record; the latest per artifact counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactControl {
    /// The artifact; also the record key.
    pub artifact_id: ArtifactId,
    /// What was done.
    pub action: ControlAction,
    /// The generation cancelled (for `Erased`, the newest known then).
    pub generation: Generation,
    /// When, in epoch milliseconds.
    pub at: i64,
}

impl ArtifactControl {
    /// Why an input of `generation` of this artifact is not processed, as a
    /// metric label; `None` if it is.
    pub fn skip_reason(&self, generation: Generation) -> Option<&'static str> {
        match self.action {
            ControlAction::Erased => Some("erased"),
            ControlAction::Cancelled if generation <= self.generation => Some("cancelled"),
            ControlAction::Cancelled => None,
        }
    }

    /// Of two controls of one artifact, the one that holds: an erasure over
    /// a cancel, else the newer generation. A compacted topic keeps the
    /// latest record, and its writers write them in that order; this makes
    /// a reader that meets both (before compaction) agree with it.
    pub fn merge(self, other: ArtifactControl) -> ArtifactControl {
        let rank = |c: &ArtifactControl| (c.action == ControlAction::Erased, c.generation, c.at);
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }
}

/// Why an input of `generation` is skipped given the artifact's control,
/// if any.
pub fn control_skip(
    control: Option<&ArtifactControl>,
    generation: Generation,
) -> Option<&'static str> {
    control.and_then(|c| c.skip_reason(generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: u32) -> Generation {
        Generation::new(n.into()).unwrap()
    }

    fn control(action: ControlAction, generation: u32) -> ArtifactControl {
        ArtifactControl {
            artifact_id: ArtifactId::new_random(),
            action,
            generation: g(generation),
            at: 1,
        }
    }

    #[test]
    fn a_cancel_covers_its_generation_and_older_ones_only() {
        let c = control(ControlAction::Cancelled, 2);
        assert_eq!(control_skip(Some(&c), g(1)), Some("cancelled"));
        assert_eq!(control_skip(Some(&c), g(2)), Some("cancelled"));
        assert_eq!(control_skip(Some(&c), g(3)), None, "a reprocess runs");
        assert_eq!(control_skip(None, g(1)), None);
    }

    #[test]
    fn an_erasure_covers_every_generation() {
        let e = control(ControlAction::Erased, 2);
        for n in [1, 2, 3, 100] {
            assert_eq!(control_skip(Some(&e), g(n)), Some("erased"));
        }
    }

    #[test]
    fn an_erasure_holds_over_any_cancel_and_a_newer_cancel_over_an_older_one() {
        let (c1, c3, e) = (
            control(ControlAction::Cancelled, 1),
            control(ControlAction::Cancelled, 3),
            control(ControlAction::Erased, 2),
        );
        assert_eq!(c1.clone().merge(c3.clone()), c3);
        assert_eq!(c3.clone().merge(c1.clone()), c3);
        assert_eq!(c3.clone().merge(e.clone()), e);
        assert_eq!(e.clone().merge(c3), e);
    }
}
