//! Streaming uploads: the body goes to a temporary blob under the store's
//! root (`tmp/<uuid>`; on S3 a multipart upload of bounded parts) while its
//! SHA-256 and size are computed, never held whole in memory; past the size
//! limit the upload stops with 413 and the temporary blob is removed. The blob
//! then moves to a server-chosen location (`uploads/<artifact id>`): a
//! client's file name is kept for display only and never becomes a path.

use crate::problem::Problem;
use artifact_runtime::blob::{BlobError, BlobStore};
use axum::http::StatusCode;
use bytes_stream::ByteChunks;
use sha2::{Digest, Sha256};

/// Chunks of an upload body.
pub mod bytes_stream {
    use futures::Stream;
    use std::pin::Pin;

    /// A stream of body chunks (or the error that ended it).
    pub type ByteChunks<'a> =
        Pin<Box<dyn Stream<Item = Result<axum::body::Bytes, String>> + Send + 'a>>;
}

/// A blob written to a temporary location, not yet in place.
pub struct Staged {
    /// The temporary location.
    pub location: String,
    /// Bytes written.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

impl Staged {
    /// Removes the temporary blob (best effort).
    pub async fn discard(self, blobs: &BlobStore) {
        if let Err(e) = blobs.delete(&self.location).await {
            tracing::warn!(location = %self.location, error = %e, "could not remove a staged upload");
        }
    }
}

fn unavailable(what: &str, e: BlobError) -> Problem {
    Problem::unavailable(format!("{what}: {e}"))
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

/// Streams `chunks` into a temporary blob under the store's root.
pub async fn stage(
    blobs: &BlobStore,
    mut chunks: ByteChunks<'_>,
    limit: u64,
) -> Result<Staged, Problem> {
    use futures::StreamExt;
    let mut writer = blobs
        .begin_staging()
        .await
        .map_err(|e| unavailable("blob store not writable", e))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                writer.abort().await;
                return Err(Problem::bad_request(format!("upload interrupted: {e}")));
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            writer.abort().await;
            return Err(too_large(limit));
        }
        hasher.update(&chunk);
        // A failed write leaves the writer unusable; abort removes what it
        // wrote (the error is already the answer).
        if let Err(e) = writer.write(chunk).await {
            writer.abort().await;
            return Err(unavailable("blob store write failed", e));
        }
    }
    let location = writer
        .finish()
        .await
        .map_err(|e| unavailable("blob store write failed", e))?;
    Ok(Staged {
        location,
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
/// dropped; otherwise 409. Either way no staged blob is left behind.
pub async fn commit(blobs: &BlobStore, staged: Staged, location: &str) -> Result<(), Problem> {
    let moved = match blobs.move_if_absent(&staged.location, location).await {
        Ok(moved) => moved,
        Err(e) => {
            staged.discard(blobs).await;
            return Err(unavailable("blob store write failed", e));
        }
    };
    if moved {
        return Ok(());
    }
    let existing = blobs.digest(location).await;
    let sha256 = staged.sha256.clone();
    staged.discard(blobs).await;
    let existing = existing.map_err(|e| unavailable("blob store not readable", e))?;
    if existing.sha256 == sha256 {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::CONFLICT,
            "Idempotency-Key reused",
            "this Idempotency-Key was already used for different bytes; use a new key for a new artifact",
        ))
    }
}
