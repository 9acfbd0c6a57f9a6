//! Writing status snapshots: each changed view is encoded and sent without
//! waiting; a task watches the deliveries and reports them back to the
//! projector's loop (undelivered ones to write again, delivered settled ones
//! to drop).

use crate::metrics;
use artifact_domain::{ArtifactId, ArtifactStatus};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::schemas::EventSchema;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Where the delivery of written snapshots is reported back: those not
/// delivered (to be written again) and the delivered ones of settled folds
/// (to be dropped).
pub(super) struct Reports {
    pub(super) undelivered: UnboundedSender<Vec<(ArtifactId, u64)>>,
    pub(super) settled: UnboundedSender<Vec<(ArtifactId, u64)>>,
}

/// Writes status snapshots and remembers, per artifact, a fingerprint of
/// the last one written (not the snapshot itself: the fold and the read
/// model's table already hold an artifact's data).
pub(super) struct SnapshotWriter {
    pub(super) producer: FutureProducer,
    pub(super) codec: Arc<AvroCodec>,
    pub(super) topic: String,
    pub(super) written: HashMap<ArtifactId, u64>,
}

/// How long a snapshot that was not delivered waits before it is written
/// again.
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// A snapshot sent and not yet acknowledged: the artifact, the snapshot's
/// fingerprint, whether its fold is settled, and its delivery.
type Sent = (ArtifactId, u64, bool, DeliveryFuture);

impl SnapshotWriter {
    /// Writes the snapshot of each of `ids` whose view differs from the
    /// last one written. Snapshots are not awaited one by one: the producer
    /// (one request in flight) keeps their order per artifact and retries
    /// them until `message.timeout.ms`. A task watches the deliveries (see
    /// [`watch`]), so a snapshot lost to a long broker outage or a rejected
    /// write (a topic's `max.message.bytes`) is not lost for good. A retry
    /// may write a snapshot twice in a row, which the read model takes like
    /// one.
    pub(super) async fn write(
        &mut self,
        folds: &HashMap<ArtifactId, ArtifactStatus>,
        ids: HashSet<ArtifactId>,
        reports: &Reports,
    ) -> anyhow::Result<()> {
        let mut sent = Vec::new();
        for id in ids {
            // Erased since (a snapshot taken back after its erasure).
            let Some(fold) = folds.get(&id) else { continue };
            let payload = self.encode(fold).await?;
            let fingerprint = fingerprint(&payload);
            if self.written.get(&id) == Some(&fingerprint) {
                continue;
            }
            let delivery = self.send(id, &payload).await;
            sent.push((id, fingerprint, fold.is_settled(), delivery));
            metrics::snapshot_written();
            self.written.insert(id, fingerprint);
        }
        if !sent.is_empty() {
            tokio::spawn(watch(
                sent,
                reports.undelivered.clone(),
                reports.settled.clone(),
            ));
        }
        Ok(())
    }

    /// Writes a tombstone for an erased artifact's status, after every
    /// snapshot of it this producer sent (it keeps their order); an
    /// undelivered one is logged (the erase wrote one too).
    pub(super) fn erase(&mut self, id: ArtifactId) {
        self.written.remove(&id);
        let key = id.to_string();
        let rec = FutureRecord::<String, [u8]>::to(&self.topic).key(&key);
        match self.producer.send_result(rec) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        tracing::error!(%id, "the status tombstone of an erased artifact was not delivered");
                    }
                });
            }
            Err((e, _)) => {
                tracing::error!(%id, error = %e, "the status tombstone of an erased artifact was not queued")
            }
        }
    }

    /// The fold's view, encoded; waits out a registry outage.
    async fn encode(&self, fold: &ArtifactStatus) -> anyhow::Result<Vec<u8>> {
        let view = fold.view();
        loop {
            match self
                .codec
                .encode(&self.topic, EventSchema::ArtifactStatus, &view)
                .await
            {
                Ok(p) => return Ok(p),
                Err(e) if e.is_retriable() => tokio::time::sleep(Duration::from_secs(1)).await,
                Err(e) => anyhow::bail!("cannot encode a status snapshot: {e}"),
            }
        }
    }

    /// Queues a snapshot, waiting while the producer's queue is full.
    async fn send(&self, id: ArtifactId, payload: &[u8]) -> DeliveryFuture {
        let key = id.to_string();
        loop {
            let rec = FutureRecord::to(&self.topic).key(&key).payload(payload);
            match self.producer.send_result(rec) {
                Ok(d) => return d,
                Err((e, _)) => {
                    tracing::warn!(error = %e, "status snapshot not queued; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Waits for the deliveries of `sent`: reports the delivered snapshots of
/// settled folds (to be dropped) at once, and the undelivered ones after
/// [`RESEND_AFTER`], to be written again from their artifacts' current
/// views.
async fn watch(
    sent: Vec<Sent>,
    undelivered: UnboundedSender<Vec<(ArtifactId, u64)>>,
    settled_delivered: UnboundedSender<Vec<(ArtifactId, u64)>>,
) {
    let (mut failed, mut settled) = (Vec::new(), Vec::new());
    for (id, fingerprint, is_settled, delivery) in sent {
        let error = match delivery.await {
            Ok(Ok(_)) => {
                if is_settled {
                    settled.push((id, fingerprint));
                }
                continue;
            }
            Ok(Err((e, _))) => e.to_string(),
            Err(_) => "the producer was dropped".to_owned(),
        };
        tracing::error!(%id, %error, "a status snapshot was not delivered; it will be written again");
        metrics::snapshot_failed();
        failed.push((id, fingerprint));
    }
    if !settled.is_empty() {
        let _ = settled_delivered.send(settled);
    }
    if !failed.is_empty() {
        tokio::time::sleep(RESEND_AFTER).await;
        let _ = undelivered.send(failed);
    }
}

/// A 64-bit fingerprint of an encoded snapshot. Two different consecutive
/// snapshots of one artifact share one with probability 2^-64.
pub(super) fn fingerprint(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// Takes back snapshots that were not delivered: of the `undelivered`, those
/// still the last written for their artifact are removed from `written` and
/// their artifacts returned, to be written again. An artifact written again
/// since has that write's own delivery to report.
pub(super) fn take_back(
    written: &mut HashMap<ArtifactId, u64>,
    undelivered: Vec<(ArtifactId, u64)>,
) -> HashSet<ArtifactId> {
    let mut ids = HashSet::new();
    for (id, fingerprint) in undelivered {
        if written.get(&id) == Some(&fingerprint) {
            written.remove(&id);
            ids.insert(id);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> ArtifactId {
        uuid::Uuid::from_u128(n).to_string().parse().unwrap()
    }

    #[test]
    fn only_snapshots_still_last_written_are_taken_back() {
        let (rewritten, failed, unknown) = (id(1), id(2), id(3));
        let mut written = HashMap::from([
            (rewritten, fingerprint(b"newer")),
            (failed, fingerprint(b"failed")),
        ]);
        let back = take_back(
            &mut written,
            vec![
                (rewritten, fingerprint(b"older")),
                (failed, fingerprint(b"failed")),
                (failed, fingerprint(b"failed")),
                (unknown, fingerprint(b"x")),
            ],
        );
        assert_eq!(back, HashSet::from([failed]));
        assert_eq!(written.get(&rewritten), Some(&fingerprint(b"newer")));
        assert!(!written.contains_key(&failed), "written again from scratch");
        assert!(!written.contains_key(&unknown));
    }

    #[test]
    fn fingerprints_tell_snapshots_apart() {
        assert_eq!(fingerprint(b"snapshot"), fingerprint(b"snapshot"));
        assert_ne!(fingerprint(b"snapshot"), fingerprint(b"snapshot "));
        assert_ne!(fingerprint(b""), fingerprint(b"\0"));
    }
}
