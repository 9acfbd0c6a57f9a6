//! Webhooks: subscriptions, kept in the compacted `<prefix>.webhooks`
//! topic keyed by subscription id and followed by every API replica, and
//! their signed deliveries of status changes (`delivery`), at least once,
//! driven from the status topic.
//!
//! - `signing`: Standard Webhooks signatures and secrets;
//! - `policy`: which URLs deliveries may go to;
//! - `delivery`: the consumer of the status topic that delivers.

pub mod delivery;
pub mod policy;
pub mod signing;

use artifact_domain::ArtifactState;
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::compacted::{Change, CompactedReader};
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::TopicNames;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// One subscription: the value of its record (`schemas/webhook-subscription.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its id (UUID), the record's key.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// `whsec_<base64 key>`.
    pub secret: String,
    /// The states whose changes are delivered.
    pub states: Vec<String>,
    /// When it was created (epoch ms).
    pub created_at: i64,
}

/// The states a subscription gets when it names none: the final ones.
pub const DEFAULT_STATES: [ArtifactState; 3] = [
    ArtifactState::Completed,
    ArtifactState::Failed,
    ArtifactState::Cancelled,
];

/// A state's name as the API writes it (`COMPLETED`).
pub fn state_name(state: ArtifactState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Subscription {
    /// Whether a change into `state` is delivered to it.
    pub fn wants(&self, state: ArtifactState) -> bool {
        let name = state_name(state);
        self.states.contains(&name)
    }
}

/// How one subscription's deliveries went, as this replica saw them (each
/// replica delivers the status partitions it is assigned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeliveryStats {
    /// Deliveries answered 2xx.
    pub delivered: u64,
    /// Deliveries given up after every attempt failed.
    pub failures: u64,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// When it failed (epoch ms).
    pub last_error_at: Option<i64>,
    /// When the last delivery succeeded (epoch ms).
    pub last_delivered_at: Option<i64>,
    /// The last delivery was given up: the next ones get one attempt each
    /// until one succeeds.
    pub failing: bool,
}

/// Every subscription, as followed from the topic, and how their
/// deliveries went on this replica.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    subs: RwLock<BTreeMap<String, Subscription>>,
    stats: Mutex<HashMap<String, DeliveryStats>>,
    caught_up: artifact_kafka::compacted::CaughtUp,
}

impl Subscriptions {
    /// Starts following `<prefix>.webhooks` in a task of its own; read
    /// errors are logged and the read starts again.
    pub fn follow(conn: ConnectionConfig, codec: Arc<AvroCodec>) -> Self {
        let subs = Self::default();
        let s = subs.clone();
        tokio::spawn(async move {
            let topic = TopicNames::from_config(&conn).webhooks();
            loop {
                if let Err(e) = s.follow_once(&conn, &codec, &topic).await {
                    tracing::warn!(error = %e, %topic, "webhooks topic not readable; trying again");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        });
        subs
    }

    async fn follow_once(
        &self,
        conn: &ConnectionConfig,
        codec: &AvroCodec,
        topic: &str,
    ) -> Result<(), String> {
        let mut reader = CompactedReader::open(conn, topic, "artifact-api-webhooks")
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match reader.next().await.map_err(|e| e.to_string())? {
                Change::CaughtUp => self.mark_caught_up(),
                Change::Record { key, value, .. } => {
                    let Some(id) = key.and_then(|k| String::from_utf8(k).ok()) else {
                        continue;
                    };
                    let sub = match value {
                        None => None,
                        Some(v) => loop {
                            match codec.decode::<Subscription>(Some(&v)).await {
                                Ok(s) => break Some(s),
                                Err(e) if e.is_retriable() => {
                                    tracing::warn!(error = %e, "webhook subscription waits for the registry");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                                Err(e) => {
                                    return Err(format!("subscription {id} does not decode: {e}"));
                                }
                            }
                        },
                    };
                    self.apply(&id, sub);
                }
            }
        }
    }

    /// Takes in a record read (or just written): `None` removes it.
    pub fn apply(&self, id: &str, sub: Option<Subscription>) {
        let mut subs = self.inner.subs.write().expect("subscriptions lock");
        match sub {
            Some(s) => {
                subs.insert(id.to_owned(), s);
            }
            None => {
                subs.remove(id);
                self.inner.stats.lock().expect("stats lock").remove(id);
            }
        }
    }

    /// Every subscription, by id.
    pub fn list(&self) -> Vec<Subscription> {
        let subs = self.inner.subs.read().expect("subscriptions lock");
        subs.values().cloned().collect()
    }

    /// One subscription.
    pub fn get(&self, id: &str) -> Option<Subscription> {
        let subs = self.inner.subs.read().expect("subscriptions lock");
        subs.get(id).cloned()
    }

    /// Whether the topic was read to the end it had at start.
    pub fn is_caught_up(&self) -> bool {
        self.inner.caught_up.is_done()
    }

    /// Waits until caught up.
    pub async fn caught_up(&self) {
        self.inner.caught_up.wait().await
    }

    /// Marks the subscriptions read (also for tests without a topic).
    pub fn mark_caught_up(&self) {
        self.inner.caught_up.mark();
    }

    /// How a subscription's deliveries went on this replica.
    pub fn stats(&self, id: &str) -> DeliveryStats {
        let stats = self.inner.stats.lock().expect("stats lock");
        stats.get(id).cloned().unwrap_or_default()
    }

    fn update_stats(&self, id: &str, f: impl FnOnce(&mut DeliveryStats)) {
        if self.get(id).is_none() {
            return;
        }
        let mut stats = self.inner.stats.lock().expect("stats lock");
        f(stats.entry(id.to_owned()).or_default());
    }
}

/// What the webhook handlers need: the subscriptions and the URL policy.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    /// Every subscription.
    pub subscriptions: Subscriptions,
    /// Where deliveries may go.
    pub policy: policy::UrlPolicy,
}
