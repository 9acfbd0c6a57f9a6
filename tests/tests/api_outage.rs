//! Outage at upload time: with the Schema Registry down, an upload is
//! stored but cannot be published, and the client gets 503 saying to retry
//! with the same Idempotency-Key; after the registry is back, that retry
//! completes the same artifact. An upload without a key cannot be completed
//! by a retry: its bytes are not kept, and the 503 says to upload again.
//! Runs alone in its binary: it stops the shared registry.

use artifact_domain::ArtifactState;
use artifact_pipeline_tests::pipeline::Pipeline;
use artifact_pipeline_tests::stack;
use std::path::Path;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_publish_is_completed_by_a_retry_with_the_same_key() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let p = Pipeline::start(Path::new(BIN_DIR_OF).parent().unwrap()).await?;
    let body = b"Uploads survive a registry outage. The retry completes them.".to_vec();

    stack("stop-registry");
    let during = p
        .upload_raw(body.clone(), "text/plain", "outage.txt", Some("outage-key"))
        .await;
    let keyless = p
        .upload_raw(body.clone(), "text/plain", "outage.txt", None)
        .await;
    stack("start-registry");
    let (during, keyless) = (during?, keyless?);
    assert_eq!(keyless.status(), 503);
    let problem: serde_json::Value = keyless.json().await?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("retry the upload"),
        "{problem}"
    );
    assert_eq!(during.status(), 503);
    assert_eq!(during.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = during.json().await?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{problem}"
    );
    let stored: Vec<_> = std::fs::read_dir(p.blobs.join("uploads"))?.collect();
    assert_eq!(
        stored.len(),
        1,
        "the keyed upload's bytes were kept for the retry, the keyless one's removed: {stored:?}"
    );

    let id = Pipeline::accepted_id(
        p.upload_raw(body, "text/plain", "outage.txt", Some("outage-key"))
            .await?,
    )
    .await?;
    let v = p.wait_final(&id, 1).await?;
    assert_eq!(v.state, ArtifactState::Completed);
    let stored: Vec<_> = std::fs::read_dir(p.blobs.join("uploads"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(stored, vec![id.clone()], "no orphan, no second copy");
    Ok(())
}
