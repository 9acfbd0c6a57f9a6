//! The HTTP API: its state, routes and the layers that bound them, and the
//! OpenAPI document generated from the handlers.
//!
//! - `auth`: who may call what, as extractors handlers take;
//! - `uploads`, `upload`, `multipart`, `completions`: receiving an upload
//!   and completing it;
//! - `handlers`: reads and reprocess; `reprocess`: bulk reprocess;
//! - `limits`: rate, concurrency and time bounds; `server`: the HTTP server;
//! - `problem`: error answers, with request ids.

pub mod auth;
pub mod completions;
pub mod control;
pub mod events;
pub mod handlers;
pub mod limits;
pub mod multipart;
pub mod problem;
pub mod reprocess;
pub mod server;
pub mod spans;
pub mod upload;
pub mod uploads;
pub mod webhooks;

use crate::readmodel::StatusTable;
use artifact_blob::BlobStore;
use artifact_domain::{ArtifactCreated, ArtifactId};
use artifact_kafka::codec::{AvroCodec, CodecError};
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::topics::TopicNames;
use auth::Access;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::QueryRejection;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post};
use completions::Completions;
use limits::{Limits, UploadSlots};
use problem::Problem;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};

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
    /// Who may call what.
    pub access: Access,
    /// Bounds on requests.
    pub limits: Limits,
    /// Permits for uploads being received.
    pub uploads: UploadSlots,
    /// Permits for event streams open.
    pub streams: events::StreamSlots,
    /// Uploads being moved into place and published.
    pub completions: Completions,
    /// Operators' cancels and erasures, followed from their topic.
    pub controls: artifact_runtime::control::ArtifactControls,
    /// Bulk reprocess operations, followed from their topic.
    pub operations: crate::reprocess::Operations,
    /// The stages as the console reads them from Kafka.
    pub pipeline: Arc<crate::ui::stages::PipelineView>,
    /// Webhook subscriptions, followed from their topic, and the URL policy.
    pub webhooks: crate::webhooks::Webhooks,
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

impl PublishError {
    /// What failed, for an answer: no URL, no broker or registry text.
    pub fn public(&self) -> &'static str {
        match self {
            PublishError::Encode(_) => "the schema registry could not encode the event",
            PublishError::Kafka(_) => "Kafka did not take the event in time",
        }
    }
}

impl AppState {
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
        let (span, trace) = artifact_runtime::otel::produce(&topic, &key);
        let mut headers = OwnedHeaders::new();
        for (name, value) in &trace {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_str()),
            });
        }
        self.producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(15),
            )
            .instrument(span)
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

/// The OpenAPI document of the routes above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "artifact-pipeline API",
        description = "Upload artifacts and follow them through the pipeline."
    ),
    paths(
        uploads::upload_artifact,
        handlers::get_artifact,
        handlers::list_artifacts,
        handlers::get_text,
        handlers::get_page_text,
        handlers::reprocess,
        control::cancel,
        control::erase,
        reprocess::reprocess_many,
        reprocess::get_operation,
        events::artifact_events,
        events::all_events,
        webhooks::create_webhook,
        webhooks::list_webhooks,
        webhooks::delete_webhook
    ),
    components(schemas(
        Accepted,
        control::Controlled,
        reprocess::ReprocessRequest,
        reprocess::DryRun,
        reprocess::OperationAccepted,
        reprocess::OperationStatus,
        webhooks::WebhookRequest,
        webhooks::WebhookCreated,
        webhooks::WebhookListed,
        webhooks::WebhookList,
        crate::webhooks::DeliveryStats
    ))
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

/// How often the rate limit forgets callers it has not seen for a while.
const FORGET_CALLERS_EVERY: Duration = Duration::from_secs(60);

/// The API's routes (health, metrics and `/openapi.json` are merged in by
/// the binary), inside their layers: from the outside in, request ids,
/// the caller's identity, the rate limit, and the body idle timeout.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route(
            "/v1/artifacts",
            post(uploads::upload_artifact).get(handlers::list_artifacts),
        )
        .route(
            "/v1/artifacts/{id}",
            get(handlers::get_artifact).delete(control::erase),
        )
        .route("/v1/artifacts/{id}/cancel", post(control::cancel))
        .route("/v1/artifacts/{id}/text", get(handlers::get_text))
        .route(
            "/v1/artifacts/{id}/pages/{number}/text",
            get(handlers::get_page_text),
        )
        .route("/v1/artifacts/{id}/reprocess", post(handlers::reprocess))
        .route("/v1/artifacts/{id}/events", get(events::artifact_events))
        .route("/v1/events", get(events::all_events))
        .route("/v1/reprocess", post(reprocess::reprocess_many))
        .route("/v1/reprocess/{op}", get(reprocess::get_operation))
        .route(
            "/v1/webhooks",
            post(webhooks::create_webhook).get(webhooks::list_webhooks),
        )
        .route("/v1/webhooks/{id}", delete(webhooks::delete_webhook))
        .merge(crate::ui::router())
        // Uploads enforce MAX_UPLOAD_BYTES themselves, while streaming (a
        // multipart body's envelope included: see `multipart`).
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.limits.body_idle_timeout,
        ));
    let routes = match limits::rate_limit(&state.limits) {
        Some(config) => {
            if tokio::runtime::Handle::try_current().is_ok() {
                let limiter = config.limiter().clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(FORGET_CALLERS_EVERY);
                    loop {
                        every.tick().await;
                        limiter.retain_recent();
                    }
                });
            }
            routes
                .layer(tower_governor::GovernorLayer::new(config).error_handler(limits::over_rate))
        }
        None => routes,
    };
    routes
        .layer(from_fn_with_state(state.clone(), auth::identify))
        .layer(from_fn(problem::request_ids))
        .layer(from_fn(spans::traced))
        .with_state(state)
}

#[cfg(test)]
pub(crate) mod tests;
