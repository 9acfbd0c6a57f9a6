//! Committing a prepared batch: its records and its consumed offsets in one
//! Kafka transaction (`send_offsets_to_transaction` with the group
//! metadata, so a fenced zombie cannot commit), on a blocking thread while
//! the loop prepares the next batch. Once it committed, the dedup state and
//! the counters follow; if it did not, nothing of it was committed and its
//! records are read again.

use super::StageRunner;
use super::batch::{BatchError, Prepared};
use super::config::Delivery;
use super::item::{Item, commit_offsets};
use super::plan::Key;
use super::poison::{self, Markers};
use super::producer::StageProducer;
use super::records::Out;
use crate::dedup::{DedupState, Tombstones};
use crate::stage::StageLogic;
use crate::stage_metrics;
use artifact_domain::Generation;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, ConsumerContext, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A batch whose transaction is committing on a blocking thread while the
/// loop prepares the next one.
pub(crate) struct InFlight {
    pub items: Vec<Item>,
    /// Processed generations with an outcome, by key: the next batch is
    /// decided against these too, and the dedup state records them once
    /// the transaction committed.
    pub generations: HashMap<Key, Generation>,
    /// The tombstones of expired dedup entries the transaction writes:
    /// taken back if it fails.
    tombstones: Tombstones,
    /// The erased artifacts' tombstones it writes: taken back if it fails.
    erasures: Tombstones,
    outcome_labels: Vec<&'static str>,
    skipped: HashMap<&'static str, u64>,
    produced: Vec<&'static str>,
    handle: tokio::task::JoinHandle<Result<f64, BatchError>>,
    /// The commit's result, once `finished` saw it.
    result: Option<Result<f64, BatchError>>,
}

impl InFlight {
    /// Waits for the commit to finish (cancel-safe).
    pub async fn finished(&mut self) {
        if self.result.is_none() {
            let res = (&mut self.handle).await;
            self.result = Some(res.unwrap_or_else(|e| {
                Err(BatchError::Transient(format!("commit task failed: {e}")))
            }));
        }
    }
}

/// Marks a transaction in flight. A revocation waits for it to finish, so
/// that no offsets of a partition are committed after it changed hands.
#[derive(Debug, Default)]
pub(crate) struct TxnGate {
    busy: Mutex<bool>,
    idle: Condvar,
}

impl TxnGate {
    fn enter(self: &Arc<Self>) -> GateGuard {
        *self.busy.lock().expect("gate lock") = true;
        GateGuard(self.clone())
    }

    /// Blocks until no transaction is in flight, or `timeout` passed.
    pub fn wait_idle(&self, timeout: Duration) {
        let busy = self.busy.lock().expect("gate lock");
        let (_busy, res) = self
            .idle
            .wait_timeout_while(busy, timeout, |b| *b)
            .expect("gate lock");
        if res.timed_out() {
            tracing::warn!(
                ?timeout,
                "a transaction was still in flight at a revocation"
            );
        }
    }
}

/// Leaves the gate when dropped (also on a panic of the commit).
struct GateGuard(Arc<TxnGate>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        *self.0.busy.lock().expect("gate lock") = false;
        self.0.idle.notify_all();
    }
}

/// A prepared batch with the records it covers and the tombstones it carries.
pub(crate) struct Ready {
    pub prepared: Prepared,
    pub items: Vec<Item>,
    pub tombstones: Tombstones,
    pub erasures: Tombstones,
}

impl<S: StageLogic> StageRunner<S> {
    /// Starts committing a prepared batch on a blocking thread: in
    /// exactly-once mode one transaction with its records and offsets; in
    /// at-least-once mode its records, acknowledged (the loop commits the
    /// offsets when it settles the batch).
    pub(crate) fn start_commit<C: ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        producer: &StageProducer,
        gate: &Arc<TxnGate>,
        ready: Ready,
        markers: Option<Arc<Markers>>,
    ) -> Result<InFlight, (BatchError, Vec<Item>, Tombstones, Tombstones)> {
        let Ready {
            prepared,
            items,
            tombstones,
            erasures,
        } = ready;
        let exactly_once = self.cfg.delivery == Delivery::ExactlyOnce;
        let group = match consumer.group_metadata() {
            _ if !exactly_once => None,
            Some(g) => Some(g),
            None => {
                let e = BatchError::Transient("no consumer group metadata yet".into());
                return Err((e, items, tombstones, erasures));
            }
        };
        let built = prepared.built;
        let outs = built.outs;
        let produced = outs.iter().map(|o| o.kind).collect();
        // Within a batch a key's generations only grow, so the last wins.
        let generations = built.recorded.into_iter().collect();
        let offsets = commit_offsets(&items);
        let ranges = markers.as_ref().map(|_| poison::ranges(&items, 0));
        let producer = producer.clone();
        let abort_pending = self.abort_pending.clone();
        let guard = gate.enter();
        let handle = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let started = Instant::now();
            let result = commit_blocking(&producer, &outs, offsets, group.as_ref(), &abort_pending);
            if let (Err(_), Some(markers), Some(ranges)) = (&result, markers, ranges) {
                // Before the gate opens: a revocation waiting for it must
                // not hand over a range that looks like a death.
                futures::executor::block_on(markers.clear(&ranges));
            }
            result.map(|()| started.elapsed().as_secs_f64())
        });
        Ok(InFlight {
            items,
            generations,
            tombstones,
            erasures,
            outcome_labels: built.outcome_labels,
            skipped: built.skipped,
            produced,
            handle,
            result: None,
        })
    }

    /// Waits for an in-flight batch and applies its result: on success the
    /// dedup state and the counters follow (and, at least once, the offsets
    /// are committed), and its items are returned. On failure nothing of the
    /// batch was committed and its items come back to be read again.
    pub(crate) async fn settle<C: ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        dedup: &mut DedupState,
        mut flight: InFlight,
    ) -> Result<Vec<Item>, (BatchError, Vec<Item>)> {
        flight.finished().await;
        let secs = match flight.result.take().expect("finished sets the result") {
            Ok(secs) => secs,
            Err(e) => {
                dedup.return_tombstones(flight.tombstones);
                dedup.return_erasures(flight.erasures);
                return Err((e, flight.items));
            }
        };
        // (A batch of tombstones alone has no offsets to commit.)
        if self.cfg.delivery == Delivery::AtLeastOnce && !flight.items.is_empty() {
            let offsets = commit_offsets(&flight.items);
            if let Err(e) = tokio::task::block_in_place(|| {
                consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            }) {
                let e = BatchError::Transient(format!("commit offsets: {e}"));
                return Err((e, flight.items));
            }
        }
        stage_metrics::commit_time(S::STAGE.name(), secs);
        tracing::debug!(
            records = flight.items.len(),
            produced = flight.produced.len(),
            commit_ms = secs * 1e3,
            "batch committed"
        );
        // The transaction committed: the state follows.
        for ((p, id), generation) in flight.generations.drain() {
            dedup.record(p, id, generation);
        }
        count_committed(S::STAGE.name(), &flight);
        Ok(flight.items)
    }
}

/// The counters of a committed batch.
fn count_committed(stage: &'static str, flight: &InFlight) {
    for (kind, n) in tally(flight.produced.iter().copied()) {
        stage_metrics::produced(stage, kind, n);
    }
    for (&reason, &n) in &flight.skipped {
        stage_metrics::skipped(stage, reason, n);
    }
    for (source, n) in tally(flight.items.iter().map(|it| it.source.label())) {
        stage_metrics::consumed(stage, source, n);
    }
    for (outcome, n) in tally(flight.outcome_labels.iter().copied()) {
        stage_metrics::outcomes(stage, outcome, n);
    }
}

/// How many times each label occurs.
fn tally(labels: impl Iterator<Item = &'static str>) -> HashMap<&'static str, u64> {
    let mut counts = HashMap::new();
    for l in labels {
        *counts.entry(l).or_default() += 1;
    }
    counts
}

/// Produces a batch's records and, in exactly-once mode (`group` given),
/// commits them with the consumed offsets in one transaction. Runs on a
/// blocking thread: librdkafka's transaction calls block.
fn commit_blocking(
    producer: &StageProducer,
    outs: &[Out],
    offsets: TopicPartitionList,
    group: Option<&ConsumerGroupMetadata>,
    abort_pending: &AtomicBool,
) -> Result<(), BatchError> {
    let timeout = CALL_TIMEOUT;
    if group.is_some() {
        if abort_pending.load(Ordering::Acquire) {
            producer
                .abort_transaction(timeout)
                .map_err(|e| BatchError::of_transaction("finishing an earlier abort", e))?;
            abort_pending.store(false, Ordering::Release);
        }
        producer
            .begin_transaction()
            .map_err(|e| BatchError::of_transaction("begin transaction", e))?;
    }
    let Err(e) = produce_and_commit(producer, outs, offsets, group, timeout) else {
        return Ok(());
    };
    if group.is_some()
        && let Err(abort) = producer.abort_transaction(timeout)
    {
        match BatchError::of_transaction("abort transaction", abort) {
            BatchError::Fatal(f) => return Err(BatchError::Fatal(f)),
            // Not finished (the broker is away): call it again first next
            // time, as librdkafka requires.
            BatchError::Transient(_) => abort_pending.store(true, Ordering::Release),
        }
    }
    Err(e)
}

/// Sends a batch's records and then, in exactly-once mode, the offsets
/// and the commit; at least once, waits until every record is
/// acknowledged before the offsets move.
fn produce_and_commit(
    producer: &StageProducer,
    outs: &[Out],
    offsets: TopicPartitionList,
    group: Option<&ConsumerGroupMetadata>,
    timeout: Duration,
) -> Result<(), BatchError> {
    let t0 = Instant::now();
    let deliveries = producer.context();
    deliveries.begin();
    for o in outs {
        send(producer, o)?;
    }
    let t_sent = t0.elapsed();
    let Some(group) = group else {
        return deliveries
            .wait_all(timeout)
            .map_err(|e| BatchError::Transient(format!("delivery: {e}")));
    };
    // The offsets go out while the records are being acknowledged. The
    // commit waits for every record and fails if any failed.
    watched("send_offsets_to_transaction", timeout, || {
        producer.send_offsets_to_transaction(&offsets, group, timeout)
    })
    .map_err(|e| BatchError::of_transaction("send offsets to transaction", e))?;
    let t_offsets = t0.elapsed();
    #[cfg(debug_assertions)]
    hold_before_commit();
    commit_transaction(producer, timeout)?;
    tracing::trace!(
        send_ms = t_sent.as_secs_f64() * 1e3,
        offsets_ms = (t_offsets - t_sent).as_secs_f64() * 1e3,
        commit_ms = (t0.elapsed() - t_offsets).as_secs_f64() * 1e3,
        "transaction phases"
    );
    Ok(())
}

/// Runs a librdkafka call given `timeout`, and ends the process if the
/// call is still blocked a while past it: librdkafka can wait for ever in
/// `send_offsets_to_transaction` after a group coordinator dies
/// (librdkafka #5456), and a stage that never commits again holds its
/// partitions. The restart fences the transactional id, which settles the
/// open transaction, and the batch is read again.
fn watched<T>(call: &'static str, timeout: Duration, f: impl FnOnce() -> T) -> T {
    let limit = timeout + CALL_OVERRUN;
    let watchdog = Watchdog::get();
    let id = watchdog.arm(call, Instant::now() + limit);
    let out = f();
    watchdog.disarm(id);
    out
}

type Armed = HashMap<u64, (&'static str, Instant)>;

/// The process's one watchdog thread, shared by every watched call (one
/// thread rather than one per call: a busy stage makes calls by the
/// hundred a second).
struct Watchdog {
    /// The last id given, and the calls under way: their name and deadline
    /// by id.
    armed: Mutex<(u64, Armed)>,
    changed: Condvar,
}

impl Watchdog {
    fn get() -> &'static Watchdog {
        static WATCHDOG: std::sync::OnceLock<&'static Watchdog> = std::sync::OnceLock::new();
        WATCHDOG.get_or_init(|| {
            let w: &'static Watchdog = Box::leak(Box::new(Watchdog {
                armed: Default::default(),
                changed: Default::default(),
            }));
            if let Err(e) = std::thread::Builder::new()
                .name("txn-watchdog".into())
                .spawn(|| w.watch())
            {
                tracing::warn!(error = %e, "no watchdog thread: blocked transaction calls are not caught");
            }
            w
        })
    }

    fn arm(&self, call: &'static str, deadline: Instant) -> u64 {
        let mut g = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let id = g.0;
        g.1.insert(id, (call, deadline));
        self.changed.notify_one();
        id
    }

    fn disarm(&self, id: u64) {
        self.armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .remove(&id);
    }

    fn watch(&self) {
        let mut g = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let next = g.1.values().min_by_key(|(_, d)| *d).copied();
            g = match next {
                None => self.changed.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some((call, deadline)) if Instant::now() >= deadline => {
                    tracing::error!(
                        call,
                        "a librdkafka transaction call did not return past its timeout; exiting so that a restart fences the transaction"
                    );
                    std::process::exit(70);
                }
                Some((_, deadline)) => {
                    self.changed
                        .wait_timeout(g, deadline.saturating_duration_since(Instant::now()))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

/// How long past its own timeout a librdkafka call may stay blocked.
const CALL_OVERRUN: Duration = Duration::from_secs(30);

/// A test hook, compiled into debug builds only: while the file named by
/// `RUNNER_TEST_HOLD_COMMIT` exists, a commit waits between sending its
/// offsets and committing, after creating `<file>.held` to say so. Tests
/// use it to let the stage's partitions move on while its transaction is
/// open.
#[cfg(debug_assertions)]
fn hold_before_commit() {
    let Some(hold) = std::env::var_os("RUNNER_TEST_HOLD_COMMIT").map(std::path::PathBuf::from)
    else {
        return;
    };
    if !hold.exists() {
        return;
    }
    let mut held = hold.clone().into_os_string();
    held.push(".held");
    let _ = std::fs::write(&held, b"");
    tracing::warn!(file = %hold.display(), "commit held by the test hook");
    while hold.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// librdkafka's `rd_kafka_commit_transaction`, called directly. rdkafka's
/// wrapper flushes first by polling the delivery-report queue in 100 ms
/// steps; the producer's polling thread serves that queue, so the wrapper
/// could wait out a whole step after the last acknowledgement. librdkafka's
/// commit flushes by itself, in 10 ms steps.
///
/// A retriable failure (the records not all acknowledged, or no answer to
/// `EndTxn`, within `timeout`) leaves the commit under way in librdkafka:
/// the transaction may yet commit, and librdkafka refuses any other
/// transactional call (an abort answers `_CONFLICT`) until the commit is
/// called again. So it is called again until it succeeds or fails for good
/// (an abortable or fatal error); returning earlier would rewind records
/// whose outputs may still commit.
fn commit_transaction(producer: &StageProducer, timeout: Duration) -> Result<(), BatchError> {
    let started = Instant::now();
    let mut attempt = 1u32;
    loop {
        match commit_once(producer, timeout) {
            Ok(()) => return Ok(()),
            Err(Commit::Retriable(message)) if started.elapsed() >= COMMIT_GIVE_UP => {
                // Neither committed nor aborted, and nothing else may be
                // called: the process stops, and the instance that starts
                // next fences the transactional id, which settles it.
                return Err(BatchError::Fatal(format!(
                    "{message}; the commit did not finish within {COMMIT_GIVE_UP:?}, stopping so that a restart settles the transaction"
                )));
            }
            Err(Commit::Retriable(message)) => {
                tracing::warn!(attempt, error = %message, "transaction commit not finished; finishing it");
                attempt += 1;
            }
            Err(Commit::Failed(e)) => return Err(e),
        }
    }
}

/// How long a retriable commit is called again before the stage stops.
const COMMIT_GIVE_UP: Duration = Duration::from_secs(120);

/// Each transactional call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a batch's commit takes before it succeeds or fails: an
/// earlier abort finished, the records enqueued, the offsets sent, the
/// commit called again until [`COMMIT_GIVE_UP`] (and once more), then an
/// abort, each within [`CALL_TIMEOUT`]. A revocation waits this long for
/// the transaction in flight.
pub(crate) const COMMIT_MAX: Duration =
    Duration::from_secs(COMMIT_GIVE_UP.as_secs() + 5 * CALL_TIMEOUT.as_secs());

/// How one call of `rd_kafka_commit_transaction` failed.
enum Commit {
    /// The commit goes on in the background; call it again.
    Retriable(String),
    /// Abort (transient) or stop (fatal).
    Failed(BatchError),
}

fn commit_once(producer: &StageProducer, timeout: Duration) -> Result<(), Commit> {
    use rdkafka::bindings as rd;
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live producer's, borrowed for the call.
    let err = unsafe { rd::rd_kafka_commit_transaction(producer.client().native_ptr(), millis) };
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: `err` is a non-null error object returned to us; it is read
    // and then destroyed exactly once.
    let (message, fatal, retriable, abortable) = unsafe {
        let message = std::ffi::CStr::from_ptr(rd::rd_kafka_error_string(err))
            .to_string_lossy()
            .into_owned();
        let fatal = rd::rd_kafka_error_is_fatal(err) != 0;
        let retriable = rd::rd_kafka_error_is_retriable(err) != 0;
        let abortable = rd::rd_kafka_error_txn_requires_abort(err) != 0;
        rd::rd_kafka_error_destroy(err);
        (message, fatal, retriable, abortable)
    };
    let message = format!("commit transaction: {message}");
    Err(if fatal {
        Commit::Failed(BatchError::Fatal(message))
    } else if retriable && !abortable {
        Commit::Retriable(message)
    } else {
        Commit::Failed(BatchError::Transient(message))
    })
}

/// Enqueues one record, waiting while the producer's queue is full.
fn send(producer: &StageProducer, o: &Out) -> Result<(), BatchError> {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&o.topic);
    if let Some(payload) = &o.payload {
        rec = rec.payload(payload.as_slice());
    }
    if !o.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
        for (k, v) in &o.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        rec = rec.headers(headers);
    }
    if let Some(k) = &o.key {
        rec = rec.key(k.as_slice());
    }
    rec = rec.partition(o.partition);
    let deadline = Instant::now() + CALL_TIMEOUT;
    let deliveries = producer.context();
    loop {
        deliveries.enqueuing();
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                if Instant::now() < deadline =>
            {
                deliveries.not_enqueued();
                // librdkafka's queue drains as the broker acknowledges.
                std::thread::sleep(Duration::from_millis(5));
                rec = r;
            }
            Err((e, _)) => {
                deliveries.not_enqueued();
                return Err(BatchError::of_transaction("produce", e));
            }
        }
    }
}

#[cfg(test)]
mod watchdog_tests {
    use super::*;

    #[test]
    fn a_watched_call_returns_its_value_and_leaves_nothing_armed() {
        let out = watched("test", Duration::from_secs(60), || 42);
        assert_eq!(out, 42);
        // Calls from several threads at once, each disarmed after.
        let threads: Vec<_> = (0..8)
            .map(|i| std::thread::spawn(move || watched("test", Duration::from_secs(60), || i)))
            .collect();
        let sum: i32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(sum, 28);
        let armed = Watchdog::get().armed.lock().unwrap();
        assert!(armed.1.is_empty(), "{:?}", armed.1);
        assert!(armed.0 >= 9, "each call armed it");
    }
}
