//! The artifacts pages: the list with its filters and counts, one artifact
//! with its timeline, its text and upload, and the actions on it (each
//! confirmed on a page of its own before its form is posted).

use super::{Nav, encode, error_page, page, problem_page, reader, time, writer};
use crate::http::auth::{Reader, Writer};
use crate::http::problem::Problem;
use crate::http::{AppState, control, events, handlers};
use artifact_domain::{ArtifactId, ArtifactState, Outcome, Stage, StatusView};
use artifact_kafka::now_ms;
use axum::Form;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

/// Rows on a page.
pub const PAGE: usize = 50;
/// Artifacts a filtered list reads at most per request before it answers
/// with what it found and a link to search on: bounds the server time of a
/// filter that matches little.
pub const SCAN_BUDGET: usize = 5_000;
/// Artifacts read from the table at a time while filtering.
const CHUNK: usize = 500;

const STATES: [(ArtifactState, &str); 5] = [
    (ArtifactState::Pending, "PENDING"),
    (ArtifactState::InProgress, "IN_PROGRESS"),
    (ArtifactState::Completed, "COMPLETED"),
    (ArtifactState::Failed, "FAILED"),
    (ArtifactState::Cancelled, "CANCELLED"),
];

fn state_name(s: ArtifactState) -> &'static str {
    STATES.iter().find(|(x, _)| *x == s).map_or("?", |(_, n)| n)
}

/// How far back the time filter reaches.
const SINCE: [(&str, &str, i64); 4] = [
    ("1h", "last hour", 3_600_000),
    ("24h", "last 24 hours", 86_400_000),
    ("7d", "last 7 days", 7 * 86_400_000),
    ("30d", "last 30 days", 30 * 86_400_000),
];

/// The list's filters, as the form sends them (empty means any).
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub state: Option<String>,
    pub stage: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub q: Option<String>,
    pub since: Option<String>,
    /// Created at or after, `YYYY-MM-DDTHH:MM` in the viewer's time.
    pub from: Option<String>,
    /// Created before, likewise.
    pub to: Option<String>,
    /// The viewer's offset from UTC in minutes, as JavaScript's
    /// `getTimezoneOffset` gives it (UTC minus local); without it, UTC.
    pub tz: Option<String>,
    pub cursor: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The filters, checked.
#[derive(Debug, Default)]
pub struct Filters {
    pub state: Option<ArtifactState>,
    pub stage: Option<Stage>,
    pub kind: Option<String>,
    pub text: Option<String>,
    pub since_ms: Option<i64>,
    /// Created before this, in epoch ms.
    pub until_ms: Option<i64>,
    pub cursor: Option<ArtifactId>,
}

/// Epoch ms of a date and time of the form `datetime-local` inputs send
/// (seconds optional; a date alone is its midnight), in the zone `tz_min`
/// minutes behind UTC.
fn local_ms(s: &str, tz_min: i64) -> Result<i64, String> {
    use chrono::{NaiveDate, NaiveDateTime};
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
        .or_else(|_| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_time(Default::default()))
        })
        .map(|t| t.and_utc().timestamp_millis() + tz_min * 60_000)
        .map_err(|_| format!("not a date and time: {s:?}"))
}

impl Filters {
    /// The filters of a query, or what is wrong with it.
    pub fn parse(q: &ListQuery, now_ms: i64) -> Result<Self, String> {
        let tz_min = given(&q.tz)
            .map(|t| {
                t.parse::<i64>()
                    .map_err(|_| format!("not a time zone offset: {t:?}"))
            })
            .transpose()?
            .unwrap_or(0)
            .clamp(-24 * 60, 24 * 60);
        let from = given(&q.from).map(|s| local_ms(s, tz_min)).transpose()?;
        Ok(Filters {
            state: given(&q.state)
                .map(|s| {
                    STATES
                        .iter()
                        .find(|(_, n)| n.eq_ignore_ascii_case(s))
                        .map(|(x, _)| *x)
                        .ok_or_else(|| format!("unknown state {s:?}"))
                })
                .transpose()?,
            stage: given(&q.stage)
                .map(|s| s.parse::<Stage>().map_err(|e| e.to_string()))
                .transpose()?,
            kind: given(&q.kind).map(str::to_ascii_lowercase),
            text: given(&q.q).map(str::to_lowercase),
            since_ms: given(&q.since)
                .map(|s| {
                    SINCE
                        .iter()
                        .find(|(k, _, _)| *k == s)
                        .map(|(_, _, ms)| now_ms - ms)
                        .ok_or_else(|| format!("unknown time range {s:?}"))
                })
                .transpose()?
                .max(from),
            until_ms: given(&q.to).map(|s| local_ms(s, tz_min)).transpose()?,
            cursor: given(&q.cursor)
                .map(|c| c.parse().map_err(|_| "the page link is broken".to_owned()))
                .transpose()?,
        })
    }

    /// Whether filters beyond the state (which the table applies) are set.
    fn scans(&self) -> bool {
        self.stage.is_some()
            || self.kind.is_some()
            || self.text.is_some()
            || self.since_ms.is_some()
            || self.until_ms.is_some()
    }

    /// Whether `v` passes the filters beyond the state.
    pub fn admits(&self, v: &StatusView) -> bool {
        if let Some(stage) = self.stage
            && v.current_stage != Some(stage)
            && v.failed_stage != Some(stage)
        {
            return false;
        }
        if let Some(kind) = &self.kind {
            let detected = v.context.detected_content_type.as_deref().unwrap_or("");
            if !detected.to_ascii_lowercase().starts_with(kind.as_str()) {
                return false;
            }
        }
        if let Some(text) = &self.text {
            let name = v.context.filename.as_deref().unwrap_or("").to_lowercase();
            if !name.contains(text.as_str())
                && !v.artifact_id.to_string().starts_with(text.as_str())
            {
                return false;
            }
        }
        let created = v.created_at.unwrap_or(v.updated_at);
        if self.since_ms.is_some_and(|since| created < since)
            || self.until_ms.is_some_and(|until| created >= until)
        {
            return false;
        }
        true
    }
}

/// A page of the list.
#[derive(Debug, Default)]
pub struct Found {
    pub items: Vec<StatusView>,
    /// Where the next page starts, if there is one.
    pub next: Option<ArtifactId>,
    /// Artifacts read to fill the page.
    pub scanned: usize,
    /// Whether the page stopped at [`SCAN_BUDGET`] rather than filled.
    pub budget_spent: bool,
}

/// Up to [`PAGE`] artifacts that pass `f`, reading at most [`SCAN_BUDGET`].
pub fn find(st: &AppState, f: &Filters) -> Result<Found, Problem> {
    if !f.scans() {
        let (items, next) = st.table.list(f.state, f.cursor, PAGE)?;
        let scanned = items.len();
        return Ok(Found {
            items,
            next,
            scanned,
            budget_spent: false,
        });
    }
    let mut found = Found::default();
    let mut cursor = f.cursor;
    loop {
        let (batch, more) = st.table.list(f.state, cursor, CHUNK)?;
        for v in batch {
            found.scanned += 1;
            cursor = Some(v.artifact_id);
            if f.admits(&v) {
                found.items.push(v);
                if found.items.len() == PAGE {
                    found.next = cursor;
                    return Ok(found);
                }
            }
            if found.scanned >= SCAN_BUDGET {
                found.next = cursor;
                found.budget_spent = true;
                return Ok(found);
            }
        }
        if more.is_none() {
            return Ok(found);
        }
    }
}

fn query_string(q: &ListQuery, cursor: Option<ArtifactId>) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("state", &q.state),
        ("stage", &q.stage),
        ("type", &q.kind),
        ("q", &q.q),
        ("since", &q.since),
        ("from", &q.from),
        ("to", &q.to),
        ("tz", &q.tz),
    ] {
        if let Some(v) = given(v) {
            parts.push(format!("{k}={}", encode(v)));
        }
    }
    if let Some(c) = cursor {
        parts.push(format!("cursor={c}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn badge(s: ArtifactState) -> Markup {
    let name = state_name(s);
    html! { span class={ "badge s-" (name.to_ascii_lowercase()) } { (name) } }
}

fn size(bytes: Option<i64>) -> String {
    match bytes {
        None => "–".into(),
        Some(b) if b < 1024 => format!("{b} B"),
        Some(b) if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}

fn stage_of(v: &StatusView) -> Markup {
    html! {
        @if let Some(s) = v.failed_stage { span.failed-at { "failed at " (s.name()) } }
        @else if let Some(s) = v.current_stage { (s.name()) }
        @else { "–" }
    }
}

/// `GET /ui/artifacts`.
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let filters = match Filters::parse(&q, now_ms()) {
        Ok(f) => f,
        Err(why) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                Some(&session),
                &format!("The filters could not be read: {why}."),
                html! { a href="/ui/artifacts" { "Show all artifacts" } },
            );
        }
    };
    let found = match find(&st, &filters) {
        Ok(f) => f,
        Err(p) => return problem_page(p, Some(&session)),
    };
    let counts = st.table.count_by_state();
    let total: usize = counts.values().sum();
    let filtered = filters.state.is_some() || filters.scans();
    let body = html! {
        h1 { "Artifacts" }
        @if !st.table.is_restored() {
            p.notice role="status" { "The read model is still loading after a start; the list fills in within moments." }
        }
        form.filters method="get" action="/ui/artifacts" role="search" {
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for (s, n) in STATES {
                        option value=(n) selected[filters.state == Some(s)] { (n) }
                    }
                }
            }
            label { "Stage (current or failed)"
                select name="stage" {
                    option value="" { "any" }
                    @for s in Stage::ALL {
                        option value=(s.name()) selected[filters.stage == Some(s)] { (s.name()) }
                    }
                }
            }
            label { "Detected type"
                input type="text" name="type" list="types" placeholder="application/pdf" value=[given(&q.kind)];
                datalist #types {
                    option value="application/pdf" {}
                    option value="image/" {}
                    option value="text/" {}
                }
            }
            label { "File name or id"
                input type="search" name="q" value=[given(&q.q)];
            }
            label { "Created"
                select name="since" {
                    option value="" { "any time" }
                    @for (k, label, _) in SINCE {
                        option value=(k) selected[given(&q.since) == Some(k)] { (label) }
                    }
                }
            }
            label { "Created from"
                input type="datetime-local" name="from" value=[given(&q.from)];
            }
            label { "Created before"
                input type="datetime-local" name="to" value=[given(&q.to)];
            }
            input #tz type="hidden" name="tz" value=[given(&q.tz)];
            button type="submit" { "Filter" }
            @if filtered { a.clear href="/ui/artifacts" { "Clear filters" } }
        }
        div #live data-live="list" {
            ul.counts aria-label="Artifacts per state" {
                li { a href="/ui/artifacts" { "All " strong { (total) } } }
                @for (s, n) in STATES {
                    li { a href={ "/ui/artifacts?state=" (n) } { (badge(s)) " " strong.count data-state=(n) { (counts.get(&s).copied().unwrap_or(0)) } } }
                }
            }
            p.live-status #live-status role="status" aria-live="polite" {}
            @if found.items.is_empty() {
                div.empty {
                    @if total == 0 {
                        p { "No artifacts yet. Upload one with " code { "curl -H 'Authorization: Bearer …' -F file=@report.pdf " (origin(&headers)) "/v1/artifacts" } " and it appears here within moments." }
                    } @else if found.budget_spent {
                        p { "None of the " (found.scanned) " artifacts searched so far match." }
                    } @else {
                        p { "No artifact matches these filters. " a href="/ui/artifacts" { "Clear the filters" } " to see all " (total) "." }
                    }
                }
            } @else {
                div.table-wrap {
                    table.artifacts {
                        thead { tr {
                            th scope="col" { "Artifact" }
                            th scope="col" { "State" }
                            th scope="col" { "Stage" }
                            th.wide scope="col" { "Type" }
                            th.wide scope="col" { "Size" }
                            th scope="col" { "Updated" }
                        } }
                        tbody {
                            @for v in &found.items {
                                tr data-id=(v.artifact_id) {
                                    td {
                                        a href={ "/ui/artifacts/" (v.artifact_id) } {
                                            (v.context.filename.as_deref().unwrap_or("(no name)"))
                                        }
                                        br; small.id { (v.artifact_id) }
                                    }
                                    td { (badge(v.state)) }
                                    td { (stage_of(v)) }
                                    td.wide { (v.context.detected_content_type.as_deref().unwrap_or("–")) }
                                    td.wide { (size(v.context.size_bytes)) }
                                    td { (time(v.updated_at)) }
                                }
                            }
                        }
                    }
                }
            }
            nav.paging aria-label="Pages" {
                @if filters.cursor.is_some() {
                    a href={ "/ui/artifacts" (query_string(&q, None)) } { "First page" }
                }
                @if let Some(next) = found.next {
                    @if found.budget_spent {
                        span { "Searched " (found.scanned) " artifacts. " }
                        a rel="next" href={ "/ui/artifacts" (query_string(&q, Some(next))) } { "Search further" }
                    } @else {
                        a rel="next" href={ "/ui/artifacts" (query_string(&q, Some(next))) } { "Next page" }
                    }
                }
            }
            p.hint { "Ordered by artifact id. The list follows changes as they happen." }
        }
    };
    page("Artifacts", Nav::Artifacts, Some(&session), body).into_response()
}

/// This API's address as the browser reached it, for examples.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
        })
        .unwrap_or("localhost:8080");
    format!("http://{host}")
}

fn outcome(o: &Outcome) -> Markup {
    match o {
        Outcome::Succeeded => html! { span.badge.s-completed { "SUCCEEDED" } },
        Outcome::Skipped { reason } => html! { span.badge.s-pending { "SKIPPED" } " " (reason) },
        Outcome::Failed { kind, reason } => html! {
            span.badge.s-failed { "FAILED" } " " span.kind { (format!("{kind:?}").to_lowercase()) } ": " (reason)
        },
    }
}

fn parse(id: &str, session: &super::Session) -> Result<ArtifactId, Box<Response>> {
    id.parse().map_err(|_| {
        Box::new(error_page(
            StatusCode::NOT_FOUND,
            Some(session),
            "That is not an artifact id (a UUID).",
            html! { a href="/ui/artifacts" { "Back to the artifacts" } },
        ))
    })
}

/// The artifact named by the path's `id`, or the page saying why there is
/// none.
fn load(st: &AppState, id: &str, session: &super::Session) -> Result<StatusView, Box<Response>> {
    let id: ArtifactId = parse(id, session)?;
    match st.table.get(id) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Box::new(error_page(
            StatusCode::NOT_FOUND,
            Some(session),
            &format!(
                "No artifact {id}: it may have been erased, or an upload just made appears within moments."
            ),
            html! { a href="/ui/artifacts" { "Back to the artifacts" } },
        ))),
        Err(e) => Err(Box::new(problem_page(e.into(), Some(session)))),
    }
}

#[derive(Debug, Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
    generation: Option<u32>,
}

/// `GET /ui/artifacts/{id}`.
pub async fn one(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(id): Path<String>,
    done: Result<Query<DoneQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let v = match load(&st, &id, &session) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let c = &v.context;
    let name = c.filename.clone().unwrap_or_else(|| "(no name)".into());
    let done = done.ok().map(|Query(d)| d);
    // Each step's time since the one before it (the first: since the upload).
    let durations: Vec<String> = v
        .timeline
        .iter()
        .scan(v.created_at, |before, r| {
            let d = before.map_or_else(|| "–".to_owned(), |b| took(r.processed_at - b));
            *before = Some(r.processed_at);
            Some(d)
        })
        .collect();
    let body = html! {
        p.crumbs { a href="/ui/artifacts" { "Artifacts" } " › " (name) }
        h1 { (name) }
        @if let Some(d) = &done {
            @match d.done.as_deref() {
                Some("reprocess") => p.notice role="status" { "Reprocess started: generation " (d.generation.unwrap_or(0)) " runs every stage again." },
                Some("cancel") => p.notice role="status" { "Cancel recorded: stages skip this generation from now on." },
                _ => {},
            }
        }
        div #live data-live="artifact" data-artifact=(v.artifact_id) {
            p.live-status #live-status role="status" aria-live="polite" {}
            section.facts aria-label="Status" {
                dl {
                    dt { "State" } dd #state { (badge(v.state)) }
                    dt { "Generation" } dd #generation { (v.generation) }
                    dt { "Stage" } dd { (stage_of(&v)) }
                    @if let Some(r) = &v.failure_reason { dt { "Failure" } dd.error #failure { (r) } }
                    dt { "Id" } dd { code { (v.artifact_id) } }
                    dt { "Detected type" } dd { (c.detected_content_type.as_deref().unwrap_or("–")) }
                    dt { "Declared type" } dd { (c.declared_content_type.as_deref().unwrap_or("–")) }
                    dt { "Size" } dd { (size(c.size_bytes)) }
                    dt { "SHA-256" } dd { code.digest { (c.sha256.as_deref().unwrap_or("–")) } }
                    dt { "Pages" } dd { (v.page_count.map_or("–".into(), |n| n.to_string())) }
                    dt { "Words" } dd { (v.word_count.map_or("–".into(), |n| n.to_string())) }
                    dt { "Created" } dd { @if let Some(t) = v.created_at { (time(t)) } @else { "–" } }
                    dt { "Updated" } dd { (time(v.updated_at)) }
                    @if let Some(t) = v.cancelled_at { dt { "Cancelled" } dd { (time(t)) } }
                    dt { "Stored at" } dd { code { (c.storage_location) } }
                }
            }
            section aria-labelledby="summary-h" {
                h2 #summary-h { "Summary" }
                @if let Some(s) = &v.summary {
                    blockquote #summary { (s) }
                    @if let Some(m) = &v.summary_method { p.hint { "Method: " (m) } }
                } @else {
                    p.empty { @if v.state.is_terminal() { "No summary: the summarizer did not produce one for this generation." } @else { "No summary yet; it appears once the summarizer has run." } }
                }
            }
            section aria-labelledby="timeline-h" {
                h2 #timeline-h { "Timeline" }
                @if v.timeline.is_empty() {
                    p.empty { "No stage has reported on generation " (v.generation) " yet." }
                } @else {
                    div.table-wrap { table.timeline #timeline {
                        thead { tr { th scope="col" { "Stage" } th scope="col" { "Outcome" } th scope="col" { "Finished" } th scope="col" { "Took" } th scope="col" { "Attempts" } } }
                        tbody {
                            @for (r, took) in v.timeline.iter().zip(&durations) {
                                tr data-stage=(r.stage.name()) {
                                    td { (r.stage.name()) }
                                    td {
                                        (outcome(&r.outcome))
                                        @if let Some(e) = &r.last_error { div.hint { "Last error: " (e) } }
                                        @if let Some(at) = r.next_retry_at { div.hint { "Next retry: " (time(at)) } }
                                    }
                                    td { (time(r.processed_at)) }
                                    td { (took) }
                                    td { @if let Some(n) = r.attempts { (n) } @else { "–" } }
                                }
                            }
                        }
                    } }
                    p.hint { "“Took” is the time since the previous step finished (or the upload), queueing included." }
                }
            }
            @if !v.dead_letters.is_empty() {
                section aria-labelledby="dlq-h" {
                    h2 #dlq-h { "Dead letters" }
                    div.table-wrap { table #dead-letters {
                        thead { tr { th scope="col" { "Stage" } th scope="col" { "Where" } th scope="col" { "Error" } th scope="col" { "When" } } }
                        tbody {
                            @for d in &v.dead_letters {
                                tr {
                                    td { (d.stage.name()) }
                                    td { code { (d.topic) " / " (d.partition) " @ " (d.offset) } }
                                    td { (d.error) }
                                    td { (time(d.at)) }
                                }
                            }
                        }
                    } }
                    p.hint { "Replay them with artifactctl dlq replay once the cause is fixed." }
                }
            }
            @if !v.history.is_empty() {
                section aria-labelledby="history-h" {
                    h2 #history-h { "Earlier generations" }
                    div.table-wrap { table #history {
                        thead { tr { th scope="col" { "Generation" } th scope="col" { "State" } th scope="col" { "Failure" } th scope="col" { "Summary" } th scope="col" { "Last change" } } }
                        tbody {
                            @for g in &v.history {
                                tr {
                                    td { (g.generation) }
                                    td { (badge(g.state)) }
                                    td {
                                        @if let Some(s) = g.failed_stage { (s.name()) ": " }
                                        @if let Some(r) = &g.failure_reason { (r) } @else if g.failed_stage.is_none() { "–" }
                                    }
                                    td { @if let Some(m) = &g.summary_method { (m) } @else { "–" } }
                                    td { (time(g.updated_at)) }
                                }
                            }
                        }
                    } }
                }
            }
            section aria-labelledby="files-h" {
                h2 #files-h { "Files" }
                ul {
                    li { a href={ "/ui/artifacts/" (v.artifact_id) "/download" } { "Download the upload" } }
                    @if c.text_location.is_some() {
                        li { a href={ "/ui/artifacts/" (v.artifact_id) "/text" } { "Extracted text" } }
                    } @else {
                        li.empty { "No extracted text (yet)." }
                    }
                }
            }
        }
        section.actions aria-labelledby="actions-h" {
            h2 #actions-h { "Actions" }
            ul {
                li { a.button href={ "/ui/artifacts/" (v.artifact_id) "/reprocess" } { "Reprocess…" } }
                @if !v.state.is_terminal() {
                    li { a.button href={ "/ui/artifacts/" (v.artifact_id) "/cancel" } { "Cancel…" } }
                }
                li { a.button.danger href={ "/ui/artifacts/" (v.artifact_id) "/erase" } { "Erase…" } }
            }
        }
    };
    page(&name, Nav::Artifacts, Some(&session), body).into_response()
}

fn took(ms: i64) -> String {
    match ms {
        ..0 => "–".into(),
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// An action on an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Reprocess,
    Cancel,
    Erase,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "reprocess" => Some(Action::Reprocess),
            "cancel" => Some(Action::Cancel),
            "erase" => Some(Action::Erase),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Action::Reprocess => "reprocess",
            Action::Cancel => "cancel",
            Action::Erase => "erase",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Action::Reprocess => {
                "A new generation starts and every stage runs again on the upload."
            }
            Action::Cancel => {
                "Stages skip this generation from now on and it ends CANCELLED. A reprocess can start it again."
            }
            Action::Erase => {
                "The upload and extracted texts are deleted and the artifact disappears from the pipeline. This cannot be undone."
            }
        }
    }
}

fn unknown_action(session: &super::Session) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        Some(session),
        "There is no such page.",
        html! { a href="/ui/artifacts" { "Back to the artifacts" } },
    )
}

/// `GET /ui/artifacts/{id}/{action}`: the confirmation.
pub async fn confirm(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(action) = Action::parse(&action) else {
        return unknown_action(&session);
    };
    let v = match load(&st, &id, &session) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let id = v.artifact_id;
    let name = v.context.filename.clone().unwrap_or_else(|| id.to_string());
    let verb = action.name();
    let body = html! {
        p.crumbs { a href="/ui/artifacts" { "Artifacts" } " › " a href={ "/ui/artifacts/" (id) } { (name) } }
        h1 { "Really " (verb) " " (name) "?" }
        p { (action.explain()) }
        p { "Now: " (badge(v.state)) ", generation " (v.generation) "." }
        form.confirm method="post" action={ "/ui/artifacts/" (id) "/" (verb) } {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" class=[(action == Action::Erase).then_some("danger")] autofocus { "Yes, " (verb) }
            " "
            a href={ "/ui/artifacts/" (id) } { "No, go back" }
        }
    };
    page(
        &format!("Confirm {verb}"),
        Nav::Artifacts,
        Some(&session),
        body,
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: String,
}

/// `POST /ui/artifacts/{id}/{action}`: the action, through the API's own
/// handler (so its checks and answers are the API's).
pub async fn act(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let session = match writer(&st, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(action) = Action::parse(&action) else {
        return unknown_action(&session);
    };
    let w = Writer(session.caller);
    let path = Path(id);
    let done = match action {
        Action::Reprocess => handlers::reprocess(State(st), w, path).await.map(|(_, a)| {
            format!(
                "/ui/artifacts/{}?done=reprocess&generation={}",
                a.artifact_id, a.generation
            )
        }),
        Action::Cancel => control::cancel(State(st), w, path)
            .await
            .map(|(_, c)| format!("/ui/artifacts/{}?done=cancel", c.artifact_id)),
        Action::Erase => control::erase(State(st), w, path)
            .await
            .map(|(_, c)| format!("/ui/erased?id={}", c.artifact_id)),
    };
    match done {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(p) => problem_page(p, Some(&session)),
    }
}

#[derive(Debug, Deserialize)]
pub struct ErasedQuery {
    id: Option<String>,
}

/// `GET /ui/erased`: what an erase left.
pub async fn erased(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Query(q): Query<ErasedQuery>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let id = q.id.as_deref().and_then(|i| i.parse::<ArtifactId>().ok());
    let body = html! {
        h1 { "Erased" }
        p.notice role="status" {
            "Artifact " @if let Some(id) = id { code { (id) } } " is erased: its files are deleted and compaction removes its records. docs/OPERATIONS.md says what remains and for how long."
        }
        p { a href="/ui/artifacts" { "Back to the artifacts" } }
    };
    page("Erased", Nav::Artifacts, Some(&session), body).into_response()
}

/// `GET /ui/artifacts/{id}/text`: the API's text endpoint, for a session.
pub async fn text(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match handlers::get_text(State(st), Reader(session.caller), Path(id)).await {
        Ok(r) => r,
        Err(p) => problem_page(p, Some(&session)),
    }
}

/// `GET /ui/artifacts/{id}/download`: the upload's bytes, as an
/// attachment (never rendered by the browser as if the console's).
pub async fn download(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let v = match load(&st, &id, &session) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let chunks = match st.blobs.read_stream(&v.context.storage_location).await {
        Ok(c) => c,
        Err(e) => {
            let p = if e.is_retriable() {
                Problem::unavailable("the blob store could not be read; retry in a moment")
            } else {
                Problem::not_found("the upload is not in the blob store any more")
            };
            return problem_page(p.caused_by(e), Some(&session));
        }
    };
    let filename: String = v
        .context
        .filename
        .as_deref()
        .unwrap_or("artifact")
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "._-".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect();
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// `GET /ui/events`: the API's event stream, for a session.
pub async fn events(State(st): State<AppState>, headers: HeaderMap, uri: OriginalUri) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let q = events::EventsQuery { state: None };
    match events::all_events(State(st), Reader(session.caller), Ok(Query(q))).await {
        Ok(sse) => sse.into_response(),
        Err(p) => (StatusCode::from_u16(p.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
            .into_response(),
    }
}
