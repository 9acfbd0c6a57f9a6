//! Reads of the read model (an artifact, a page of artifacts, an extracted
//! text) and reprocess.

use crate::http::auth::{Reader, Writer};
use crate::http::problem::Problem;
use crate::http::{Accepted, AppState, bad_query, parse_id};
use artifact_blob::BlobError;
use artifact_domain::{ArtifactCreated, ArtifactId, ArtifactState, StatusView, page_text_location};
use artifact_kafka::now_ms;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// List query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only artifacts in this state: PENDING, IN_PROGRESS, COMPLETED, FAILED or CANCELLED.
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

/// An artifact's status: state, generation, per-stage timeline, detected
/// type, size, digest, page count, summary.
#[utoipa::path(get, path = "/v1/artifacts/{id}", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 200, description = "The status (fields of schemas/artifact-status.avsc)"), (status = 401, description = "No valid bearer token (API_PROTECT_READS)"), (status = 404, description = "Unknown artifact")))]
pub async fn get_artifact(
    State(st): State<AppState>,
    _reader: Reader,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, Problem> {
    let id = parse_id(&id)?;
    st.table.get(id)?.map(Json).ok_or_else(|| {
        Problem::not_found(format!(
            "no artifact {id} (yet): uploads appear within moments"
        ))
    })
}

/// Artifacts by id, optionally in one state, a page at a time.
#[utoipa::path(get, path = "/v1/artifacts", tag = "artifacts", params(ListQuery),
    responses((status = 200, description = "`items` and `next_cursor`"), (status = 400, description = "Bad state, cursor or limit"), (status = 401, description = "No valid bearer token (API_PROTECT_READS)")))]
pub async fn list_artifacts(
    State(st): State<AppState>,
    _reader: Reader,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, Problem> {
    let Query(q) = query.map_err(bad_query)?;
    let state = q.state.as_deref().map(parse_state).transpose()?;
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

/// The extracted text of an artifact (UTF-8, pages separated by form
/// feeds), streamed from the blob store a chunk at a time.
#[utoipa::path(get, path = "/v1/artifacts/{id}/text", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 200, description = "The text", content_type = "text/plain"), (status = 401, description = "No valid bearer token (API_PROTECT_READS)"), (status = 404, description = "Unknown artifact, or no text (yet)")))]
pub async fn get_text(
    State(st): State<AppState>,
    _reader: Reader,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let location = text_location(&st, id)?;
    let missing = format!(
        "artifact {id}'s extracted text is not in the blob store; \
         reprocess the artifact to extract it again"
    );
    stream_text(&st, &location, missing).await
}

/// The text of one page (slide, sheet, chapter) of an artifact, numbered
/// from 1, as the parse outcome's page list names it.
#[utoipa::path(get, path = "/v1/artifacts/{id}/pages/{number}/text", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)"), ("number" = u32, Path, description = "Page number, from 1")),
    responses((status = 200, description = "The page's text", content_type = "text/plain"), (status = 400, description = "Not a page number"), (status = 401, description = "No valid bearer token (API_PROTECT_READS)"), (status = 404, description = "Unknown artifact, or no text (yet) for that page")))]
pub async fn get_page_text(
    State(st): State<AppState>,
    _reader: Reader,
    Path((id, number)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let number = number
        .parse::<u32>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| Problem::bad_request("the page number must be a whole number from 1"))?;
    let location = page_text_location(&text_location(&st, id)?, number);
    let missing = format!(
        "artifact {id} has no text for page {number}: the document has fewer pages, \
         or more than PARSE_MAX_PAGE_TEXTS, or its format has none"
    );
    stream_text(&st, &location, missing).await
}

/// Where an artifact's extracted text is, once it has one.
fn text_location(st: &AppState, id: ArtifactId) -> Result<String, Problem> {
    let view = st
        .table
        .get(id)?
        .ok_or_else(|| Problem::not_found(format!("no artifact {id}")))?;
    view.context.text_location.ok_or_else(|| {
        Problem::not_found(format!(
            "artifact {id} has no extracted text (state {:?})",
            view.state
        ))
    })
}

/// The text at `location`, streamed from the blob store a chunk at a
/// time; `missing` says why when it is not there.
async fn stream_text(st: &AppState, location: &str, missing: String) -> Result<Response, Problem> {
    let chunks = st.blobs.read_stream(location).await.map_err(|e| match e {
        BlobError::NotFound(_) => Problem::not_found(missing).caused_by(e),
        e if e.is_retriable() => {
            Problem::unavailable("the blob store could not be read; retry in a moment").caused_by(e)
        }
        e => Problem::internal("the extracted text could not be read").caused_by(e),
    })?;
    Ok((
        [("content-type", "text/plain; charset=utf-8")],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Starts a new generation of an artifact: every stage runs again.
#[utoipa::path(post, path = "/v1/artifacts/{id}/reprocess", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 202, description = "The new generation was published", body = Accepted), (status = 401, description = "No valid bearer token"), (status = 404, description = "Unknown artifact"), (status = 503, description = "Kafka or the registry unavailable; retry the reprocess")))]
pub async fn reprocess(
    State(st): State<AppState>,
    _writer: Writer,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
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
            "{}; generation {} was not published: retry the reprocess once Kafka and the registry are back",
            e.public(),
            generation.get()
        ))
        .caused_by(e)
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

/// A state named in a query, in any case.
pub(super) fn parse_state(s: &str) -> Result<ArtifactState, Problem> {
    serde_json::from_value::<ArtifactState>(serde_json::Value::String(s.to_ascii_uppercase()))
        .map_err(|_| {
            Problem::bad_request(format!(
                "state {s:?} is not one of PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED"
            ))
        })
}
