//! Dedup restores under way, one background task per newly assigned
//! partition, so the loop goes on serving the partitions it has (and
//! polling its consumer) however long a large partition takes. A partition
//! is paused while its state is restored; its records are read once the
//! state is installed.

use super::poison::{self, InFlightRead, Source, Suspect};
use crate::dedup::{RestoreProgress, Restored, restore_partition};
use crate::stage_metrics;
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use futures::FutureExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a restore found: the dedup state and the ranges that were in
/// flight when a process ended.
type Found = (Restored, Vec<(Source, Suspect)>);

struct Running {
    task: tokio::task::JoinHandle<Option<Found>>,
    cancelled: Arc<AtomicBool>,
    progress: Arc<RestoreProgress>,
    started: Instant,
}

/// A finished restore.
pub(crate) struct Finished {
    pub partition: i32,
    pub restored: Restored,
    pub suspects: Vec<(Source, Suspect)>,
    pub secs: f64,
}

/// The restores under way, by partition.
pub(crate) struct Restores {
    conn: ConnectionConfig,
    codec: Arc<AvroCodec>,
    topic: String,
    /// The stage's group and in-flight topic, when deaths are watched.
    inflight: Option<(String, String)>,
    running: BTreeMap<i32, Running>,
}

impl Restores {
    /// Restores from the dedup `topic`; with `inflight` (the stage's group
    /// and in-flight topic), also finds the ranges that were in flight.
    pub fn new(
        conn: ConnectionConfig,
        codec: Arc<AvroCodec>,
        topic: String,
        inflight: Option<(String, String)>,
    ) -> Self {
        Restores {
            conn,
            codec,
            topic,
            inflight,
            running: BTreeMap::new(),
        }
    }

    /// Starts restoring `partition` unless it is under way, leaving out
    /// entries processed before `expire_before_ms`; `in_flight` is read
    /// once for every restore given it.
    pub fn start(
        &mut self,
        partition: i32,
        expire_before_ms: Option<i64>,
        in_flight: &InFlightRead,
    ) {
        if self.running.contains_key(&partition) {
            return;
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(RestoreProgress::default());
        let (conn, codec, topic) = (self.conn.clone(), self.codec.clone(), self.topic.clone());
        let inflight = self.inflight.clone();
        let read = in_flight.clone();
        let (c, p) = (cancelled.clone(), progress.clone());
        let task = tokio::spawn(async move {
            let restored =
                restore_partition(&conn, &codec, &topic, partition, expire_before_ms, &p, &c)
                    .await?;
            let suspects = match inflight {
                Some((group, topic)) => suspects(conn, group, topic, &read, partition, &c).await?,
                None => Vec::new(),
            };
            Some((restored, suspects))
        });
        self.running.insert(
            partition,
            Running {
                task,
                cancelled,
                progress,
                started: Instant::now(),
            },
        );
    }

    /// Stops restoring `partition` (revoked).
    pub fn cancel(&mut self, partition: i32) {
        if let Some(r) = self.running.remove(&partition) {
            r.cancelled.store(true, Ordering::Relaxed);
        }
    }

    /// The restores that finished since the last call.
    pub fn finished(&mut self) -> Vec<Finished> {
        let done: Vec<i32> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        let mut finished = Vec::new();
        for partition in done {
            let r = self.running.remove(&partition).expect("listed above");
            match r.task.now_or_never() {
                Some(Ok(Some((restored, suspects)))) => finished.push(Finished {
                    partition,
                    restored,
                    suspects,
                    secs: r.started.elapsed().as_secs_f64(),
                }),
                // Cancelled, or the task panicked: started again if the
                // partition is still waiting for its state.
                other => {
                    tracing::warn!(partition, ended = ?other.map(|r| r.map(|o| o.is_some())), "dedup restore ended without a state")
                }
            }
        }
        finished
    }

    /// Partitions whose restore is under way.
    pub fn partitions(&self) -> Vec<i32> {
        self.running.keys().copied().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Exports the restores' progress; returns a line for the readiness
    /// report.
    pub fn report(&self, stage: &'static str) -> String {
        let mut records = 0;
        let mut remaining = 0;
        let mut waiting = false;
        let mut interrupted = None;
        for r in self.running.values() {
            records += r.progress.records.load(Ordering::Relaxed);
            remaining += r.progress.remaining.load(Ordering::Relaxed).max(0);
            waiting |= r.progress.waiting.load(Ordering::Relaxed);
            interrupted = interrupted.or_else(|| r.progress.interrupted());
        }
        stage_metrics::restoring(stage, self.running.len(), remaining);
        format!(
            "restoring dedup state of partitions {:?}: {records} records read, about {remaining} left{}",
            self.partitions(),
            match (interrupted, waiting) {
                (Some(why), _) => format!(", interrupted, resuming: {why}"),
                (None, true) => ", waiting for an open transaction".to_owned(),
                (None, false) => String::new(),
            }
        )
    }
}

/// The ranges of `partition` that were in flight when a process ended,
/// asked again after a pause while the broker does not answer; `None` if
/// cancelled.
async fn suspects(
    conn: ConnectionConfig,
    group: String,
    topic: String,
    in_flight: &InFlightRead,
    partition: i32,
    cancelled: &AtomicBool,
) -> Option<Vec<(Source, Suspect)>> {
    let mut failures = 0;
    loop {
        let read = async {
            let ranges = in_flight
                .get_or_try_init(|| {
                    let (c, t) = (conn.clone(), topic.clone());
                    blocking(move || poison::read_in_flight(&c, &t))
                })
                .await?
                .clone();
            let (c, g) = (conn.clone(), group.clone());
            blocking(move || poison::read_suspects(&c, &g, &ranges, partition)).await
        };
        match read.await {
            Ok(s) => return Some(s),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, partition, "reading the batches in flight failed; trying again");
            }
        }
        if cancelled.load(Ordering::Relaxed) {
            return None;
        }
        tokio::time::sleep(crate::retry::jittered(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(5),
            failures,
        ))
        .await;
    }
}

impl Drop for Restores {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.cancelled.store(true, Ordering::Relaxed);
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}
