//! Bulk reprocess: `POST /v1/reprocess` selects artifacts and records the
//! operation (the executor runs it: `crate::reprocess`), or only counts
//! them (`dry_run`); `GET /v1/reprocess/{op}` reports its progress.

use crate::http::auth::{Reader, Writer};
use crate::http::handlers::parse_state;
use crate::http::problem::Problem;
use crate::http::{AppState, parse_id};
use crate::reprocess::executor::write_operation;
use crate::reprocess::{Selection, select};
use artifact_domain::{ReprocessItem, ReprocessOperation, Selector, Stage};
use artifact_kafka::now_ms;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most ids a refusal names.
const NAMED: usize = 10;

/// A bulk reprocess request: which artifacts (every field given must
/// hold; at least one is needed), from which stage, and whether only to
/// count them.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReprocessRequest {
    /// In this state: PENDING, IN_PROGRESS, COMPLETED, FAILED or CANCELLED.
    pub state: Option<String>,
    /// Failed at this stage (mime-detector, location-logger, pdf-parser, summarizer).
    pub failed_stage: Option<String>,
    /// Of this detected MIME type, e.g. `application/pdf`.
    pub detected_type: Option<String>,
    /// Created at or after this time (epoch milliseconds).
    pub created_from: Option<i64>,
    /// Created before this time (epoch milliseconds).
    pub created_to: Option<i64>,
    /// These artifacts.
    #[serde(default)]
    pub ids: Vec<String>,
    /// The stage the new generations start at (default the first); the
    /// earlier stages' outcomes of each artifact's generation are carried
    /// over.
    pub from: Option<String>,
    /// Only count: no operation is recorded.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a dry run would select.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    /// Artifacts that would get a new generation.
    pub selected: usize,
    /// Artifacts the selector picks that cannot start at `from`.
    pub refused: usize,
    /// Some of those, with why.
    pub refused_examples: Vec<String>,
}

/// A recorded operation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OperationAccepted {
    /// The operation's id.
    pub operation_id: String,
    /// Artifacts selected.
    pub selected: usize,
    /// Where its progress is served.
    pub status_url: String,
}

/// An operation's progress.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OperationStatus {
    /// The operation's id.
    pub operation_id: String,
    /// `RUNNING` or `FINISHED`.
    pub state: String,
    /// The stage the new generations start at.
    pub from: String,
    /// Artifacts selected.
    pub selected: usize,
    /// Selected artifacts gone through (started, or skipped).
    pub started: usize,
    /// Of those, not started: gone, or their earlier outcomes were no longer in the log.
    pub skipped: usize,
    /// New generations that reached a final state.
    pub done: usize,
    /// When it was recorded (epoch ms).
    pub created_at: i64,
    /// When its progress was last written (epoch ms).
    pub updated_at: i64,
    /// When it finished (epoch ms).
    pub finished_at: Option<i64>,
}

impl From<&ReprocessOperation> for OperationStatus {
    fn from(op: &ReprocessOperation) -> Self {
        OperationStatus {
            operation_id: op.operation_id.clone(),
            state: if op.is_finished() {
                "FINISHED"
            } else {
                "RUNNING"
            }
            .into(),
            from: op.from_stage.name().into(),
            selected: op.selected(),
            started: op.started.max(0) as usize,
            skipped: op.skipped.len(),
            done: op.done.max(0) as usize,
            created_at: op.created_at,
            updated_at: op.updated_at,
            finished_at: op.finished_at,
        }
    }
}

/// Starts a new generation of every artifact the selector picks, from a
/// stage, as a durable operation that artifact-api runs (and resumes after
/// a restart); or, with `dry_run`, only counts them.
#[utoipa::path(post, path = "/v1/reprocess", tag = "artifacts", request_body = ReprocessRequest,
    responses((status = 202, description = "The operation was recorded", body = OperationAccepted), (status = 200, description = "Dry run: the counts", body = DryRun), (status = 400, description = "Bad selector, state or stage"), (status = 401, description = "No valid bearer token"), (status = 422, description = "Selected artifacts cannot start at `from` (an earlier stage's outcome is missing), ids unknown, or too many artifacts"), (status = 503, description = "Kafka or the registry unavailable, or the read model loading; retry")))]
pub async fn reprocess_many(
    State(st): State<AppState>,
    _writer: Writer,
    body: Result<Json<ReprocessRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), Problem> {
    let Json(req) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let (selector, from) = parse(&req)?;
    st.check_restored("a reprocess")?;
    let sel = select(&st.table, &selector, from)?;
    if req.dry_run {
        let dry = DryRun {
            selected: sel.ready.len(),
            refused: sel.refused.len(),
            refused_examples: refusals(&sel),
        };
        return Ok((
            StatusCode::OK,
            Json(serde_json::to_value(dry).expect("json")),
        ));
    }
    if !sel.unknown.is_empty() {
        let ids: Vec<String> = sel
            .unknown
            .iter()
            .take(NAMED)
            .map(ToString::to_string)
            .collect();
        return Err(unprocessable(format!(
            "{} of the ids are not artifacts the read model holds: {}",
            sel.unknown.len(),
            ids.join(", ")
        )));
    }
    if !sel.refused.is_empty() {
        return Err(unprocessable(format!(
            "{} of the selected artifacts cannot start at {from}: {}; narrow the selector (e.g. by failed stage) or start at an earlier stage",
            sel.refused.len(),
            refusals(&sel).join("; ")
        )));
    }
    if sel.ready.len() > st.operations.max_artifacts {
        return Err(unprocessable(format!(
            "{} artifacts selected, more than one operation takes ({}, REPROCESS_MAX_ARTIFACTS); narrow the selector, e.g. by created_from/created_to",
            sel.ready.len(),
            st.operations.max_artifacts
        )));
    }
    let now = now_ms();
    let op = ReprocessOperation {
        operation_id: uuid::Uuid::new_v4().to_string(),
        selector,
        from_stage: from,
        items: sel
            .ready
            .iter()
            .map(|v| ReprocessItem {
                artifact_id: v.artifact_id,
                generation: v.generation.next(),
            })
            .collect(),
        started: 0,
        skipped: Vec::new(),
        done: 0,
        created_at: now,
        updated_at: now,
        finished_at: None,
    };
    let partition = write_operation(&st.codec, &st.producer, &st.names, &op)
        .await
        .map_err(|e| {
            Problem::unavailable(
                "the operation could not be recorded in Kafka; nothing was started: retry",
            )
            .caused_by(e)
        })?;
    st.operations.apply(partition, op.clone());
    tracing::info!(operation = %op.operation_id, selected = op.items.len(), from = %from, "reprocess operation recorded");
    let accepted = OperationAccepted {
        status_url: format!("/v1/reprocess/{}", op.operation_id),
        operation_id: op.operation_id,
        selected: op.items.len(),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::to_value(accepted).expect("json")),
    ))
}

/// A bulk reprocess's progress: selected, started, skipped, done.
#[utoipa::path(get, path = "/v1/reprocess/{op}", tag = "artifacts",
    params(("op" = String, Path, description = "Operation id")),
    responses((status = 200, description = "The progress", body = OperationStatus), (status = 401, description = "No valid bearer token (API_PROTECT_READS)"), (status = 404, description = "Unknown operation")))]
pub async fn get_operation(
    State(st): State<AppState>,
    _reader: Reader,
    Path(op): Path<String>,
) -> Result<Json<OperationStatus>, Problem> {
    st.operations
        .get(&op)
        .map(|o| Json(OperationStatus::from(&o)))
        .ok_or_else(|| Problem::not_found(format!("no reprocess operation {op}")))
}

/// The selector and start stage of a request.
fn parse(req: &ReprocessRequest) -> Result<(Selector, Stage), Problem> {
    let stage = |s: &str| {
        s.parse::<Stage>()
            .map_err(|e| Problem::bad_request(e.to_string()))
    };
    let selector = Selector {
        state: req.state.as_deref().map(parse_state).transpose()?,
        failed_stage: req.failed_stage.as_deref().map(stage).transpose()?,
        detected_type: req.detected_type.clone(),
        created_from: req.created_from,
        created_to: req.created_to,
        ids: req
            .ids
            .iter()
            .map(|id| parse_id(id))
            .collect::<Result<_, _>>()?,
    };
    if selector.is_empty() {
        return Err(Problem::bad_request(
            "give at least one of state, failed_stage, detected_type, created_from, created_to, ids",
        ));
    }
    let from = req
        .from
        .as_deref()
        .map(stage)
        .transpose()?
        .unwrap_or(Stage::MimeDetector);
    Ok((selector, from))
}

fn refusals(sel: &Selection) -> Vec<String> {
    sel.refused
        .iter()
        .take(NAMED)
        .map(|(id, why)| format!("{id}: {why}"))
        .collect()
}

fn unprocessable(detail: String) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Not reprocessable",
        detail,
    )
}
