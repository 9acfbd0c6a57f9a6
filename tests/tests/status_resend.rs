//! A status snapshot the broker does not take is written again. While the
//! status topic refuses records (`max.message.bytes` below any snapshot's
//! size) an upload goes through every stage, but none of its snapshots is
//! delivered and the API does not know the artifact. Once the topic takes
//! records again, the projector's next write of the artifact's current
//! snapshot succeeds and the API shows it completed, with its summary,
//! although no further event of the artifact arrives.

use artifact_domain::{ArtifactState, Stage};
use artifact_pipeline_tests::pipeline::Pipeline;
use artifact_pipeline_tests::wait_until;
use rdkafka::Message;
use std::path::Path;
use std::time::Duration;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");
const FAILURES: &str = "artifact_api_status_snapshot_failures_total";
/// Completed artifacts the projector folded (a histogram sample each).
const FOLDED_COMPLETIONS: &str = "artifact_pipeline_end_to_end_seconds_count";

#[tokio::test(flavor = "multi_thread")]
async fn an_undelivered_status_snapshot_is_written_again() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let p = Pipeline::start(Path::new(BIN_DIR_OF).parent().unwrap()).await?;
    let api = p.api.as_ref().expect("the API runs");
    let status = p.env.names.status();
    p.env
        .set_topic_configs(&status, &[("max.message.bytes", "64")])
        .await?;

    let body = b"Snapshots the broker refuses are written again. The read model catches up.";
    let id = Pipeline::accepted_id(
        p.upload_raw(body.to_vec(), "text/plain", "resend.txt", None)
            .await?,
    )
    .await?;
    let summarized = p.env.names.output(Stage::Summarizer);
    wait_until(
        "the summary written by the summarizer",
        Duration::from_secs(120),
        || async {
            p.env.read_all(&summarized).is_ok_and(|ms| {
                ms.iter()
                    .any(|m| m.key() == Some(id.as_bytes()) && m.payload().is_some())
            })
        },
    )
    .await?;
    wait_until(
        "the projector folded the completion",
        Duration::from_secs(60),
        || async { api.metric(FOLDED_COMPLETIONS, &[]).await >= 1.0 },
    )
    .await?;
    // One artifact has at most five snapshots of its own (one per event):
    // six more failures after the completion was folded mean the completed
    // snapshot itself failed, and that failures are followed by new writes.
    let folded = api.metric(FAILURES, &[]).await;
    wait_until(
        "six more undelivered snapshots",
        Duration::from_secs(60),
        || async { api.metric(FAILURES, &[]).await >= folded + 6.0 },
    )
    .await?;
    assert!(
        p.status(&id).await.is_none(),
        "no snapshot of {id} reached the status topic while it refused records"
    );

    p.env.set_topic_configs(&status, &[]).await?;
    let v = p.wait_final(&id, 1).await?;
    assert_eq!(v.state, ArtifactState::Completed, "{v:?}");
    assert!(v.summary.as_deref().is_some_and(|s| !s.is_empty()), "{v:?}");
    Ok(())
}
