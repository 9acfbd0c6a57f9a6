//! Against the real local broker (deploy/local/stack up): topic creation is
//! idempotent, refuses to go on when partition counts, replication factors
//! or min.insync.replicas differ, and sets the catalogue's configuration,
//! under which compacted topics do compact.

use artifact_kafka::client::{admin_client, client_config, producer_config};
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::{
    Cleanup, TopicError, TopicNames, ensure_topics, partition_counts, set_compacted_segment_ms,
};
use rdkafka::admin::{AdminOptions, AlterConfig, ConfigSource, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

fn conn() -> ConnectionConfig {
    ConnectionConfig::local(&format!("t{}", uuid::Uuid::new_v4().simple()))
}

#[tokio::test]
async fn creates_every_topic_once_then_reports_them_existing() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let catalogue = TopicNames::from_config(&conn).catalogue();
    let first = ensure_topics(&conn, &catalogue, 3, 1).await.unwrap();
    assert_eq!(first.created.len(), catalogue.len());
    assert!(first.existing.is_empty());

    let second = ensure_topics(&conn, &catalogue, 3, 1).await.unwrap();
    assert!(second.created.is_empty());
    assert_eq!(second.existing.len(), catalogue.len());

    let names: Vec<String> = catalogue.iter().map(|t| t.name.clone()).collect();
    let counts = partition_counts(&conn, &names, Duration::from_secs(10)).unwrap();
    assert_eq!(counts.len(), catalogue.len());
    assert!(counts.values().all(|n| *n == 3));
}

#[tokio::test]
async fn refuses_when_existing_partition_counts_differ() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let catalogue = TopicNames::from_config(&conn).catalogue();
    // One topic exists already with another partition count.
    ensure_topics(&conn, &catalogue[..1], 2, 1).await.unwrap();
    let err = ensure_topics(&conn, &catalogue, 4, 1).await.unwrap_err();
    match &err {
        TopicError::PartitionMismatch {
            expected,
            mismatches,
        } => {
            assert_eq!(*expected, 4);
            assert_eq!(mismatches, &vec![(catalogue[0].name.clone(), 2)]);
        }
        other => panic!("expected a partition mismatch, got {other:?}"),
    }
    // Nothing else was created.
    let names: Vec<String> = catalogue.iter().map(|t| t.name.clone()).collect();
    let counts = partition_counts(&conn, &names, Duration::from_secs(10)).unwrap();
    assert_eq!(counts.len(), 1);
}

#[tokio::test]
async fn refuses_when_an_existing_topic_has_the_wrong_policy() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let catalogue = TopicNames::from_config(&conn).catalogue();
    let mut wrong = catalogue[0].clone();
    assert_eq!(wrong.cleanup, Cleanup::Compact);
    wrong.cleanup = Cleanup::Delete;
    ensure_topics(&conn, &[wrong], 2, 1).await.unwrap();
    let err = ensure_topics(&conn, &catalogue, 2, 1).await.unwrap_err();
    assert!(matches!(err, TopicError::PolicyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("must be \"compact\""), "{err}");
}

#[tokio::test]
async fn refuses_when_an_existing_topic_has_another_replication_factor() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let catalogue = TopicNames::from_config(&conn).catalogue();
    ensure_topics(&conn, &catalogue[..1], 2, 1).await.unwrap();
    // Checked before anything is created, so a single broker can tell.
    let err = ensure_topics(&conn, &catalogue, 2, 3).await.unwrap_err();
    match &err {
        TopicError::ReplicationMismatch {
            expected,
            mismatches,
        } => {
            assert_eq!(*expected, 3);
            assert_eq!(mismatches, &vec![(catalogue[0].name.clone(), 1)]);
        }
        other => panic!("expected a replication mismatch, got {other:?}"),
    }
    let names: Vec<String> = catalogue.iter().map(|t| t.name.clone()).collect();
    let counts = partition_counts(&conn, &names, Duration::from_secs(10)).unwrap();
    assert_eq!(counts.len(), 1, "nothing else was created");
}

#[tokio::test]
async fn refuses_when_an_existing_topic_has_another_min_insync_replicas() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let catalogue = TopicNames::from_config(&conn).catalogue();
    ensure_topics(&conn, &catalogue[..1], 2, 1).await.unwrap();
    let admin = admin_client(&conn).unwrap();
    // AlterConfigs replaces every override: the creation's are given again.
    let configs = catalogue[0].configs();
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&catalogue[0].name));
    for (k, v) in &configs {
        alter = alter.set(k, v);
    }
    alter = alter.set("min.insync.replicas", "2");
    for r in admin
        .alter_configs(&[alter], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let err = ensure_topics(&conn, &catalogue, 2, 1).await.unwrap_err();
    match &err {
        TopicError::MinInsyncMismatch {
            expected,
            mismatches,
        } => {
            assert_eq!(*expected, 1);
            assert_eq!(
                mismatches,
                &vec![(catalogue[0].name.clone(), "2".to_owned())]
            );
        }
        other => panic!("expected a min.insync.replicas mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn new_topics_get_the_catalogues_configuration() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let catalogue = TopicNames::from_config(&conn).catalogue();
    ensure_topics(&conn, &catalogue, 1, 1).await.unwrap();
    let admin = admin_client(&conn).unwrap();
    let resources: Vec<ResourceSpecifier> = catalogue
        .iter()
        .map(|s| ResourceSpecifier::Topic(&s.name))
        .collect();
    // A topic just created may not be known yet to the broker answering.
    let deadline = Instant::now() + Duration::from_secs(30);
    let described = loop {
        let described = admin
            .describe_configs(&resources, &AdminOptions::new())
            .await
            .unwrap();
        if described.iter().all(Result::is_ok) || Instant::now() > deadline {
            break described;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (spec, res) in catalogue.iter().zip(described) {
        let res = res.unwrap();
        let value = |k: &str| res.get(k).and_then(|e| e.value.clone()).unwrap_or_default();
        assert_eq!(
            value("cleanup.policy"),
            spec.cleanup.policy(),
            "{}",
            spec.name
        );
        match spec.cleanup {
            Cleanup::Compact if spec.name.ends_with(".inflight") => {
                assert_eq!(value("segment.ms"), "60000", "{}", spec.name)
            }
            Cleanup::Compact => assert_eq!(value("segment.ms"), "3600000", "{}", spec.name),
            // The broker's default (log.roll.ms: 7 days).
            Cleanup::Delete => assert_eq!(value("segment.ms"), "604800000", "{}", spec.name),
        }
        // Set on the topic, not left to the broker's default: min(2, 1).
        let insync = res.get("min.insync.replicas").unwrap();
        assert_eq!(insync.value.as_deref(), Some("1"), "{}", spec.name);
        assert_eq!(insync.source, ConfigSource::DynamicTopic, "{}", spec.name);
        // Dead letters and retries for good (processed retries are deleted
        // by the stages); the rest by the broker's default (7 days).
        let retention = if spec.name.ends_with(".dlq") || spec.name.ends_with(".retry") {
            "-1"
        } else {
            "604800000"
        };
        assert_eq!(value("retention.ms"), retention, "{}", spec.name);
    }
}

/// Records of partition 0 of `topic`, from its start to its end now.
fn count_records(conn: &ConnectionConfig, topic: &str) -> usize {
    let consumer: BaseConsumer = client_config(conn, "topics-test-reader")
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    if high <= low {
        return 0;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            n += 1;
            if m.offset() + 1 >= high {
                break;
            }
        }
    }
    n
}

/// A compacted topic created with a short `segment.ms` keeps one record per
/// key once its segment rolled and the cleaner ran: the setting is what
/// bounds what a restore reads. (The catalogue's default is an hour; the
/// broker's log cleaner looks for work every 15 s.)
#[tokio::test]
async fn compacted_topics_keep_the_newest_record_per_key_once_rolled() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let mut catalogue = TopicNames::from_config(&conn).catalogue();
    catalogue.truncate(1);
    assert_eq!(catalogue[0].cleanup, Cleanup::Compact);
    set_compacted_segment_ms(&mut catalogue, 1000);
    ensure_topics(&conn, &catalogue, 1, 1).await.unwrap();
    let topic = catalogue[0].name.clone();
    let producer: FutureProducer = producer_config(&conn, "topics-test").create().unwrap();
    let keys = 5;
    let send = |key: String, value: String| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&value)
                        .partition(0),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    for round in 0..40 {
        for k in 0..keys {
            send(format!("key-{k}"), format!("value-{round}")).await;
        }
    }
    assert_eq!(count_records(&conn, &topic), 40 * keys);
    // Past segment.ms, the next append rolls the segment; the cleaner then
    // compacts the rolled one. Keep appending (one record a second) until
    // the topic holds about one record per key.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n;
    loop {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        send("key-0".into(), "again".into()).await;
        n = count_records(&conn, &topic);
        if n <= 2 * keys || Instant::now() >= deadline {
            break;
        }
    }
    assert!(
        n <= 2 * keys,
        "{n} records left of {} after compaction had two minutes",
        40 * keys
    );
}
