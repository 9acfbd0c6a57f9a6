//! artifactctl's uploads and reprocess on the real stack, the API and the
//! stages as processes of their own:
//! - files of a few MB stream from disk and arrive byte for byte (the
//!   SHA-256 the API measured is the file's), several at once with
//!   `--parallel`; one file over the API's limit fails alone, and the exit
//!   code says so;
//! - `upload --wait --output json` prints each artifact's final status
//!   (what the Helm test checks), and `reprocess --output json` prints the
//!   API's answer or the operation's final progress.

use artifact_pipeline_tests::pipeline::Pipeline;
use artifact_pipeline_tests::wait_until;
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");
/// The API's upload limit in these tests: above the "few MB" files.
const LIMIT: u64 = 6 << 20;

/// A file of `len` random bytes in `dir`, and its SHA-256.
fn random_file(dir: &Path, name: &str, len: usize) -> anyhow::Result<(PathBuf, String)> {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, &bytes)?;
    Ok((path, hex::encode(Sha256::digest(&bytes))))
}

fn json(out: &std::process::Output) -> anyhow::Result<Value> {
    serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn files_stream_in_parallel_byte_for_byte_and_one_too_large_fails_alone() -> anyhow::Result<()>
{
    artifact_pipeline_tests::needs_stack!();
    let p = Pipeline::start_api_only(
        Path::new(BIN_DIR_OF).parent().unwrap(),
        false,
        &[("MAX_UPLOAD_BYTES", LIMIT.to_string())],
    )
    .await?;
    let dir = p.blobs.join("to-upload");
    std::fs::create_dir_all(&dir)?;
    let mut good = Vec::new();
    for (i, mb) in [5usize, 3, 4].into_iter().enumerate() {
        good.push(random_file(&dir, &format!("good-{i}.bin"), (mb << 20) + i)?);
    }
    let (too_large, _) = random_file(&dir, "too-large.bin", (LIMIT as usize) + (1 << 20))?;

    let mut args: Vec<String> = vec!["upload".into(), "--parallel".into(), "3".into()];
    args.extend(good.iter().map(|(f, _)| f.display().to_string()));
    args.insert(5, too_large.display().to_string());
    args.extend(["--output".into(), "json".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.artifactctl(&args)?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc = json(&out)?;
    let files = doc.as_array().expect("an array");
    assert_eq!(files.len(), 4, "{doc}");
    // In the order given, the bad one third.
    let bad = &files[2];
    assert_eq!(bad["file"], too_large.display().to_string());
    assert!(bad["artifact_id"].is_null(), "{bad}");
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(error.contains("413"), "{error}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 of 4 uploads failed"), "{stderr}");

    let uploaded: Vec<&Value> = files.iter().filter(|f| f["error"].is_null()).collect();
    assert_eq!(uploaded.len(), 3);
    for ((path, sha), f) in good.iter().zip(uploaded) {
        assert_eq!(f["file"], path.display().to_string());
        let id = f["artifact_id"].as_str().expect("an id").to_owned();
        wait_until(
            "the upload in the read model",
            Duration::from_secs(60),
            || {
                let p = &p;
                let id = id.clone();
                async move { p.status(&id).await.is_some() }
            },
        )
        .await?;
        let v = p.status(&id).await.expect("status");
        assert_eq!(v.context.sha256.as_deref(), Some(sha.as_str()), "{path:?}");
        assert_eq!(
            v.context.size_bytes,
            Some(std::fs::metadata(path)?.len() as i64)
        );
    }

    // Only good files: exit 0, a line each.
    let out = p.artifactctl(&[
        "upload",
        &good[0].0.display().to_string(),
        &good[1].0.display().to_string(),
    ])?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout)?;
    let ids: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("uploaded "))
        .filter_map(|l| l.split(" as ").nth(1)?.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2, "{stdout}");
    for id in &ids {
        wait_until(
            "the upload in the read model",
            Duration::from_secs(60),
            || {
                let p = &p;
                async move { p.status(id).await.is_some() }
            },
        )
        .await?;
    }

    // Reprocess: the dry run's and the operation's answers as JSON.
    let out = p.artifactctl(&[
        "reprocess",
        "--state",
        "PENDING",
        "--dry-run",
        "--output",
        "json",
    ])?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let dry = json(&out)?;
    assert_eq!(dry["selected"].as_u64(), Some(5), "{dry}");
    let first = files[0]["artifact_id"].as_str().unwrap();
    let out = p.artifactctl(&["reprocess", "--id", first, "--output", "json"])?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let op = json(&out)?;
    assert_eq!(op["selected"].as_u64(), Some(1), "{op}");
    assert!(op["operation_id"].as_str().is_some_and(|s| !s.is_empty()));
    // A selector the API calls bad is a usage error.
    let out = p.artifactctl(&["reprocess", "--state", "SIDEWAYS"])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_wait_and_reprocess_wait_print_json() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let p = Pipeline::start(Path::new(BIN_DIR_OF).parent().unwrap()).await?;
    let dir = p.blobs.join("to-upload");
    std::fs::create_dir_all(&dir)?;
    let text = "Kafka transactions make the outputs of every stage atomic. \
        The dedup state skips replayed records. Compacted topics keep the latest state of each artifact.";
    let doc = dir.join("notes.txt");
    std::fs::write(&doc, text)?;

    let out = p.artifactctl(&[
        "upload",
        "--wait",
        "--timeout",
        "120",
        "--output",
        "json",
        &doc.display().to_string(),
    ])?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let files = json(&out)?;
    let status = &files[0]["status"];
    assert_eq!(status["state"], "COMPLETED", "{files}");
    assert!(
        status["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{files}"
    );
    // The progress lines went to stderr, not into the document.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-> Completed"),
        "{out:?}"
    );

    let id = files[0]["artifact_id"].as_str().unwrap();
    let out = p.artifactctl(&[
        "reprocess",
        "--id",
        id,
        "--wait",
        "--timeout",
        "120",
        "--output",
        "json",
    ])?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let op = json(&out)?;
    assert_eq!(op["state"], "FINISHED", "{op}");
    assert_eq!(
        (op["selected"].as_u64(), op["done"].as_u64()),
        (Some(1), Some(1)),
        "{op}"
    );
    let v = p.wait_final(id, 2).await?;
    assert_eq!(v.state, artifact_domain::ArtifactState::Completed);
    Ok(())
}
