//! The stage's Kafka clients: the input consumer (whose context tracks
//! assignments), the retry-topic consumer that follows its assignment, and
//! the transactional producer, ready to use.

use super::commit::TxnGate;
use super::config::Delivery;
use super::context::{Assignment, StageContext};
use super::poison::Markers;
use super::producer::{Deliveries, StageProducer};
use super::{RunnerError, StageRunner};
use crate::retry;
use crate::stage::StageLogic;
use artifact_kafka::client::{FETCH_QUEUE_BACKOFF_MS, consumer_config, producer_config};
use rdkafka::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::Producer;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// The clients of a running stage and the state its consumer's callbacks
/// share with the loop.
pub(crate) struct Clients {
    pub consumer: StreamConsumer<StageContext>,
    pub retry_consumer: Arc<StreamConsumer>,
    pub producer: StageProducer,
    /// Held while a batch's transaction commits; a revocation waits for it.
    pub gate: Arc<TxnGate>,
    pub assignment: Arc<Mutex<Assignment>>,
    /// Where batches in flight are recorded (`None`: POISON_MAX_CRASHES=0).
    pub markers: Option<Arc<Markers>>,
}

fn fatal(e: rdkafka::error::KafkaError) -> RunnerError {
    RunnerError::Fatal(e.to_string())
}

impl<S: StageLogic> StageRunner<S> {
    /// Creates the clients; in exactly-once mode waits until the producer's
    /// transactions are initialized (which fences an earlier instance with
    /// the same transactional id).
    pub(crate) async fn clients(
        &self,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Clients, RunnerError> {
        let instance = self.cfg.instance_id();
        let retry_consumer: Arc<StreamConsumer> = Arc::new(
            self.consumer_config(&format!("{}-{instance}-retry", self.group))
                .create()
                .map_err(fatal)?,
        );
        let assignment = Arc::new(Mutex::new(Assignment::default()));
        let slot = Arc::new(OnceLock::new());
        let _ = slot.set(retry_consumer.clone());
        let gate = Arc::new(TxnGate::default());
        let context = StageContext {
            gate: gate.clone(),
            group: self.group.clone(),
            input_topic: self.names.input(S::STAGE),
            retry_topic: self.names.retry(S::STAGE),
            assignment: assignment.clone(),
            retry_consumer: slot,
            held: std::sync::atomic::AtomicBool::new(false),
        };
        let consumer: StreamConsumer<StageContext> = self
            .consumer_config(&format!("{}-{instance}", self.group))
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("statistics.interval.ms", "5000")
            .create_with_context(context)
            .map_err(fatal)?;
        let producer = self.producer(&instance)?;
        if self.cfg.delivery == Delivery::ExactlyOnce {
            self.init_transactions(&producer, shutdown).await?;
        }
        let markers = match self.cfg.poison_max_crashes {
            0 => None,
            _ => Some(Arc::new(
                Markers::new(&self.conn, self.names.inflight(S::STAGE), instance)
                    .map_err(RunnerError::Fatal)?,
            )),
        };
        Ok(Clients {
            consumer,
            retry_consumer,
            producer,
            gate,
            assignment,
            markers,
        })
    }

    fn consumer_config(&self, client_id: &str) -> ClientConfig {
        let mut c = consumer_config(&self.conn, client_id, &self.group);
        c.set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A crashed instance's partitions move on after 10 s.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "3000")
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval.as_millis().to_string(),
            )
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
        // Operators' KAFKA_PROPERTIES win over these defaults.
        for (k, v) in &self.conn.kafka_properties.0 {
            c.set(k, v);
        }
        c
    }

    fn producer(&self, instance: &str) -> Result<StageProducer, RunnerError> {
        let mut pcfg = producer_config(&self.conn, &format!("{}-{instance}", self.group));
        // A batch's records are all enqueued at once and then waited for,
        // so lingering only delays them (docs/BENCHMARKS.md). A transaction
        // begins right after the previous one committed, and the
        // coordinator answers CONCURRENT_TRANSACTIONS until that one's
        // markers are written (a few ms); librdkafka retries the offsets'
        // registration after `retry.backoff.ms`, 100 ms by default.
        pcfg.set("linger.ms", "0").set("retry.backoff.ms", "10");
        if self.cfg.delivery == Delivery::ExactlyOnce {
            pcfg.set("transactional.id", format!("{}-{instance}", self.group))
                .set("transaction.timeout.ms", "30000");
        }
        // Operators' KAFKA_PROPERTIES win over these defaults.
        for (k, v) in &self.conn.kafka_properties.0 {
            pcfg.set(k, v);
        }
        pcfg.create_with_context(Deliveries::default())
            .map_err(fatal)
    }

    async fn init_transactions(
        &self,
        producer: &StageProducer,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), RunnerError> {
        self.health.set_not_ready("initializing transactions");
        let mut attempt = 1;
        loop {
            let p = producer.clone();
            let res =
                tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)))
                    .await
                    .map_err(|e| RunnerError::Fatal(e.to_string()))?;
            match res {
                Ok(()) => return Ok(()),
                Err(e) if *shutdown.borrow() => return Err(fatal(e)),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "init_transactions failed; retrying");
                    self.health.set_not_ready(format!("Kafka unavailable: {e}"));
                    tokio::time::sleep(retry::jittered(
                        Duration::from_millis(500),
                        Duration::from_secs(10),
                        attempt,
                    ))
                    .await;
                    attempt += 1;
                }
            }
        }
    }
}
