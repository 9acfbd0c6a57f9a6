//! The console's routes, called in process on the API's test state (Kafka
//! and the registry unreachable).

use super::artifacts::{Filters, ListQuery, PAGE, SCAN_BUDGET, find};
use super::dead_letters::{self, Letter};
use super::stages::{self, Reading, StageRow};
use crate::http::tests::{TOKEN, api, call, snapshot};
use artifact_domain::{ArtifactId, ArtifactState, Stage};
use artifact_kafka::lag::{GroupMembers, PartitionLag};
use artifact_kafka::stage_control::StageControl;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use std::sync::Arc;
use std::time::Duration;

async fn body(resp: Response) -> String {
    let b = axum::body::to_bytes(resp.into_body(), 4 << 20)
        .await
        .unwrap();
    String::from_utf8(b.to_vec()).unwrap()
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path).header(header::HOST, "console.test");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, origin: &str, form: &str) -> Request<Body> {
    let mut r = Request::post(path)
        .header(header::HOST, "console.test")
        .header(header::ORIGIN, origin)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::from(form.to_owned())).unwrap()
}

const SAME: &str = "http://console.test";

/// Logs in and returns the `Cookie` header value.
async fn login(app: &axum::Router) -> String {
    let resp = call(
        app.clone(),
        post(
            "/ui/login",
            None,
            SAME,
            &format!("token={TOKEN}&next=/ui/artifacts"),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn pages_need_a_login_and_a_wrong_token_is_refused() {
    let a = api(true);
    let resp = call(a.app.clone(), get("/ui/artifacts?state=FAILED", None)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        resp.headers()[header::LOCATION],
        "/ui/login?next=/ui/artifacts%3Fstate%3DFAILED"
    );
    // The event stream too.
    let resp = call(a.app.clone(), get("/ui/events", None)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = call(
        a.app.clone(),
        post("/ui/login", None, SAME, "token=not-the-token"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(!resp.headers().contains_key(header::SET_COOKIE));
    assert!(body(resp).await.contains("not one the API accepts"));

    // A forged cookie is no session.
    let resp = call(
        a.app.clone(),
        get(
            "/ui/artifacts",
            Some("artifact_console=0.99999999999999.00.00"),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);

    let cookie = login(&a.app).await;
    let resp = call(a.app.clone(), get("/ui/artifacts", Some(&cookie))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(h["cache-control"], "no-store");
    assert!(body(resp).await.contains("No artifacts yet"));
}

#[tokio::test]
async fn a_login_goes_back_only_to_a_console_page() {
    let a = api(true);
    for (next, to) in [
        ("/ui/artifacts/x", "/ui/artifacts/x"),
        ("https://evil.example/", "/ui/artifacts"),
        ("//evil.example/ui/", "/ui/artifacts"),
        ("/ui//evil.example", "/ui/artifacts"),
    ] {
        let form = format!("token={TOKEN}&next={}", super::encode(next));
        let resp = call(a.app.clone(), post("/ui/login", None, SAME, &form)).await;
        assert_eq!(resp.headers()[header::LOCATION], to, "{next}");
    }
}

#[tokio::test]
async fn cross_site_posts_and_wrong_csrf_tokens_are_refused() {
    let a = api(true);
    let id = ArtifactId::new_random();
    a.table
        .upsert(&[snapshot(id, ArtifactState::Completed, 5)])
        .unwrap();
    let cookie = login(&a.app).await;
    let page = body(
        call(
            a.app.clone(),
            get(&format!("/ui/artifacts/{id}/reprocess"), Some(&cookie)),
        )
        .await,
    )
    .await;
    assert!(page.contains("Really reprocess"), "{page}");
    let csrf = csrf_of(&page);
    let path = format!("/ui/artifacts/{id}/reprocess");

    // Another site's form, even with the right token and the cookie.
    let resp = call(
        a.app.clone(),
        post(
            &path,
            Some(&cookie),
            "http://evil.example",
            &format!("csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // The browser's own word for it.
    let mut req = post(&path, Some(&cookie), SAME, &format!("csrf={csrf}"));
    req.headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(
        call(a.app.clone(), req).await.status(),
        StatusCode::FORBIDDEN
    );
    // A wrong or missing token.
    let resp = call(a.app.clone(), post(&path, Some(&cookie), SAME, "csrf=00")).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A login from another site.
    let resp = call(
        a.app.clone(),
        post(
            "/ui/login",
            None,
            "http://evil.example",
            &format!("token={TOKEN}"),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(!resp.headers().contains_key(header::SET_COOKIE));

    // The right one reaches the API's reprocess, which cannot publish here:
    // its answer is shown without internals.
    let resp = call(
        a.app.clone(),
        post(&path, Some(&cookie), SAME, &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = body(resp).await;
    assert!(text.contains("retry the reprocess"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
}

#[tokio::test]
async fn an_artifact_page_shows_its_status_and_actions() {
    let a = api(true);
    let id = ArtifactId::new_random();
    let mut v = snapshot(id, ArtifactState::Failed, 5);
    v.failed_stage = Some(Stage::PdfParser);
    v.failure_reason = Some("not a PDF <script>".into());
    v.context.filename = Some("broken.pdf".into());
    v.timeline = vec![artifact_domain::StageRecord {
        stage: Stage::MimeDetector,
        outcome: artifact_domain::Outcome::Succeeded,
        processed_at: 4,
        attempts: Some(3),
        last_error: Some("registry unavailable".into()),
        next_retry_at: None,
    }];
    v.dead_letters = vec![artifact_domain::DeadLetter {
        stage: Stage::PdfParser,
        topic: "artifact.pdf-parser.dlq".into(),
        partition: 2,
        offset: 41,
        error: "undecodable record".into(),
        at: 5,
    }];
    v.history = vec![artifact_domain::GenerationSummary {
        generation: artifact_domain::Generation::FIRST,
        state: ArtifactState::Completed,
        failed_stage: None,
        failure_reason: None,
        summary_method: Some("extractive".into()),
        created_at: Some(1),
        updated_at: 2,
    }];
    a.table.upsert(&[v]).unwrap();
    let cookie = login(&a.app).await;
    let page = body(
        call(
            a.app.clone(),
            get(&format!("/ui/artifacts/{id}"), Some(&cookie)),
        )
        .await,
    )
    .await;
    assert!(page.contains("failed at pdf-parser"), "{page}");
    assert!(page.contains("not a PDF &lt;script&gt;"), "escaped: {page}");
    assert!(page.contains(&format!("/ui/artifacts/{id}/reprocess")));
    // Attempts, the last error, dead letters and earlier generations.
    assert!(page.contains("<td>3</td>"), "attempts: {page}");
    assert!(page.contains("Last error: registry unavailable"), "{page}");
    assert!(page.contains("artifact.pdf-parser.dlq / 2 @ 41"), "{page}");
    assert!(
        page.contains("Earlier generations") && page.contains("extractive"),
        "{page}"
    );
    // Final: no cancel.
    assert!(!page.contains(&format!("/ui/artifacts/{id}/cancel")));
    let resp = call(
        a.app.clone(),
        get(
            &format!("/ui/artifacts/{}", ArtifactId::new_random()),
            Some(&cookie),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = call(a.app.clone(), get("/ui/artifacts/not-an-id", Some(&cookie))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_list_filters_and_counts() {
    let a = api(true);
    let mut views = Vec::new();
    for i in 0..30u32 {
        let state = if i % 3 == 0 {
            ArtifactState::Failed
        } else {
            ArtifactState::Completed
        };
        let mut v = snapshot(ArtifactId::new_random(), state, 10);
        v.context.filename = Some(format!("file-{i}.pdf"));
        v.failed_stage = (state == ArtifactState::Failed).then_some(Stage::PdfParser);
        views.push(v);
    }
    a.table.upsert(&views).unwrap();
    let cookie = login(&a.app).await;
    let page = body(
        call(
            a.app.clone(),
            get("/ui/artifacts?state=FAILED&q=FILE-1", Some(&cookie)),
        )
        .await,
    )
    .await;
    // file-12, file-15, file-18 (and file-1x) of the failed ones.
    let rows = page.matches("<tr data-id=").count();
    assert_eq!(rows, 3, "{page}");
    assert!(page.contains("data-state=\"FAILED\">10<"), "{page}");
    let resp = call(
        a.app.clone(),
        get("/ui/artifacts?state=NOPE", Some(&cookie)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_filter_that_matches_little_stops_at_its_budget() {
    let a = api(true);
    let views: Vec<_> = (0..SCAN_BUDGET + 10)
        .map(|_| snapshot(ArtifactId::new_random(), ArtifactState::Completed, 10))
        .collect();
    a.table.upsert(&views).unwrap();
    let st = a.state.clone();
    let q = ListQuery {
        q: Some("nothing-matches".into()),
        ..Default::default()
    };
    let f = Filters::parse(&q, 0).unwrap();
    let found = find(&st, &f).unwrap();
    assert!(found.items.is_empty() && found.budget_spent);
    assert_eq!(found.scanned, SCAN_BUDGET);
    let next = Filters {
        cursor: found.next,
        ..f
    };
    let rest = find(&st, &next).unwrap();
    assert_eq!(
        (rest.scanned, rest.budget_spent, rest.next),
        (10, false, None)
    );
    // Unfiltered: a page at a time.
    let all = find(&st, &Filters::default()).unwrap();
    assert_eq!(all.items.len(), PAGE);
}

#[test]
fn a_date_range_is_read_in_the_viewers_time_zone() {
    let q = ListQuery {
        from: Some("2026-12-07T10:00".into()),
        to: Some("2026-12-08".into()),
        // UTC+2: JavaScript's offset is -120.
        tz: Some("-120".into()),
        ..Default::default()
    };
    let f = Filters::parse(&q, 0).unwrap();
    let ten_utc = 1_796_637_600_000; // 2026-12-07T10:00Z
    assert_eq!(f.since_ms, Some(ten_utc - 2 * 3_600_000));
    assert_eq!(f.until_ms, Some(ten_utc + 12 * 3_600_000));
    let at = |ms| {
        let mut v = snapshot(ArtifactId::new_random(), ArtifactState::Completed, 10);
        v.created_at = Some(ms);
        v
    };
    assert!(f.admits(&at(ten_utc - 2 * 3_600_000)), "the start is in");
    assert!(!f.admits(&at(ten_utc - 2 * 3_600_000 - 1)));
    assert!(f.admits(&at(ten_utc + 12 * 3_600_000 - 1)));
    assert!(!f.admits(&at(ten_utc + 12 * 3_600_000)), "the end is out");
    // The later of a preset and a start wins.
    let q = ListQuery {
        since: Some("1h".into()),
        from: Some("1970-01-01T00:00".into()),
        ..Default::default()
    };
    assert_eq!(
        Filters::parse(&q, 7_200_000).unwrap().since_ms,
        Some(3_600_000)
    );
    for bad in [("from", "yesterday"), ("tz", "CET")] {
        let q = ListQuery {
            from: (bad.0 == "from").then(|| bad.1.to_owned()),
            tz: (bad.0 == "tz").then(|| bad.1.to_owned()),
            ..Default::default()
        };
        assert!(Filters::parse(&q, 0).is_err(), "{bad:?}");
    }
}

fn partition(topic: &str, p: i32, committed: Option<i64>, high: i64, lag: i64) -> PartitionLag {
    PartitionLag {
        group: "g".into(),
        topic: topic.into(),
        partition: p,
        committed,
        low: 0,
        high,
        lag,
    }
}

fn control(stage: &str, instance: Option<&str>, reason: &str) -> StageControl {
    StageControl {
        stage: stage.into(),
        paused: true,
        cause: if instance.is_some() {
            "breaker"
        } else {
            "operator"
        }
        .into(),
        reason: Some(reason.into()),
        instance: instance.map(str::to_owned),
        updated_at: 1,
    }
}

#[test]
fn the_stages_page_shows_each_stage_from_a_reading() {
    let stages = vec![
        StageRow {
            stage: Some(Stage::MimeDetector),
            group: "mime-detector".into(),
            members: Some(GroupMembers {
                state: "Stable".into(),
                members: vec![
                    "mime-detector-0 (/10.0.0.1)".into(),
                    "mime-detector-1 (/10.0.0.2)".into(),
                ],
            }),
            input: vec![
                (
                    partition("artifact.created", 0, Some(90), 100, 10),
                    Some(5.0),
                ),
                (partition("artifact.created", 1, None, 7, 7), None),
            ],
            retries: 3,
            dead_letters: 2,
            rate: Some((2.5, Duration::from_secs(30))),
            drain: Some(f64::INFINITY),
            steps: Some(crate::ui::step_times::Quantiles {
                p50_ms: 42,
                p99_ms: 310,
                count: 120,
            }),
            ..StageRow::default()
        },
        StageRow {
            stage: Some(Stage::Summarizer),
            group: "summarizer".into(),
            members: Some(GroupMembers {
                state: "Empty".into(),
                members: vec![],
            }),
            paused: Some(control("summarizer", None, "LLM <maintenance>")),
            tripped: vec![control(
                "summarizer",
                Some("summarizer-1"),
                "LLM answered 503",
            )],
            ..StageRow::default()
        },
    ];
    let reading = Ok(Arc::new(Reading {
        at_ms: 1_700_000_000_000,
        stages,
        control_error: None,
    }));
    let html = stages::render(&reading, true).into_string();
    // The summary row: lag summed over the input partitions, retries, DLQ.
    assert!(
        html.contains(r#"<td class="lag" data-lag="17">17</td>"#),
        "{html}"
    );
    assert!(html.contains(r#"<td class="retries">3</td>"#), "{html}");
    assert!(
        html.contains(r#"href="/ui/dead-letters?stage=mime-detector">2</a>"#),
        "{html}"
    );
    assert!(
        html.contains("2.5</td>") || html.contains("2.5/s"),
        "{html}"
    );
    assert!(html.contains(r#"<td class="replicas">2</td>"#), "{html}");
    // Per partition: nothing committed yet, and a drain time.
    assert!(html.contains("artifact.created/1"), "{html}");
    assert!(html.contains("<td>none</td>"), "{html}");
    assert!(html.contains("<td>5 s</td>"), "{html}");
    assert!(html.contains("not draining"), "{html}");
    // Paused, with the reason escaped, and the open breaker's replica.
    assert!(html.contains("PAUSED"), "{html}");
    assert!(html.contains("LLM &lt;maintenance&gt;"), "{html}");
    assert!(html.contains("replica summarizer-1"), "{html}");
    assert!(html.contains("none: no replica is consuming"), "{html}");
    // Step times where artifacts finished, and what it means where none did.
    assert!(
        html.contains("42 ms / 310 ms, over the last 120 artifacts finished"),
        "{html}"
    );
    assert!(
        html.contains("no artifact has finished since the API started"),
        "{html}"
    );
    // Actions: resume for the paused stage, pause for the other.
    assert!(html.contains("/ui/stages/summarizer/resume"), "{html}");
    assert!(html.contains("/ui/stages/mime-detector/pause"), "{html}");
    let read_only = stages::render(&reading, false).into_string();
    assert!(!read_only.contains("/ui/stages/mime-detector/pause"));
}

#[test]
fn drain_times_read_as_words() {
    assert_eq!(stages::drain_text(None), "measuring…");
    assert_eq!(stages::drain_text(Some(0.0)), "drained");
    assert_eq!(stages::drain_text(Some(f64::INFINITY)), "not draining");
    assert_eq!(stages::drain_text(Some(42.0)), "42 s");
    assert_eq!(stages::drain_text(Some(600.0)), "10 min");
    assert_eq!(stages::drain_text(Some(5400.0)), "1.5 h");
}

#[tokio::test]
async fn the_stages_page_without_kafka_says_what_to_do() {
    let a = api(true);
    let cookie = login(&a.app).await;
    let resp = call(a.app.clone(), get("/ui/stages", Some(&cookie))).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = body(resp).await;
    assert!(page.contains("Kafka could not be read"), "{page}");
    assert!(page.contains("KAFKA_BOOTSTRAP_SERVERS"), "{page}");
    // The navigation marks the page.
    assert!(
        page.contains(r#"<a href="/ui/stages" aria-current="page">Stages</a>"#),
        "{page}"
    );
    assert!(page.contains(r#"href="/ui/dead-letters""#), "{page}");
    let resp = call(
        a.app.clone(),
        get("/ui/dead-letters?stage=pdf-parser", Some(&cookie)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = body(resp).await;
    assert!(page.contains("could not be read"), "{page}");
    let resp = call(
        a.app.clone(),
        get("/ui/dead-letters?stage=nope", Some(&cookie)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Without a session: the login.
    let resp = call(a.app.clone(), get("/ui/dead-letters", None)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn replay_and_pause_need_the_consoles_own_form() {
    let a = api(true);
    let cookie = login(&a.app).await;
    let page = body(
        call(
            a.app.clone(),
            get("/ui/dead-letters/pdf-parser/replay", Some(&cookie)),
        )
        .await,
    )
    .await;
    assert!(
        page.contains("Really replay the dead letters of pdf-parser"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    for path in [
        "/ui/dead-letters/pdf-parser/replay",
        "/ui/stages/pdf-parser/pause",
    ] {
        let resp = call(
            a.app.clone(),
            post(
                path,
                Some(&cookie),
                "http://evil.example",
                &format!("csrf={csrf}"),
            ),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        let resp = call(a.app.clone(), post(path, Some(&cookie), SAME, "csrf=00")).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // The right token reaches Kafka, which is not there: said, not hidden.
    let resp = call(
        a.app.clone(),
        post(
            "/ui/stages/pdf-parser/pause",
            Some(&cookie),
            SAME,
            &format!("csrf={csrf}&reason=maintenance"),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = body(resp).await;
    assert!(
        text.contains("artifactctl stage pause pdf-parser"),
        "{text}"
    );
    let resp = call(
        a.app.clone(),
        get("/ui/stages/pdf-parser/explode", Some(&cookie)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[test]
fn the_dead_letters_page_lists_letters_with_their_errors() {
    let id = ArtifactId::new_random();
    let letters = Ok(vec![
        Letter {
            partition: 1,
            offset: 7,
            at_ms: Some(1_700_000_000_000),
            artifact: Some(id),
            error_kind: Some("poison".into()),
            error: Some("cannot decode <bytes>".into()),
            source: Some("artifact.created / 1 @ 41".into()),
            replayed: false,
            not_replayable: None,
        },
        Letter {
            partition: 0,
            offset: 3,
            replayed: true,
            not_replayable: Some("it has no x-source-topic header".into()),
            ..Letter::default()
        },
    ]);
    let html = dead_letters::render(Stage::PdfParser, &letters, true, Some((1, 0))).into_string();
    assert!(
        html.contains(&format!(r#"href="/ui/artifacts/{id}""#)),
        "{html}"
    );
    assert!(html.contains("cannot decode &lt;bytes&gt;"), "{html}");
    assert!(html.contains("artifact.created / 1 @ 41"), "{html}");
    assert!(
        html.contains(r#"<strong id="waiting">1</strong>"#),
        "{html}"
    );
    assert!(
        html.contains("Not replayable: it has no x-source-topic header"),
        "{html}"
    );
    assert!(
        html.contains("Replayed 1 dead letters of pdf-parser"),
        "{html}"
    );
    assert!(
        html.contains("/ui/dead-letters/pdf-parser/replay"),
        "{html}"
    );
    assert!(
        html.contains(r#"<a href="/ui/dead-letters?stage=pdf-parser" aria-current="page">"#),
        "{html}"
    );
    // Nothing waiting, or no write permission: no replay button.
    let none_waiting = Ok(vec![Letter {
        replayed: true,
        ..Letter::default()
    }]);
    let html = dead_letters::render(Stage::PdfParser, &none_waiting, true, None).into_string();
    assert!(
        !html.contains("/ui/dead-letters/pdf-parser/replay"),
        "{html}"
    );
    let html = dead_letters::render(Stage::PdfParser, &letters, false, None).into_string();
    assert!(
        !html.contains("/ui/dead-letters/pdf-parser/replay"),
        "{html}"
    );
    let html = dead_letters::render(Stage::Summarizer, &Ok(vec![]), true, None).into_string();
    assert!(html.contains("No dead letters for summarizer"), "{html}");
}
