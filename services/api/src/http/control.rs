//! Cancel and erase: each is an `ArtifactControl` record in the compacted
//! artifact-control topic, keyed by artifact id, that every stage follows
//! (they skip the inputs it covers) and the projector folds. Erase also
//! removes the artifact's blobs and writes tombstones for its key on every
//! compacted topic that holds it.

use crate::http::auth::Writer;
use crate::http::problem::Problem;
use crate::http::{AppState, PublishError, parse_id};
use artifact_domain::{
    ArtifactContext, ArtifactControl, ArtifactId, ControlAction, Generation, Stage, StatusView,
};
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// A cancel or erasure that was recorded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Controlled {
    /// The artifact's id.
    pub artifact_id: String,
    /// `CANCELLED` or `ERASED`.
    pub action: String,
    /// The generation cancelled; for an erasure, the newest one.
    pub generation: u32,
}

/// Cancels the artifact's current generation: stages skip its inputs from
/// now on (a record already being processed finishes, and its outcome does
/// not advance the artifact), and it ends `CANCELLED`. A reprocess starts a
/// new generation that runs normally.
#[utoipa::path(post, path = "/v1/artifacts/{id}/cancel", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 202, description = "The cancel was recorded", body = Controlled), (status = 401, description = "No valid bearer token"), (status = 404, description = "Unknown artifact"), (status = 409, description = "The generation is already final"), (status = 503, description = "Kafka or the registry unavailable; retry")))]
pub async fn cancel(
    State(st): State<AppState>,
    _writer: Writer,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Controlled>), Problem> {
    let id = parse_id(&id)?;
    st.check_restored("a cancel")?;
    let view = known(&st, id)?;
    if view.state.is_terminal() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Already final",
            format!(
                "generation {} of artifact {id} is already {:?}; reprocess it to start a new one",
                view.generation, view.state
            ),
        ));
    }
    let control = control(id, ControlAction::Cancelled, view.generation);
    st.write_control(&control).await.map_err(unavailable)?;
    tracing::info!(artifact_id = %id, generation = %view.generation, "artifact cancelled");
    Ok((StatusCode::ACCEPTED, Json(controlled(&control))))
}

/// Erases the artifact: its upload and extracted texts are deleted, its
/// key gets a tombstone on every compacted topic that holds it (events,
/// status, each stage's dedup state), stages skip its inputs and drop the
/// outcomes of those in flight, and the API answers 404 for it. What
/// remains, and for how long: docs/OPERATIONS.md.
#[utoipa::path(delete, path = "/v1/artifacts/{id}", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 202, description = "Erased (again, for an erased artifact: a retry is safe); compaction removes what the tombstones cover", body = Controlled), (status = 401, description = "No valid bearer token"), (status = 404, description = "Unknown artifact"), (status = 503, description = "Kafka, the registry or the blob store unavailable; retry the erase")))]
pub async fn erase(
    State(st): State<AppState>,
    _writer: Writer,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Controlled>), Problem> {
    let id = parse_id(&id)?;
    st.check_restored("an erase")?;
    // An artifact erased before (an erase that failed part way, retried)
    // is gone from the read model: its marker names its generation.
    let (generation, context) = match st.table.get(id)? {
        Some(view) => (view.generation, Some(view.context)),
        None => match st.controls.get(id) {
            Some(c) if c.action == ControlAction::Erased => (c.generation, None),
            _ => return Err(Problem::not_found(format!("no artifact {id}"))),
        },
    };
    let control = control(id, ControlAction::Erased, generation);
    // First the marker: from here on nothing new of the artifact is
    // written, so the deletions below are not undone.
    st.write_control(&control).await.map_err(unavailable)?;
    for location in blobs_of(&st, id, generation, context.as_ref()) {
        st.blobs.delete(&location).await.map_err(|e| {
            Problem::unavailable(format!(
                "artifact {id} is erased from the pipeline but a blob could not be deleted; retry the erase"
            ))
            .caused_by(e)
        })?;
    }
    let mut topics = vec![st.names.created(), st.names.status()];
    for s in Stage::ALL {
        topics.push(st.names.output(s));
        topics.push(st.names.dedup(s));
    }
    for topic in topics {
        st.tombstone(&topic, id).await.map_err(unavailable)?;
    }
    tracing::info!(artifact_id = %id, %generation, "artifact erased");
    Ok((StatusCode::ACCEPTED, Json(controlled(&control))))
}

fn known(st: &AppState, id: ArtifactId) -> Result<StatusView, Problem> {
    st.table
        .get(id)?
        .ok_or_else(|| Problem::not_found(format!("no artifact {id}")))
}

fn control(id: ArtifactId, action: ControlAction, generation: Generation) -> ArtifactControl {
    ArtifactControl {
        artifact_id: id,
        action,
        generation,
        at: now_ms(),
    }
}

fn controlled(c: &ArtifactControl) -> Controlled {
    Controlled {
        artifact_id: c.artifact_id.to_string(),
        action: match c.action {
            ControlAction::Cancelled => "CANCELLED",
            ControlAction::Erased => "ERASED",
        }
        .into(),
        generation: c.generation.get(),
    }
}

fn unavailable(e: PublishError) -> Problem {
    Problem::unavailable(format!("{}; retry", e.public())).caused_by(e)
}

/// The artifact's blobs in this API's store: the upload, and the text of
/// every generation (`texts/<aa>/<id>-<generation>.txt`, as pdf-parser
/// writes them; a missing one is no error), and the locations its last
/// snapshot names, if in the store.
fn blobs_of(
    st: &AppState,
    id: ArtifactId,
    generation: Generation,
    context: Option<&ArtifactContext>,
) -> Vec<String> {
    let id = id.to_string();
    let mut v = vec![st.blobs.location(&format!("uploads/{id}"))];
    for g in 1..=generation.get() {
        v.push(
            st.blobs
                .location(&format!("texts/{}/{id}-{g}.txt", &id[..2])),
        );
    }
    let named = context
        .into_iter()
        .flat_map(|c| [Some(&c.storage_location), c.text_location.as_ref()])
        .flatten();
    for location in named {
        if !v.contains(location) && st.blobs.resolve(location).is_ok() {
            v.push(location.clone());
        }
    }
    v
}

impl AppState {
    /// Writes a control record, keyed by artifact id like its events (so it
    /// lands on their partition number), and waits for the broker.
    async fn write_control(&self, control: &ArtifactControl) -> Result<(), PublishError> {
        let topic = self.names.artifact_control();
        let payload = self
            .codec
            .encode(&topic, EventSchema::ArtifactControl, control)
            .await?;
        let key = control.artifact_id.to_string();
        self.producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(15),
            )
            .await
            .map_err(|(e, _)| PublishError::Kafka(e))?;
        Ok(())
    }

    /// Writes a tombstone for the artifact's key on `topic`.
    async fn tombstone(&self, topic: &str, id: ArtifactId) -> Result<(), PublishError> {
        let key = id.to_string();
        self.producer
            .send(
                FutureRecord::<String, [u8]>::to(topic).key(&key),
                Duration::from_secs(15),
            )
            .await
            .map_err(|(e, _)| PublishError::Kafka(e))?;
        Ok(())
    }
}
