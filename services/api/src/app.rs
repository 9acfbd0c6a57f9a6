//! The HTTP API: routes, handlers and the OpenAPI document generated from
//! them.

use crate::auth::Tokens;
use crate::completions::Completions;
use crate::multipart::{self, ENVELOPE_BYTES};
use crate::problem::Problem;
use crate::readmodel::StatusTable;
use crate::upload::{self, Staged, bytes_stream::BodyError};
use artifact_blob::{BlobError, BlobStore};
use artifact_domain::{ArtifactCreated, ArtifactId, ArtifactState, Generation, StatusView};
use artifact_kafka::codec::{AvroCodec, CodecError};
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::topics::TopicNames;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use utoipa::{OpenApi, ToSchema};

/// Artifact ids derived from idempotency keys live in this UUID namespace.
const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_2a0e_8b7d_4e52_9c3a_51d7_e0b4_a913);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Topic names.
    pub names: TopicNames,
    /// Avro codec on the registry.
    pub codec: Arc<AvroCodec>,
    /// Idempotent producer (acks=all).
    pub producer: FutureProducer,
    /// Blob store.
    pub blobs: BlobStore,
    /// The read model.
    pub table: Arc<StatusTable>,
    /// Accepted bearer tokens.
    pub tokens: Tokens,
    /// Whether reads need a token too.
    pub protect_reads: bool,
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
    /// Uploads being moved into place and published.
    pub completions: Completions,
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The registry could not be reached or refused the schema.
    #[error("{0}")]
    Encode(#[from] CodecError),
    /// Kafka did not take the record in time.
    #[error("publishing to Kafka failed ({0})")]
    Kafka(KafkaError),
}

impl AppState {
    fn check_write(&self, headers: &HeaderMap) -> Result<(), Problem> {
        if self.tokens.allows(headers) {
            Ok(())
        } else {
            Err(Problem::unauthorized())
        }
    }

    fn check_read(&self, headers: &HeaderMap) -> Result<(), Problem> {
        if self.protect_reads {
            self.check_write(headers)
        } else {
            Ok(())
        }
    }

    /// `what` needs the artifact's current generation, which the read-model
    /// table knows only once restored: until then a keyed upload of an
    /// artifact reprocessed before would publish generation 1 again, and a
    /// reprocess would not find the artifact.
    fn check_restored(&self, what: &str) -> Result<(), Problem> {
        if self.table.is_restored() {
            return Ok(());
        }
        Err(Problem::unavailable(format!(
            "{what} needs the read model, which is still loading after a start; retry in a moment (/readyz answers 200 once it is loaded)"
        )))
    }

    async fn publish(&self, event: &ArtifactCreated) -> Result<(), PublishError> {
        let topic = self.names.created();
        let payload = self
            .codec
            .encode(&topic, EventSchema::ArtifactCreated, event)
            .await?;
        let key = event.artifact_id.to_string();
        self.producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(15),
            )
            .await
            .map_err(|(e, _)| PublishError::Kafka(e))?;
        Ok(())
    }
}

/// An accepted upload or reprocess.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The artifact's id.
    pub artifact_id: String,
    /// The generation started.
    pub generation: u32,
    /// Where its status is served.
    pub status_url: String,
    /// Size in bytes.
    pub size_bytes: Option<i64>,
    /// Lowercase hex SHA-256.
    pub sha256: Option<String>,
}

/// Upload query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UploadQuery {
    /// The file name, for display (raw uploads).
    pub filename: Option<String>,
}

/// List query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only artifacts in this state: PENDING, IN_PROGRESS, COMPLETED or FAILED.
    pub state: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (1–500, default 50).
    pub limit: Option<usize>,
}

/// A page of artifacts.
#[derive(Debug, Serialize)]
pub struct Page {
    /// The artifacts, by id.
    pub items: Vec<StatusView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn parse_id(id: &str) -> Result<ArtifactId, Problem> {
    id.parse()
        .map_err(|e: artifact_domain::InvalidArtifactId| Problem::bad_request(e.to_string()))
}

fn bad_query(e: QueryRejection) -> Problem {
    Problem::bad_request(format!(
        "{}; see /openapi.json for the query parameters",
        e.body_text()
    ))
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
        (status = 400, description = "Bad query or multipart body"),
        (status = 401, description = "No valid bearer token"),
        (status = 409, description = "Idempotency-Key reused for other bytes"),
        (status = 413, description = "Larger than MAX_UPLOAD_BYTES"),
        (status = 503, description = "Blob store, Kafka or the registry unavailable; with an Idempotency-Key the bytes are kept and a retry with the same key completes the upload, without one nothing is kept"),
    )
)]
pub async fn upload_artifact(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, QueryRejection>,
    req: Request,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    st.check_write(&headers)?;
    let Query(q) = query.map_err(bad_query)?;
    if idempotent_id(&headers).is_some() {
        st.check_restored("an upload with an Idempotency-Key")?;
    }
    let limit = st.max_upload_bytes;
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit.saturating_add(ENVELOPE_BYTES)
    {
        metrics::counter!("artifact_api_uploads_total", "outcome" => "too_large").increment(1);
        return Err(upload::too_large(limit));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let staged = if content_type.as_deref().is_some_and(multipart::is_multipart) {
        multipart::stage_file_field(&st.blobs, req, limit)
            .await
            .map(|f| (f.staged, f.declared, f.filename))
    } else {
        let chunks = req
            .into_body()
            .into_data_stream()
            .map(|c| c.map_err(|e| BodyError::Interrupted(e.to_string())))
            .boxed();
        upload::stage(&st.blobs, chunks, limit)
            .await
            .map(|staged| (staged, content_type, q.filename))
    };
    let (staged, declared, filename) = staged.inspect_err(|p| {
        let outcome = if p.status == 413 {
            "too_large"
        } else {
            "failed"
        };
        metrics::counter!("artifact_api_uploads_total", "outcome" => outcome).increment(1);
    })?;

    let upload = Upload {
        key_id: idempotent_id(&headers),
        declared,
        filename,
    };
    // From here on the upload is completed whatever happens to this request:
    // a client going away drops this future, not the completion.
    let accepted = st
        .completions
        .spawn(upload.complete(st.clone(), staged))
        .await
        .map_err(|e| Problem::internal(format!("completing the upload failed: {e}")))??;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
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
        let id = self.key_id.unwrap_or_else(ArtifactId::new_random);
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
            metrics::counter!("artifact_api_uploads_total", "outcome" => "unpublished")
                .increment(1);
            if self.key_id.is_some() {
                return Err(Problem::unavailable(format!(
                    "{e}; the upload is kept: retry with the same Idempotency-Key to complete it"
                )));
            }
            if let PublishError::Kafka(_) = e {
                // The record may have been written even so (a request sent
                // but not acknowledged in time): the bytes stay, so that an
                // event that did land never names a missing blob.
                return Err(Problem::unavailable(format!(
                    "{e}; artifact {id} may or may not have been accepted: GET /v1/artifacts/{id} shows it if it was, \
                     otherwise upload again (with an Idempotency-Key, a retry is safe)"
                )));
            }
            // Never sent (the registry could not encode it): nothing can
            // name these bytes, and no retry can complete them.
            if let Err(e) = st.blobs.delete(&location).await {
                tracing::warn!(%location, error = %e, "could not remove an upload whose event was not published");
            }
            return Err(Problem::unavailable(format!(
                "{e}; nothing was kept: retry the upload, and send an Idempotency-Key to make retries safe"
            )));
        }
        metrics::counter!("artifact_api_uploads_total", "outcome" => "accepted").increment(1);
        Ok(Accepted {
            artifact_id: id.to_string(),
            generation: generation.get(),
            status_url: format!("/v1/artifacts/{id}"),
            size_bytes: Some(size),
            sha256: Some(sha),
        })
    }
}

/// An artifact's status: state, generation, per-stage timeline, detected
/// type, size, digest, page count, summary.
#[utoipa::path(get, path = "/v1/artifacts/{id}", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 200, description = "The status (fields of schemas/artifact-status.avsc)"), (status = 404, description = "Unknown artifact")))]
pub async fn get_artifact(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, Problem> {
    st.check_read(&headers)?;
    let id = parse_id(&id)?;
    st.table.get(id)?.map(Json).ok_or_else(|| {
        Problem::not_found(format!(
            "no artifact {id} (yet): uploads appear within moments"
        ))
    })
}

/// Artifacts by id, optionally in one state, a page at a time.
#[utoipa::path(get, path = "/v1/artifacts", tag = "artifacts", params(ListQuery),
    responses((status = 200, description = "`items` and `next_cursor`"), (status = 400, description = "Bad state, cursor or limit")))]
pub async fn list_artifacts(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, Problem> {
    st.check_read(&headers)?;
    let Query(q) = query.map_err(bad_query)?;
    let state = q
        .state
        .as_deref()
        .map(|s| {
            serde_json::from_value::<ArtifactState>(serde_json::Value::String(
                s.to_ascii_uppercase(),
            ))
            .map_err(|_| {
                Problem::bad_request(format!(
                    "state {s:?} is not one of PENDING, IN_PROGRESS, COMPLETED, FAILED"
                ))
            })
        })
        .transpose()?;
    let cursor = q.cursor.as_deref().map(parse_id).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 500"));
    }
    let (items, next) = st.table.list(state, cursor, limit)?;
    Ok(Json(Page {
        items,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// The extracted text of an artifact (UTF-8, pages separated by form feeds).
#[utoipa::path(get, path = "/v1/artifacts/{id}/text", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 200, description = "The text", content_type = "text/plain"), (status = 404, description = "Unknown artifact, or no text (yet)")))]
pub async fn get_text(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    st.check_read(&headers)?;
    let id = parse_id(&id)?;
    let view = st
        .table
        .get(id)?
        .ok_or_else(|| Problem::not_found(format!("no artifact {id}")))?;
    let location = view.context.text_location.ok_or_else(|| {
        Problem::not_found(format!(
            "artifact {id} has no extracted text (state {:?})",
            view.state
        ))
    })?;
    let bytes = st
        .blobs
        .read_all(&location, 256 << 20)
        .await
        .map_err(|e| match e {
            BlobError::NotFound(_) => Problem::not_found(format!(
                "artifact {id}'s extracted text is not in the blob store (it was at {location}); \
                 reprocess the artifact to extract it again"
            )),
            e if e.is_retriable() => Problem::unavailable(e.to_string()),
            e => Problem::internal(e.to_string()),
        })?;
    Ok(([("content-type", "text/plain; charset=utf-8")], bytes).into_response())
}

/// Starts a new generation of an artifact: every stage runs again.
#[utoipa::path(post, path = "/v1/artifacts/{id}/reprocess", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 202, description = "The new generation was published", body = Accepted), (status = 401, description = "No valid bearer token"), (status = 404, description = "Unknown artifact"), (status = 503, description = "Kafka or the registry unavailable; retry the reprocess")))]
pub async fn reprocess(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    st.check_write(&headers)?;
    let id = parse_id(&id)?;
    st.check_restored("a reprocess")?;
    let view = st
        .table
        .get(id)?
        .ok_or_else(|| Problem::not_found(format!("no artifact {id}")))?;
    let generation = view.generation.next();
    let c = &view.context;
    let event = ArtifactCreated {
        artifact_id: id,
        generation,
        storage_location: c.storage_location.clone(),
        declared_content_type: c.declared_content_type.clone(),
        filename: c.filename.clone(),
        size_bytes: c.size_bytes,
        sha256: c.sha256.clone(),
        created_at: now_ms(),
    };
    st.publish(&event).await.map_err(|e| {
        Problem::unavailable(format!(
            "{e}; generation {} was not published: retry the reprocess once Kafka and the registry are back",
            generation.get()
        ))
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            artifact_id: id.to_string(),
            generation: generation.get(),
            status_url: format!("/v1/artifacts/{id}"),
            size_bytes: c.size_bytes,
            sha256: c.sha256.clone(),
        }),
    ))
}

/// The OpenAPI document of the routes above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "artifact-pipeline API",
        description = "Upload artifacts and follow them through the pipeline."
    ),
    paths(upload_artifact, get_artifact, list_artifacts, get_text, reprocess),
    components(schemas(Accepted))
)]
pub struct ApiDoc;

/// The API's OpenAPI document: its routes and those of
/// [`artifact_runtime::telemetry::health_router`], which serves it at
/// `/openapi.json`.
pub fn api_doc() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(artifact_runtime::telemetry::OpsDoc::openapi());
    doc
}

/// The API's routes (health, metrics and `/openapi.json` are merged in by
/// the binary).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/artifacts", post(upload_artifact).get(list_artifacts))
        .route("/v1/artifacts/{id}", get(get_artifact))
        .route("/v1/artifacts/{id}/text", get(get_text))
        .route("/v1/artifacts/{id}/reprocess", post(reprocess))
        // Uploads enforce MAX_UPLOAD_BYTES themselves, while streaming (a
        // multipart body's envelope included: see `multipart`).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
