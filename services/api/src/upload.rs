//! Streaming uploads: the body goes to a temporary blob under the store's
//! root (`tmp/<uuid>`; on S3 a multipart upload of bounded parts) while its
//! SHA-256 and size are computed, never held whole in memory; past the size
//! limit the upload stops with 413 and the temporary blob is removed. The blob
//! then moves to a server-chosen location (`uploads/<artifact id>`): a
//! client's file name is kept for display only and never becomes a path.
//! A staged blob not yet in place is removed whatever ends the upload: an
//! error, or the upload's future dropped (its client went away).

use crate::problem::Problem;
use artifact_blob::{BlobError, BlobStore};
use axum::http::StatusCode;
use bytes_stream::{BodyError, ByteChunks};
use sha2::{Digest, Sha256};

/// Chunks of an upload body.
pub mod bytes_stream {
    use futures::Stream;
    use std::pin::Pin;

    /// Why a body's chunks ended before the body did.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum BodyError {
        /// The body is larger than the upload limit allows.
        #[error("the body is larger than the upload limit")]
        TooLarge,
        /// The connection failed or the body is malformed.
        #[error("{0}")]
        Interrupted(String),
    }

    /// A stream of body chunks (or the error that ended it).
    pub type ByteChunks<'a> =
        Pin<Box<dyn Stream<Item = Result<axum::body::Bytes, BodyError>> + Send + 'a>>;
}

/// A blob written to a temporary location, not yet in place. Dropped before
/// [`commit`] moved it or [`Staged::discard`] removed it, it is removed by a
/// task of its own.
pub struct Staged {
    /// The temporary location.
    pub location: String,
    /// Bytes written.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// The store holding the temporary blob until it is moved or removed;
    /// `None` after.
    pending: Option<BlobStore>,
}

impl Staged {
    /// Removes the temporary blob (best effort).
    pub async fn discard(mut self) {
        if let Some(blobs) = self.pending.take() {
            remove(&blobs, &self.location).await;
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let Some(blobs) = self.pending.take() else {
            return;
        };
        let location = std::mem::take(&mut self.location);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { remove(&blobs, &location).await });
            }
            Err(_) => {
                tracing::warn!(%location, "a staged upload dropped outside the runtime is left behind");
            }
        }
    }
}

async fn remove(blobs: &BlobStore, location: &str) {
    if let Err(e) = blobs.delete(location).await {
        tracing::warn!(%location, error = %e, "could not remove a staged upload");
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
            Err(BodyError::TooLarge) => {
                writer.abort().await;
                return Err(too_large(limit));
            }
            Err(BodyError::Interrupted(e)) => {
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
        pending: Some(blobs.clone()),
    })
}

/// Where an artifact's bytes live.
pub fn artifact_location(blobs: &BlobStore, id: artifact_domain::ArtifactId) -> String {
    blobs.location(&format!("uploads/{id}"))
}

/// Moves a staged upload into place. If the place is taken (a retry with the
/// same idempotency key), the bytes must be the same: then the staged copy is
/// dropped; otherwise 409. Either way no staged blob is left behind.
pub async fn commit(blobs: &BlobStore, mut staged: Staged, location: &str) -> Result<(), Problem> {
    let moved = match blobs.move_if_absent(&staged.location, location).await {
        Ok(moved) => moved,
        Err(e) => {
            staged.discard().await;
            return Err(unavailable("blob store write failed", e));
        }
    };
    if moved {
        staged.pending = None;
        return Ok(());
    }
    let existing = blobs.digest(location).await;
    let sha256 = staged.sha256.clone();
    staged.discard().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::{Duration, Instant};

    fn store() -> (BlobStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("staged-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let blobs = BlobStore::from_url(&format!("file://{}", dir.display())).unwrap();
        (blobs, dir)
    }

    async fn staged(blobs: &BlobStore, bytes: &'static [u8]) -> Staged {
        let chunks = futures::stream::iter([Ok(axum::body::Bytes::from_static(bytes))]).boxed();
        stage(blobs, chunks, 1024).await.unwrap()
    }

    #[tokio::test]
    async fn a_staged_upload_dropped_before_its_commit_is_removed() {
        let (blobs, dir) = store();
        let s = staged(&blobs, b"the client went away").await;
        let location = s.location.clone();
        assert!(blobs.exists(&location).await.unwrap());
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(10);
        while blobs.exists(&location).await.unwrap() {
            assert!(
                Instant::now() < deadline,
                "a dropped staged upload is left behind"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Committed, it stays where it was moved.
        let s = staged(&blobs, b"kept").await;
        let target = artifact_location(&blobs, artifact_domain::ArtifactId::new_random());
        commit(&blobs, s, &target).await.unwrap();
        assert_eq!(blobs.read_all(&target, 100).await.unwrap(), b"kept");
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_body_past_its_limit_is_refused_and_leaves_nothing() {
        let (blobs, dir) = store();
        let chunks = futures::stream::iter([
            Ok(axum::body::Bytes::from_static(b"first")),
            Err(BodyError::TooLarge),
        ])
        .boxed();
        let p = stage(&blobs, chunks, 1024).await.err().expect("refused");
        assert_eq!(p.status, 413);
        assert!(p.detail.contains("MAX_UPLOAD_BYTES"), "{p:?}");
        let tmp = dir.join("tmp");
        assert!(!tmp.exists() || std::fs::read_dir(tmp).unwrap().count() == 0);
    }
}
