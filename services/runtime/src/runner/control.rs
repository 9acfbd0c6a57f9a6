//! Holding a stage's input back: the operator's pause, followed from the
//! compacted `<prefix>.stage-control` topic, and the circuit breaker
//! ([`super::breaker`]). A held stage keeps its partitions and stays
//! ready: its input and retry partitions are paused in the consumers
//! (again after every rebalance), the batch in flight still commits, and
//! nothing new is read, so its lag shows the backlog. An open breaker lets
//! one record through now and then as a probe.
//!
//! The follower reads the topic from the beginning to the end it has at
//! start before the stage processes anything (a stage paused before a
//! restart stays paused), then follows it. Each replica of a stage follows
//! the record keyed by the stage's name; a breaker reports its own state
//! under `<stage>/<instance>`, which only `artifactctl stage status` reads.

use super::breaker::{Attempt, Breaker, BreakerConfig, Transition};
use super::item::Item;
use super::stage_loop::StageLoop;
use crate::stage::StageLogic;
use crate::stage_metrics;
use artifact_kafka::client::{QuietEof, consumer_config, producer_config};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::stage_control::{BREAKER, OPERATOR, StageControl};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the follower knows of the operator's record for the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operator {
    /// The topic is not read to its end yet.
    Reading,
    Running,
    /// Paused, with the operator's reason.
    Paused(Option<String>),
}

/// The breaker shared by the loop and the records being processed, with
/// the transitions not yet reported.
pub(crate) struct SharedBreaker {
    breaker: Mutex<Breaker>,
    transitions: Mutex<Vec<Transition>>,
}

impl SharedBreaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        SharedBreaker {
            breaker: Mutex::new(Breaker::new(cfg)),
            transitions: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker lock")
    }

    /// Counts a processing attempt that just ended.
    pub fn record(&self, attempt: Attempt) {
        if let Some(t) = self.lock().record(attempt, Instant::now()) {
            self.transitions.lock().expect("transitions lock").push(t);
        }
    }

    pub fn is_open(&self) -> bool {
        self.lock().is_open()
    }

    fn take_probe(&self) -> bool {
        self.lock().take_probe(Instant::now())
    }

    fn probe_unused(&self) {
        self.lock().probe_unused();
    }

    fn last_failed_probe(&self) -> Option<String> {
        self.lock().last_failed_probe().map(str::to_owned)
    }

    /// The record whose failed probe counts as a delivery, if any.
    pub fn spent_probe(&self) -> Option<String> {
        self.lock().spent_probe().map(str::to_owned)
    }

    pub fn probe_delivered(&self) {
        self.lock().probe_delivered();
    }

    fn take_transitions(&self) -> Vec<Transition> {
        std::mem::take(&mut *self.transitions.lock().expect("transitions lock"))
    }
}

/// Whether the loop reads input this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    Open,
    Held,
    /// Held, but one record may go through as a probe of the breaker.
    Probe,
}

/// What the follower read: the operator's record for the stage, and
/// whether this replica's own breaker record says open.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Followed {
    operator: Operator,
    own_breaker_open: bool,
}

/// The loop's view of what holds the stage.
pub(crate) struct Control {
    followed: watch::Receiver<Followed>,
    follower: tokio::task::JoinHandle<()>,
    reporter: Reporter,
    /// Whether the consumers' partitions are paused by this module now.
    pub(super) held: bool,
    last_operator: Operator,
    /// A record saying this replica's breaker is open, left by an earlier
    /// run, was answered with one saying it is closed.
    stale_report_fixed: bool,
    /// The input topic's lag while held, being read, and when next.
    lag_refresh: Option<tokio::task::JoinHandle<Vec<(i32, i64)>>>,
    lag_due: Instant,
    lag_reader: Option<Arc<BaseConsumer<QuietEof>>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Control {
    pub fn new(
        conn: &ConnectionConfig,
        codec: Arc<AvroCodec>,
        stage: &'static str,
        instance: String,
    ) -> Self {
        let topic = artifact_kafka::topics::TopicNames::from_config(conn).stage_control();
        let (tx, rx) = watch::channel(Followed {
            operator: Operator::Reading,
            own_breaker_open: false,
        });
        let own_key = format!("{stage}/{instance}");
        let follower = tokio::spawn(follow(
            conn.clone(),
            codec.clone(),
            topic.clone(),
            (stage, own_key),
            tx,
        ));
        Control {
            followed: rx,
            follower,
            reporter: Reporter {
                conn: conn.clone(),
                codec,
                topic,
                stage,
                instance,
                writer: None,
            },
            held: false,
            last_operator: Operator::Reading,
            stale_report_fixed: false,
            lag_refresh: None,
            lag_due: Instant::now(),
            lag_reader: None,
        }
    }
}

impl Control {
    /// Whether the stage-control topic is still being read to its end.
    pub(super) fn reading(&self) -> bool {
        self.followed.borrow().operator == Operator::Reading
    }
}

impl<S: StageLogic> StageLoop<'_, S> {
    /// Decides whether this round reads input, reports breaker transitions
    /// and pauses or resumes the consumers' partitions to match.
    pub(super) fn gate(&mut self) -> Gate {
        let stage = S::STAGE.name();
        let breaker = &self.runner.breaker;
        for t in breaker.take_transitions() {
            match &t {
                Transition::Opened(cause) => tracing::warn!(
                    stage,
                    cause = %cause,
                    "circuit breaker opened: the stage's dependency fails; holding input back and probing"
                ),
                Transition::Closed => tracing::info!(stage, "circuit breaker closed: resuming"),
            }
            self.control.reporter.report(&t);
        }
        let Followed {
            operator,
            own_breaker_open,
        } = self.control.followed.borrow().clone();
        if own_breaker_open && !breaker.is_open() && !self.control.stale_report_fixed {
            // Left by an earlier run of this replica that did not stop cleanly.
            self.control.stale_report_fixed = true;
            self.control.reporter.report(&Transition::Closed);
        }
        if operator != self.control.last_operator {
            match &operator {
                Operator::Paused(reason) => {
                    tracing::info!(
                        stage,
                        reason = reason.as_deref().unwrap_or(""),
                        "paused by the operator"
                    )
                }
                Operator::Running if self.control.last_operator != Operator::Reading => {
                    tracing::info!(stage, "resumed by the operator")
                }
                _ => {}
            }
            self.control.last_operator = operator.clone();
        }
        let breaker_open = breaker.is_open();
        stage_metrics::paused(stage, OPERATOR, matches!(operator, Operator::Paused(_)));
        stage_metrics::paused(stage, BREAKER, breaker_open);
        let gate = match operator {
            Operator::Reading | Operator::Paused(_) => Gate::Held,
            Operator::Running if breaker_open && breaker.take_probe() => Gate::Probe,
            Operator::Running if breaker_open => Gate::Held,
            Operator::Running => Gate::Open,
        };
        if gate == Gate::Held {
            // Every round: a rebalance or a rewind may have resumed some.
            self.hold_partitions(true);
            self.refresh_lag();
        } else if self.control.held {
            self.hold_partitions(false);
        }
        self.consumer
            .context()
            .held
            .store(gate == Gate::Held, std::sync::atomic::Ordering::Relaxed);
        gate
    }

    /// While held, the lag gauge of the input partitions owned, every 5 s:
    /// the partition's end for a `read_committed` reader minus the
    /// position (before the first record, the committed offset, else the
    /// partition's start). Read
    /// on a blocking thread; the loop goes on meanwhile.
    fn refresh_lag(&mut self) {
        let topic = self.runner.names.input(S::STAGE);
        if let Some(h) = &self.control.lag_refresh
            && h.is_finished()
        {
            let h = self.control.lag_refresh.take().expect("checked");
            if let Some(Ok(lags)) = h.now_or_never() {
                for (p, lag) in lags {
                    metrics::gauge!(
                        stage_metrics::CONSUMER_LAG.0,
                        "consumer_group" => self.runner.group.clone(),
                        "topic" => topic.clone(),
                        "partition" => p.to_string(),
                    )
                    .set(lag as f64);
                }
            }
        }
        if self.control.lag_refresh.is_some() || Instant::now() < self.control.lag_due {
            return;
        }
        self.control.lag_due = Instant::now() + Duration::from_secs(5);
        let reader = match &self.control.lag_reader {
            Some(r) => r.clone(),
            None => match consumer_config(
                &self.runner.conn,
                &format!("{}-lag", self.runner.group),
                &self.runner.group,
            )
            .create_with_context(QuietEof)
            {
                Ok(r) => self.control.lag_reader.insert(Arc::new(r)).clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the lag reader");
                    return;
                }
            },
        };
        let owned: Vec<i32> = self.assignment().owned.iter().copied().collect();
        let positions: HashMap<i32, i64> = self
            .consumer
            .position()
            .map(|tpl| {
                tpl.elements_for_topic(&topic)
                    .iter()
                    .filter_map(|e| e.offset().to_raw().map(|o| (e.partition(), o)))
                    .collect()
            })
            .unwrap_or_default();
        self.control.lag_refresh = Some(tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(5);
            let mut tpl = TopicPartitionList::new();
            for p in &owned {
                let _ = tpl.add_partition(&topic, *p);
            }
            let committed: HashMap<i32, i64> = reader
                .committed_offsets(tpl, timeout)
                .map(|c| {
                    c.elements()
                        .iter()
                        .filter_map(|e| e.offset().to_raw().map(|o| (e.partition(), o)))
                        .collect()
                })
                .unwrap_or_default();
            owned
                .into_iter()
                .filter_map(|p| {
                    let (low, end) = reader.fetch_watermarks(&topic, p, timeout).ok()?;
                    // Nothing committed yet: it starts at the beginning.
                    let at = [positions.get(&p), committed.get(&p), Some(&low)]
                        .into_iter()
                        .flatten()
                        .copied()
                        .find(|o| *o >= 0)?;
                    Some((p, super::context::lag(end, at)?))
                })
                .collect()
        }));
    }

    /// Pauses (or resumes) the input and retry partitions owned; a
    /// partition whose dedup state is being restored stays paused, and a
    /// retry partition holding records until they are due too.
    fn hold_partitions(&mut self, hold: bool) {
        self.control.held = hold;
        let (owned, restoring) = {
            let a = self.assignment();
            (a.owned.clone(), a.to_restore.clone())
        };
        let input = self.runner.names.input(S::STAGE);
        let mut tpl = TopicPartitionList::new();
        for p in owned.iter().filter(|p| hold || !restoring.contains(p)) {
            let _ = tpl.add_partition(&input, *p);
        }
        let res = if hold {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = res {
            tracing::warn!(hold, error = %e, "pausing or resuming the input partitions failed");
        }
        self.retries.hold(&owned, hold);
    }

    /// What of a collected batch this round may process: all of it when
    /// the gate is open, one record as a probe, else nothing. The rest is
    /// read again later.
    pub(super) fn gated(&mut self, gate: Gate, mut items: Vec<Item>) -> Vec<Item> {
        let probe = match gate {
            Gate::Open => return items,
            Gate::Held => None,
            Gate::Probe => probe_index(&items, self.runner.breaker.last_failed_probe()),
        };
        if gate == Gate::Probe && probe.is_none() {
            self.runner.breaker.probe_unused();
        }
        let kept = probe.map(|i| items.remove(i));
        if !items.is_empty() {
            self.rewind(&items);
        }
        kept.into_iter().collect()
    }

    /// After a probe's batch: a probe that was not processed (a duplicate,
    /// a dead letter) lets the next go at once.
    pub(super) fn probe_done(&self, gate: Gate) {
        if gate == Gate::Probe {
            self.runner.breaker.probe_unused();
        }
    }

    /// Reports a breaker still open as closed when the replica stops, so
    /// `artifactctl stage status` does not show it open for good.
    pub(super) async fn report_stop(&mut self) {
        if self.runner.breaker.is_open() {
            self.control.reporter.report(&Transition::Closed);
        }
        self.control.reporter.flush().await;
    }
}

/// The record of a collected batch to probe with: the first one outside
/// the partition of the last failed probe's record, if the batch holds
/// one, so that a record failing on its own does not keep the breaker open.
/// Every record before it is of that partition, so none is skipped.
fn probe_index(items: &[Item], avoid: Option<String>) -> Option<usize> {
    if items.is_empty() {
        return None;
    }
    let stuck = avoid.and_then(|id| {
        items
            .iter()
            .find(|it| it.msg.key() == Some(id.as_bytes()))
            .map(|it| (it.msg.topic().to_owned(), it.partition()))
    });
    let Some((topic, partition)) = stuck else {
        return Some(0);
    };
    Some(
        items
            .iter()
            .position(|it| it.msg.topic() != topic || it.partition() != partition)
            .unwrap_or(0),
    )
}

/// Writes this replica's breaker state to the stage-control topic, in
/// order, in the background: a report that fails is logged and not retried
/// (the metric and the log say the same).
struct Reporter {
    conn: ConnectionConfig,
    codec: Arc<AvroCodec>,
    topic: String,
    stage: &'static str,
    instance: String,
    /// The writer task, started with the first report.
    writer: Option<(
        tokio::sync::mpsc::UnboundedSender<StageControl>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Reporter {
    fn report(&mut self, t: &Transition) {
        let (paused, reason) = match t {
            Transition::Opened(cause) => (true, Some(cause.clone())),
            Transition::Closed => (false, None),
        };
        let value = StageControl {
            stage: self.stage.to_owned(),
            paused,
            cause: BREAKER.to_owned(),
            reason,
            instance: Some(self.instance.clone()),
            updated_at: now_ms(),
        };
        if self.writer.is_none() {
            let producer: FutureProducer = match producer_config(
                &self.conn,
                &format!("{}-{}-control", self.stage, self.instance),
            )
            .create()
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the stage-control producer; breaker state not reported");
                    return;
                }
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(write_reports(
                producer,
                self.codec.clone(),
                self.topic.clone(),
                rx,
            ));
            self.writer = Some((tx, task));
        }
        if let Some((tx, _)) = &self.writer {
            let _ = tx.send(value);
        }
    }

    /// Writes what is queued, waiting up to 5 s.
    async fn flush(&mut self) {
        if let Some((tx, task)) = self.writer.take() {
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Writes each report as it comes, in order.
async fn write_reports(
    producer: FutureProducer,
    codec: Arc<AvroCodec>,
    topic: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StageControl>,
) {
    while let Some(value) = rx.recv().await {
        let sent = async {
            let payload = codec
                .encode(&topic, EventSchema::StageControl, &value)
                .await
                .map_err(|e| e.to_string())?;
            producer
                .send(
                    FutureRecord::to(&topic).key(&value.key()).payload(&payload),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e.to_string())?;
            Ok::<(), String>(())
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "reporting the breaker's state to the stage-control topic failed");
        }
    }
}

/// Follows the operator's record for `stage`, publishing it on `tx`; reads
/// again from the beginning after an error.
async fn follow(
    conn: ConnectionConfig,
    codec: Arc<AvroCodec>,
    topic: String,
    keys: (&'static str, String),
    tx: watch::Sender<Followed>,
) {
    let mut failures = 0u32;
    loop {
        let e = follow_once(&conn, &codec, &topic, (keys.0, &keys.1), &tx).await;
        failures += 1;
        tracing::warn!(error = %e, %topic, failures, "following the stage-control topic failed; reading it again");
        tokio::time::sleep(crate::retry::jittered(
            Duration::from_millis(200),
            Duration::from_secs(5),
            failures,
        ))
        .await;
    }
}

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("decoding a stage-control record: {0}")]
    Codec(String),
    #[error("topic {0} does not exist; create it with `artifactctl topics create`")]
    Missing(String),
}

async fn follow_once(
    conn: &ConnectionConfig,
    codec: &AvroCodec,
    topic: &str,
    keys: (&'static str, &str),
    tx: &watch::Sender<Followed>,
) -> FollowError {
    match read(conn, codec, topic, keys, tx).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Reads the topic to the end it has now, publishes what it found, then
/// publishes each change.
async fn read(
    conn: &ConnectionConfig,
    codec: &AvroCodec,
    topic: &str,
    (stage, own_key): (&'static str, &str),
    tx: &watch::Sender<Followed>,
) -> Result<std::convert::Infallible, FollowError> {
    let consumer: StreamConsumer<QuietEof> = consumer_config(
        conn,
        &format!("{stage}-stage-control"),
        "stage-control-unused",
    )
    .set("enable.partition.eof", "true")
    .create_with_context(QuietEof)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(FollowError::Missing(topic.to_owned()));
    }
    // The end of each partition now: the first read is done once there.
    let mut behind: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            behind.insert(p, high);
        }
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut current = Followed {
        operator: Operator::Running,
        own_breaker_open: false,
    };
    if behind.is_empty() {
        tx.send_replace(current.clone());
    }
    loop {
        let (p, offset) = match consumer.recv().await {
            Err(KafkaError::PartitionEOF(p)) => (p, None),
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                // A borrowed message may not be held across an await.
                let (p, offset) = (msg.partition(), msg.offset());
                let key = msg.key().map(<[u8]>::to_vec);
                let payload = msg.payload().map(<[u8]>::to_vec);
                drop(msg);
                let ours = key.as_deref() == Some(stage.as_bytes());
                if ours || key.as_deref() == Some(own_key.as_bytes()) {
                    let paused = match payload {
                        None => Some(None),
                        Some(bytes) => match codec.decode::<StageControl>(Some(&bytes)).await {
                            Ok(c) => Some(c.paused.then_some(c.reason)),
                            Err(e) if e.is_retriable() => {
                                return Err(FollowError::Codec(e.to_string()));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, partition = p, offset, "undecodable stage-control record ignored");
                                None
                            }
                        },
                    };
                    match paused {
                        Some(Some(reason)) if ours => current.operator = Operator::Paused(reason),
                        Some(None) if ours => current.operator = Operator::Running,
                        Some(p) => current.own_breaker_open = p.is_some(),
                        None => {}
                    }
                }
                (p, Some(offset))
            }
        };
        if !behind.is_empty() {
            // EOF, or a record at or past the end seen at start.
            if offset.is_none_or(|o| behind.get(&p).is_some_and(|h| o + 1 >= *h)) {
                behind.remove(&p);
            }
            if !behind.is_empty() {
                continue;
            }
        }
        tx.send_if_modified(|v| {
            let changed = *v != current;
            *v = current.clone();
            changed
        });
    }
}

#[cfg(test)]
mod probe_tests {
    use super::probe_index;
    use crate::runner::testing::keyed;

    #[test]
    fn the_probe_avoids_the_partition_of_the_last_failed_probe() {
        let items = [
            keyed(0, 5, "stuck", vec![]),
            keyed(0, 6, "a", vec![]),
            keyed(1, 9, "b", vec![]),
        ];
        assert_eq!(probe_index(&items, None), Some(0));
        assert_eq!(probe_index(&items, Some("stuck".into())), Some(2));
        // Not in the batch, or no other partition: the first record.
        assert_eq!(probe_index(&items, Some("gone".into())), Some(0));
        assert_eq!(probe_index(&items[..2], Some("stuck".into())), Some(0));
        assert_eq!(probe_index(&[], Some("stuck".into())), None);
    }
}
