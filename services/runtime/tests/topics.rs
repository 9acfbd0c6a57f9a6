//! Against the real local broker (deploy/local/stack up): topic creation is
//! idempotent and refuses to go on when partition counts differ.

use artifact_runtime::config::ConnectionConfig;
use artifact_runtime::topics::{Cleanup, TopicError, TopicNames, ensure_topics, partition_counts};
use std::time::Duration;

fn conn() -> ConnectionConfig {
    ConnectionConfig::local(&format!("t{}", uuid::Uuid::new_v4().simple()))
}

#[tokio::test]
async fn creates_every_topic_once_then_reports_them_existing() {
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
