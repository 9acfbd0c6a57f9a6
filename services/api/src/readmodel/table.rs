//! The read-model table: every artifact's newest snapshot, the final ones
//! in a file and the others in memory.
//!
//! Held whole in memory, each artifact's snapshot cost the API about 1.5 KB
//! for good. Now the snapshot of an artifact in a final state is appended
//! to a file and memory keeps where it is, its generation, time and state
//! (about 80 bytes); the snapshots of artifacts in flight stay in memory
//! until they are final, so an artifact costs one append per generation.
//! The file is created at each start in `READ_MODEL_DIR` and unlinked at
//! once: the status topic stays the only source, and a crash leaves nothing
//! behind. It is not synced. A generation that replaces a final one (a
//! reprocess) leaves the old snapshot's bytes behind; once those dead bytes
//! outweigh the live ones (and 64 MiB), the live snapshots are copied to a
//! new file, so the file stays within twice its live size plus 64 MiB.

use artifact_domain::{ArtifactId, ArtifactState, Generation, StatusView};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file failed.
    #[error("read-model file: {0}")]
    Io(#[from] std::io::Error),
    /// A snapshot read back did not decode.
    #[error("read-model snapshot of {id} does not decode: {source}")]
    Snapshot {
        /// The artifact.
        id: ArtifactId,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The file could not be created.
    #[error("creating the read-model file in {dir}: {source}")]
    Create {
        /// `READ_MODEL_DIR`.
        dir: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The error of a failed creation in `dir`.
fn create_error(dir: &Path) -> impl Fn(std::io::Error) -> TableError + '_ {
    move |source| TableError::Create {
        dir: dir.display().to_string(),
        source,
    }
}

/// A new file in `dir`, unlinked at once: it lives as long as it is open.
fn new_file(dir: &Path) -> Result<File, TableError> {
    let path = dir.join(format!(
        "read-model-{}.jsonl",
        uuid::Uuid::new_v4().simple()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(create_error(dir))?;
    std::fs::remove_file(&path).map_err(create_error(dir))?;
    Ok(file)
}

/// The snapshot a slot of `file` points at.
fn read(file: &File, k: u128, slot: Slot) -> Result<StatusView, TableError> {
    let mut buf = vec![0u8; slot.len as usize];
    file.read_exact_at(&mut buf, slot.offset)?;
    serde_json::from_slice(&buf).map_err(|source| TableError::Snapshot {
        id: id_of(k),
        source,
    })
}

fn key(id: ArtifactId) -> u128 {
    id.as_uuid().as_u128()
}

fn id_of(k: u128) -> ArtifactId {
    ArtifactId::from_uuid(uuid::Uuid::from_u128(k))
}

/// Where a final snapshot is in the file, and what deciding on a newer one
/// and listing by state need.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    len: u32,
    generation: Generation,
    updated_at: i64,
    state: ArtifactState,
    /// [`StatusView::is_settled`]: no event of this generation changes it.
    settled: bool,
}

impl Slot {
    fn order(&self) -> (Generation, i64) {
        (self.generation, self.updated_at)
    }
}

fn order(v: &StatusView) -> (Generation, i64) {
    (v.generation, v.updated_at)
}

#[derive(Debug)]
struct Index {
    /// The file of the final snapshots; replaced when it is compacted (a
    /// reader keeps the one its slot points into).
    file: Arc<File>,
    /// Final snapshots, in the file.
    on_file: BTreeMap<u128, Slot>,
    /// Snapshots of artifacts in flight; one here shadows the file's of the
    /// same artifact (a reprocess of a finished artifact).
    in_flight: BTreeMap<u128, StatusView>,
}

impl Index {
    /// (generation, `updated_at`) of the snapshot held for an artifact: the
    /// one in flight if there is one, else the file's.
    fn order(&self, k: u128) -> Option<(Generation, i64)> {
        match self.in_flight.get(&k) {
            Some(v) => Some(order(v)),
            None => self.on_file.get(&k).map(Slot::order),
        }
    }
}

/// A page entry before its snapshot is read from the file.
enum Entry {
    Held(Box<StatusView>),
    OnFile(u128, Slot, Arc<File>),
}

/// The file's length and the bytes of it that snapshots in the index hold.
#[derive(Debug, Default)]
struct Lengths {
    end: u64,
    live: u64,
}

/// Of several snapshots of one artifact in a batch, the newest (the later
/// in the batch at a tie).
fn newest_of(views: &[StatusView]) -> HashMap<u128, &StatusView> {
    let mut newest: HashMap<u128, &StatusView> = HashMap::with_capacity(views.len());
    for v in views {
        let slot = newest.entry(key(v.artifact_id)).or_insert(v);
        if order(v) >= order(slot) {
            *slot = v;
        }
    }
    newest
}

/// Snapshots of a batch by where they go (see [`StatusTable::sort`]).
#[derive(Default)]
struct Sorted<'v> {
    to_file: Vec<(u128, &'v StatusView)>,
    to_memory: Vec<(u128, &'v StatusView)>,
    ties: Vec<(u128, &'v StatusView, Slot)>,
}

/// The JSON lines of `views`, to be appended at `end`, and the slot each
/// will have.
fn encode(end: u64, views: &[(u128, &StatusView)]) -> (Vec<u8>, Vec<(u128, Slot)>) {
    let mut buf = Vec::new();
    let mut slots = Vec::with_capacity(views.len());
    for (k, v) in views {
        let offset = end + buf.len() as u64;
        serde_json::to_writer(&mut buf, v).expect("a snapshot serializes to JSON");
        let len = (end + buf.len() as u64 - offset) as u32;
        buf.push(b'\n');
        slots.push((
            *k,
            Slot {
                offset,
                len,
                generation: v.generation,
                updated_at: v.updated_at,
                state: v.state,
                settled: v.is_settled(),
            },
        ));
    }
    (buf, slots)
}

/// Dead bytes the file may hold before it is compacted, at least.
const COMPACT_ABOVE: u64 = 64 << 20;

/// Changes a slow event stream may fall behind by before it is told it
/// missed some.
const CHANGES_BUFFERED: usize = 4096;

/// Snapshots by artifact: the final ones in a file, the others in memory.
#[derive(Debug)]
pub struct StatusTable {
    dir: PathBuf,
    /// The file's lengths; only the writer appends (and compacts).
    lengths: Mutex<Lengths>,
    index: RwLock<Index>,
    restored: AtomicBool,
    /// Wakes those waiting for the restore.
    restored_now: tokio::sync::Notify,
    /// Dead bytes the file may hold before it is compacted, at least.
    compact_above: u64,
    /// Every snapshot that changed the table, for the event streams.
    changes: tokio::sync::broadcast::Sender<StatusView>,
    /// Every artifact removed (erased), for the event streams to end.
    erasures: tokio::sync::broadcast::Sender<ArtifactId>,
}

impl StatusTable {
    /// Creates an empty table with a new file in `dir`, unlinked at once.
    pub fn create(dir: &Path) -> Result<Self, TableError> {
        std::fs::create_dir_all(dir).map_err(create_error(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
            lengths: Mutex::default(),
            index: RwLock::new(Index {
                file: Arc::new(new_file(dir)?),
                on_file: BTreeMap::new(),
                in_flight: BTreeMap::new(),
            }),
            restored: AtomicBool::new(false),
            restored_now: tokio::sync::Notify::new(),
            compact_above: COMPACT_ABOVE,
            changes: tokio::sync::broadcast::Sender::new(CHANGES_BUFFERED),
            erasures: tokio::sync::broadcast::Sender::new(CHANGES_BUFFERED),
        })
    }

    /// Every snapshot that changes the table from now on, in order; a
    /// receiver that falls behind by more than a few thousand is told how
    /// many it missed.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StatusView> {
        self.changes.subscribe()
    }

    /// Every artifact removed from now on (its status got a tombstone);
    /// a receiver that falls behind is told how many it missed.
    pub fn subscribe_erasures(&self) -> tokio::sync::broadcast::Receiver<ArtifactId> {
        self.erasures.subscribe()
    }

    /// The same, compacting once the dead bytes outweigh the live ones and
    /// `bytes`.
    pub fn with_compaction_above(mut self, bytes: u64) -> Self {
        self.compact_above = bytes;
        self
    }

    /// Keeps, for each artifact, the newest of the held and the given
    /// snapshots (by generation, then `updated_at`); at a tie, the given one,
    /// and of the given ones the later in `views`. A final snapshot equal to
    /// the one on file is not appended again. Returns how many changed.
    pub fn upsert(&self, views: &[StatusView]) -> Result<usize, TableError> {
        let Sorted {
            mut to_file,
            to_memory,
            ties,
        } = self.sort(newest_of(views));
        // The writer's lock: the file is neither appended to nor replaced
        // by anyone else until this write is done.
        let mut lengths = self.lengths.lock().expect("file lock");
        let file = self.index.read().expect("table lock").file.clone();
        // A final snapshot that ties with the one on file is appended only
        // if it differs (a fold that took a late step with an older time);
        // the same snapshot written again (a resend) is not.
        for (k, v, slot) in ties {
            if read(&file, k, slot)? != *v {
                to_file.push((k, v));
            }
        }
        // The final snapshots are appended in one write; memory points at
        // them once they are in the file.
        let (buf, slots) = encode(lengths.end, &to_file);
        if !buf.is_empty() {
            file.write_all_at(&buf, lengths.end)?;
            lengths.end += buf.len() as u64;
        }
        {
            let mut index = self.index.write().expect("table lock");
            for (k, slot) in slots {
                index.in_flight.remove(&k);
                lengths.live += u64::from(slot.len) + 1;
                if let Some(old) = index.on_file.insert(k, slot) {
                    lengths.live -= u64::from(old.len) + 1;
                }
            }
            for (k, v) in &to_memory {
                index.in_flight.insert(*k, (*v).clone());
            }
        }
        // Cloned only while someone listens.
        if self.changes.receiver_count() > 0 {
            for (_, v) in to_file.iter().chain(&to_memory) {
                let _ = self.changes.send((*v).clone());
            }
        }
        let dead = lengths.end - lengths.live;
        if dead > lengths.live.max(self.compact_above) {
            // The write itself is done; a failed compaction is tried again
            // at the next write.
            if let Err(e) = self.compact(&mut lengths) {
                tracing::warn!(error = %e, "read-model file not compacted; will retry");
            }
        }
        Ok(to_file.len() + to_memory.len())
    }

    /// Removes an artifact (its status got a tombstone: it was erased).
    /// Its bytes in the file are dead, left to the next compaction. Returns
    /// whether it was held.
    pub fn remove(&self, id: ArtifactId) -> bool {
        let k = key(id);
        let mut lengths = self.lengths.lock().expect("file lock");
        let mut index = self.index.write().expect("table lock");
        let held = index.in_flight.remove(&k).is_some();
        let removed = match index.on_file.remove(&k) {
            Some(slot) => {
                lengths.live -= u64::from(slot.len) + 1;
                true
            }
            None => held,
        };
        if removed && self.erasures.receiver_count() > 0 {
            let _ = self.erasures.send(id);
        }
        removed
    }

    /// Where each of the `newest` snapshots goes, given what the table
    /// holds: nowhere (older than the held one), to memory (in flight), to
    /// the file (final), or to a comparison with the file's (a final one
    /// that ties with it).
    fn sort<'v>(&self, newest: HashMap<u128, &'v StatusView>) -> Sorted<'v> {
        let mut sorted = Sorted::default();
        let index = self.index.read().expect("table lock");
        for (k, v) in newest {
            if index.order(k).is_some_and(|o| order(v) < o) {
                continue;
            }
            if !v.state.is_terminal() {
                sorted.to_memory.push((k, v));
                continue;
            }
            match index.on_file.get(&k) {
                Some(slot) if !index.in_flight.contains_key(&k) && slot.order() == order(v) => {
                    sorted.ties.push((k, v, *slot))
                }
                _ => sorted.to_file.push((k, v)),
            }
        }
        sorted
    }

    /// Copies the live snapshots to a new file and points the index at it.
    /// Called with the writer's lock held: the snapshots on file do not
    /// change meanwhile. Readers that took a slot of the old file read it
    /// from the old file, which stays open until they are done.
    fn compact(&self, lengths: &mut Lengths) -> Result<(), TableError> {
        let (old, mut slots): (Arc<File>, Vec<(u128, Slot)>) = {
            let index = self.index.read().expect("table lock");
            let slots = index.on_file.iter().map(|(k, s)| (*k, *s)).collect();
            (index.file.clone(), slots)
        };
        slots.sort_unstable_by_key(|(_, s)| s.offset);
        let new = new_file(&self.dir)?;
        let mut written = 0u64;
        let mut buf = Vec::new();
        let mut moved = Vec::with_capacity(slots.len());
        for (k, s) in slots {
            let at = buf.len();
            buf.resize(at + s.len as usize + 1, 0);
            old.read_exact_at(&mut buf[at..], s.offset)?;
            moved.push((k, written + at as u64));
            if buf.len() >= 1 << 20 {
                new.write_all_at(&buf, written)?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        new.write_all_at(&buf, written)?;
        written += buf.len() as u64;
        let before = lengths.end;
        {
            let mut index = self.index.write().expect("table lock");
            index.file = Arc::new(new);
            for (k, offset) in moved {
                if let Some(s) = index.on_file.get_mut(&k) {
                    s.offset = offset;
                }
            }
        }
        *lengths = Lengths {
            end: written,
            live: written,
        };
        tracing::info!(before, after = written, "read-model file compacted");
        Ok(())
    }

    fn resolve(&self, entry: Entry) -> Result<StatusView, TableError> {
        match entry {
            Entry::Held(v) => Ok(*v),
            Entry::OnFile(k, slot, file) => read(&file, k, slot),
        }
    }

    /// One artifact.
    pub fn get(&self, id: ArtifactId) -> Result<Option<StatusView>, TableError> {
        let k = key(id);
        let entry = {
            let index = self.index.read().expect("table lock");
            match index.in_flight.get(&k) {
                Some(v) => Some(Entry::Held(Box::new(v.clone()))),
                None => index
                    .on_file
                    .get(&k)
                    .map(|s| Entry::OnFile(k, *s, index.file.clone())),
            }
        };
        entry.map(|e| self.resolve(e)).transpose()
    }

    /// The generation of an artifact's snapshot, without reading it.
    pub fn generation(&self, id: ArtifactId) -> Option<Generation> {
        let index = self.index.read().expect("table lock");
        index.order(key(id)).map(|(generation, _)| generation)
    }

    /// The generation of an artifact's snapshot if that snapshot is
    /// settled ([`StatusView::is_settled`]): an event of that generation or
    /// an older one is a duplicate of one it already reflects. `None` while
    /// a snapshot in flight is held.
    pub fn settled_generation(&self, id: ArtifactId) -> Option<Generation> {
        let k = key(id);
        let index = self.index.read().expect("table lock");
        if index.in_flight.contains_key(&k) {
            return None;
        }
        index
            .on_file
            .get(&k)
            .filter(|s| s.settled)
            .map(|s| s.generation)
    }

    /// Up to `limit` artifacts after `cursor` (by id), optionally in one
    /// state, and the cursor of the next page if there is one.
    pub fn list(
        &self,
        state: Option<ArtifactState>,
        cursor: Option<ArtifactId>,
        limit: usize,
    ) -> Result<(Vec<StatusView>, Option<ArtifactId>), TableError> {
        let after = match cursor {
            Some(c) if key(c) == u128::MAX => return Ok((Vec::new(), None)),
            Some(c) => key(c) + 1,
            None => 0,
        };
        let wanted = |s: ArtifactState| state.is_none_or(|w| w == s);
        // Both maps merged by id, up to one more than the page; a snapshot
        // on file that one in flight shadows is left out.
        let mut entries: Vec<Entry> = Vec::with_capacity(limit + 1);
        {
            let index = self.index.read().expect("table lock");
            let mut on_file = index
                .on_file
                .range(after..)
                .filter(|(k, s)| wanted(s.state) && !index.in_flight.contains_key(k))
                .peekable();
            let mut in_flight = index
                .in_flight
                .range(after..)
                .filter(|(_, v)| wanted(v.state))
                .peekable();
            while entries.len() <= limit {
                let from_file = match (on_file.peek(), in_flight.peek()) {
                    (None, None) => break,
                    (Some((f, _)), Some((m, _))) => f < m,
                    (f, _) => f.is_some(),
                };
                if from_file {
                    let (k, s) = on_file.next().expect("peeked");
                    entries.push(Entry::OnFile(*k, *s, index.file.clone()));
                } else {
                    let (_, v) = in_flight.next().expect("peeked");
                    entries.push(Entry::Held(Box::new(v.clone())));
                }
            }
        }
        let more = entries.len() > limit;
        entries.truncate(limit);
        let page = entries
            .into_iter()
            .map(|e| self.resolve(e))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            page.last().map(|v| v.artifact_id)
        } else {
            None
        };
        Ok((page, next))
    }

    /// Whether the table caught up with the topic once.
    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }

    /// Returns once the table is restored.
    pub async fn restored(&self) {
        let notified = self.restored_now.notified();
        tokio::pin!(notified);
        // Registered before the check: a restore in between still wakes it.
        notified.as_mut().enable();
        if !self.is_restored() {
            notified.await;
        }
    }

    /// The table caught up with the topic.
    pub(crate) fn mark_restored(&self) {
        self.restored.store(true, Ordering::Release);
        self.restored_now.notify_waiters();
    }

    /// Number of artifacts held.
    pub fn len(&self) -> usize {
        let index = self.index.read().expect("table lock");
        let only_in_flight = index
            .in_flight
            .keys()
            .filter(|k| !index.on_file.contains_key(k))
            .count();
        index.on_file.len() + only_in_flight
    }

    /// How many artifacts are in each state (for the console), without
    /// reading a snapshot.
    pub fn count_by_state(&self) -> HashMap<ArtifactState, usize> {
        let index = self.index.read().expect("table lock");
        let mut counts = HashMap::new();
        for (k, s) in &index.on_file {
            if !index.in_flight.contains_key(k) {
                *counts.entry(s.state).or_default() += 1;
            }
        }
        for v in index.in_flight.values() {
            *counts.entry(v.state).or_default() += 1;
        }
        counts
    }

    /// Whether no artifact is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Artifacts whose snapshot is held in memory (not in a final state).
    pub fn in_flight(&self) -> usize {
        self.index.read().expect("table lock").in_flight.len()
    }

    /// Bytes of the file.
    pub fn file_bytes(&self) -> u64 {
        self.lengths.lock().expect("file lock").end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifact_domain::ArtifactContext;

    fn table() -> StatusTable {
        StatusTable::create(&std::env::temp_dir()).expect("table")
    }

    fn id(n: u128) -> ArtifactId {
        ArtifactId::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn view(n: u128, generation: u32, updated_at: i64, state: ArtifactState) -> StatusView {
        StatusView {
            artifact_id: id(n),
            generation: Generation::new(generation.into()).expect("generation"),
            state,
            current_stage: None,
            failed_stage: None,
            failure_reason: None,
            context: ArtifactContext {
                storage_location: format!("file:///blobs/{n}"),
                ..ArtifactContext::default()
            },
            page_count: None,
            word_count: None,
            summary: Some(format!("summary {n} {generation} {updated_at}")),
            summary_method: None,
            timeline: Vec::new(),
            created_at: Some(1),
            updated_at,
            cancelled_at: None,
            next_retry_at: None,
            dead_letters: Vec::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn keeps_the_newer_snapshot_by_generation_then_time() {
        let t = table();
        let first = view(1, 1, 10, ArtifactState::InProgress);
        assert_eq!(t.upsert(std::slice::from_ref(&first)).unwrap(), 1);
        assert_eq!(t.get(id(1)).unwrap(), Some(first.clone()));
        // Older in time, same generation: ignored.
        let stale = view(1, 1, 9, ArtifactState::Pending);
        assert_eq!(t.upsert(&[stale]).unwrap(), 0);
        assert_eq!(t.get(id(1)).unwrap(), Some(first));
        // A newer generation wins even with an older time.
        let regen = view(1, 2, 5, ArtifactState::Pending);
        assert_eq!(t.upsert(std::slice::from_ref(&regen)).unwrap(), 1);
        assert_eq!(t.get(id(1)).unwrap(), Some(regen));
        // The older generation, however late, does not come back.
        assert_eq!(
            t.upsert(&[view(1, 1, 99, ArtifactState::Completed)])
                .unwrap(),
            0
        );
        assert_eq!(t.get(id(1)).unwrap().unwrap().generation.get(), 2);
        assert_eq!(t.generation(id(1)).map(Generation::get), Some(2));
        assert_eq!(t.get(id(2)).unwrap(), None);
        assert_eq!(t.generation(id(2)), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_same_final_snapshot_again_is_not_appended_a_different_one_is() {
        let t = table();
        let done = view(1, 1, 10, ArtifactState::Completed);
        assert_eq!(t.upsert(std::slice::from_ref(&done)).unwrap(), 1);
        let bytes = t.file_bytes();
        assert_eq!(t.upsert(std::slice::from_ref(&done)).unwrap(), 0);
        assert_eq!(t.file_bytes(), bytes);
        // Same generation and time, different content (a late step folded):
        // the given one wins, appended.
        let mut richer = done.clone();
        richer.page_count = Some(3);
        assert_eq!(t.upsert(std::slice::from_ref(&richer)).unwrap(), 1);
        assert!(t.file_bytes() > bytes);
        assert_eq!(t.get(id(1)).unwrap(), Some(richer));
    }

    #[test]
    fn of_one_batch_the_newest_snapshot_of_each_artifact_is_kept() {
        let t = table();
        let newest = view(1, 1, 12, ArtifactState::Completed);
        let written = t
            .upsert(&[
                view(1, 1, 10, ArtifactState::Pending),
                newest.clone(),
                view(1, 1, 11, ArtifactState::InProgress),
                view(2, 1, 5, ArtifactState::InProgress),
            ])
            .unwrap();
        assert_eq!(written, 2);
        assert_eq!(t.get(id(1)).unwrap(), Some(newest));
        let (done, _) = t.list(Some(ArtifactState::Completed), None, 10).unwrap();
        assert_eq!(done.len(), 1);
        let (running, _) = t.list(Some(ArtifactState::InProgress), None, 10).unwrap();
        assert_eq!(
            running.iter().map(|v| v.artifact_id).collect::<Vec<_>>(),
            vec![id(2)]
        );
        // At a tie, the later of the batch.
        let mut tie = view(3, 1, 7, ArtifactState::InProgress);
        let first = tie.clone();
        tie.summary = Some("the later one".into());
        t.upsert(&[first, tie.clone()]).unwrap();
        assert_eq!(t.get(id(3)).unwrap(), Some(tie));
    }

    #[test]
    fn pages_through_all_artifacts_and_through_one_state() {
        let t = table();
        let views: Vec<StatusView> = (1..=7u128)
            .map(|n| {
                let s = if n % 2 == 0 {
                    ArtifactState::Completed
                } else {
                    ArtifactState::InProgress
                };
                view(n, 1, 10, s)
            })
            .collect();
        t.upsert(&views).unwrap();
        // One artifact moves from in progress to completed: it leaves the
        // in-progress listing.
        t.upsert(&[view(3, 1, 11, ArtifactState::Completed)])
            .unwrap();

        let ids = |page: &[StatusView]| page.iter().map(|v| v.artifact_id).collect::<Vec<_>>();
        let (p1, next) = t.list(None, None, 3).unwrap();
        assert_eq!(ids(&p1), vec![id(1), id(2), id(3)]);
        assert_eq!(next, Some(id(3)));
        let (p2, next) = t.list(None, next, 3).unwrap();
        assert_eq!(ids(&p2), vec![id(4), id(5), id(6)]);
        let (p3, next) = t.list(None, next, 3).unwrap();
        assert_eq!(ids(&p3), vec![id(7)]);
        assert_eq!(next, None);

        let (done, next) = t.list(Some(ArtifactState::Completed), None, 2).unwrap();
        assert_eq!(ids(&done), vec![id(2), id(3)]);
        let (done, next) = t.list(Some(ArtifactState::Completed), next, 2).unwrap();
        assert_eq!(ids(&done), vec![id(4), id(6)]);
        assert_eq!(next, None);
        assert!(done.iter().all(|v| v.state == ArtifactState::Completed));
        let (running, _) = t.list(Some(ArtifactState::InProgress), None, 10).unwrap();
        assert_eq!(ids(&running), vec![id(1), id(5), id(7)]);
        let (none, next) = t.list(Some(ArtifactState::Failed), None, 10).unwrap();
        assert!(none.is_empty() && next.is_none());
        // The largest id as cursor: nothing after it.
        let (after_max, _) = t.list(None, Some(id(u128::MAX)), 10).unwrap();
        assert!(after_max.is_empty());
    }

    #[test]
    fn an_artifact_in_flight_is_held_in_memory_until_final_and_shadows_the_file() {
        let t = table();
        let ids = |page: &[StatusView]| page.iter().map(|v| v.artifact_id).collect::<Vec<_>>();
        t.upsert(&[
            view(1, 1, 10, ArtifactState::Completed),
            view(2, 1, 10, ArtifactState::InProgress),
            view(3, 1, 10, ArtifactState::Failed),
        ])
        .unwrap();
        assert_eq!(t.in_flight(), 1);
        // A reprocess of 1: generation 2 in flight shadows the completed row.
        let regen = view(1, 2, 20, ArtifactState::Pending);
        t.upsert(std::slice::from_ref(&regen)).unwrap();
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.get(id(1)).unwrap(), Some(regen));
        assert_eq!(t.generation(id(1)).map(Generation::get), Some(2));
        assert_eq!(t.len(), 3);
        let (all, _) = t.list(None, None, 10).unwrap();
        assert_eq!(ids(&all), vec![id(1), id(2), id(3)]);
        assert_eq!(all[0].generation.get(), 2);
        let (done, _) = t.list(Some(ArtifactState::Completed), None, 10).unwrap();
        assert!(done.is_empty(), "a shadowed row is listed: {done:?}");
        let (pending, _) = t.list(Some(ArtifactState::Pending), None, 10).unwrap();
        assert_eq!(ids(&pending), vec![id(1)]);
        // Pages that cross both sources.
        let (p1, next) = t.list(None, None, 2).unwrap();
        assert_eq!(ids(&p1), vec![id(1), id(2)]);
        let (p2, next) = t.list(None, next, 2).unwrap();
        assert_eq!(ids(&p2), vec![id(3)]);
        assert_eq!(next, None);
        // Final again: memory lets go, the file has generation 2.
        t.upsert(&[view(1, 2, 30, ArtifactState::Completed)])
            .unwrap();
        assert_eq!(t.in_flight(), 1);
        let (done, _) = t.list(Some(ArtifactState::Completed), None, 10).unwrap();
        assert_eq!(ids(&done), vec![id(1)]);
        assert_eq!(done[0].generation.get(), 2);
        // A late snapshot in flight of the finished generation changes nothing.
        assert_eq!(
            t.upsert(&[view(1, 2, 25, ArtifactState::InProgress)])
                .unwrap(),
            0
        );
        assert_eq!(t.in_flight(), 1);
        assert_eq!(
            t.get(id(1)).unwrap().unwrap().state,
            ArtifactState::Completed
        );
        // A failed artifact reprocessed to completion leaves the failed listing.
        t.upsert(&[view(3, 2, 40, ArtifactState::Completed)])
            .unwrap();
        let (failed, _) = t.list(Some(ArtifactState::Failed), None, 10).unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        let (done, _) = t.list(Some(ArtifactState::Completed), None, 10).unwrap();
        assert_eq!(ids(&done), vec![id(1), id(3)]);
    }

    #[test]
    fn a_removed_artifact_is_gone_in_flight_or_on_file() {
        let t = table();
        t.upsert(&[
            view(1, 1, 10, ArtifactState::Completed),
            view(2, 1, 10, ArtifactState::InProgress),
            view(3, 1, 10, ArtifactState::Cancelled),
        ])
        .unwrap();
        assert!(t.remove(id(1)));
        assert!(t.remove(id(2)));
        assert!(!t.remove(id(4)));
        assert_eq!(t.get(id(1)).unwrap(), None);
        assert_eq!(t.get(id(2)).unwrap(), None);
        assert_eq!(t.generation(id(1)), None);
        let (all, _) = t.list(None, None, 10).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, ArtifactState::Cancelled);
        // A snapshot written after the tombstone would be a new artifact.
        t.upsert(&[view(1, 1, 10, ArtifactState::Completed)])
            .unwrap();
        assert!(t.get(id(1)).unwrap().is_some());
    }

    #[test]
    fn the_file_is_gone_from_its_directory_while_in_use() {
        let dir = std::env::temp_dir().join(format!("rm-{}", uuid::Uuid::new_v4().simple()));
        let t = StatusTable::create(&dir).unwrap();
        t.upsert(&[view(1, 1, 1, ArtifactState::Pending)]).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert!(t.get(id(1)).unwrap().is_some());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn reprocessed_snapshots_are_compacted_out_of_the_file() {
        let t = table().with_compaction_above(0);
        let done = |n, generation| view(n, generation, 10, ArtifactState::Completed);
        t.upsert(&[done(1, 1), done(2, 1), done(3, 1)]).unwrap();
        let live = t.file_bytes();
        // A reader that took artifact 2's slot before the compaction.
        let before = {
            let index = t.index.read().unwrap();
            Entry::OnFile(key(id(2)), index.on_file[&key(id(2))], index.file.clone())
        };
        // Reprocessed again and again: the replaced snapshots' bytes are
        // dead; once they outweigh the live ones the file is rewritten.
        t.upsert(&[done(1, 2), done(3, 2)]).unwrap();
        assert!(t.file_bytes() > live + live / 2, "not compacted yet");
        t.upsert(&[done(1, 3), done(3, 3)]).unwrap();
        let bytes = t.file_bytes();
        assert!(
            bytes < live + live / 2,
            "{bytes} bytes for {live} live ones: not compacted"
        );
        let lengths = t.lengths.lock().unwrap();
        assert_eq!(lengths.end, lengths.live);
        drop(lengths);
        assert_eq!(t.get(id(1)).unwrap(), Some(done(1, 3)));
        assert_eq!(t.get(id(2)).unwrap(), Some(done(2, 1)));
        assert_eq!(t.get(id(3)).unwrap(), Some(done(3, 3)));
        let (page, _) = t.list(None, None, 10).unwrap();
        assert_eq!(page, vec![done(1, 3), done(2, 1), done(3, 3)]);
        // The reader's slot still reads its snapshot from the old file.
        assert_eq!(t.resolve(before).unwrap(), done(2, 1));
    }

    #[test]
    fn below_the_threshold_the_file_keeps_its_dead_bytes() {
        let t = table();
        let done = |generation| view(1, generation, 10, ArtifactState::Completed);
        t.upsert(&[done(1)]).unwrap();
        let one = t.file_bytes();
        t.upsert(&[done(2)]).unwrap();
        t.upsert(&[done(3)]).unwrap();
        assert!(t.file_bytes() > 2 * one, "64 MiB of dead bytes are allowed");
        assert_eq!(t.get(id(1)).unwrap(), Some(done(3)));
    }
}
