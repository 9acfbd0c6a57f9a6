//! Streaming uploads: the body goes to a temporary file under the blob root
//! while its SHA-256 and size are computed, never held whole in memory; past
//! the size limit the upload stops with 413. The blob then moves to a
//! server-chosen path (`uploads/<artifact id>`): a client's file name is kept
//! for display only and never becomes a path.

use crate::problem::Problem;
use artifact_runtime::blob::BlobStore;
use axum::http::StatusCode;
use bytes_stream::ByteChunks;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

/// Chunks of an upload body.
pub mod bytes_stream {
    use futures::Stream;
    use std::pin::Pin;

    /// A stream of body chunks (or the error that ended it).
    pub type ByteChunks<'a> =
        Pin<Box<dyn Stream<Item = Result<axum::body::Bytes, String>> + Send + 'a>>;
}

/// A blob written to a temporary file, not yet in place.
pub struct Staged {
    /// The temporary file.
    pub path: PathBuf,
    /// Bytes written.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

impl Staged {
    /// Removes the temporary file.
    pub async fn discard(self) {
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

/// The answer to an upload larger than the limit.
pub fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Upload too large",
        format!(
            "the upload is larger than the limit of {limit} bytes (MAX_UPLOAD_BYTES); nothing was stored"
        ),
    )
}

/// Streams `chunks` into a temporary file under the blob root.
pub async fn stage(
    blobs: &BlobStore,
    mut chunks: ByteChunks<'_>,
    limit: u64,
) -> Result<Staged, Problem> {
    use futures::StreamExt;
    let dir = blobs.root().join("tmp");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| Problem::unavailable(format!("blob store not writable: {e}")))?;
    let path = dir.join(uuid::Uuid::new_v4().simple().to_string());
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| Problem::unavailable(format!("blob store not writable: {e}")))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let failed = |path: PathBuf, p: Problem| async move {
        let _ = tokio::fs::remove_file(&path).await;
        p
    };
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return Err(failed(
                    path,
                    Problem::bad_request(format!("upload interrupted: {e}")),
                )
                .await);
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            return Err(failed(path, too_large(limit)).await);
        }
        hasher.update(&chunk);
        if let Err(e) = file.write_all(&chunk).await {
            return Err(failed(
                path,
                Problem::unavailable(format!("blob store write failed: {e}")),
            )
            .await);
        }
    }
    if let Err(e) = file.sync_all().await {
        return Err(failed(
            path,
            Problem::unavailable(format!("blob store write failed: {e}")),
        )
        .await);
    }
    Ok(Staged {
        path,
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Where an artifact's bytes live.
pub fn artifact_location(blobs: &BlobStore, id: artifact_domain::ArtifactId) -> String {
    blobs.location(&format!("uploads/{id}"))
}

/// Moves a staged upload into place. If the place is taken (a retry with the
/// same idempotency key), the bytes must be the same: then the staged copy is
/// dropped; otherwise 409.
pub async fn commit(blobs: &BlobStore, staged: Staged, location: &str) -> Result<(), Problem> {
    let target = blobs
        .resolve(location)
        .map_err(|e| Problem::internal(e.to_string()))?;
    if tokio::fs::try_exists(&target).await.unwrap_or(false) {
        let existing = blobs
            .digest(location)
            .await
            .map_err(|e| Problem::unavailable(e.to_string()))?;
        let same = existing.sha256 == staged.sha256;
        staged.discard().await;
        return if same {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::CONFLICT,
                "Idempotency-Key reused",
                "this Idempotency-Key was already used for different bytes; use a new key for a new artifact",
            ))
        };
    }
    if let Some(dir) = target.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Problem::unavailable(format!("blob store not writable: {e}")))?;
    }
    tokio::fs::rename(&staged.path, &target)
        .await
        .map_err(|e| Problem::unavailable(format!("blob store write failed: {e}")))
}
