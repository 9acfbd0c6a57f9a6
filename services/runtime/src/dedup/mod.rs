//! Keyed dedup state: for every artifact, the newest generation a stage
//! processed. Kept in memory per partition, written to the stage's compacted
//! `<prefix>.<stage>.dedup` topic in the same transaction as the outcome, and
//! restored from the same-numbered partition of that topic before any input
//! of a newly assigned partition is processed.
//!
//! With a retention (`DEDUP_RETENTION_MS`), an artifact's entry is kept for
//! at least the retention after it was processed and for less than twice
//! that: entries are recorded in a current table, which becomes the
//! previous one after a retention, whose entries then expire a retention
//! later. An expired entry leaves memory and a tombstone for its key is
//! written to the dedup topic (with the next batches' records, or in a
//! transaction of its own while the stage is idle), so compaction removes
//! it there too; a restore
//! leaves out (and tombstones) entries processed longer ago than the
//! retention. Memory and restore time then follow the artifacts of the last
//! retention, not every artifact ever processed. A duplicate that arrives
//! after its entry expired is processed again.

mod restore;

pub use restore::{RestoreError, RestoreProgress, restore_partition};

use artifact_domain::{ArtifactId, DedupDecision, Generation, decide};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One partition's entries: recorded in `current`; `previous` holds those
/// of the retention before. A key is in one of them at most.
#[derive(Debug, Default)]
struct Tables {
    current: HashMap<ArtifactId, Generation>,
    previous: HashMap<ArtifactId, Generation>,
}

impl Tables {
    fn get(&self, id: &ArtifactId) -> Option<Generation> {
        self.current
            .get(id)
            .or_else(|| self.previous.get(id))
            .copied()
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Keys of expired entries, with their partition, whose tombstones are to
/// be written.
pub type Tombstones = Vec<(i32, ArtifactId)>;

/// Dedup state of the partitions an instance owns.
#[derive(Debug)]
pub struct DedupState {
    partitions: HashMap<i32, Tables>,
    /// `None`: entries are kept for good.
    retention: Option<Duration>,
    rotated_at: Instant,
    /// Keys expired from memory whose tombstone is not written yet.
    tombstones: Tombstones,
    /// Keys of erased artifacts whose outcome and entry are to be
    /// tombstoned.
    erasures: Tombstones,
}

impl Default for DedupState {
    fn default() -> Self {
        Self::new(None, Instant::now())
    }
}

impl DedupState {
    /// An empty state; entries expire after `retention` (counted from
    /// `now`), or never with `None`.
    pub fn new(retention: Option<Duration>, now: Instant) -> Self {
        Self {
            partitions: HashMap::new(),
            retention,
            rotated_at: now,
            tombstones: Vec::new(),
            erasures: Vec::new(),
        }
    }

    /// Whether a partition's state was restored.
    pub fn has_partition(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Installs a restored partition: its entries, and the keys the restore
    /// found expired, to be tombstoned.
    pub fn install(&mut self, partition: i32, restored: Restored) {
        self.tombstones
            .extend(restored.expired.into_iter().map(|id| (partition, id)));
        self.partitions.insert(
            partition,
            Tables {
                current: restored.entries,
                previous: HashMap::new(),
            },
        );
    }

    /// Forgets a partition (revoked), with its pending tombstones: the next
    /// owner's restore finds those keys expired again.
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.tombstones.retain(|(p, _)| *p != partition);
        self.erasures.retain(|(p, _)| *p != partition);
    }

    /// Partitions held.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// The newest generation processed for an artifact.
    pub fn last(&self, partition: i32, id: ArtifactId) -> Option<Generation> {
        self.partitions.get(&partition)?.get(&id)
    }

    /// Decides on an incoming generation.
    pub fn decide(&self, partition: i32, id: ArtifactId, generation: Generation) -> DedupDecision {
        decide(self.last(partition, id), generation)
    }

    /// Records a processed generation (after its transaction committed).
    /// A partition not held (revoked meanwhile, or not restored yet) is left
    /// alone: its state comes from the dedup topic when it is assigned.
    pub fn record(&mut self, partition: i32, id: ArtifactId, generation: Generation) {
        let Some(t) = self.partitions.get_mut(&partition) else {
            return;
        };
        let newest = [t.previous.remove(&id), t.current.get(&id).copied()]
            .into_iter()
            .flatten()
            .fold(generation, Generation::max);
        t.current.insert(id, newest);
    }

    /// An erased artifact: forgotten, and its key queued for erasure
    /// tombstones on every partition held it was recorded on and on
    /// `also` (keys of the batch still committing).
    pub fn erase(&mut self, id: ArtifactId, also: impl IntoIterator<Item = i32>) -> usize {
        let mut partitions = self.forget(id);
        partitions.extend(also.into_iter().filter(|p| self.partitions.contains_key(p)));
        partitions.sort_unstable();
        partitions.dedup();
        let n = partitions.len();
        self.erasures
            .extend(partitions.into_iter().map(|p| (p, id)));
        n
    }

    /// The queued erasures, to be written in the next transaction.
    pub fn take_erasures(&mut self) -> Tombstones {
        std::mem::take(&mut self.erasures)
    }

    /// Takes back erasures that were not written, of partitions still held
    /// (the next owner's restore finds the others' entries again).
    pub fn return_erasures(&mut self, erasures: Tombstones) {
        let held = &self.partitions;
        self.erasures
            .extend(erasures.into_iter().filter(|(p, _)| held.contains_key(p)));
    }

    /// Erasures waiting for a transaction.
    pub fn pending_erasures(&self) -> usize {
        self.erasures.len()
    }

    /// The artifacts recorded on a partition.
    pub fn keys(&self, partition: i32) -> impl Iterator<Item = ArtifactId> + '_ {
        self.partitions
            .get(&partition)
            .into_iter()
            .flat_map(|t| t.current.keys().chain(t.previous.keys()).copied())
    }

    /// Forgets an artifact on every partition held; returns the partitions
    /// it was recorded on (their entries are to be tombstoned).
    pub fn forget(&mut self, id: ArtifactId) -> Vec<i32> {
        let mut found = Vec::new();
        for (p, t) in &mut self.partitions {
            let current = t.current.remove(&id).is_some();
            if t.previous.remove(&id).is_some() || current {
                found.push(*p);
            }
        }
        found
    }

    /// Expires the previous tables' entries once a retention has passed
    /// since the last rotation, queueing their tombstones; returns how many
    /// expired.
    pub fn rotate_if_due(&mut self, now: Instant) -> usize {
        let Some(retention) = self.retention else {
            return 0;
        };
        if now.saturating_duration_since(self.rotated_at) < retention {
            return 0;
        }
        self.rotated_at = now;
        let mut expired = 0;
        for (p, t) in &mut self.partitions {
            let old = std::mem::replace(&mut t.previous, std::mem::take(&mut t.current));
            expired += old.len();
            self.tombstones.extend(old.into_keys().map(|id| (*p, id)));
        }
        expired
    }

    /// Takes up to `max` pending tombstones, to be written in the next
    /// transaction, before its records: a key processed again in that
    /// batch keeps its new entry. A key processed again since it expired
    /// (recorded anew, or by the batch still committing, `in_flight`) gets
    /// none: its new entry is in the topic, or about to be. Tombstones whose
    /// transaction fails come back with [`DedupState::return_tombstones`].
    pub fn take_tombstones(
        &mut self,
        max: usize,
        in_flight: Option<&HashMap<(i32, ArtifactId), Generation>>,
    ) -> Tombstones {
        let from = self.tombstones.len().saturating_sub(max);
        let mut taken = self.tombstones.split_off(from);
        taken.retain(|(p, id)| {
            self.last(*p, *id).is_none() && !in_flight.is_some_and(|f| f.contains_key(&(*p, *id)))
        });
        taken
    }

    /// Takes back tombstones that were not written (their transaction
    /// failed), to be taken again, except those of partitions no longer
    /// held: the next owner's restore finds those keys expired again, and
    /// may have recorded them anew.
    pub fn return_tombstones(&mut self, tombstones: Tombstones) {
        let held = &self.partitions;
        self.tombstones
            .extend(tombstones.into_iter().filter(|(p, _)| held.contains_key(p)));
    }

    /// Tombstones waiting for a transaction.
    pub fn pending_tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.partitions.values().map(Tables::len).sum()
    }

    /// Whether no keys are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a restore read.
#[derive(Debug, Default)]
pub struct Restored {
    /// The newest generation per artifact, of those not expired.
    pub entries: HashMap<ArtifactId, Generation>,
    /// Artifacts whose newest entry was processed before the expiry.
    pub expired: Vec<ArtifactId>,
    /// Records read.
    pub records: u64,
    /// Records that did not decode (skipped; counted).
    pub undecodable: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: i64) -> Generation {
        Generation::new(n).unwrap()
    }

    #[test]
    fn decisions_follow_recorded_generations_per_partition() {
        let mut s = DedupState::default();
        let id = ArtifactId::new_random();
        s.install(0, Restored::default());
        assert_eq!(s.decide(0, id, g(1)), DedupDecision::Process);
        s.record(0, id, g(1));
        assert_eq!(s.decide(0, id, g(1)), DedupDecision::Duplicate);
        assert_eq!(s.decide(0, id, g(2)), DedupDecision::Process);
        s.record(0, id, g(2));
        assert_eq!(s.decide(0, id, g(1)), DedupDecision::Stale);
        // Recording an older generation never moves the state back.
        s.record(0, id, g(1));
        assert_eq!(s.last(0, id), Some(g(2)));
        // Another partition knows nothing of it.
        assert_eq!(s.decide(1, id, g(1)), DedupDecision::Process);
        s.drop_partition(0);
        assert_eq!(s.last(0, id), None);
        assert!(s.is_empty());
        // A partition not held (revoked) does not come back by recording.
        s.record(0, id, g(3));
        assert!(!s.has_partition(0));
        assert!(s.is_empty());
    }

    /// The retention of the expiry tests.
    const W: Duration = Duration::from_secs(60);

    /// A state with the retention [`W`], started at the returned instant,
    /// holding `partitions`, empty.
    fn retained(partitions: &[i32]) -> (DedupState, Instant) {
        let t0 = Instant::now();
        let mut s = DedupState::new(Some(W), t0);
        for p in partitions {
            s.install(*p, Restored::default());
        }
        (s, t0)
    }

    fn restored(entries: &[(ArtifactId, i64)], expired: &[ArtifactId]) -> Restored {
        Restored {
            entries: entries.iter().map(|(id, n)| (*id, g(*n))).collect(),
            expired: expired.to_vec(),
            ..Restored::default()
        }
    }

    #[test]
    fn entries_expire_between_one_and_two_retentions_after_they_were_recorded() {
        let (mut s, t0) = retained(&[0, 1]);
        let (a, b, c) = (
            ArtifactId::new_random(),
            ArtifactId::new_random(),
            ArtifactId::new_random(),
        );
        s.record(0, a, g(1));
        s.record(1, b, g(1));
        assert_eq!(s.rotate_if_due(t0 + W - Duration::from_secs(1)), 0);
        // After one retention: still known, now in the previous table.
        assert_eq!(s.rotate_if_due(t0 + W), 0);
        assert_eq!(s.decide(0, a, g(1)), DedupDecision::Duplicate);
        assert_eq!(s.len(), 2);
        // Processed again meanwhile (a new generation): b is current again.
        s.record(1, b, g(2));
        s.record(0, c, g(1));
        assert_eq!(s.len(), 3);
        assert_eq!(s.rotate_if_due(t0 + W + W / 2), 0);
        // After two: a expired and is tombstoned; b and c are kept.
        assert_eq!(s.rotate_if_due(t0 + 2 * W), 1);
        assert_eq!(s.decide(0, a, g(1)), DedupDecision::Process);
        assert_eq!(s.last(1, b), Some(g(2)));
        assert_eq!(s.decide(0, c, g(1)), DedupDecision::Duplicate);
        assert_eq!(s.pending_tombstones(), 1);
        assert_eq!(s.take_tombstones(10, None), vec![(0, a)]);
        assert_eq!(s.pending_tombstones(), 0);
        // And a retention later, b and c too.
        assert_eq!(s.rotate_if_due(t0 + 3 * W), 2);
        let mut gone = s.take_tombstones(1, None);
        gone.extend(s.take_tombstones(1, None));
        gone.sort_by_key(|(p, _)| *p);
        assert_eq!(gone, vec![(0, c), (1, b)]);
        assert!(s.is_empty());
    }

    #[test]
    fn tombstones_of_a_failed_transaction_come_back_for_partitions_still_held() {
        let (mut s, t0) = retained(&[0, 1]);
        let (a, b, c) = (
            ArtifactId::new_random(),
            ArtifactId::new_random(),
            ArtifactId::new_random(),
        );
        s.record(0, a, g(1));
        s.record(0, b, g(1));
        s.record(1, c, g(1));
        s.rotate_if_due(t0 + W);
        assert_eq!(s.rotate_if_due(t0 + 2 * W), 3);
        let mut taken = s.take_tombstones(10, None);
        taken.sort_by_key(|(p, _)| *p);
        assert_eq!(taken.len(), 3);
        assert_eq!(s.pending_tombstones(), 0);
        // The transaction failed; meanwhile partition 1 was revoked and b
        // processed again (its tombstone must not follow its new entry).
        s.drop_partition(1);
        s.record(0, b, g(2));
        s.return_tombstones(taken);
        assert_eq!(s.pending_tombstones(), 2, "partition 1's is dropped");
        assert_eq!(s.take_tombstones(10, None), vec![(0, a)]);
    }

    #[test]
    fn a_key_recorded_again_after_it_expired_gets_no_tombstone() {
        let (mut s, t0) = retained(&[0]);
        let (a, b) = (ArtifactId::new_random(), ArtifactId::new_random());
        s.record(0, a, g(1));
        s.record(0, b, g(1));
        s.rotate_if_due(t0 + W);
        assert_eq!(s.rotate_if_due(t0 + 2 * W), 2);
        // b's new generation committed (a batch in flight at the rotation)
        // before the tombstones were taken.
        s.record(0, b, g(2));
        assert_eq!(s.take_tombstones(10, None), vec![(0, a)]);
        assert_eq!(s.pending_tombstones(), 0);
        assert_eq!(s.last(0, b), Some(g(2)));
        // A key of the batch still committing gets none either.
        let c = ArtifactId::new_random();
        s.record(0, c, g(1));
        s.rotate_if_due(t0 + 3 * W);
        assert_eq!(s.rotate_if_due(t0 + 4 * W), 2);
        let committing = HashMap::from([((0, c), g(2))]);
        assert_eq!(s.take_tombstones(10, Some(&committing)), vec![(0, b)]);
    }

    #[test]
    fn forgetting_an_artifact_names_the_partitions_it_was_on() {
        let (mut d, now) = retained(&[0, 1, 2]);
        let (a, b) = (ArtifactId::new_random(), ArtifactId::new_random());
        d.record(0, a, g(1));
        d.record(2, a, g(2));
        d.record(1, b, g(1));
        d.rotate_if_due(now + W);
        d.record(2, a, g(3));
        let mut found = d.forget(a);
        found.sort();
        assert_eq!(found, [0, 2]);
        assert_eq!(d.last(0, a), None);
        assert_eq!(d.last(2, a), None);
        assert_eq!(d.last(1, b), Some(g(1)));
        assert!(d.forget(a).is_empty());
        // An erasure queues the partitions it was on, and those of the
        // batch still committing that are held.
        d.record(1, a, g(4));
        assert_eq!(d.erase(a, [2, 7]), 2);
        let mut queued = d.take_erasures();
        queued.sort();
        assert_eq!(queued, [(1, a), (2, a)]);
        d.drop_partition(2);
        d.return_erasures(queued);
        assert_eq!(d.take_erasures(), [(1, a)]);
    }

    #[test]
    fn without_a_retention_nothing_expires() {
        let t0 = Instant::now();
        let mut s = DedupState::new(None, t0);
        let a = ArtifactId::new_random();
        s.install(0, Restored::default());
        s.record(0, a, g(1));
        assert_eq!(s.rotate_if_due(t0 + Duration::from_secs(86_400 * 365)), 0);
        assert_eq!(s.last(0, a), Some(g(1)));
        assert_eq!(s.pending_tombstones(), 0);
    }

    #[test]
    fn a_restore_brings_its_expired_keys_to_be_tombstoned_and_a_revocation_drops_them() {
        let mut s = DedupState::new(Some(Duration::from_secs(60)), Instant::now());
        let (a, b, c) = (
            ArtifactId::new_random(),
            ArtifactId::new_random(),
            ArtifactId::new_random(),
        );
        s.install(0, restored(&[(a, 2)], &[b]));
        s.install(1, restored(&[], &[c]));
        assert_eq!(s.last(0, a), Some(g(2)));
        assert_eq!(s.last(0, b), None);
        assert_eq!(s.pending_tombstones(), 2);
        s.drop_partition(1);
        assert_eq!(s.take_tombstones(10, None), vec![(0, b)]);
    }

    #[test]
    fn recording_keeps_the_newest_generation_across_both_tables() {
        let (mut s, t0) = retained(&[0]);
        let a = ArtifactId::new_random();
        s.record(0, a, g(3));
        s.rotate_if_due(t0 + W);
        // An older generation recorded late does not move the state back,
        // and the key is held once.
        s.record(0, a, g(2));
        assert_eq!(s.last(0, a), Some(g(3)));
        assert_eq!(s.len(), 1);
        // It is current again: the next rotation does not expire it.
        assert_eq!(s.rotate_if_due(t0 + 2 * W), 0);
        assert_eq!(s.last(0, a), Some(g(3)));
    }
}
