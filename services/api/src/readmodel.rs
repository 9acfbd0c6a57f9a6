//! The API's local read-model table, built from the compacted status topic:
//! read from the beginning at start (the API is not ready until it reached
//! the end), then kept up to date. Every API instance holds every artifact.
//!
//! Held whole in memory, each artifact's snapshot cost the API about 1.5 KB
//! for good. Now the snapshot of an artifact in a final state is appended
//! to a file and memory keeps where it is, its generation, time and state
//! (about 80 bytes); the snapshots of artifacts in flight stay in memory
//! until they are final, so an artifact costs one append per generation.
//! The file is created at each start in `READ_MODEL_DIR` and unlinked at
//! once: the status topic stays the only source, and a crash leaves nothing
//! behind. It is not synced, and it is never rewritten: a generation that
//! replaces a final one (a reprocess) leaves the old snapshot's bytes
//! behind until the next start.

use artifact_domain::{ArtifactId, ArtifactState, Generation, StatusView};
use artifact_runtime::codec::AvroCodec;
use artifact_runtime::config::ConnectionConfig;
use artifact_runtime::kafka::{FETCH_QUEUE_BACKOFF_MS, QuietEof, client_config};
use artifact_runtime::topics::{TopicNames, partition_counts};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Records written to the table at once, at most.
const BATCH: usize = 256;

/// Gauge of the bytes of the table's file (against the volume's size).
const FILE_BYTES: &str = "artifact_api_read_model_file_bytes";

/// Gauge of the artifacts whose snapshot the table holds in memory.
const IN_FLIGHT: &str = "artifact_api_read_model_in_flight";

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

#[derive(Debug, Default)]
struct Index {
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
    OnFile(u128, Slot),
}

/// Snapshots by artifact: the final ones in a file, the others in memory.
#[derive(Debug)]
pub struct StatusTable {
    file: File,
    /// The file's length; only the writer appends.
    end: Mutex<u64>,
    index: RwLock<Index>,
    restored: AtomicBool,
}

impl StatusTable {
    /// Creates an empty table with a new file in `dir`, unlinked at once.
    pub fn create(dir: &Path) -> Result<Self, TableError> {
        let create = |source| TableError::Create {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(create)?;
        let path = dir.join(format!(
            "read-model-{}.jsonl",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(create)?;
        std::fs::remove_file(&path).map_err(create)?;
        Ok(Self {
            file,
            end: Mutex::new(0),
            index: RwLock::default(),
            restored: AtomicBool::new(false),
        })
    }

    /// Keeps, for each artifact, the newest of the held and the given
    /// snapshots (by generation, then `updated_at`); at a tie, the given one,
    /// and of the given ones the later in `views`. A final snapshot equal to
    /// the one on file is not appended again. Returns how many changed.
    pub fn upsert(&self, views: &[StatusView]) -> Result<usize, TableError> {
        // Of several snapshots of one artifact in the batch, the newest.
        let mut newest: HashMap<u128, &StatusView> = HashMap::with_capacity(views.len());
        for v in views {
            let slot = newest.entry(key(v.artifact_id)).or_insert(v);
            if order(v) >= order(slot) {
                *slot = v;
            }
        }
        let (mut to_file, mut to_memory, mut ties) = (Vec::new(), Vec::new(), Vec::new());
        {
            let index = self.index.read().expect("table lock");
            for (k, v) in newest {
                if index.order(k).is_some_and(|o| order(v) < o) {
                    continue;
                }
                if !v.state.is_terminal() {
                    to_memory.push((k, v));
                    continue;
                }
                match index.on_file.get(&k) {
                    Some(slot) if !index.in_flight.contains_key(&k) && slot.order() == order(v) => {
                        ties.push((k, v, *slot))
                    }
                    _ => to_file.push((k, v)),
                }
            }
        }
        // A final snapshot that ties with the one on file is appended only
        // if it differs (a fold that took a late step with an older time);
        // the same snapshot written again (a resend) is not.
        for (k, v, slot) in ties {
            if self.read(k, slot)? != *v {
                to_file.push((k, v));
            }
        }
        // The final snapshots are appended in one write; memory points at
        // them once they are in the file.
        let mut end = self.end.lock().expect("file lock");
        let mut buf = Vec::new();
        let mut slots = Vec::with_capacity(to_file.len());
        for (k, v) in &to_file {
            let offset = *end + buf.len() as u64;
            serde_json::to_writer(&mut buf, v).expect("a snapshot serializes to JSON");
            let len = (*end + buf.len() as u64 - offset) as u32;
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
        if !buf.is_empty() {
            self.file.write_all_at(&buf, *end)?;
            *end += buf.len() as u64;
        }
        let mut index = self.index.write().expect("table lock");
        for (k, slot) in slots {
            index.in_flight.remove(&k);
            index.on_file.insert(k, slot);
        }
        for (k, v) in &to_memory {
            index.in_flight.insert(*k, (*v).clone());
        }
        Ok(to_file.len() + to_memory.len())
    }

    fn read(&self, k: u128, slot: Slot) -> Result<StatusView, TableError> {
        let mut buf = vec![0u8; slot.len as usize];
        self.file.read_exact_at(&mut buf, slot.offset)?;
        serde_json::from_slice(&buf).map_err(|source| TableError::Snapshot {
            id: id_of(k),
            source,
        })
    }

    fn resolve(&self, entry: Entry) -> Result<StatusView, TableError> {
        match entry {
            Entry::Held(v) => Ok(*v),
            Entry::OnFile(k, slot) => self.read(k, slot),
        }
    }

    /// One artifact.
    pub fn get(&self, id: ArtifactId) -> Result<Option<StatusView>, TableError> {
        let k = key(id);
        let entry = {
            let index = self.index.read().expect("table lock");
            match index.in_flight.get(&k) {
                Some(v) => Some(Entry::Held(Box::new(v.clone()))),
                None => index.on_file.get(&k).map(|s| Entry::OnFile(k, *s)),
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
                    entries.push(Entry::OnFile(*k, *s));
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
        while !self.is_restored() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        *self.end.lock().expect("file lock")
    }
}

/// Reads the status topic into `table` for ever.
pub async fn follow_status_topic(
    conn: ConnectionConfig,
    codec: Arc<AvroCodec>,
    table: Arc<StatusTable>,
) -> anyhow::Result<()> {
    let topic = TopicNames::from_config(&conn).status();
    let partitions = loop {
        let conn2 = conn.clone();
        let t = topic.clone();
        let counts = tokio::task::spawn_blocking(move || {
            partition_counts(&conn2, std::slice::from_ref(&t), Duration::from_secs(10))
        })
        .await??;
        match counts.get(&topic) {
            Some(n) => break *n as i32,
            None => {
                tracing::warn!(%topic, "status topic missing; run `artifactctl topics create`");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let consumer: StreamConsumer<QuietEof> = client_config(&conn, "artifact-api-readmodel")
        .set("group.id", "artifact-api-readmodel-unused")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    metrics::gauge!(FILE_BYTES).set(0.0);
    metrics::gauge!(IN_FLIGHT).set(0.0);
    let mut at_end: HashSet<i32> = HashSet::new();
    // Status records read until the restore is done.
    let mut restore_records: u64 = 0;
    loop {
        // What the client already holds goes into one write, up to BATCH.
        let mut views: Vec<StatusView> = Vec::new();
        let mut next = Some(consumer.recv().await);
        while let Some(received) = next.take() {
            match received {
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    at_end.insert(p);
                }
                Err(e) => tracing::warn!(error = %e, "status topic read error"),
                Ok(m) => {
                    if let Some(v) = decode_status(&codec, &m).await {
                        views.push(v);
                    }
                }
            }
            if views.len() < BATCH {
                next = consumer.recv().now_or_never();
            }
        }
        if !views.is_empty() {
            if !table.is_restored() {
                restore_records += views.len() as u64;
            }
            write(&table, views).await;
            metrics::gauge!(FILE_BYTES).set(table.file_bytes() as f64);
            metrics::gauge!(IN_FLIGHT).set(table.in_flight() as f64);
        }
        if at_end.len() == partitions as usize && !table.is_restored() {
            table.restored.store(true, Ordering::Release);
            tracing::info!(
                records = restore_records,
                artifacts = table.len(),
                in_flight = table.in_flight(),
                file_bytes = table.file_bytes(),
                "read model restored from the status topic"
            );
        }
    }
}

/// A status record's snapshot; `None` (logged) if it can never decode.
async fn decode_status(codec: &AvroCodec, m: &BorrowedMessage<'_>) -> Option<StatusView> {
    loop {
        match codec.decode::<StatusView>(m.payload()).await {
            Ok(v) => return Some(v),
            // Registry unavailable: wait, the record is not lost.
            Err(e) if e.is_retriable() => {
                tracing::warn!(error = %e, "status record waits for the registry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, offset = m.offset(), "undecodable status record skipped");
                return None;
            }
        }
    }
}

/// Writes snapshots to the table, again and again until the file takes them
/// (a full disk, say): the table falls behind the topic, nothing is lost.
/// (A write is an append of a few kilobytes: it runs on the task.)
async fn write(table: &StatusTable, views: Vec<StatusView>) {
    loop {
        match table.upsert(&views) {
            Ok(_) => return,
            Err(e) => tracing::warn!(error = %e, "read-model write failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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
    fn the_file_is_gone_from_its_directory_while_in_use() {
        let dir = std::env::temp_dir().join(format!("rm-{}", uuid::Uuid::new_v4().simple()));
        let t = StatusTable::create(&dir).unwrap();
        t.upsert(&[view(1, 1, 1, ArtifactState::Pending)]).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert!(t.get(id(1)).unwrap().is_some());
        std::fs::remove_dir(&dir).unwrap();
    }
}
