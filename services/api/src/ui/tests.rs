//! The console's routes, called in process on the API's test state (Kafka
//! and the registry unreachable).

use super::artifacts::{Filters, ListQuery, PAGE, SCAN_BUDGET, find};
use crate::http::tests::{TOKEN, api, call, snapshot};
use artifact_domain::{ArtifactId, ArtifactState, Stage};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;

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
