//! Bulk reprocess: `POST /v1/reprocess` selects artifacts from the read
//! model and records a [`ReprocessOperation`] in the compacted
//! `<prefix>.operations` topic, keyed by operation id; an executor in
//! artifact-api starts each selected artifact's new generation and writes
//! the progress back to the same key.
//!
//! - [`Operations`]: every operation's latest record, followed from the
//!   topic by every API instance (`GET /v1/reprocess/{op}` reads it);
//! - `executor`: one owner per operation: the API instance assigned its
//!   partition in the executor's consumer group runs it, and another takes
//!   it over from its last written progress after a crash or rebalance;
//! - `sources`: the earlier stages' outcomes in the log, copied into the
//!   new generation when it starts at a later stage.
//!
//! Delivery: an item is published at least once; its generation is fixed
//! when it is selected, so publishing it again after a resume is a
//! duplicate that each stage's dedup skips.

pub mod executor;
mod sources;

use crate::readmodel::{StatusTable, TableError};
use artifact_domain::{ArtifactId, ReprocessOperation, Selector, Stage, StatusView};
use artifact_kafka::client::{QuietEof, client_config};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::compacted::{Change, CompactedReader};
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::{TopicNames, partition_counts};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Every operation's latest record and the partition it is in.
#[derive(Debug, Clone)]
pub struct Operations {
    inner: Arc<Inner>,
    /// Most artifacts one operation selects (`REPROCESS_MAX_ARTIFACTS`):
    /// its record holds them all.
    pub max_artifacts: usize,
}

impl Default for Operations {
    fn default() -> Self {
        Operations {
            inner: Arc::default(),
            max_artifacts: DEFAULT_MAX_ARTIFACTS,
        }
    }
}

/// The default of `REPROCESS_MAX_ARTIFACTS`: the record stays well under
/// Kafka's default 1 MB record size (about 50 bytes an artifact).
pub const DEFAULT_MAX_ARTIFACTS: usize = 10_000;

#[derive(Debug, Default)]
struct Inner {
    ops: RwLock<HashMap<String, (i32, ReprocessOperation)>>,
    caught_up: AtomicBool,
}

impl Operations {
    /// Starts following the operations topic in a task of its own; read
    /// errors are logged and the read starts again.
    pub fn follow(conn: ConnectionConfig, codec: Arc<AvroCodec>) -> Self {
        let ops = Self::default();
        let o = ops.clone();
        tokio::spawn(async move {
            let topic = TopicNames::from_config(&conn).operations();
            loop {
                if let Err(e) = follow_once(&conn, &codec, &o, &topic).await {
                    tracing::warn!(error = %e, %topic, "operations topic not readable; trying again");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        });
        ops
    }

    /// The operation's latest record.
    pub fn get(&self, id: &str) -> Option<ReprocessOperation> {
        let ops = self.inner.ops.read().expect("operations lock");
        ops.get(id).map(|(_, op)| op.clone())
    }

    /// Takes in a record read from (or just written to) `partition`.
    pub fn apply(&self, partition: i32, op: ReprocessOperation) {
        let mut ops = self.inner.ops.write().expect("operations lock");
        // A record the executor wrote after a later one (two owners across a
        // rebalance) must not take progress back.
        let newer = ops
            .get(&op.operation_id)
            .is_none_or(|(_, old)| (op.started, op.updated_at) >= (old.started, old.updated_at));
        if newer {
            ops.insert(op.operation_id.clone(), (partition, op));
        }
    }

    /// The unfinished operations in these partitions, with their
    /// partition.
    pub fn unfinished_in(&self, partitions: &HashSet<i32>) -> Vec<(i32, ReprocessOperation)> {
        let ops = self.inner.ops.read().expect("operations lock");
        ops.values()
            .filter(|(p, op)| partitions.contains(p) && !op.is_finished())
            .cloned()
            .collect()
    }

    /// These operations, selecting at most `n` artifacts each.
    pub fn with_max_artifacts(mut self, n: usize) -> Self {
        self.max_artifacts = n;
        self
    }

    /// Whether the topic was read to the end it had when the follower
    /// started.
    pub fn is_caught_up(&self) -> bool {
        self.inner.caught_up.load(Ordering::Acquire)
    }
}

/// One pass: every partition from the beginning, caught up at the high
/// watermarks found first, then tailing.
async fn follow_once(
    conn: &ConnectionConfig,
    codec: &AvroCodec,
    ops: &Operations,
    topic: &str,
) -> Result<(), String> {
    let mut reader = CompactedReader::open(conn, topic, "artifact-api-operations")
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match reader.next().await.map_err(|e| e.to_string())? {
            Change::CaughtUp => ops.inner.caught_up.store(true, Ordering::Release),
            // Operations are never deleted: a tombstone is skipped.
            Change::Record { value: None, .. } => {}
            Change::Record {
                partition,
                value: Some(payload),
                ..
            } => match codec.decode::<ReprocessOperation>(Some(&payload)).await {
                Ok(op) => ops.apply(partition, op),
                Err(e) => return Err(format!("an operation record does not decode: {e}")),
            },
        }
    }
}

/// Each partition's high watermark, once the topic exists.
pub(crate) fn high_watermarks(
    conn: &ConnectionConfig,
    topic: &str,
) -> Result<HashMap<i32, i64>, String> {
    let counts = partition_counts(conn, &[topic.to_owned()], Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let Some(&n) = counts.get(topic) else {
        return Err(format!(
            "topic {topic} missing; run `artifactctl topics create`"
        ));
    };
    let reader: BaseConsumer<QuietEof> = client_config(conn, "artifact-api-operations")
        .create_with_context(QuietEof)
        .map_err(|e| e.to_string())?;
    (0..n as i32)
        .map(|p| {
            let (_, high) = reader
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            Ok((p, high))
        })
        .collect()
}

/// What a selector picks in the read model.
#[derive(Debug, Default)]
pub struct Selection {
    /// The artifacts that can start at the stage asked for, in id order.
    pub ready: Vec<StatusView>,
    /// Those that cannot, with why.
    pub refused: Vec<(ArtifactId, String)>,
    /// Ids named in the selector that the read model does not hold.
    pub unknown: Vec<ArtifactId>,
}

/// Every artifact of the table the selector picks, split by whether it can
/// start at `from`.
pub fn select(
    table: &StatusTable,
    selector: &Selector,
    from: Stage,
) -> Result<Selection, TableError> {
    let mut picked = Vec::new();
    let mut sel = Selection::default();
    if selector.ids.is_empty() {
        let mut cursor = None;
        loop {
            let (page, next) = table.list(selector.state, cursor, 500)?;
            picked.extend(page.into_iter().filter(|v| selector.matches(v)));
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    } else {
        let mut ids = selector.ids.clone();
        ids.sort_by_key(|id| id.as_uuid());
        ids.dedup();
        for id in ids {
            match table.get(id)? {
                Some(v) => picked.extend(selector.matches(&v).then_some(v)),
                None => sel.unknown.push(id),
            }
        }
    }
    for v in picked {
        match artifact_domain::missing_output(&v, from) {
            None => sel.ready.push(v),
            Some(why) => sel.refused.push((v.artifact_id, why)),
        }
    }
    Ok(sel)
}
