//! Following the compacted `<prefix>.artifact-control` topic: operators'
//! cancels and erasures, keyed by artifact id. Each stage replica (and the
//! API) reads every partition of it from the beginning at start, is caught
//! up once it has read to the high watermarks the partitions had then, and
//! tails it afterwards. The runner's plan asks it which inputs to skip.
//!
//! Memory: one entry per controlled artifact, for as long as the topic
//! keeps its record.

use artifact_domain::{ArtifactControl, ArtifactId, ControlAction, Generation};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::compacted::{Change, CompactedReader};
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::TopicNames;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The controls known so far, shared by the follower and its readers.
#[derive(Debug, Clone, Default)]
pub struct ArtifactControls {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    controls: RwLock<HashMap<ArtifactId, ArtifactControl>>,
    caught_up: artifact_kafka::compacted::CaughtUp,
    /// Artifacts erased since the last [`ArtifactControls::take_erased`].
    erased: Mutex<Vec<ArtifactId>>,
}

impl ArtifactControls {
    /// No controls, caught up: nothing is skipped (unit tests, benches).
    pub fn none() -> Self {
        let c = Self::default();
        c.mark_caught_up();
        c
    }

    /// Starts following the topic under `conn`'s prefix in a task of its
    /// own; read errors are logged and the read goes on.
    pub fn follow(conn: ConnectionConfig, codec: Arc<AvroCodec>) -> Self {
        let controls = Self::default();
        let c = controls.clone();
        tokio::spawn(async move { follow(conn, codec, c).await });
        controls
    }

    /// The artifact's control, if any.
    pub fn get(&self, id: ArtifactId) -> Option<ArtifactControl> {
        self.inner
            .controls
            .read()
            .expect("controls lock")
            .get(&id)
            .cloned()
    }

    /// Why an input of `generation` of `id` is skipped, if it is: a metric
    /// label (`cancelled`, `erased`).
    pub fn skip(&self, id: ArtifactId, generation: Generation) -> Option<&'static str> {
        artifact_domain::control_skip(
            self.inner.controls.read().expect("controls lock").get(&id),
            generation,
        )
    }

    /// Whether the artifact is erased.
    pub fn is_erased(&self, id: ArtifactId) -> bool {
        self.get(id)
            .is_some_and(|c| c.action == ControlAction::Erased)
    }

    /// Takes in a control (the latest of the topic, or one just written);
    /// an erasure not known before is queued for [`Self::take_erased`].
    pub fn apply(&self, control: ArtifactControl) {
        let id = control.artifact_id;
        let newly_erased = {
            let mut map = self.inner.controls.write().expect("controls lock");
            let was_erased = map
                .get(&id)
                .is_some_and(|c| c.action == ControlAction::Erased);
            let merged = match map.remove(&id) {
                Some(old) => old.merge(control),
                None => control,
            };
            let erased = merged.action == ControlAction::Erased;
            map.insert(id, merged);
            erased && !was_erased
        };
        if newly_erased {
            self.inner.erased.lock().expect("erased lock").push(id);
        }
    }

    /// The artifacts erased since the last call.
    pub fn take_erased(&self) -> Vec<ArtifactId> {
        std::mem::take(&mut *self.inner.erased.lock().expect("erased lock"))
    }

    /// Whether the topic was read to the end it had at start.
    pub fn is_caught_up(&self) -> bool {
        self.inner.caught_up.is_done()
    }

    /// Waits until caught up.
    pub async fn caught_up(&self) {
        self.inner.caught_up.wait().await
    }

    fn mark_caught_up(&self) {
        self.inner.caught_up.mark();
    }

    /// Controls held.
    pub fn len(&self) -> usize {
        self.inner.controls.read().expect("controls lock").len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the topic for ever into `controls`.
async fn follow(conn: ConnectionConfig, codec: Arc<AvroCodec>, controls: ArtifactControls) {
    let topic = TopicNames::from_config(&conn).artifact_control();
    let mut failures = 0u32;
    loop {
        match follow_once(&conn, &codec, &controls, &topic).await {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, %topic, failures, "artifact-control topic not readable; trying again");
                tokio::time::sleep(crate::retry::jittered(
                    Duration::from_millis(500),
                    Duration::from_secs(5),
                    failures,
                ))
                .await;
            }
        }
    }
}

/// One attempt: every partition from the beginning (a control applied twice
/// is the same control), caught up at the high watermarks found first.
async fn follow_once(
    conn: &ConnectionConfig,
    codec: &AvroCodec,
    controls: &ArtifactControls,
    topic: &str,
) -> Result<(), String> {
    let mut reader = CompactedReader::open(conn, topic, "artifact-control")
        .await
        .map_err(|e| e.to_string())?;
    let mut records = 0u64;
    loop {
        let (partition, offset, payload) = match reader.next().await.map_err(|e| e.to_string())? {
            Change::CaughtUp => {
                controls.mark_caught_up();
                tracing::info!(
                    %topic,
                    records,
                    controls = controls.len(),
                    "artifact controls read"
                );
                continue;
            }
            Change::Record {
                partition,
                offset,
                value,
                ..
            } => (partition, offset, value),
        };
        records += 1;
        // Controls are never deleted: a tombstone is skipped.
        let Some(payload) = payload else {
            continue;
        };
        loop {
            match codec.decode::<ArtifactControl>(Some(&payload)).await {
                Ok(c) => {
                    controls.apply(c);
                    break;
                }
                Err(e) if e.is_retriable() => {
                    tracing::warn!(error = %e, "artifact control waits for the registry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, partition, offset, "undecodable artifact control skipped");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(id: ArtifactId, action: ControlAction, generation: i64) -> ArtifactControl {
        ArtifactControl {
            artifact_id: id,
            action,
            generation: Generation::new(generation).unwrap(),
            at: 1,
        }
    }

    #[test]
    fn controls_decide_skips_and_queue_each_erasure_once() {
        let c = ArtifactControls::none();
        let (a, b) = (ArtifactId::new_random(), ArtifactId::new_random());
        let g = |n| Generation::new(n).unwrap();
        c.apply(control(a, ControlAction::Cancelled, 1));
        assert_eq!(c.skip(a, g(1)), Some("cancelled"));
        assert_eq!(c.skip(a, g(2)), None);
        assert_eq!(c.skip(b, g(1)), None);
        assert!(c.take_erased().is_empty());
        c.apply(control(a, ControlAction::Erased, 1));
        c.apply(control(a, ControlAction::Erased, 1));
        // A cancel read after the erasure (another partition's order, or
        // before compaction) does not undo it.
        c.apply(control(a, ControlAction::Cancelled, 2));
        assert_eq!(c.skip(a, g(5)), Some("erased"));
        assert!(c.is_erased(a));
        assert_eq!(c.take_erased(), vec![a]);
        assert!(c.take_erased().is_empty());
    }
}
