//! Multipart uploads: the `file` field of a `multipart/form-data` body,
//! streamed to a staged blob.
//!
//! What such a body may make the server read is bounded whatever the client
//! sends: at most [`ENVELOPE_BYTES`] (plus the chunk that crosses it) before
//! the `file` field's bytes start (preamble, other fields, field headers),
//! then `MAX_UPLOAD_BYTES` and [`ENVELOPE_BYTES`] more. A body that never
//! shows its boundary, or a field header that never ends, is answered 413
//! once it passes that bound, instead of being buffered without end.

use crate::problem::Problem;
use crate::upload::{self, Staged, bytes_stream::BodyError};
use artifact_blob::BlobStore;
use axum::BoxError;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bytes of a multipart body allowed besides the file's own: before its
/// bytes start, and after.
pub const ENVELOPE_BYTES: u64 = 64 * 1024;

/// Whether a `Content-Type` names a multipart form (media types compare
/// case-insensitively, RFC 9110 §8.3.1).
pub fn is_multipart(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// A staged `file` field with what its part declared.
pub struct FileField {
    /// The field's bytes, staged.
    pub staged: Staged,
    /// The part's `Content-Type`.
    pub declared: Option<String>,
    /// The part's file name, for display.
    pub filename: Option<String>,
}

/// Streams the `file` field of a multipart request to a staged blob of at
/// most `limit` bytes; fields before it are skipped, what follows it is not
/// read.
pub async fn stage_file_field(
    blobs: &BlobStore,
    req: Request,
    limit: u64,
) -> Result<FileField, Problem> {
    let budget = Arc::new(Budget::new(ENVELOPE_BYTES));
    let req = req.map(|body| budget.clone().bound(body));
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| Problem::bad_request(format!("not a multipart body: {e}")))?;
    loop {
        let field = form.next_field().await.map_err(|e| {
            if budget.exceeded() {
                envelope_too_large(limit)
            } else {
                Problem::bad_request(format!("bad multipart body: {e}"))
            }
        })?;
        let Some(field) = field else {
            return Err(Problem::bad_request("multipart body has no `file` field"));
        };
        if field.name() != Some("file") {
            continue;
        }
        let filename = field.file_name().map(str::to_owned);
        let declared = field.content_type().map(str::to_owned);
        budget.allow_more(limit.saturating_add(ENVELOPE_BYTES));
        let chunks = field
            .map(|c| {
                c.map_err(|e| {
                    if budget.exceeded() {
                        BodyError::TooLarge
                    } else {
                        BodyError::Interrupted(e.to_string())
                    }
                })
            })
            .boxed();
        let staged = upload::stage(blobs, chunks, limit).await?;
        return Ok(FileField {
            staged,
            declared,
            filename,
        });
    }
}

/// The answer to a multipart body whose file does not start in time.
fn envelope_too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Upload too large",
        format!(
            "the multipart body's `file` field did not start within its first {ENVELOPE_BYTES} bytes \
             (a boundary missing, a field header without end, or other fields that large); \
             send the `file` field's bytes, of at most {limit} bytes (MAX_UPLOAD_BYTES), early; nothing was stored"
        ),
    )
}

/// What a body may make the server read, and what it has read.
#[derive(Debug)]
struct Budget {
    read: AtomicU64,
    allowed: AtomicU64,
    exceeded: AtomicBool,
}

/// The error a body ends with once past its budget.
#[derive(Debug, thiserror::Error)]
#[error("the multipart body is larger than MAX_UPLOAD_BYTES allows")]
struct OverBudget;

impl Budget {
    fn new(allowed: u64) -> Self {
        Budget {
            read: AtomicU64::new(0),
            allowed: AtomicU64::new(allowed),
            exceeded: AtomicBool::new(false),
        }
    }

    /// Allows `more` bytes past those read so far.
    fn allow_more(&self, more: u64) {
        let read = self.read.load(Ordering::Relaxed);
        self.allowed
            .store(read.saturating_add(more), Ordering::Relaxed);
    }

    /// Whether the body ended for being past its budget.
    fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    /// `body`, ending with an error when a chunk is asked for once the
    /// budget is spent. The chunk that crosses the budget is passed on: a
    /// chunk holding field headers and the file's first bytes is no reason
    /// to refuse.
    fn bound(self: Arc<Self>, body: Body) -> Body {
        let chunks = body.into_data_stream();
        let bounded = futures::stream::unfold(Some((chunks, self)), |state| async move {
            let (mut chunks, budget) = state?;
            if budget.read.load(Ordering::Relaxed) >= budget.allowed.load(Ordering::Relaxed) {
                budget.exceeded.store(true, Ordering::Relaxed);
                return Some((Err(BoxError::from(OverBudget)), None));
            }
            match chunks.next().await? {
                Ok(chunk) => {
                    budget.read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    Some((Ok(chunk), Some((chunks, budget))))
                }
                Err(e) => Some((Err(BoxError::from(e)), None)),
            }
        });
        Body::from_stream(bounded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_media_types_match_in_any_case() {
        assert!(is_multipart("multipart/form-data; boundary=x"));
        assert!(is_multipart("Multipart/Form-Data; boundary=x"));
        assert!(is_multipart(" MULTIPART/FORM-DATA"));
        assert!(!is_multipart("multipart/mixed; boundary=x"));
        assert!(!is_multipart("text/plain; note=multipart/form-data"));
        assert!(!is_multipart("application/octet-stream"));
    }
}
