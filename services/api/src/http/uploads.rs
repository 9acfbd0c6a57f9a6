//! `POST /v1/artifacts`: an upload is received (streamed to a staged blob,
//! within its deadline and a free upload slot), then completed in a task of
//! its own: moved into place and published as `ArtifactCreated`.

use crate::http::auth::Writer;
use crate::http::multipart::{self, ENVELOPE_BYTES};
use crate::http::problem::Problem;
use crate::http::upload::{self, Staged, bytes_stream::BodyError};
use crate::http::{Accepted, AppState, PublishError, bad_query};
use crate::metrics::{self, Refusal, UploadOutcome};
use artifact_domain::{ArtifactCreated, ArtifactId, Generation};
use artifact_kafka::now_ms;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use serde::Deserialize;
use tracing::Instrument;

/// Artifact ids derived from idempotency keys live in this UUID namespace.
pub(crate) const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_2a0e_8b7d_4e52_9c3a_51d7_e0b4_a913);

/// Upload query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UploadQuery {
    /// The file name, for display (raw uploads).
    pub filename: Option<String>,
}

/// The artifact id an `Idempotency-Key` names: a UUIDv5 of the key's bytes
/// (any a header may carry, UTF-8 included) trimmed of ASCII whitespace;
/// `None` without a key or with a blank one.
pub fn idempotent_id(headers: &HeaderMap) -> Option<ArtifactId> {
    let key = headers.get("idempotency-key")?.as_bytes().trim_ascii();
    (!key.is_empty())
        .then(|| ArtifactId::from_uuid(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key)))
}

/// Upload an artifact.
///
/// Multipart (field `file`) or a raw body with its `Content-Type` and a
/// `filename` query parameter. Streams to the blob store, then publishes
/// `ArtifactCreated`. With an `Idempotency-Key`, the same key and bytes give
/// the same artifact (a retry after a 503 completes the upload); the same
/// key with other bytes is refused with 409. Without one, an upload that
/// cannot be published is not kept. Needs a bearer token.
#[utoipa::path(
    post,
    path = "/v1/artifacts",
    tag = "artifacts",
    params(UploadQuery, ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The artifact's bytes, or multipart/form-data with a `file` field"),
    responses(
        (status = 202, description = "Stored and published", body = Accepted),
        (status = 400, description = "Bad query, multipart body or declared type"),
        (status = 401, description = "No valid bearer token"),
        (status = 408, description = "The body did not arrive within API_UPLOAD_DEADLINE_MS, or stalled past API_BODY_IDLE_TIMEOUT_MS"),
        (status = 409, description = "Idempotency-Key reused for other bytes"),
        (status = 410, description = "The artifact the Idempotency-Key names was erased"),
        (status = 413, description = "Larger than MAX_UPLOAD_BYTES"),
        (status = 429, description = "Over the token's rate (Retry-After)"),
        (status = 503, description = "Blob store, Kafka or the registry unavailable, or API_MAX_CONCURRENT_UPLOADS uploads in progress (Retry-After); with an Idempotency-Key the bytes are kept and a retry with the same key completes the upload, without one nothing is kept"),
    )
)]
pub async fn upload_artifact(
    State(st): State<AppState>,
    _writer: Writer,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, QueryRejection>,
    req: Request,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let Query(q) = query.map_err(bad_query)?;
    if idempotent_id(&headers).is_some() {
        st.check_restored("an upload with an Idempotency-Key")?;
    }
    let limit = st.limits.max_upload_bytes;
    if declared_length(&headers).is_some_and(|len| len > limit.saturating_add(ENVELOPE_BYTES)) {
        metrics::upload(UploadOutcome::TooLarge);
        return Err(upload::too_large(limit));
    }
    let _slot = st.uploads.take()?;
    let deadline = st.limits.upload_deadline;
    let received = tokio::time::timeout(deadline, receive(&st, &headers, q, req))
        .await
        .unwrap_or_else(|_| {
            metrics::refused(Refusal::Deadline);
            Err(Problem::timeout(format!(
                "the upload did not arrive within API_UPLOAD_DEADLINE_MS ({} ms); nothing was stored",
                deadline.as_millis()
            )))
        });
    let (staged, upload) = received.inspect_err(|p| {
        let outcome = if p.status == 413 {
            UploadOutcome::TooLarge
        } else {
            UploadOutcome::Failed
        };
        metrics::upload(outcome);
    })?;
    // From here on the upload is completed whatever happens to this request:
    // a client going away drops this future, not the completion.
    let accepted = st
        .completions
        .spawn(upload.complete(st.clone(), staged).in_current_span())
        .await
        .map_err(|e| Problem::internal("completing the upload failed").caused_by(e))??;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// The `Content-Length` a request declares, if any.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Streams the body (a multipart form's `file` field, or the raw body) to a
/// staged blob.
async fn receive(
    st: &AppState,
    headers: &HeaderMap,
    q: UploadQuery,
    req: Request,
) -> Result<(Staged, Upload), Problem> {
    let limit = st.limits.max_upload_bytes;
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    let key_id = idempotent_id(headers);
    if let Some(id) = key_id
        && st.controls.is_erased(id)
    {
        return Err(Problem::new(
            StatusCode::GONE,
            "Erased",
            format!(
                "artifact {id}, which this Idempotency-Key names, was erased; upload with another key"
            ),
        ));
    }
    if content_type.is_some_and(multipart::is_multipart) {
        let f = multipart::stage_file_field(&st.blobs, req, limit).await?;
        let upload = Upload {
            key_id,
            declared: f.declared,
            filename: f.filename,
        };
        return Ok((f.staged, upload));
    }
    let declared = upload::declared_type(content_type)?;
    let chunks = req
        .into_body()
        .into_data_stream()
        .map(|c| {
            c.map_err(|e| {
                if crate::http::limits::is_idle_timeout(&e) {
                    BodyError::Idle
                } else {
                    BodyError::Interrupted(e.to_string())
                }
            })
        })
        .boxed();
    let staged = upload::stage(&st.blobs, chunks, limit).await?;
    let upload = Upload {
        key_id,
        declared,
        filename: q.filename,
    };
    Ok((staged, upload))
}

/// A staged upload's request: what its event says besides the bytes.
struct Upload {
    /// The id its Idempotency-Key names, if it has one.
    key_id: Option<ArtifactId>,
    declared: Option<String>,
    filename: Option<String>,
}

impl Upload {
    /// Moves the staged bytes into place and publishes the event. If
    /// publishing fails, the bytes stay for a retry with the same
    /// Idempotency-Key; without a key no retry can complete them, so they
    /// are removed.
    async fn complete(self, st: AppState, staged: Staged) -> Result<Accepted, Problem> {
        let (keyed, id) = (
            self.key_id.is_some(),
            self.key_id.unwrap_or_else(ArtifactId::new_random),
        );
        let (size, sha) = (staged.size as i64, staged.sha256.clone());
        let location = upload::artifact_location(&st.blobs, id);
        upload::commit(&st.blobs, staged, &location).await?;
        let generation = st.table.generation(id).unwrap_or(Generation::FIRST);
        let event = ArtifactCreated {
            artifact_id: id,
            generation,
            storage_location: location.clone(),
            declared_content_type: self
                .declared
                .filter(|d| !d.is_empty() && d != "application/octet-stream"),
            filename: self.filename.map(|f| f.chars().take(255).collect()),
            size_bytes: Some(size),
            sha256: Some(sha.clone()),
            created_at: now_ms(),
        };
        if let Err(e) = st.publish(&event).await {
            metrics::upload(UploadOutcome::Unpublished);
            return Err(unpublished(keyed, &st, id, &location, e).await);
        }
        metrics::upload(UploadOutcome::Accepted);
        Ok(Accepted {
            artifact_id: id.to_string(),
            generation: generation.get(),
            status_url: format!("/v1/artifacts/{id}"),
            size_bytes: Some(size),
            sha256: Some(sha),
        })
    }
}

/// The answer to an upload in place whose event was not published, and
/// what becomes of its bytes.
async fn unpublished(
    keyed: bool,
    st: &AppState,
    id: ArtifactId,
    location: &str,
    e: PublishError,
) -> Problem {
    let what = e.public();
    if keyed {
        return Problem::unavailable(format!(
            "{what}; the upload is kept: retry with the same Idempotency-Key to complete it"
        ))
        .caused_by(e);
    }
    if let PublishError::Kafka(_) = e {
        // The record may have been written even so (a request sent but
        // not acknowledged in time): the bytes stay, so that an event
        // that did land never names a missing blob.
        return Problem::unavailable(format!(
            "{what}; artifact {id} may or may not have been accepted: GET /v1/artifacts/{id} shows it if it was, \
             otherwise upload again (with an Idempotency-Key, a retry is safe)"
        ))
        .caused_by(e);
    }
    // Never sent (the registry could not encode it): nothing can name
    // these bytes, and no retry can complete them.
    if let Err(e) = st.blobs.delete(location).await {
        tracing::warn!(%location, error = %e, "could not remove an upload whose event was not published");
    }
    Problem::unavailable(format!(
        "{what}; nothing was kept: retry the upload, and send an Idempotency-Key to make retries safe"
    ))
    .caused_by(e)
}
