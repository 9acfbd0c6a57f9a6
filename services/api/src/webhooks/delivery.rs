//! Delivering status changes to subscriptions. Every API replica joins one
//! consumer group on `<prefix>.status` (`WEBHOOK_GROUP`), so each status
//! partition is delivered by one replica. A record's offset is stored only
//! once each matching subscription got it or its attempts ran out, and the
//! stored offsets are committed every second, so a restart or a rebalance
//! delivers again what was not confirmed (and at most a second of what
//! was): at least once, with the same `webhook-id`, which receivers use to
//! drop duplicates.
//!
//! A subscription whose delivery ran out of attempts is marked failing:
//! later changes get one attempt each until one succeeds, so a receiver
//! that is down holds its partitions back by one timeout per change, not
//! by the whole retry schedule.

use super::policy::{CheckedResolver, UrlError, UrlPolicy};
use super::signing::Secret;
use super::{Subscription, Subscriptions, state_name};
use crate::metrics;
use artifact_domain::StatusView;
use artifact_kafka::client::{QuietEof, consumer_config, gather_fetches};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::TopicNames;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Where they may go.
    pub policy: UrlPolicy,
    /// Longest a request may take, connection included.
    pub timeout: Duration,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles after each.
    pub retry_base: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
}

/// Most bytes of a refusing answer's body kept for its error.
const ERROR_BODY_BYTES: usize = 256;
/// Event ids remembered as delivered, so a snapshot of the same state
/// written again is not sent again by this replica.
const RECENT_IDS: usize = 10_000;

/// The wait before attempt `attempt + 1` after `attempt` failures (from
/// 1): `base · 2^(attempt-1)`, at most `max`, less up to half at random so
/// replicas do not retry in step.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(max);
    full.mul_f64(1.0 - rand::random::<f64>() / 2.0)
}

/// The delivery's `webhook-id`: the same for every attempt and every
/// replica, so a receiver can drop a redelivery.
pub fn event_id(subscription: &str, view: &StatusView) -> String {
    format!(
        "evt_{}_{}_{}_{subscription}",
        view.artifact_id,
        view.generation,
        state_name(view.state)
    )
}

/// The delivery's body: the event type (`artifact.completed`, ...) and the
/// snapshot as `GET /v1/artifacts/{id}` answers it.
pub fn body(view: &StatusView) -> Vec<u8> {
    let kind = format!("artifact.{}", state_name(view.state).to_lowercase());
    serde_json::to_vec(&serde_json::json!({"type": kind, "data": view}))
        .expect("a status view serializes")
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 2xx.
    Delivered,
    /// Every attempt failed; the last error.
    Failed(String),
    /// The URL or its address is not allowed (not retried).
    Refused(String),
}

/// Sends deliveries.
#[derive(Debug, Clone)]
pub struct Deliverer {
    subs: Subscriptions,
    cfg: DeliveryConfig,
    client: reqwest::Client,
}

impl Deliverer {
    /// A deliverer whose client follows no redirect, uses no proxy (it
    /// would resolve names the policy does not see), and resolves names
    /// through the policy.
    pub fn new(subs: Subscriptions, cfg: DeliveryConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .dns_resolver(CheckedResolver(cfg.policy))
            .user_agent(concat!(
                "artifact-pipeline-webhooks/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(Deliverer { subs, cfg, client })
    }

    /// Delivers `view` to every subscription that wants it and existed
    /// when it changed, concurrently, each until delivered or given up;
    /// returns each subscription's event id and outcome.
    pub async fn deliver_change(&self, view: &StatusView) -> Vec<(String, Outcome)> {
        let body = body(view);
        let targets: Vec<Subscription> = self
            .subs
            .list()
            .into_iter()
            .filter(|s| s.wants(view.state) && view.updated_at >= s.created_at)
            .collect();
        let deliveries = targets.iter().map(|s| {
            let id = event_id(&s.id, view);
            let body = &body;
            async move {
                let outcome = self.deliver(s, &id, body).await;
                (id, outcome)
            }
        });
        futures::future::join_all(deliveries).await
    }

    /// One delivery, with retries.
    async fn deliver(&self, sub: &Subscription, id: &str, body: &[u8]) -> Outcome {
        let attempts = if self.subs.stats(&sub.id).failing {
            1
        } else {
            self.cfg.max_attempts
        };
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.attempt(sub, id, body).await {
                Ok(()) => break Outcome::Delivered,
                Err(Failure::Refused(e)) => break Outcome::Refused(e),
                Err(Failure::Retriable(e)) => {
                    tracing::info!(subscription = %sub.id, event = id, attempt, error = %e, "webhook delivery failed");
                    self.subs.update_stats(&sub.id, |s| {
                        s.last_error = Some(e.clone());
                        s.last_error_at = Some(artifact_kafka::now_ms());
                    });
                    if attempt >= attempts {
                        break Outcome::Failed(e);
                    }
                    // A subscription removed meanwhile gets no more attempts.
                    if self.subs.get(&sub.id).is_none() {
                        break Outcome::Failed(e);
                    }
                    tokio::time::sleep(backoff(self.cfg.retry_base, self.cfg.retry_max, attempt))
                        .await;
                }
            }
        };
        let now = artifact_kafka::now_ms();
        match &outcome {
            Outcome::Delivered => {
                metrics::webhook_delivery(metrics::WebhookOutcome::Delivered);
                self.subs.update_stats(&sub.id, |s| {
                    s.delivered += 1;
                    s.last_delivered_at = Some(now);
                    s.failing = false;
                });
            }
            Outcome::Failed(e) | Outcome::Refused(e) => {
                let refused = matches!(outcome, Outcome::Refused(_));
                metrics::webhook_delivery(if refused {
                    metrics::WebhookOutcome::Refused
                } else {
                    metrics::WebhookOutcome::Failed
                });
                tracing::warn!(subscription = %sub.id, url = %sub.url, event = id, attempts = attempt, error = %e, "webhook delivery given up");
                self.subs.update_stats(&sub.id, |s| {
                    s.failures += 1;
                    s.last_error = Some(e.clone());
                    s.last_error_at = Some(now);
                    s.failing = true;
                });
            }
        }
        outcome
    }

    /// One request.
    async fn attempt(&self, sub: &Subscription, id: &str, body: &[u8]) -> Result<(), Failure> {
        let policy = self.cfg.policy;
        let url = policy
            .check_form(&sub.url)
            .map_err(|e| Failure::Refused(e.to_string()))?;
        // The resolver sees names only: an address in the URL is checked here.
        if let Some(host) = url.host_str() {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                policy
                    .check_ip(ip)
                    .map_err(|e| Failure::Refused(e.to_string()))?;
            }
        }
        let secret = Secret::parse(&sub.secret).map_err(|e| Failure::Refused(e.to_string()))?;
        let timestamp = artifact_kafka::now_ms() / 1000;
        let started = Instant::now();
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", secret.sign(id, timestamp, body))
            .body(body.to_vec())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) if refused_by_policy(&e) => return Err(Failure::Refused(chain(&e))),
            Err(e) => return Err(Failure::Retriable(chain(&e))),
        };
        metrics::webhook_request(started.elapsed());
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        // A little of the answer says why; the rest is not read.
        let mut said = Vec::new();
        while said.len() < ERROR_BODY_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => said.extend_from_slice(&c),
                _ => break,
            }
        }
        said.truncate(ERROR_BODY_BYTES);
        let said = String::from_utf8_lossy(&said);
        Err(Failure::Retriable(if said.trim().is_empty() {
            format!("answered {status}")
        } else {
            format!("answered {status}: {}", said.trim())
        }))
    }
}

enum Failure {
    Refused(String),
    Retriable(String),
}

/// Whether the resolver refused the host's addresses.
fn refused_by_policy(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if matches!(s.downcast_ref::<UrlError>(), Some(UrlError::Private(_))) {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error and its causes, in one line.
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Event ids delivered (or given up) lately, oldest first.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Recent {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// Follows the status topic in `group` and delivers each change, for
/// ever; returns only if the consumer cannot be made.
pub async fn run_delivery(
    conn: ConnectionConfig,
    codec: Arc<AvroCodec>,
    group: String,
    deliverer: Deliverer,
) -> anyhow::Result<()> {
    let topic = TopicNames::from_config(&conn).status();
    // Deliveries need every subscription: one not read yet would miss
    // changes whose offsets are then committed.
    deliverer.subs.caught_up().await;
    // From the beginning for a new group: changes older than a
    // subscription are not delivered to it anyway (`created_at`).
    let consumer: StreamConsumer<QuietEof> =
        gather_fetches(&mut consumer_config(&conn, "artifact-api-webhooks", &group))
            // Offsets stored once delivered are committed every second (and
            // at a rebalance or a close): a commit per status record was the
            // API's most frequent request to the broker.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create_with_context(QuietEof)?;
    consumer.subscribe(&[&topic])?;
    tracing::info!(%topic, %group, "webhook deliveries following the status topic");
    let mut recent = Recent::default();
    loop {
        let m = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "status topic read error (webhooks)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (partition, offset) = (m.partition(), m.offset());
        let payload = m.payload().map(<[u8]>::to_vec);
        drop(m);
        if let Some(payload) = payload
            && !deliverer.subs.list().is_empty()
            && let Some(view) = decode(&codec, &payload, offset).await
        {
            deliver_new(&deliverer, &view, &mut recent).await;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))?;
        // A commit lost (a rebalance, a crash) only delivers again.
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::warn!(error = %e, partition, offset, "webhook offset not stored");
        }
    }
}

/// Delivers a change unless this replica delivered its event lately.
async fn deliver_new(deliverer: &Deliverer, view: &StatusView, recent: &mut Recent) {
    let wanted = deliverer
        .subs
        .list()
        .iter()
        .any(|s| s.wants(view.state) && !recent.contains(&event_id(&s.id, view)));
    if !wanted {
        return;
    }
    for (id, _) in deliverer.deliver_change(view).await {
        recent.insert(id);
    }
}

/// A status record's snapshot; `None` (logged) if it can never decode.
async fn decode(codec: &AvroCodec, payload: &[u8], offset: i64) -> Option<StatusView> {
    loop {
        match codec.decode::<StatusView>(Some(payload)).await {
            Ok(v) => return Some(v),
            Err(e) if e.is_retriable() => {
                tracing::warn!(error = %e, "status record waits for the registry (webhooks)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, offset, "undecodable status record skipped (webhooks)");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_with_jitter_below() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            for (attempt, full) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1000),
                (30, 1000),
            ] {
                let d = backoff(base, max, attempt);
                let full = Duration::from_millis(full);
                assert!(d <= full && d >= full / 2, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn recent_ids_are_bounded() {
        let mut r = Recent::default();
        for i in 0..RECENT_IDS + 5 {
            r.insert(i.to_string());
        }
        assert!(!r.contains("0") && !r.contains("4"));
        assert!(r.contains("5") && r.contains(&(RECENT_IDS + 4).to_string()));
        assert_eq!(r.set.len(), RECENT_IDS);
    }
}
