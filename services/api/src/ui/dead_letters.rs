//! The dead-letters page: a stage's newest letters with their error
//! headers, source offsets and artifact, and replay behind a confirmation,
//! done as `artifactctl dlq replay` does it (`artifact_kafka::dead_letters`:
//! the letters not replayed yet go back to their source topic and
//! partition, and the shared replay position moves past them).

use super::{Nav, error_page, page, reader, time, writer};
use crate::http::AppState;
use artifact_domain::{ArtifactId, Stage};
use artifact_kafka::dead_letters::{self, DeadLetters, header, not_replayable};
use artifact_kafka::headers;
use axum::Form;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use rdkafka::message::{Message, OwnedMessage};
use serde::Deserialize;

/// Letters shown at most, newest first.
pub const SHOWN: usize = 100;

/// One letter as the page shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub at_ms: Option<i64>,
    pub artifact: Option<ArtifactId>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub source: Option<String>,
    pub replayed: bool,
    /// Why it cannot be replayed, if it cannot.
    pub not_replayable: Option<String>,
}

impl Letter {
    /// The page's view of a record of the dead-letter topic.
    pub fn of(m: &OwnedMessage, dead: &DeadLetters) -> Self {
        Letter {
            partition: m.partition(),
            offset: m.offset(),
            at_ms: m.timestamp().to_millis(),
            artifact: m
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.parse().ok()),
            error_kind: header(m, headers::ERROR_KIND),
            error: header(m, headers::ERROR),
            source: header(m, headers::SOURCE_TOPIC).map(|t| {
                format!(
                    "{t} / {} @ {}",
                    header(m, headers::SOURCE_PARTITION).unwrap_or_else(|| "?".into()),
                    header(m, headers::SOURCE_OFFSET).unwrap_or_else(|| "?".into())
                )
            }),
            replayed: dead.is_replayed(m),
            not_replayable: not_replayable(m),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DlqQuery {
    stage: Option<String>,
    replayed: Option<usize>,
    skipped: Option<usize>,
}

fn tabs(current: Stage) -> Markup {
    html! {
        nav.tabs aria-label="Stages" {
            @for s in Stage::ALL {
                a href={ "/ui/dead-letters?stage=" (s.name()) } aria-current=[(s == current).then_some("page")] { (s.name()) }
            }
        }
    }
}

/// The body of the page for `stage`: its letters (newest first, at most
/// [`SHOWN`]) and how many wait, or why they could not be read.
pub fn render(
    stage: Stage,
    letters: &Result<Vec<Letter>, String>,
    can_replay: bool,
    done: Option<(usize, usize)>,
) -> Markup {
    let name = stage.name();
    html! {
        h1 { "Dead letters" }
        (tabs(stage))
        @if let Some((n, skipped)) = done {
            p.notice role="status" #replay-done { "Replayed " (n) " dead letters of " (name) " to their source topics"
                @if skipped > 0 { "; " (skipped) " could not be (see below)" } "." }
        }
        @match letters {
            Err(why) => {
                p.error role="alert" #dlq-error { "The dead letters of " (name) " could not be read: " (why) "." }
                p { "Check that Kafka is reachable from the API and the topic exists (" code { "artifactctl topics create" } "), then reload. " code { "artifactctl dlq list " (name) } " reads the same." }
            }
            Ok(list) if list.is_empty() => {
                div.empty #dlq-empty { p { "No dead letters for " (name) ". Records the stage cannot process after its retries land here, with the error." } }
            }
            Ok(list) => {
                @let waiting = list.iter().filter(|l| !l.replayed).count();
                p { "Letters of " (name) " shown, newest first: " (list.len()) "; not replayed yet: " strong #waiting { (waiting) } "."
                    @if list.len() == SHOWN { " Older ones: " code { "artifactctl dlq list " (name) } "." } }
                div.table-wrap { table #letters {
                    thead { tr {
                        th scope="col" { "When" }
                        th scope="col" { "Artifact" }
                        th scope="col" { "Error" }
                        th scope="col" { "Source" }
                        th.wide scope="col" { "Letter" }
                        th scope="col" { "Replayed" }
                    } }
                    tbody {
                        @for l in list {
                            tr data-offset=(l.offset) data-partition=(l.partition) data-artifact=[l.artifact] {
                                td { @match l.at_ms { Some(t) => { (time(t)) } None => { "–" } } }
                                td { @match l.artifact {
                                    Some(id) => { a href={ "/ui/artifacts/" (id) } { small.id { (id) } } }
                                    None => { "–" }
                                } }
                                td {
                                    @if let Some(k) = &l.error_kind { span.kind { (k) } ": " }
                                    span.error { (l.error.as_deref().unwrap_or("(no error header)")) }
                                    @if let Some(why) = &l.not_replayable { div.hint { "Not replayable: " (why) } }
                                }
                                td { code { (l.source.as_deref().unwrap_or("–")) } }
                                td.wide { code { (l.partition) " @ " (l.offset) } }
                                td.replayed { @if l.replayed { "yes" } @else { "no" } }
                            }
                        }
                    }
                } }
                @if can_replay && waiting > 0 {
                    p { a.button href={ "/ui/dead-letters/" (name) "/replay" } { "Replay " (name) "’s dead letters…" } }
                }
            }
        }
        p.hint { "Replay writes every letter not replayed yet back to the topic and partition it came from, as " code { "artifactctl dlq replay " (name) } " does; both keep one replay position. Fix the cause first, or the records come back here." }
    }
}

async fn recent(st: &AppState, stage: Stage) -> Result<Vec<Letter>, String> {
    let conn = st.pipeline.conn().clone();
    let within = st.pipeline.timeout();
    let read = tokio::task::spawn_blocking(move || {
        let dead = dead_letters::read_recent(&conn, stage, SHOWN, within)?;
        anyhow::Ok(
            dead.letters
                .iter()
                .map(|m| Letter::of(m, &dead))
                .collect::<Vec<_>>(),
        )
    });
    match tokio::time::timeout(within + within / 2, read).await {
        Ok(Ok(Ok(l))) => Ok(l),
        Ok(Ok(Err(e))) => Err(format!("{e:#}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "Kafka did not answer within {} s",
            within.as_secs_f64()
        )),
    }
}

/// `GET /ui/dead-letters`.
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    query: Result<Query<DlqQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let stage = match q.stage.as_deref().map(str::parse::<Stage>) {
        None => Stage::ALL[0],
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&session),
                "There is no such stage.",
                html! { a href="/ui/dead-letters" { "Back to the dead letters" } },
            );
        }
    };
    let letters = recent(&st, stage).await;
    let status = if letters.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let done = q.replayed.map(|n| (n, q.skipped.unwrap_or(0)));
    let body = render(stage, &letters, st.access.may_write(session.caller), done);
    (
        status,
        page("Dead letters", Nav::DeadLetters, Some(&session), body),
    )
        .into_response()
}

fn no_stage(session: &super::Session) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        Some(session),
        "There is no such stage.",
        html! { a href="/ui/dead-letters" { "Back to the dead letters" } },
    )
}

/// `GET /ui/dead-letters/{stage}/replay`: the confirmation.
pub async fn confirm(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(stage): Path<String>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Ok(stage) = stage.parse::<Stage>() else {
        return no_stage(&session);
    };
    let name = stage.name();
    let body = html! {
        p.crumbs { a href={ "/ui/dead-letters?stage=" (name) } { "Dead letters" } " › " (name) }
        h1 { "Really replay the dead letters of " (name) "?" }
        p { "Every letter of " (name) " not replayed yet goes back to the topic and partition it came from, and " (name) " processes it again. If the cause is not fixed, it fails again and comes back here." }
        form.confirm method="post" action={ "/ui/dead-letters/" (name) "/replay" } {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" autofocus { "Yes, replay" }
            " "
            a href={ "/ui/dead-letters?stage=" (name) } { "No, go back" }
        }
    };
    page("Confirm replay", Nav::DeadLetters, Some(&session), body).into_response()
}

#[derive(Debug, Deserialize)]
pub struct ReplayForm {
    csrf: String,
}

/// `POST /ui/dead-letters/{stage}/replay`.
pub async fn replay(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(stage): Path<String>,
    Form(f): Form<ReplayForm>,
) -> Response {
    let session = match writer(&st, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Ok(stage) = stage.parse::<Stage>() else {
        return no_stage(&session);
    };
    let conn = st.pipeline.conn().clone();
    // As `artifactctl dlq replay <stage>`: read the whole topic, write back
    // the letters not replayed yet, then move the replay position.
    let work = async move {
        let c = conn.clone();
        let dead = tokio::task::spawn_blocking(move || dead_letters::read_dlq(&c, stage)).await??;
        let letters: Vec<&OwnedMessage> = dead.waiting().collect();
        let skipped = letters
            .iter()
            .filter(|m| not_replayable(m).is_some())
            .count();
        let n = dead_letters::replay(&conn, &letters).await?;
        dead_letters::mark_replayed(&conn, stage, &letters)?;
        anyhow::Ok((n, skipped))
    };
    let within = std::time::Duration::from_secs(90);
    match tokio::time::timeout(within, work).await {
        Ok(Ok((n, skipped))) => {
            tracing::info!(
                stage = stage.name(),
                replayed = n,
                skipped,
                "console: dead letters replayed"
            );
            st.pipeline.invalidate().await;
            Redirect::to(&format!(
                "/ui/dead-letters?stage={}&replayed={n}&skipped={skipped}",
                stage.name()
            ))
            .into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = format!("{e:#}"), "console: replay failed");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&session),
                &format!(
                    "The dead letters of {} could not be replayed.",
                    stage.name()
                ),
                html! { "Check that Kafka is reachable, then " a href={ "/ui/dead-letters?stage=" (stage.name()) } { "look at the letters" } " again: letters written back before the failure are not marked replayed, so a second replay writes them again." },
            )
        }
        Err(_) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&session),
            &format!(
                "The replay of {} did not finish within {} s.",
                stage.name(),
                within.as_secs()
            ),
            html! { "Use " code { "artifactctl dlq replay " (stage.name()) } " for a large dead-letter topic." },
        ),
    }
}
