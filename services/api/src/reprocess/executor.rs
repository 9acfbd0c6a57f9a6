//! The executor: runs the operations of the `<prefix>.operations`
//! partitions this API instance is assigned in the executor's consumer
//! group, so each operation has one owner, and another instance (or this
//! one, restarted) takes it over from the progress last written.
//!
//! An operation goes through its items in order, at most
//! `REPROCESS_STARTS_PER_SECOND` a second: an item whose artifact is still
//! at the generation before the item's gets it (a new `ArtifactCreated`,
//! or the copies of the earlier outcomes for a later stage); one already
//! there or past it (started before a crash, whose progress was not
//! written) is counted, not started again. Progress goes to the topic at
//! most once a second, then `done` as the new generations become final.

use super::Operations;
use super::sources::{self, CopyRecord, CopyValue, Sources};
use crate::readmodel::StatusTable;
use artifact_domain::{
    ArtifactCreated, ArtifactId, ArtifactState, Generation, ReprocessItem, ReprocessOperation,
    Stage,
};
use artifact_kafka::client::consumer_config;
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::headers;
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::topics::TopicNames;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// What the executor's operations share.
pub struct Executor {
    /// Kafka and registry settings.
    pub conn: ConnectionConfig,
    /// Avro codec on the registry.
    pub codec: Arc<AvroCodec>,
    /// Topic names.
    pub names: TopicNames,
    /// Idempotent producer (acks=all).
    pub producer: FutureProducer,
    /// The read model.
    pub table: Arc<StatusTable>,
    /// Every operation's latest record.
    pub ops: Operations,
    /// Most new generations started a second, per operation.
    pub starts_per_second: u32,
    /// Writes a restart's copies.
    pub restarts: Restarts,
}

/// Writes the copies of a restart at a later stage in one Kafka
/// transaction: an instance that dies part-way leaves none of them visible
/// (every reader is `read_committed`), so the artifact stays at its
/// generation and the operation's next owner starts it again, instead of
/// counting a generation that has its first copies but not the last.
pub struct Restarts {
    conn: ConnectionConfig,
    transactional_id: String,
    /// Created on first use; dropped after an error the transaction cannot
    /// recover from, for a new one next time.
    producer: tokio::sync::Mutex<Option<FutureProducer>>,
}

impl Restarts {
    /// Transactions under `<group>-restarts-<random>`: operations have one
    /// owner through the executor's group, so ids need not survive restarts.
    pub fn new(conn: ConnectionConfig, group: &str) -> Self {
        Restarts {
            conn,
            transactional_id: format!("{group}-restarts-{}", uuid::Uuid::new_v4().simple()),
            producer: tokio::sync::Mutex::default(),
        }
    }

    /// Sends `records` (topic, key, payload, headers) in one transaction.
    async fn send(
        &self,
        records: Vec<(String, String, Vec<u8>, OwnedHeaders)>,
    ) -> Result<(), String> {
        let mut slot = self.producer.lock().await;
        let producer = match slot.as_ref() {
            Some(p) => p.clone(),
            None => {
                let p: FutureProducer =
                    artifact_kafka::client::producer_config(&self.conn, "artifact-api-restarts")
                        .set("transactional.id", &self.transactional_id)
                        .create()
                        .map_err(|e| e.to_string())?;
                let q = p.clone();
                blocking(move || q.init_transactions(Duration::from_secs(30))).await?;
                slot.insert(p).clone()
            }
        };
        let result = Self::transaction(&producer, records).await;
        if let Err(e) = &result {
            let q = producer.clone();
            if blocking(move || q.abort_transaction(Duration::from_secs(30)))
                .await
                .is_err()
            {
                tracing::warn!(error = %e, "restart transaction not aborted: a new producer next time");
                *slot = None;
            }
        }
        result
    }

    async fn transaction(
        producer: &FutureProducer,
        records: Vec<(String, String, Vec<u8>, OwnedHeaders)>,
    ) -> Result<(), String> {
        producer.begin_transaction().map_err(|e| e.to_string())?;
        for (topic, key, payload, headers) in &records {
            producer
                .send(
                    FutureRecord::to(topic)
                        .key(key)
                        .payload(payload)
                        .headers(headers.clone()),
                    Duration::from_secs(15),
                )
                .await
                .map_err(|(e, _)| e.to_string())?;
        }
        let q = producer.clone();
        blocking(move || q.commit_transaction(Duration::from_secs(30))).await
    }
}

/// Runs a blocking transaction call off the async threads.
async fn blocking(
    f: impl FnOnce() -> rdkafka::error::KafkaResult<()> + Send + 'static,
) -> Result<(), String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// How often the executor looks for operations to run and for ones done.
const TICK: Duration = Duration::from_millis(500);

/// Runs the executor for ever in consumer group `group`.
pub async fn run_executor(x: Arc<Executor>, group: String) -> anyhow::Result<()> {
    x.table.restored().await;
    let topic = x.names.operations();
    let consumer: StreamConsumer = consumer_config(&x.conn, "artifact-api-reprocess", &group)
        .set("auto.offset.reset", "earliest")
        // A dead owner's operations move to another instance this soon.
        .set("session.timeout.ms", "10000")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let owned: Arc<RwLock<HashSet<i32>>> = Arc::default();
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            // Polled only to stay in the group: the operations themselves
            // come from the follower, which reads every partition.
            m = consumer.recv() => if let Err(e) = m {
                tracing::warn!(error = %e, "reprocess executor's consumer");
            },
            _ = tick.tick() => {
                let assigned: HashSet<i32> = consumer
                    .assignment()
                    .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                *owned.write().expect("owned lock") = assigned.clone();
                running.retain(|_, h| !h.is_finished());
                if !x.ops.is_caught_up() {
                    continue;
                }
                for (partition, op) in x.ops.unfinished_in(&assigned) {
                    if running.contains_key(&op.operation_id) {
                        continue;
                    }
                    tracing::info!(operation = %op.operation_id, partition, started = op.started, selected = op.items.len(), "running reprocess operation");
                    let (x, owned) = (x.clone(), owned.clone());
                    running.insert(
                        op.operation_id.clone(),
                        tokio::spawn(async move { run(x, op, partition, owned).await }),
                    );
                }
            }
        }
    }
}

/// Runs one operation while this instance owns its partition.
async fn run(
    x: Arc<Executor>,
    mut op: ReprocessOperation,
    partition: i32,
    owned: Arc<RwLock<HashSet<i32>>>,
) {
    let owner = || owned.read().expect("owned lock").contains(&partition);
    let Some(sources) = sources_of(&x, &op, owner).await else {
        return;
    };
    let pace = Duration::from_secs_f64(1.0 / f64::from(x.starts_per_second.max(1)));
    let mut written = Instant::now();
    while (op.started as usize) < op.items.len() {
        if !owner() {
            return;
        }
        let item = op.items[op.started as usize].clone();
        let current = x.table.generation(item.artifact_id);
        if current.is_none() {
            op.skipped.push(item.artifact_id);
        } else if item.needs_start(current) {
            match x.start(&op, &item, sources.get(&item.artifact_id)).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(operation = %op.operation_id, artifact_id = %item.artifact_id, "earlier outcomes not in the log: not started");
                    op.skipped.push(item.artifact_id);
                }
                Err(e) => {
                    tracing::warn!(operation = %op.operation_id, artifact_id = %item.artifact_id, error = %e, "start failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            tokio::time::sleep(pace).await;
        }
        op.started += 1;
        if written.elapsed() >= Duration::from_secs(1) {
            x.write(&mut op, partition).await;
            written = Instant::now();
        }
    }
    x.write(&mut op, partition).await;
    let mut done: HashSet<ArtifactId> = HashSet::new();
    loop {
        if !owner() {
            return;
        }
        // A generation once final stays so (or is replaced): no need to
        // read its artifact again.
        for i in &op.items {
            if !done.contains(&i.artifact_id) && i.is_done(current(&x.table, i.artifact_id)) {
                done.insert(i.artifact_id);
            }
        }
        let n = op.count_done(|i| done.contains(&i.artifact_id));
        let complete = op.is_complete(n);
        if n as i32 != op.done || complete {
            op.done = n as i32;
            if complete {
                op.finished_at = Some(now_ms());
            }
            x.write(&mut op, partition).await;
        }
        if complete {
            tracing::info!(operation = %op.operation_id, done = op.done, skipped = op.skipped.len(), "reprocess operation finished");
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The earlier outcomes the items still to start copy, read from the log
/// (none needed for a start at the first stage); `None` if the instance
/// stopped owning the operation meanwhile.
async fn sources_of(
    x: &Executor,
    op: &ReprocessOperation,
    owner: impl Fn() -> bool,
) -> Option<HashMap<ArtifactId, Sources>> {
    let pending = &op.items[(op.started as usize).min(op.items.len())..];
    if op.from_stage == Stage::MimeDetector || pending.is_empty() {
        return Some(HashMap::new());
    }
    let wanted: HashMap<ArtifactId, Generation> = pending
        .iter()
        .filter_map(|i| Some((i.artifact_id, previous(i.generation)?)))
        .collect();
    loop {
        match sources::read(&x.conn, &x.codec, &x.names, &wanted, op.from_stage).await {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::warn!(operation = %op.operation_id, error = %e, "earlier outcomes not readable; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !owner() {
                    return None;
                }
            }
        }
    }
}

fn previous(g: Generation) -> Option<Generation> {
    Generation::new(i64::from(g.get()) - 1).ok()
}

impl Executor {
    /// Publishes the item's new generation; `Ok(false)` if the earlier
    /// outcomes it copies are missing.
    async fn start(
        &self,
        op: &ReprocessOperation,
        item: &ReprocessItem,
        sources: Option<&Sources>,
    ) -> Result<bool, String> {
        let records = if op.from_stage == Stage::MimeDetector {
            let Some(view) = self
                .table
                .get(item.artifact_id)
                .map_err(|e| e.to_string())?
            else {
                return Ok(false);
            };
            let c = &view.context;
            vec![CopyRecord {
                topic: self.names.created(),
                value: CopyValue::Created(ArtifactCreated {
                    artifact_id: item.artifact_id,
                    generation: item.generation,
                    storage_location: c.storage_location.clone(),
                    declared_content_type: c.declared_content_type.clone(),
                    filename: c.filename.clone(),
                    size_bytes: c.size_bytes,
                    sha256: c.sha256.clone(),
                    created_at: now_ms(),
                }),
            }]
        } else {
            match sources
                .and_then(|s| s.copies(&self.names, op.from_stage, item.generation, now_ms()))
            {
                Some(records) => records,
                None => return Ok(false),
            }
        };
        let key = item.artifact_id.to_string();
        let many = records.len() > 1;
        let mut copies = Vec::with_capacity(records.len());
        for r in records {
            let payload = r
                .value
                .encode(&self.codec, &r.topic)
                .await
                .map_err(|e| e.to_string())?;
            let (span, trace) = artifact_runtime::otel::produce(&r.topic, &key);
            let mut h = OwnedHeaders::new()
                .insert(Header {
                    key: headers::OPERATION,
                    value: Some(op.operation_id.as_str()),
                })
                .insert(Header {
                    key: headers::RESTART_FROM,
                    value: Some(op.from_stage.name()),
                });
            for (name, value) in &trace {
                h = h.insert(Header {
                    key: name,
                    value: Some(value.as_str()),
                });
            }
            if many {
                copies.push((r.topic, key.clone(), payload, h));
                continue;
            }
            self.producer
                .send(
                    FutureRecord::to(&r.topic)
                        .key(&key)
                        .payload(&payload)
                        .headers(h),
                    Duration::from_secs(15),
                )
                .instrument(span)
                .await
                .map_err(|(e, _)| e.to_string())?;
        }
        if many {
            self.restarts.send(copies).await?;
        }
        Ok(true)
    }

    /// Writes the operation's progress (a failure is logged: the next
    /// write carries it).
    async fn write(&self, op: &mut ReprocessOperation, partition: i32) {
        op.updated_at = now_ms();
        if let Err(e) = write_operation(&self.codec, &self.producer, &self.names, op).await {
            tracing::warn!(operation = %op.operation_id, error = %e, "progress not written");
            return;
        }
        self.ops.apply(partition, op.clone());
    }
}

/// Writes an operation record, keyed by its id; the partition it landed in.
pub async fn write_operation(
    codec: &AvroCodec,
    producer: &FutureProducer,
    names: &TopicNames,
    op: &ReprocessOperation,
) -> Result<i32, String> {
    let topic = names.operations();
    let payload = codec
        .encode(&topic, EventSchema::ReprocessOperation, op)
        .await
        .map_err(|e| e.to_string())?;
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .key(&op.operation_id)
                .payload(&payload),
            Duration::from_secs(15),
        )
        .await
        .map_err(|(e, _)| e.to_string())?;
    Ok(delivered.partition)
}

/// An artifact's generation and state in the read model.
pub fn current(table: &StatusTable, id: ArtifactId) -> Option<(Generation, ArtifactState)> {
    let v = table.get(id).ok().flatten()?;
    Some((v.generation, v.state))
}
