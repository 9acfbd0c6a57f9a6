//! The stage loop: one owned state, and a step per stage of a batch's life
//! (see the module documentation of [`super`]). Collecting a batch is in
//! [`super::collect`].

use super::commit::{self, InFlight, TxnGate};
use super::context::{Assignment, StageContext};
use super::control::Control;
use super::item::{Item, Source, first_offsets};
use super::pace::Pacer;
use super::poison::{self, Markers, Suspects};
use super::producer::StageProducer;
use super::purge::RetryPurge;
use super::restores::Restores;
use super::retries::RetryQueue;
use super::setup::Clients;
use super::{RunnerError, StageRunner, batch};
use crate::dedup::{DedupState, Tombstones};
use crate::retry;
use crate::stage::StageLogic;
use crate::stage_metrics;
use artifact_kafka::now_ms;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most tombstones of expired dedup entries a transaction of `records`
/// input records writes. A rotation expires a retention's worth of keys at
/// once; written a few per record, they spread over the traffic that
/// follows instead of swelling a few transactions (and every hop's latency).
/// An idle stage writes them in transactions of their own, of
/// `max_tombstones(TRANSACTION_MAX_RECORDS)` at most.
pub(crate) fn max_tombstones(records: usize) -> usize {
    2 * records + 100
}

/// Everything the loop owns.
pub(crate) struct StageLoop<'r, S: StageLogic> {
    pub(super) runner: &'r StageRunner<S>,
    pub(super) consumer: StreamConsumer<StageContext>,
    pub(super) retries: RetryQueue,
    producer: StageProducer,
    gate: Arc<TxnGate>,
    assignment: Arc<Mutex<Assignment>>,
    dedup: DedupState,
    restores: Restores,
    /// Ranges that were in flight when a process ended.
    suspects: Suspects,
    /// Where batches in flight are recorded (`None`: POISON_MAX_CRASHES=0).
    markers: Option<Arc<Markers>>,
    /// The batch whose transaction commits while the next one is
    /// collected and processed.
    pub(super) in_flight: Option<InFlight>,
    purge: RetryPurge,
    pub(super) pacer: Pacer,
    /// Batches that failed in a row.
    failures: u32,
    /// What holds input back: the operator's pause, the breaker.
    pub(super) control: Control,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl<'r, S: StageLogic> StageLoop<'r, S> {
    pub fn new(
        runner: &'r StageRunner<S>,
        clients: Clients,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let retry_topic = runner.names.retry(S::STAGE);
        StageLoop {
            runner,
            consumer: clients.consumer,
            retries: RetryQueue::new(clients.retry_consumer, retry_topic.clone()),
            producer: clients.producer,
            gate: clients.gate,
            assignment: clients.assignment,
            dedup: DedupState::new(runner.cfg.dedup_retention(), Instant::now()),
            restores: Restores::new(
                runner.conn.clone(),
                runner.codec.clone(),
                runner.names.dedup(S::STAGE),
                clients
                    .markers
                    .as_ref()
                    .map(|_| (runner.group.clone(), runner.names.inflight(S::STAGE))),
            ),
            suspects: Suspects::new(runner.cfg.poison_max_crashes),
            markers: clients.markers,
            in_flight: None,
            purge: RetryPurge::new(retry_topic, Some(runner.conn.clone())),
            pacer: Pacer::new(runner.cfg.pacing()),
            failures: 0,
            control: Control::new(
                &runner.conn,
                runner.codec.clone(),
                S::STAGE.name(),
                runner.cfg.instance_id(),
            ),
            shutdown,
        }
    }

    /// Runs until `shutdown` turns true, then finishes the open batch and
    /// leaves the group.
    pub async fn run(mut self) -> Result<(), RunnerError> {
        let stage = S::STAGE.name();
        stage_metrics::describe(stage);
        let input_topic = self.runner.names.input(S::STAGE);
        self.consumer
            .subscribe(&[&input_topic])
            .map_err(|e| RunnerError::Fatal(e.to_string()))?;
        tracing::info!(stage, group = %self.runner.group, %input_topic, delivery = ?self.runner.cfg.delivery, "stage running");
        while !*self.shutdown.borrow() {
            // Processed retry records go, in the background (at least every
            // quarter second: an idle wait ends that often).
            self.purge.poll();
            let gate = self.gate();
            let collected = self.collect().await?;
            self.apply_assignment().await;
            self.expire_dedup();
            self.erase();
            let owned = self.keep_owned(collected);
            let batch = self.gated(gate, owned);
            self.handle_batch(batch).await?;
            self.probe_done(gate);
        }
        self.finish().await
    }

    pub(super) fn assignment(&self) -> MutexGuard<'_, Assignment> {
        self.assignment.lock().expect("assignment lock")
    }

    /// Applies assignment changes: forgets revoked partitions (and stops
    /// their restores), starts restoring newly assigned ones, and installs
    /// the states restored since, before any of their records is processed.
    async fn apply_assignment(&mut self) {
        let (revoked, to_restore) = {
            let mut a = self.assignment();
            let revoked: Vec<(i32, u64)> = std::mem::take(&mut a.revoked)
                .into_iter()
                .map(|p| (p, a.revoked_at.get(&p).copied().unwrap_or(a.epoch)))
                .collect();
            (revoked, a.to_restore.clone())
        };
        for (p, at) in revoked {
            self.dedup.drop_partition(p);
            self.retries.revoked(p, at);
            self.restores.cancel(p);
            self.suspects.revoked(p);
            if let Some(markers) = &self.markers {
                markers.revoked(p);
            }
        }
        let expire_before_ms = self
            .runner
            .cfg
            .dedup_retention()
            .map(|r| now_ms() - r.as_millis() as i64);
        // One read of the batches in flight for the restores started here.
        let in_flight = poison::InFlightRead::default();
        for &p in &to_restore {
            if !self.restores.partitions().contains(&p) {
                self.pause_input(p, true);
                self.restores.start(p, expire_before_ms, &in_flight);
            }
        }
        self.install_restored();
    }

    /// Installs the dedup states restored since the last look, of the
    /// partitions still ours and waiting for them.
    fn install_restored(&mut self) {
        let stage = S::STAGE.name();
        for f in self.restores.finished() {
            let r = &f.restored;
            stage_metrics::restore_time(stage, f.secs);
            tracing::info!(
                partition = f.partition,
                keys = r.entries.len(),
                expired = r.expired.len(),
                records = r.records,
                undecodable = r.undecodable,
                secs = f.secs,
                "dedup state restored"
            );
            let mut a = self.assignment.lock().expect("assignment lock");
            // Still ours and not revoked meanwhile: install it.
            if a.owned.contains(&f.partition) && a.to_restore.remove(&f.partition) {
                drop(a);
                let p = f.partition;
                self.dedup.install(p, f.restored);
                // Entries of artifacts erased meanwhile (written before
                // the stage learnt of it) are tombstoned.
                let controls = &self.runner.controls;
                let erased: Vec<_> = self
                    .dedup
                    .keys(p)
                    .filter(|id| controls.is_erased(*id))
                    .collect();
                for id in erased {
                    self.dedup.erase(id, []);
                }
                for (source, suspect) in f.suspects {
                    if let Some(markers) = &self.markers {
                        markers.hold(&source, &suspect);
                    }
                    self.suspects.insert(source, suspect);
                }
                // A held stage resumes it when it is no longer held.
                if !self.control.held {
                    self.pause_input(f.partition, false);
                }
            }
        }
        let report = self.restores.report(stage);
        if !self.restores.is_empty() {
            self.runner.health.set_not_ready(report);
        }
    }

    /// Pauses (or resumes) reading partition `p` of the input topic.
    fn pause_input(&self, p: i32, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition(&self.runner.names.input(S::STAGE), p);
        let res = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = res {
            tracing::warn!(partition = p, pause, error = %e, "pausing or resuming an input partition failed");
        }
    }

    /// Takes the artifacts erased since the last look: their entries leave
    /// the dedup state, and the keys this stage wrote (recorded, or in the
    /// batch still committing) get tombstones in its next transaction.
    /// Nothing of them is processed from now on (the plan skips them).
    fn erase(&mut self) {
        for id in self.runner.controls.take_erased() {
            let committing: Vec<i32> = self
                .in_flight
                .iter()
                .flat_map(|f| f.generations.keys())
                .filter(|(_, i)| *i == id)
                .map(|(p, _)| *p)
                .collect();
            let partitions = self.dedup.erase(id, committing);
            tracing::info!(artifact_id = %id, partitions, "artifact erased: its outcomes and dedup entries here are tombstoned, its inputs skipped");
        }
    }

    /// Expires dedup entries older than the retention, when due.
    fn expire_dedup(&mut self) {
        let stage = S::STAGE.name();
        let expired = self.dedup.rotate_if_due(Instant::now());
        if expired > 0 {
            tracing::info!(
                expired,
                kept = self.dedup.len(),
                "dedup entries older than the retention expired"
            );
            stage_metrics::dedup_expired(stage, expired as u64);
        }
        stage_metrics::dedup_keys(stage, self.dedup.len());
    }

    /// Keeps only records of partitions that are ours and restored. A
    /// revoked partition's records are read by its new owner from the
    /// committed offset; those of a partition still waiting for its restore
    /// are read again after it.
    fn keep_owned(&mut self, items: Vec<Item>) -> Vec<Item> {
        let (kept, waiting): (Vec<Item>, Vec<Item>) = {
            let a = self.assignment();
            items
                .into_iter()
                .filter(|it| a.is_current(it.partition(), it.epoch))
                .partition(|it| self.dedup.has_partition(it.partition()))
        };
        if !waiting.is_empty() {
            self.rewind(&waiting);
        }
        kept
    }

    /// Prepares the batch and starts its commit once the previous one has
    /// settled. With no records, an idle stage's pending tombstones go out
    /// in a transaction of their own, so neither memory nor the topic waits
    /// for traffic to drop them.
    async fn handle_batch(&mut self, items: Vec<Item>) -> Result<(), RunnerError> {
        let Some((mut items, deaths, refuse)) = self.isolate_suspects(items).await? else {
            return Ok(());
        };
        let tombstones_only = items.is_empty()
            && self.in_flight.is_none()
            && (self.dedup.pending_tombstones() > 0 || self.dedup.pending_erasures() > 0);
        if items.is_empty() && !tombstones_only {
            self.report_idle();
            return Ok(());
        }
        let prepare_started = Instant::now();
        let room = max_tombstones(if tombstones_only {
            self.runner.cfg.transaction_max_records
        } else {
            items.len()
        });
        let committing = self.in_flight.as_ref().map(|f| &f.generations);
        let tombstones = self.dedup.take_tombstones(room, committing);
        let erasures = self.dedup.take_erasures();
        let (dedup, in_flight) = (&self.dedup, &self.in_flight);
        let seen = |k @ (p, id)| {
            dedup.last(p, id).max(
                in_flight
                    .as_ref()
                    .and_then(|f| f.generations.get(&k).copied()),
            )
        };
        let guard = batch::Guard {
            markers: self.markers.as_deref(),
            deaths,
            refuse,
        };
        let prepared = self
            .runner
            .prepare(&items, seen, &tombstones, &erasures, guard)
            .await;
        if let Ok(p) = &prepared
            && p.covered < items.len()
        {
            // Cut short: what it did not start is read again.
            let rest = items.split_off(p.covered);
            self.rewind(&rest);
        }
        if !tombstones_only {
            self.pacer.processed(prepare_started.elapsed());
        }
        // One transaction at a time: the previous batch settles before
        // this one's starts. If it failed, this batch is read again too.
        if let Some(flight) = self.in_flight.take() {
            match self.settle_or_rewind(flight, items).await? {
                Some(back) => items = back,
                None => {
                    // Read again with the failed one: its tombstones too.
                    self.dedup.return_tombstones(tombstones);
                    self.dedup.return_erasures(erasures);
                    return Ok(());
                }
            }
        }
        self.commit(prepared, items, tombstones, erasures).await
    }

    /// A batch, with the deaths seen while processing its records and, for a
    /// record that is not processed again, why it fails: while a range that
    /// was in flight when a process ended has not committed, a batch that
    /// reaches it is that range's next slice alone (after the batch in
    /// flight settled); the rest is read again. `None` if the batch in
    /// flight failed (both are read again).
    async fn isolate_suspects(
        &mut self,
        items: Vec<Item>,
    ) -> Result<Option<(Vec<Item>, u32, Option<String>)>, RunnerError> {
        if self.suspects.is_empty() || items.is_empty() {
            return Ok(Some((items, 0, None)));
        }
        if let Some(flight) = self.in_flight.take()
            && self.settle_or_rewind(flight, Vec::new()).await?.is_none()
        {
            self.rewind(&items);
            return Ok(None);
        }
        let (isolated, kept, rest) = self.suspects.isolate(items);
        self.rewind(&rest);
        Ok(Some(match isolated {
            None => (kept, 0, None),
            Some(i) => {
                let max = self.runner.cfg.poison_max_crashes;
                let refuse = i.poison.then(|| poison::poison_reason(i.deaths, max));
                (i.items, i.deaths, refuse)
            }
        }))
    }

    /// Starts committing a prepared batch; a batch that could not be
    /// prepared or started is read again (nothing of it was produced).
    async fn commit(
        &mut self,
        prepared: Result<batch::Prepared, batch::BatchError>,
        items: Vec<Item>,
        tombstones: Tombstones,
        erasures: Tombstones,
    ) -> Result<(), RunnerError> {
        let (e, items, tombstones, erasures) = match prepared {
            Err(e) => (e, items, tombstones, erasures),
            Ok(p) => match self.runner.start_commit(
                &self.consumer,
                &self.producer,
                &self.gate,
                commit::Ready {
                    prepared: p,
                    items,
                    tombstones,
                    erasures,
                },
                self.markers.clone(),
            ) {
                Ok(flight) => {
                    self.in_flight = Some(flight);
                    return Ok(());
                }
                Err(back) => back,
            },
        };
        self.dedup.return_tombstones(tombstones);
        self.dedup.return_erasures(erasures);
        self.failed_batch(e, &items).await
    }

    /// Nothing to do: ready, unless a batch failed since the last success,
    /// a restore is pending, no partition is assigned, or the stage-control
    /// topic is not read to its end yet.
    fn report_idle(&self) {
        if self.control.reading() {
            self.runner
                .health
                .set_not_ready("reading the stage-control topic to its end");
            return;
        }
        let a = self.assignment();
        if self.failures == 0 && a.to_restore.is_empty() {
            if a.owned.is_empty() {
                self.runner.health.set_not_ready("no partitions assigned");
            } else {
                self.runner.health.set_ready();
            }
        }
    }

    /// Settles the batch in flight. On success returns `next` (the batch
    /// prepared meanwhile) to be committed; on failure rewinds both batches
    /// (nothing of either was committed), pauses, and returns `None`.
    pub(super) async fn settle_or_rewind(
        &mut self,
        flight: InFlight,
        next: Vec<Item>,
    ) -> Result<Option<Vec<Item>>, RunnerError> {
        match self
            .runner
            .settle(&self.consumer, &mut self.dedup, flight)
            .await
        {
            Ok(items) => {
                self.purge.committed(
                    items
                        .iter()
                        .filter(|it| it.source == Source::Retry)
                        .map(|it| (it.partition(), it.offset() + 1)),
                );
                self.suspects.committed(&items);
                self.failures = 0;
                self.runner.health.set_ready();
                Ok(Some(next))
            }
            Err((e, mut items)) => {
                items.extend(next);
                self.failed_batch(e, &items).await?;
                Ok(None)
            }
        }
    }

    /// A batch did not commit: fatal errors end the runner; otherwise its
    /// records are read again after a pause that grows with each failure.
    async fn failed_batch(
        &mut self,
        error: batch::BatchError,
        items: &[Item],
    ) -> Result<(), RunnerError> {
        let e = match error {
            batch::BatchError::Fatal(e) => {
                self.runner.health.set_not_ready(e.clone());
                return Err(RunnerError::Fatal(e));
            }
            batch::BatchError::Transient(e) => e,
        };
        self.failures += 1;
        tracing::warn!(error = %e, failures = self.failures, "batch failed; rewinding and retrying");
        stage_metrics::batch_failed(S::STAGE.name());
        self.runner.health.set_not_ready(e);
        self.rewind(items);
        if let Some(markers) = &self.markers {
            // Its process lives: no owner may count this batch a death.
            markers.clear(&poison::ranges(items, 0)).await;
        }
        let pause = retry::jittered(
            Duration::from_millis(200),
            Duration::from_secs(5),
            self.failures,
        );
        tokio::select! {
            _ = self.shutdown.changed() => {},
            _ = tokio::time::sleep(pause) => {},
        }
        Ok(())
    }

    /// Puts the consumers back at the first offset of each partition in
    /// `items`, so those records are read again (nothing of them was
    /// committed).
    pub(super) fn rewind(&mut self, items: &[Item]) {
        for ((topic, p, source), offset) in first_offsets(items) {
            match source {
                Source::Input => {
                    if let Err(e) =
                        self.consumer
                            .seek(topic, p, Offset::Offset(offset), Duration::from_secs(5))
                    {
                        tracing::warn!(%topic, partition = p, offset, error = %e, "rewind failed");
                    }
                }
                Source::Retry => self.retries.rewind(p, offset),
            }
        }
    }

    /// Settles the batch in flight, leaves the group and flushes.
    async fn finish(mut self) -> Result<(), RunnerError> {
        if let Some(flight) = self.in_flight.take() {
            self.settle_or_rewind(flight, Vec::new()).await?;
        }
        self.report_stop().await;
        tracing::info!(stage = S::STAGE.name(), "shutting down: leaving the group");
        self.runner.health.set_not_ready("shutting down");
        self.consumer.unsubscribe();
        let StageLoop {
            consumer,
            retries,
            producer,
            ..
        } = self;
        drop(consumer);
        drop(retries);
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        Ok(())
    }
}
