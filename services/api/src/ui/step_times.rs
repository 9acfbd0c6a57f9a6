//! Each stage's step time over the artifacts finished lately: from the
//! outcome before it (the upload, for the first stage) to the stage's own,
//! queueing and retries included. Read from the snapshots the read model
//! receives, so it is what artifacts went through, not an estimate.

use crate::readmodel::StatusTable;
use artifact_domain::{ArtifactId, Generation, Stage, StatusView};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Step times kept per stage: the newest this many.
pub const KEEP: usize = 1000;

/// The median and 99th percentile of a stage's recent step times, in ms,
/// and how many they are of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantiles {
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub count: usize,
}

#[derive(Default)]
struct Inner {
    by_stage: [VecDeque<i64>; Stage::ALL.len()],
    /// Generations counted, oldest first, so a snapshot sent again does
    /// not count twice.
    counted: VecDeque<(ArtifactId, Generation)>,
    counted_set: HashSet<(ArtifactId, Generation)>,
}

/// Recent step times of every stage.
#[derive(Default)]
pub struct StepTimes {
    inner: Mutex<Inner>,
}

impl StepTimes {
    /// Counts a final snapshot's steps, once per generation; others are
    /// left for when they are final.
    pub fn record(&self, v: &StatusView) {
        if !v.state.is_terminal() {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (v.artifact_id, v.generation);
        if !g.counted_set.insert(key) {
            return;
        }
        g.counted.push_back(key);
        if g.counted.len() > 2 * KEEP
            && let Some(old) = g.counted.pop_front()
        {
            g.counted_set.remove(&old);
        }
        let mut before = v.created_at;
        for r in &v.timeline {
            if r.is_retry_pending() {
                break;
            }
            if let Some(b) = before
                && r.processed_at >= b
            {
                let times = &mut g.by_stage[r.stage.index()];
                times.push_back(r.processed_at - b);
                if times.len() > KEEP {
                    times.pop_front();
                }
            }
            before = Some(r.processed_at);
        }
    }

    /// A stage's quantiles, once it has a step time.
    pub fn quantiles(&self, stage: Stage) -> Option<Quantiles> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut times: Vec<i64> = g.by_stage[stage.index()].iter().copied().collect();
        if times.is_empty() {
            return None;
        }
        times.sort_unstable();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        Some(Quantiles {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            count: times.len(),
        })
    }

    /// Counts every change the table takes from now on.
    pub async fn follow(self: Arc<Self>, table: Arc<StatusTable>) {
        let mut changes = table.subscribe();
        loop {
            match changes.recv().await {
                Ok(v) => self.record(&v),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifact_domain::{ArtifactState, Outcome, StageRecord};

    fn finished(id: ArtifactId, created: i64, steps: &[i64]) -> StatusView {
        let mut at = created;
        let timeline = Stage::ALL
            .iter()
            .zip(steps)
            .map(|(s, took)| {
                at += took;
                StageRecord {
                    stage: *s,
                    outcome: Outcome::Succeeded,
                    processed_at: at,
                    attempts: Some(1),
                    last_error: None,
                    next_retry_at: None,
                }
            })
            .collect();
        let mut v = crate::http::tests::snapshot(id, ArtifactState::Completed, created);
        v.created_at = Some(created);
        v.timeline = timeline;
        v
    }

    #[test]
    fn steps_are_counted_once_per_final_generation() {
        let t = StepTimes::default();
        assert_eq!(t.quantiles(Stage::MimeDetector), None);
        for i in 0..100 {
            let v = finished(ArtifactId::new_random(), 1_000, &[10 + i, 20, 30, 400]);
            t.record(&v);
            t.record(&v);
        }
        let mime = t.quantiles(Stage::MimeDetector).unwrap();
        assert_eq!(mime.count, 100, "each generation once");
        assert_eq!((mime.p50_ms, mime.p99_ms), (60, 108));
        let summarizer = t.quantiles(Stage::Summarizer).unwrap();
        assert_eq!((summarizer.p50_ms, summarizer.p99_ms), (400, 400));
        // Not final: not counted yet.
        let mut v = finished(ArtifactId::new_random(), 0, &[1, 1]);
        v.state = ArtifactState::InProgress;
        t.record(&v);
        assert_eq!(t.quantiles(Stage::MimeDetector).unwrap().count, 100);
    }

    #[test]
    fn only_the_newest_are_kept() {
        let t = StepTimes::default();
        for i in 0..(KEEP as i64 + 10) {
            t.record(&finished(ArtifactId::new_random(), 0, &[i]));
        }
        let q = t.quantiles(Stage::MimeDetector).unwrap();
        assert_eq!(q.count, KEEP);
        assert_eq!(q.p50_ms, 10 + (KEEP as i64 - 1) / 2 + 1);
    }
}
