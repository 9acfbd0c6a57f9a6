//! Kafka client construction. Every producer uses the `murmur2_random`
//! partitioner, so a key lands on the partition Java and Python clients pick
//! for it; every client gets the configured extra properties (SASL/TLS).

use crate::config::ConnectionConfig;
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::ConsumerContext;

/// A Kafka operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The client could not be built (a bad property, usually).
    #[error(
        "cannot create the Kafka client: {0}. Check KAFKA_PROPERTIES and KAFKA_BOOTSTRAP_SERVERS"
    )]
    Client(#[source] rdkafka::error::KafkaError),
    /// The broker did not answer.
    #[error(
        "Kafka at {servers} did not answer: {source}. Is the broker running (deploy/local/stack status)?"
    )]
    Unreachable {
        /// Bootstrap servers tried.
        servers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// An admin request failed.
    #[error("Kafka admin request failed: {0}")]
    Admin(#[source] rdkafka::error::KafkaError),
}

impl KafkaError {
    /// Maps a client error to [`KafkaError::Unreachable`] for these servers.
    pub fn unreachable(
        servers: &str,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaError + '_ {
        move |source| KafkaError::Unreachable {
            servers: servers.to_owned(),
            source,
        }
    }
}

/// A client context for readers that read to the end of partitions
/// (`enable.partition.eof`): reaching the end is their goal, not an error
/// worth a log line. Other errors are logged.
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(
            error,
            rdkafka::error::KafkaError::PartitionEOF(_)
                | rdkafka::error::KafkaError::Global(
                    rdkafka::types::RDKafkaErrorCode::PartitionEOF
                )
        );
        if !eof {
            tracing::error!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// A record header's value as UTF-8 text.
pub fn header<'a>(msg: &'a rdkafka::message::OwnedMessage, name: &str) -> Option<&'a str> {
    use rdkafka::message::{Headers, Message};
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// `fetch.queue.backoff.ms` for consumers that read a backlog: librdkafka
/// stops fetching a partition whose local queue passed its thresholds
/// (`queued.min.messages`, `queued.max.messages.kbytes`) and by default
/// waits 1 000 ms before fetching it again, although the queue drains in a
/// fraction of that; a consumer catching up (a stage after downtime, a
/// dedup restore, the API re-reading its topics) then idled for most of
/// every second.
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Base client config: bootstrap servers, client id, extra properties.
pub fn client_config(conn: &ConnectionConfig, client_id: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &conn.kafka_bootstrap_servers)
        .set("client.id", client_id);
    for (k, v) in &conn.kafka_properties.0 {
        cfg.set(k, v);
    }
    cfg
}

/// Client properties the pipeline's delivery guarantees rest on, with the
/// values KAFKA_PROPERTIES may give them (none: it may not set it). Every
/// producer writes with `acks=all` and idempotence, every consumer reads
/// only committed records and commits its offsets itself, and each stage
/// derives its own transactional id.
pub const GUARANTEED_PROPERTIES: &[(&str, &[&str])] = &[
    ("acks", &["all", "-1"]),
    ("enable.idempotence", &["true"]),
    ("isolation.level", &["read_committed"]),
    ("enable.auto.commit", &["false"]),
    ("transactional.id", &[]),
];

/// The values `key` may be given by KAFKA_PROPERTIES, if the pipeline
/// sets it itself ([`GUARANTEED_PROPERTIES`]); `None` for any other key.
pub fn guaranteed_property(key: &str) -> Option<&'static [&'static str]> {
    GUARANTEED_PROPERTIES
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, allowed)| *allowed)
}

/// Consumer config of a member of `group`: reads only committed records
/// (`isolation.level=read_committed`: never the records of an aborted or
/// still open transaction) and commits its offsets itself
/// (`enable.auto.commit=false`).
pub fn consumer_config(conn: &ConnectionConfig, client_id: &str, group: &str) -> ClientConfig {
    let mut cfg = client_config(conn, client_id);
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    cfg
}

/// Producer config: idempotent, `acks=all`, `murmur2_random` partitioner.
pub fn producer_config(conn: &ConnectionConfig, client_id: &str) -> ClientConfig {
    let mut cfg = client_config(conn, client_id);
    cfg.set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all");
    cfg
}

/// Makes a consumer that follows topics written a record at a time (the
/// status topic, the event topics as the API sees them) let each fetch
/// wait up to 10 ms for 64 KiB to gather, instead of the broker answering
/// at every record: a fetch costs the broker a pass over every partition in
/// the consumer's session, and these followers fetched hundreds of times a
/// second at modest loads.
pub fn gather_fetches(cfg: &mut ClientConfig) -> &mut ClientConfig {
    cfg.set("fetch.min.bytes", "65536")
        .set("fetch.wait.max.ms", "10")
}

/// Config for a producer that streams records continuously and needs their
/// order per partition but not the broker's de-duplication of retries: one
/// request in flight per connection, `acks=all`, no idempotence.
///
/// librdkafka (2.12) caps an idempotent producer's in-flight *messages* per
/// partition at 5, the broker's window of *requests*. A continuous stream
/// therefore has a single request in flight per partition, and while it
/// waits for that response with records queued past `linger.ms`, the
/// producer's broker thread polls its socket with a zero timeout, over and
/// over. With one request in flight per connection the thread sleeps until
/// the response instead. A retry can still write a record twice, right after
/// itself: use this only where a duplicate is harmless.
pub fn ordered_producer_config(conn: &ConnectionConfig, client_id: &str) -> ClientConfig {
    let mut cfg = producer_config(conn, client_id);
    cfg.set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1");
    cfg
}

/// An admin client.
pub fn admin_client(
    conn: &ConnectionConfig,
) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    client_config(conn, "artifact-admin")
        .create()
        .map_err(KafkaError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_partition_like_java_clients() {
        let conn = ConnectionConfig::local("t");
        let cfg = producer_config(&conn, "p");
        assert_eq!(cfg.get("partitioner"), Some("murmur2_random"));
        assert_eq!(cfg.get("enable.idempotence"), Some("true"));
        assert_eq!(cfg.get("acks"), Some("all"));
    }

    #[test]
    fn gathering_followers_let_a_fetch_wait_for_data() {
        let conn = ConnectionConfig::local("t");
        let mut cfg = client_config(&conn, "f");
        gather_fetches(&mut cfg);
        assert_eq!(cfg.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(cfg.get("fetch.wait.max.ms"), Some("10"));
    }

    #[test]
    fn ordered_producers_keep_one_request_in_flight() {
        let conn = ConnectionConfig::local("t");
        let cfg = ordered_producer_config(&conn, "p");
        assert_eq!(cfg.get("enable.idempotence"), Some("false"));
        assert_eq!(cfg.get("max.in.flight.requests.per.connection"), Some("1"));
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("partitioner"), Some("murmur2_random"));
    }

    #[test]
    fn consumers_read_committed_records_and_commit_themselves() {
        let mut conn = ConnectionConfig::local("t");
        conn.kafka_properties
            .0
            .push(("isolation.level".into(), "read_committed".into()));
        let cfg = consumer_config(&conn, "c", "g");
        assert_eq!(cfg.get("isolation.level"), Some("read_committed"));
        assert_eq!(cfg.get("enable.auto.commit"), Some("false"));
        assert_eq!(cfg.get("group.id"), Some("g"));
    }

    /// Each builder's own settings are the values the guarantees need, and
    /// KAFKA_PROPERTIES may not change them (`ConnectionConfig::validate`).
    #[test]
    fn builders_set_what_the_guarantees_need() {
        let conn = ConnectionConfig::local("t");
        let producer = producer_config(&conn, "p");
        let ordered = ordered_producer_config(&conn, "p");
        let consumer = consumer_config(&conn, "c", "g");
        for (key, allowed) in GUARANTEED_PROPERTIES {
            for (what, cfg) in [
                ("producer", &producer),
                ("ordered producer", &ordered),
                ("consumer", &consumer),
            ] {
                let Some(v) = cfg.get(key) else { continue };
                // The ordered producer alone trades idempotence for one
                // request in flight (see ordered_producer_config).
                if what == "ordered producer" && *key == "enable.idempotence" {
                    assert_eq!(cfg.get("max.in.flight.requests.per.connection"), Some("1"));
                    continue;
                }
                assert!(allowed.contains(&v), "{what} sets {key}={v}");
            }
        }
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(ordered.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        assert_eq!(guaranteed_property("transactional.id"), Some(&[][..]));
        assert_eq!(guaranteed_property("security.protocol"), None);
    }

    #[test]
    fn extra_properties_reach_every_client() {
        let mut conn = ConnectionConfig::local("t");
        conn.kafka_properties
            .0
            .push(("security.protocol".into(), "SSL".into()));
        assert_eq!(
            client_config(&conn, "c").get("security.protocol"),
            Some("SSL")
        );
        assert_eq!(
            producer_config(&conn, "c").get("security.protocol"),
            Some("SSL")
        );
    }
}
