//! artifact-api under abuse, as its own process on the real stack (no
//! stage runs: uploads are published, nothing processes them).
//!
//! * Racing uploads with one Idempotency-Key and different bytes give one
//!   artifact, on the file store and on S3 (S3Proxy): exactly one 202.
//! * A soak on loopback: connections that stall in their headers or in an
//!   authorised upload's body, parallel reads of a large text, well-behaved
//!   uploads and `/healthz` polls. The API's peak RSS stays under a bound,
//!   `/healthz` keeps answering, the uploads complete, and every stalled
//!   connection is closed within its timeout.
//!
//! The soak's size comes from the environment: `SOAK_CONNECTIONS` (200),
//! `SOAK_TEXT_MIB` (64), `SOAK_TEXT_READERS` (8), `SOAK_ROUNDS` (2),
//! `SOAK_RSS_BOUND_MIB` (256). The long run:
//! `SOAK_CONNECTIONS=400 SOAK_TEXT_READERS=32 SOAK_ROUNDS=10 cargo test -p
//! artifact-pipeline-tests --test api_abuse the_api_stays_bounded -- --nocapture`.

use artifact_domain::{ArtifactContext, ArtifactId, ArtifactState, Generation, StatusView};
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::pipeline::Pipeline;
use artifact_pipeline_tests::wait_until;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

fn bin_dir() -> &'static Path {
    Path::new(BIN_DIR_OF).parent().unwrap()
}

/// The other token [`Pipeline`] configures, for the abusive connections: the
/// well-behaved traffic's token keeps its own rate.
const ABUSER_TOKEN: &str = "other-token";

async fn race(s3: bool) -> anyhow::Result<()> {
    let p = Pipeline::start_api_only(bin_dir(), s3, &[]).await?;
    for round in 0..8 {
        let key = format!("race-{round}-{}", uuid::Uuid::new_v4().simple());
        let bodies: Vec<Vec<u8>> = (0..4)
            .map(|i| format!("writer {i} of round {round}").into_bytes())
            .collect();
        let uploads = bodies
            .iter()
            .map(|b| p.upload_raw(b.clone(), "text/plain", "race.txt", Some(&key)));
        let mut accepted = Vec::new();
        let mut conflicts = 0;
        for resp in futures::future::join_all(uploads).await {
            let resp = resp?;
            match resp.status().as_u16() {
                202 => accepted.push(resp.json::<serde_json::Value>().await?),
                409 => conflicts += 1,
                s => anyhow::bail!("round {round}: {s}: {}", resp.text().await?),
            }
        }
        assert_eq!((accepted.len(), conflicts), (1, 3), "round {round}");
        // The bytes in place are the winner's.
        let id = accepted[0]["artifact_id"].as_str().unwrap();
        let stored = match &p.s3 {
            Some(s3) => {
                let location = s3.store.location(&format!("uploads/{id}"));
                s3.store.read_all(&location, 1 << 20).await?
            }
            None => std::fs::read(p.blobs.join("uploads").join(id))?,
        };
        assert_eq!(
            accepted[0]["sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(&stored)),
            "round {round}"
        );
        assert!(bodies.contains(&stored));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_uploads_with_one_key_give_one_artifact_on_the_file_store() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    race(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_uploads_with_one_key_give_one_artifact_on_s3() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    race(true).await
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The header and body timeouts of the soak, in milliseconds.
const SOAK_TIMEOUT_MS: u64 = 2_000;

/// Longest a stalled connection may stay open: its timeout, the server's
/// linger after it, and slack for a busy machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(2 + 5 + 20);

/// A completed artifact whose extracted text of `mib` MiB is in the store.
async fn large_text(p: &Pipeline, mib: u64) -> anyhow::Result<(ArtifactId, u64)> {
    let id = ArtifactId::new_random();
    let path = p.blobs.join(format!("texts/{id}.txt"));
    std::fs::create_dir_all(path.parent().unwrap())?;
    let line = b"A long extracted text, read in parallel while connections stall.\n";
    let mut text = Vec::with_capacity((mib << 20) as usize);
    while (text.len() as u64) < mib << 20 {
        text.extend_from_slice(line);
    }
    std::fs::write(&path, &text)?;
    let view = StatusView {
        artifact_id: id,
        generation: Generation::FIRST,
        state: ArtifactState::Completed,
        current_stage: None,
        failed_stage: None,
        failure_reason: None,
        context: ArtifactContext {
            storage_location: format!("file://{}", p.blobs.join("uploads/x").display()),
            text_location: Some(format!("file://{}", path.display())),
            ..ArtifactContext::default()
        },
        page_count: None,
        word_count: None,
        summary: None,
        summary_method: None,
        timeline: Vec::new(),
        created_at: Some(1),
        updated_at: 2,
        cancelled_at: None,
        next_retry_at: None,
        dead_letters: Vec::new(),
        history: Vec::new(),
    };
    let topic = p.env.names.status();
    let payload = p
        .env
        .codec
        .encode(&topic, EventSchema::ArtifactStatus, &view)
        .await?;
    p.env.produce_raw(&topic, &id.to_string(), &payload).await?;
    wait_until(
        "the text's artifact in the read model",
        Duration::from_secs(30),
        || async { p.status(&id.to_string()).await.is_some() },
    )
    .await?;
    Ok((id, text.len() as u64))
}

/// A connection that sends `head` and `body` bytes of its body, then
/// stalls; returns how long the server took to close it, and its answer.
async fn stall(addr: String, head: String, body: usize) -> anyhow::Result<(Duration, String)> {
    let mut conn = tokio::net::TcpStream::connect(&addr).await?;
    conn.write_all(head.as_bytes()).await?;
    let chunk = vec![b's'; 64 * 1024];
    let mut sent = 0;
    while sent < body {
        if conn.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CLOSED_WITHIN, conn.read_to_end(&mut answer)).await;
    anyhow::ensure!(
        read.is_ok(),
        "a stalled connection still open after {CLOSED_WITHIN:?}"
    );
    Ok((
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    ))
}

/// Reads the text `rounds` times, checking its length.
async fn read_text(p: &Pipeline, id: ArtifactId, size: u64, rounds: u64) -> anyhow::Result<()> {
    for _ in 0..rounds {
        let resp = p
            .http
            .get(p.url(&format!("/v1/artifacts/{id}/text")))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "text answered {}", resp.status());
        let mut resp = resp;
        let mut total = 0u64;
        while let Some(c) = resp.chunk().await? {
            total += c.len() as u64;
        }
        anyhow::ensure!(total == size, "read {total} of {size} bytes");
    }
    Ok(())
}

/// Uploads `body` as a well-behaved client does: while the API answers 503
/// or 429 (its upload slots taken by stalled connections, or the rate
/// spent), waits the `Retry-After` it names and sends again with the same
/// `Idempotency-Key`, for at most a minute.
async fn upload_as_a_client_should(p: &Pipeline, body: Vec<u8>) -> anyhow::Result<String> {
    let key = uuid::Uuid::new_v4().simple().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let resp = p
            .upload_raw(body.clone(), "text/plain", "ok.txt", Some(&key))
            .await?;
        if !matches!(resp.status().as_u16(), 429 | 503) {
            return Pipeline::accepted_id(resp).await;
        }
        let wait: u64 = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{} without Retry-After", resp.status()))?;
        anyhow::ensure!(
            std::time::Instant::now() + Duration::from_secs(wait) < deadline,
            "the upload still refused after a minute: {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_stays_bounded_under_stalled_connections_and_large_reads() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let connections = setting("SOAK_CONNECTIONS", 200) as usize;
    let (text_mib, readers) = (
        setting("SOAK_TEXT_MIB", 64),
        setting("SOAK_TEXT_READERS", 8),
    );
    let rounds = setting("SOAK_ROUNDS", 2);
    let bound = setting("SOAK_RSS_BOUND_MIB", 256) << 20;
    let timeouts = SOAK_TIMEOUT_MS.to_string();
    let settings = [
        ("API_HEADER_TIMEOUT_MS", timeouts.clone()),
        ("API_BODY_IDLE_TIMEOUT_MS", timeouts),
    ];
    let p = Pipeline::start_api_only(bin_dir(), false, &settings).await?;
    let (id, size) = large_text(&p, text_mib).await?;
    let addr = p.api_url.trim_start_matches("http://").to_owned();

    // Half stall in their headers, half after 1 MiB of a 2 MiB upload.
    let partial = format!(
        "POST /v1/artifacts HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ABUSER_TOKEN}\r\nContent-"
    );
    let body_head = format!(
        "POST /v1/artifacts?filename=s.txt HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ABUSER_TOKEN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    );
    let stalled: Vec<_> = (0..connections)
        .map(|i| {
            let (head, body) = if i % 2 == 0 {
                (partial.clone(), 0)
            } else {
                (body_head.clone(), 1 << 20)
            };
            tokio::spawn(stall(addr.clone(), head, body))
        })
        .collect();

    let p = &p;
    let reads = (0..readers).map(|_| read_text(p, id, size, rounds));
    let uploads = (0..5).map(|i| {
        let body = format!("Upload {i} arrives while others stall. It completes.").into_bytes();
        async move { upload_as_a_client_should(p, body).await }
    });
    let polling = async {
        let mut polls = 0;
        let done = async {
            let (r, u) = futures::join!(
                futures::future::join_all(reads),
                futures::future::join_all(uploads)
            );
            (r, u)
        };
        tokio::pin!(done);
        loop {
            tokio::select! {
                out = &mut done => return (out, polls),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    let ok = p.http.get(p.url("/healthz")).timeout(Duration::from_secs(5)).send().await
                        .is_ok_and(|r| r.status() == 200);
                    assert!(ok, "/healthz did not answer");
                    polls += 1;
                }
            }
        }
    };
    let ((read_results, upload_results), polls) = polling.await;
    for r in read_results {
        r?;
    }
    for u in upload_results {
        u?;
    }
    let mut answered = 0;
    for s in stalled {
        let (_, answer) = s.await??;
        answered += usize::from(!answer.is_empty());
    }
    let api = p.api.as_ref().expect("the API runs");
    let peak = api.peak_rss_bytes().expect("the API's peak RSS");
    println!(
        "soak: {connections} stalled connections ({answered} answered before closing), {readers} readers x {rounds} of a {text_mib} MiB text, {polls} /healthz polls; API peak RSS {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak < bound,
        "the API's peak RSS {} MiB is over {} MiB",
        peak >> 20,
        bound >> 20
    );
    Ok(())
}
