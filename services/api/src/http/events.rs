//! Server-sent events of the read model: one artifact's state changes until
//! it is final (`/v1/artifacts/{id}/events`), or every change, optionally in
//! one state (`/v1/events`). Each `status` event carries the snapshot as
//! `GET /v1/artifacts/{id}` answers it; a stream that fell behind gets a
//! `lagged` event saying how many changes it missed. An artifact's stream
//! ends with an `erased` event when the artifact is erased.

use super::auth::Reader;
use super::handlers::parse_state;
use super::problem::Problem;
use super::{AppState, bad_query, parse_id};
use crate::metrics::{self, Refusal};
use artifact_domain::{ArtifactId, ArtifactState, StatusView};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits for event streams open.
#[derive(Debug, Clone)]
pub struct StreamSlots(Arc<Semaphore>);

impl StreamSlots {
    /// `n` streams at once.
    pub fn new(n: usize) -> Self {
        StreamSlots(Arc::new(Semaphore::new(n)))
    }

    fn take(&self) -> Result<OwnedSemaphorePermit, Problem> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            metrics::refused(Refusal::Busy);
            Problem::unavailable(
                "as many event streams as API_MAX_EVENT_STREAMS allows are open; retry in a moment",
            )
        })
    }
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type Events = Sse<axum::response::sse::KeepAliveStream<EventStream>>;

/// The artifact's status now, then each change, until its state is final.
#[utoipa::path(get, path = "/v1/artifacts/{id}/events", tag = "artifacts",
    params(("id" = String, Path, description = "Artifact id (UUID)")),
    responses((status = 200, description = "text/event-stream of `status` events (the snapshot as JSON); ends once the state is COMPLETED, FAILED or CANCELLED, or with an `erased` event when the artifact is erased"), (status = 401, description = "No valid bearer token (API_PROTECT_READS)"), (status = 404, description = "Unknown artifact"), (status = 503, description = "Too many streams open (API_MAX_EVENT_STREAMS)")))]
pub async fn artifact_events(
    State(st): State<AppState>,
    _reader: Reader,
    Path(id): Path<String>,
) -> Result<Events, Problem> {
    let id = parse_id(&id)?;
    let permit = st.streams.take()?;
    // Subscribed before the first read, so no change falls in between.
    let changes = st.table.subscribe();
    let erasures = st.table.subscribe_erasures();
    let now = st.table.get(id)?.ok_or_else(|| {
        Problem::not_found(format!(
            "no artifact {id} (yet): uploads appear within moments"
        ))
    })?;
    let follow = Follow {
        st,
        id,
        changes,
        erasures,
        last: None,
        next: Some(now),
        erased: false,
        _permit: permit,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let event = match f.next_change().await? {
            Change::Status(view) => {
                let event = status_event(&view);
                f.last = Some(*view);
                event
            }
            Change::Erased => {
                f.erased = true;
                erased_event(f.id)
            }
        };
        Some((Ok(event), f))
    });
    let stream: EventStream = Box::pin(stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One artifact's stream: what was sent last and what to send next.
struct Follow {
    st: AppState,
    id: ArtifactId,
    changes: Receiver<StatusView>,
    erasures: Receiver<ArtifactId>,
    last: Option<StatusView>,
    next: Option<StatusView>,
    /// The `erased` event was sent: the stream ends.
    erased: bool,
    _permit: OwnedSemaphorePermit,
}

/// What an artifact's stream sends next.
enum Change {
    Status(Box<StatusView>),
    Erased,
}

impl Follow {
    /// The next snapshot to send, or the artifact's erasure, or `None`
    /// once the last one sent was final or the erasure (or the table is
    /// gone).
    async fn next_change(&mut self) -> Option<Change> {
        if self.erased || self.last.as_ref().is_some_and(|v| v.state.is_terminal()) {
            return None;
        }
        if let Some(v) = self.next.take() {
            return Some(Change::Status(Box::new(v)));
        }
        loop {
            let view = tokio::select! {
                change = self.changes.recv() => match change {
                    Ok(v) if v.artifact_id == self.id => v,
                    Ok(_) => continue,
                    // Missed changes: the table has the newest, or none
                    // once erased.
                    Err(RecvError::Lagged(_)) => match self.st.table.get(self.id).ok()? {
                        Some(v) => v,
                        None => return Some(Change::Erased),
                    },
                    Err(RecvError::Closed) => return None,
                },
                erased = self.erasures.recv() => match erased {
                    Ok(id) if id == self.id => return Some(Change::Erased),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) if self.st.table.get(self.id).ok()?.is_none() => {
                        return Some(Change::Erased);
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
            };
            if self.last.as_ref() != Some(&view) {
                return Some(Change::Status(Box::new(view)));
            }
        }
    }
}

/// The last event of an erased artifact's stream.
fn erased_event(id: ArtifactId) -> Event {
    Event::default()
        .event("erased")
        .data(format!("{{\"artifact_id\":\"{id}\"}}"))
}

/// `/v1/events` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Only changes into this state (PENDING, IN_PROGRESS, COMPLETED, FAILED).
    pub state: Option<String>,
}

/// Every change of the read model from now on, optionally only those into
/// one state.
#[utoipa::path(get, path = "/v1/events", tag = "artifacts", params(EventsQuery),
    responses((status = 200, description = "text/event-stream of `status` events (snapshots as JSON), and `lagged` events (`{\"missed\": n}`) when the stream fell behind"), (status = 400, description = "Bad state"), (status = 401, description = "No valid bearer token (API_PROTECT_READS)"), (status = 503, description = "Too many streams open (API_MAX_EVENT_STREAMS)")))]
pub async fn all_events(
    State(st): State<AppState>,
    _reader: Reader,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Events, Problem> {
    let Query(q) = query.map_err(bad_query)?;
    let state = q.state.as_deref().map(parse_state).transpose()?;
    let permit = st.streams.take()?;
    let changes = st.table.subscribe();
    let stream =
        futures::stream::unfold((changes, permit), move |(mut changes, permit)| async move {
            loop {
                let event = match changes.recv().await {
                    Ok(v) if state.is_none_or(|s| s == v.state) => status_event(&v),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}")),
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(event), (changes, permit)));
            }
        });
    let stream: EventStream = Box::pin(stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn status_event(view: &StatusView) -> Event {
    let state: ArtifactState = view.state;
    Event::default()
        .event("status")
        .id(format!(
            "{}-{}-{:?}",
            view.generation, view.updated_at, state
        ))
        .json_data(view)
        .unwrap_or_else(|_| Event::default().event("status"))
}
