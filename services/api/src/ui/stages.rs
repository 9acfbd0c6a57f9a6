//! The stages page: per stage, its replicas, throughput, lag per partition
//! with a time to drain, retries pending, dead letters waiting and whether
//! it is paused or tripped, all read from Kafka (`artifact_kafka::lag`,
//! `stage_control`), and pause/resume behind a confirmation. A reading is
//! cached for [`CACHE_FOR`] and bounded by the configured timeout, so the
//! page never waits long on the broker.

use super::step_times::{Quantiles, StepTimes};
use super::{Nav, error_page, page, reader, writer};
use crate::http::AppState;
use artifact_domain::Stage;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::lag::{DrainEstimate, GroupMembers, GroupTopics, LagReader, PartitionLag};
use artifact_kafka::stage_control::{self, StageControl};
use artifact_kafka::topics::TopicNames;
use artifact_kafka::{dead_letters, now_ms};
use axum::Form;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a reading of Kafka serves pages before the next is taken.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// How far back throughput and drain estimates look.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// One stage as read from Kafka.
#[derive(Debug, Clone, Default)]
pub struct StageRow {
    pub stage: Option<Stage>,
    /// The stage's consumer group.
    pub group: String,
    /// Its members and state (`None`: not read).
    pub members: Option<GroupMembers>,
    /// Per partition of the input topic: its lag and the seconds it takes
    /// to drain at that partition's recent rate (`None`: not yet known).
    pub input: Vec<(PartitionLag, Option<f64>)>,
    /// Records waiting on the retry topic.
    pub retries: i64,
    /// Dead letters not replayed yet.
    pub dead_letters: i64,
    /// Offsets the group committed per second recently, over this span.
    pub rate: Option<(f64, Duration)>,
    /// Seconds until the input lag is consumed at that rate.
    pub drain: Option<f64>,
    /// The operator's record, if it says paused.
    pub paused: Option<StageControl>,
    /// Replicas whose circuit breaker is open.
    pub tripped: Vec<StageControl>,
    /// Its step times over the artifacts finished lately.
    pub steps: Option<Quantiles>,
}

/// A reading of every stage.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// When it was taken (epoch ms).
    pub at_ms: i64,
    pub stages: Vec<StageRow>,
    /// Why the pause records could not be read, if they could not.
    pub control_error: Option<String>,
}

/// A reading, or why there is none.
pub type ReadResult = Result<Arc<Reading>, String>;

/// Reads the stages from Kafka, caching a reading for [`CACHE_FOR`].
pub struct PipelineView {
    conn: ConnectionConfig,
    group_prefix: String,
    timeout: Duration,
    /// The reader (made on first use) and rate estimates, used by one
    /// blocking read at a time.
    inner: Arc<Mutex<Inner>>,
    cache: tokio::sync::Mutex<Option<(Instant, ReadResult)>>,
    steps: Arc<StepTimes>,
}

#[derive(Default)]
struct Inner {
    reader: Option<LagReader>,
    /// Per group, and per (topic, partition).
    estimates: BTreeMap<String, DrainEstimate>,
    partitions: BTreeMap<(String, i32), DrainEstimate>,
}

impl PipelineView {
    /// Stages' groups are `<group_prefix><stage>`; a reading that takes
    /// longer than `timeout` is an error.
    pub fn new(conn: ConnectionConfig, group_prefix: String, timeout: Duration) -> Self {
        PipelineView {
            conn,
            group_prefix,
            timeout,
            inner: Arc::default(),
            cache: tokio::sync::Mutex::new(None),
            steps: Arc::default(),
        }
    }

    /// The stages' step times, which [`StepTimes::follow`] keeps.
    pub fn steps(&self) -> &Arc<StepTimes> {
        &self.steps
    }

    /// The connection the pages read and write through.
    pub fn conn(&self) -> &ConnectionConfig {
        &self.conn
    }

    /// The bound on a reading.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Each stage's group and the replay group of its dead letters, with
    /// the topics they commit on.
    fn groups(&self) -> Vec<GroupTopics> {
        let names = TopicNames::from_config(&self.conn);
        let mut groups = artifact_kafka::lag::stage_groups(&self.conn, &self.group_prefix);
        for s in Stage::ALL {
            groups.push(GroupTopics {
                group: replay_group(&self.conn, s),
                topics: vec![names.dlq(s)],
            });
        }
        groups
    }

    /// The newest reading, at most [`CACHE_FOR`] old (a failed one too, so
    /// a broker that is down is not asked on every request).
    pub async fn reading(&self) -> Result<Arc<Reading>, String> {
        let mut cache = self.cache.lock().await;
        if let Some((at, r)) = cache.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return r.clone();
        }
        let r = match tokio::time::timeout(self.timeout, self.read()).await {
            Ok(Ok(r)) => Ok(Arc::new(r)),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!(
                "Kafka did not answer within {} s",
                self.timeout.as_secs_f64()
            )),
        };
        if let Err(e) = &r {
            tracing::warn!(error = %e, "console: reading the stages from Kafka failed");
        }
        *cache = Some((Instant::now(), r.clone()));
        r
    }

    /// Forgets the cached reading (after a pause, resume or replay).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    async fn read(&self) -> anyhow::Result<Reading> {
        let (conn, groups, inner) = (self.conn.clone(), self.groups(), self.inner.clone());
        let names = TopicNames::from_config(&self.conn);
        let prefix = self.group_prefix.clone();
        let lag = tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.reader.is_none() {
                inner.reader = Some(LagReader::new(&conn, groups)?);
            }
            let reader = inner.reader.as_ref().expect("made above");
            let rows = reader.read()?;
            let members = reader.members()?;
            let stages = assemble(&mut inner, &names, &conn, &prefix, rows, members);
            anyhow::Ok(stages)
        });
        let control = stage_control::read(&self.conn);
        let (lag, control) = tokio::join!(lag, control);
        let mut stages = lag??;
        for row in &mut stages {
            row.steps = row.stage.and_then(|s| self.steps.quantiles(s));
        }
        let control_error = match control {
            Ok(records) => {
                for row in &mut stages {
                    let Some(s) = row.stage else { continue };
                    row.paused = records.get(s.name()).filter(|c| c.paused).cloned();
                    row.tripped = records
                        .values()
                        .filter(|c| c.stage == s.name() && c.instance.is_some() && c.paused)
                        .cloned()
                        .collect();
                }
                None
            }
            Err(e) => Some(format!("{e:#}")),
        };
        Ok(Reading {
            at_ms: now_ms(),
            stages,
            control_error,
        })
    }
}

/// The replay group of a stage's dead letters (shared with `artifactctl dlq`).
fn replay_group(conn: &ConnectionConfig, stage: Stage) -> String {
    dead_letters::replay_group_client(conn, stage)
        .get("group.id")
        .unwrap_or_default()
        .to_owned()
}

/// Folds one read of the offsets into rows per stage, sampling the rate
/// estimates.
fn assemble(
    inner: &mut Inner,
    names: &TopicNames,
    conn: &ConnectionConfig,
    prefix: &str,
    rows: Vec<PartitionLag>,
    mut members: BTreeMap<String, GroupMembers>,
) -> Vec<StageRow> {
    let at = Instant::now();
    Stage::ALL
        .iter()
        .map(|&s| {
            let group = format!("{prefix}{}", s.name());
            let (input, retry, dlq) = (names.input(s), names.retry(s), names.dlq(s));
            let replay = replay_group(conn, s);
            let mut row = StageRow {
                stage: Some(s),
                members: members.remove(&group),
                group: group.clone(),
                ..StageRow::default()
            };
            let mut committed = 0;
            let mut input_lag = 0;
            for r in rows.iter().filter(|r| r.group == group) {
                committed += r.committed.unwrap_or(0);
                let e = inner
                    .partitions
                    .entry((r.topic.clone(), r.partition))
                    .or_insert_with(|| DrainEstimate::new(RATE_WINDOW));
                e.sample(at, r.committed.unwrap_or(0));
                if r.topic == input {
                    input_lag += r.lag;
                    row.input.push((r.clone(), e.time_to_drain(r.lag)));
                } else if r.topic == retry {
                    row.retries += r.lag;
                }
            }
            row.dead_letters = rows
                .iter()
                .filter(|r| r.group == replay && r.topic == dlq)
                .map(|r| r.lag)
                .sum();
            let e = inner
                .estimates
                .entry(group)
                .or_insert_with(|| DrainEstimate::new(RATE_WINDOW));
            e.sample(at, committed);
            row.rate = e.rate().zip(e.span());
            row.drain = e.time_to_drain(input_lag);
            row
        })
        .collect()
}

/// A duration for people, from seconds.
pub(crate) fn drain_text(secs: Option<f64>) -> String {
    match secs {
        None => "measuring…".into(),
        Some(0.0) => "drained".into(),
        Some(s) if s.is_infinite() => "not draining".into(),
        Some(s) if s < 60.0 => format!("{s:.0} s"),
        Some(s) if s < 3600.0 => format!("{:.0} min", s / 60.0),
        Some(s) => format!("{:.1} h", s / 3600.0),
    }
}

fn state_badge(row: &StageRow) -> Markup {
    html! {
        @if row.paused.is_some() {
            span.badge.s-pending { "PAUSED" }
        } @else if !row.tripped.is_empty() {
            span.badge.s-failed { "TRIPPED" }
        } @else if row.members.as_ref().is_some_and(|m| m.members.is_empty()) {
            span.badge.s-cancelled { "NO REPLICA" }
        } @else {
            span.badge.s-completed { "RUNNING" }
        }
    }
}

/// The body of the stages page, from a reading or the reason there is none.
pub fn render(reading: &Result<Arc<Reading>, String>, can_act: bool) -> Markup {
    html! {
        h1 { "Stages" }
        div #live data-live="stages" data-poll=(CACHE_FOR.as_millis()) {
            p.live-status #live-status role="status" aria-live="polite" {}
            @match reading {
                Err(why) => {
                    p.error role="alert" #stages-error { "Kafka could not be read: " (why) "." }
                    p { "Check that the brokers in KAFKA_BOOTSTRAP_SERVERS are up and reachable from the API, then reload this page. "
                        code { "artifactctl lag" } " and " code { "artifactctl stage status" } " read the same from a shell." }
                }
                Ok(r) => {
                    @if let Some(e) = &r.control_error {
                        p.error role="alert" { "Whether stages are paused could not be read: " (e) ". Create the topic with " code { "artifactctl topics create" } " if it is missing." }
                    }
                    div.table-wrap { table #stages {
                        thead { tr {
                            th scope="col" { "Stage" }
                            th scope="col" { "State" }
                            th scope="col" { "Replicas" }
                            th scope="col" { "Throughput" }
                            th scope="col" { "Lag" }
                            th.wide scope="col" { "Time to drain" }
                            th scope="col" { "Retries pending" }
                            th scope="col" { "Dead letters" }
                        } }
                        tbody {
                            @for row in &r.stages {
                                @let name = row.stage.map_or("?", |s| s.name());
                                @let lag: i64 = row.input.iter().map(|(p, _)| p.lag).sum();
                                tr data-stage=(name) {
                                    th scope="row" { a href={ "#stage-" (name) } { (name) } }
                                    td { (state_badge(row)) }
                                    td.replicas { @match &row.members {
                                        Some(m) => { (m.members.len()) }
                                        None => { "–" }
                                    } }
                                    td { @match row.rate {
                                        Some((rate, _)) => { (format!("{rate:.1}")) "/s" }
                                        None => { "measuring…" }
                                    } }
                                    td.lag data-lag=(lag) { (lag) }
                                    td.wide { (drain_text(row.drain)) }
                                    td.retries { (row.retries) }
                                    td.dlq { a href={ "/ui/dead-letters?stage=" (name) } { (row.dead_letters) } }
                                }
                            }
                        }
                    } }
                    p.hint { "Read from Kafka " (super::time(r.at_ms)) "; a reading serves for " (CACHE_FOR.as_secs()) " s. Throughput: offsets the stage's group committed per second (input and retry topics) between readings; the time to drain divides the lag by it. A step time runs from the outcome before the stage's (the upload, for the first) to its own, queueing and retries included. Lag counts records a read_committed reader would still get; dead letters count those not yet replayed." }
                    @for row in &r.stages {
                        @let name = row.stage.map_or("?", |s| s.name());
                        section.stage id={ "stage-" (name) } aria-labelledby={ "stage-h-" (name) } {
                            h2 id={ "stage-h-" (name) } { (name) " " (state_badge(row)) }
                            dl.facts-inline {
                                dt { "Consumer group" } dd { code { (row.group) } }
                                @if let Some(m) = &row.members {
                                    dt { "Group state" } dd { (m.state) }
                                    dt { "Replicas" } dd {
                                        @if m.members.is_empty() { "none: no replica is consuming" }
                                        @else { @for (i, who) in m.members.iter().enumerate() { @if i > 0 { ", " } code { (who) } } }
                                    }
                                }
                                @if let Some((rate, span)) = row.rate {
                                    dt { "Throughput" } dd { (format!("{rate:.2}")) " offsets/s over the last " (span.as_secs()) " s" }
                                }
                                dt { "Step time p50 / p99" } @match row.steps {
                                    Some(q) => dd.steps { (q.p50_ms) " ms / " (q.p99_ms) " ms, over the last " (q.count) " artifacts finished" }
                                    None => dd.hint { "no artifact has finished since the API started" }
                                }
                                @if let Some(c) = &row.paused {
                                    dt { "Paused" } dd { "by the operator" @if let Some(why) = &c.reason { ": " (why) } " since " (super::time(c.updated_at)) }
                                }
                                @for c in &row.tripped {
                                    dt { "Breaker open" } dd.error { "replica " (c.instance.as_deref().unwrap_or("?")) @if let Some(why) = &c.reason { ": " (why) } }
                                }
                            }
                            div.table-wrap { table.partitions {
                                thead { tr { th scope="col" { "Input partition" } th scope="col" { "Committed" } th scope="col" { "End" } th scope="col" { "Lag" } th scope="col" { "Time to drain" } } }
                                tbody {
                                    @for (p, drain) in &row.input {
                                        tr data-partition=(p.partition) {
                                            td { code { (p.topic) "/" (p.partition) } }
                                            td { @match p.committed { Some(c) => { (c) } None => { "none" } } }
                                            td { (p.high) }
                                            td { (p.lag) }
                                            td { (drain_text(*drain)) }
                                        }
                                    }
                                }
                            } }
                            @if can_act {
                                p.stage-actions {
                                    @if row.paused.is_some() {
                                        a.button href={ "/ui/stages/" (name) "/resume" } { "Resume " (name) "…" }
                                    } @else {
                                        a.button href={ "/ui/stages/" (name) "/pause" } { "Pause " (name) "…" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/stages`.
pub async fn stages(State(st): State<AppState>, headers: HeaderMap, uri: OriginalUri) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let reading = st.pipeline.reading().await;
    let may_write = st.access.may_write(session.caller);
    let status = if reading.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = render(&reading, may_write);
    (status, page("Stages", Nav::Stages, Some(&session), body)).into_response()
}

fn pause_or_resume(s: &str) -> Option<bool> {
    match s {
        "pause" => Some(true),
        "resume" => Some(false),
        _ => None,
    }
}

fn no_such_page(session: &super::Session) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        Some(session),
        "There is no such stage or action.",
        html! { a href="/ui/stages" { "Back to the stages" } },
    )
}

/// `GET /ui/stages/{stage}/{pause|resume}`: the confirmation.
pub async fn confirm(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path((stage, action)): Path<(String, String)>,
) -> Response {
    let session = match reader(&st, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (Ok(stage), Some(pause)) = (stage.parse::<Stage>(), pause_or_resume(&action)) else {
        return no_such_page(&session);
    };
    let name = stage.name();
    let body = html! {
        p.crumbs { a href="/ui/stages" { "Stages" } " › " (name) }
        h1 { "Really " (action) " " (name) "?" }
        @if pause {
            p { "Every replica of " (name) " finishes what it started and reads no new input; it keeps its partitions and stays ready. Its lag grows until it is resumed." }
        } @else {
            p { "Every replica of " (name) " reads input again and works off the backlog." }
        }
        form.confirm method="post" action={ "/ui/stages/" (name) "/" (action) } {
            input type="hidden" name="csrf" value=(session.csrf);
            @if pause {
                label { "Reason (shown with the state) " input type="text" name="reason" maxlength="200"; }
            }
            button type="submit" autofocus { "Yes, " (action) }
            " "
            a href="/ui/stages" { "No, go back" }
        }
    };
    page(
        &format!("Confirm {action}"),
        Nav::Stages,
        Some(&session),
        body,
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct PauseForm {
    csrf: String,
    reason: Option<String>,
}

/// `POST /ui/stages/{stage}/{pause|resume}`: the operator's record, as
/// `artifactctl stage pause|resume` writes it.
pub async fn act(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((stage, action)): Path<(String, String)>,
    Form(f): Form<PauseForm>,
) -> Response {
    let session = match writer(&st, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (Ok(stage), Some(pause)) = (stage.parse::<Stage>(), pause_or_resume(&action)) else {
        return no_such_page(&session);
    };
    let reason = f
        .reason
        .map(|r| r.trim().chars().take(200).collect::<String>())
        .filter(|r| !r.is_empty() && pause);
    let conn = st.pipeline.conn().clone();
    let written = tokio::time::timeout(
        st.pipeline.timeout() * 4,
        stage_control::write(&conn, stage, pause, reason),
    )
    .await;
    match written {
        Ok(Ok(())) => {
            tracing::info!(stage = stage.name(), pause, "console: stage {action}d");
            st.pipeline.invalidate().await;
            Redirect::to("/ui/stages").into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = format!("{e:#}"), "console: {action} failed");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&session),
                &format!(
                    "The {action} of {} could not be written to Kafka.",
                    stage.name()
                ),
                html! { "Check that Kafka and the schema registry are reachable, then " a href={ "/ui/stages/" (stage.name()) "/" (action) } { "try again" } ", or use " code { "artifactctl stage " (action) " " (stage.name()) } "." },
            )
        }
        Err(_) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&session),
            &format!(
                "Kafka did not confirm the {action} of {} in time; it may still be written.",
                stage.name()
            ),
            html! { a href="/ui/stages" { "Look at the stages" } " to see whether it took." },
        ),
    }
}
