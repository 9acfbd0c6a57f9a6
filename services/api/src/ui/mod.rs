//! The operator console under `/ui`: HTML rendered on the server from the
//! read model with maud (templates compiled into the binary: nothing to
//! ship beside it, no Node build), and a little plain JavaScript for what
//! only the browser can do: follow `/ui/events` to refresh a page in place,
//! and show times in the viewer's time zone. Every page works without it.
//!
//! - `session`: login cookies, CSRF tokens, the same-origin check;
//! - `artifacts`: the list, one artifact, and its actions;
//! - `stages`: each stage's replicas, lag, retries, dead letters and pause;
//! - `dead_letters`: a stage's dead letters and their replay.

pub mod artifacts;
pub mod dead_letters;
pub mod session;
pub mod stages;
pub mod step_times;

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::problem::Problem;
use artifact_kafka::now_ms;
use axum::Form;
use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use session::Session;

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// The console's routes (inside the API's layers: request ids, identity
/// from the session cookie, the rate limit).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/artifacts") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/artifacts") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route(
            "/ui/assets/app.css",
            get(|| async { asset(CSS, "text/css") }),
        )
        .route(
            "/ui/assets/app.js",
            get(|| async { asset(JS, "text/javascript") }),
        )
        .route("/ui/events", get(artifacts::events))
        .route("/ui/erased", get(artifacts::erased))
        .route("/ui/artifacts", get(artifacts::list))
        .route("/ui/artifacts/{id}", get(artifacts::one))
        .route("/ui/stages", get(stages::stages))
        .route(
            "/ui/stages/{stage}/{action}",
            get(stages::confirm).post(stages::act),
        )
        .route("/ui/dead-letters", get(dead_letters::list))
        .route(
            "/ui/dead-letters/{stage}/replay",
            get(dead_letters::confirm).post(dead_letters::replay),
        )
        .route("/ui/artifacts/{id}/text", get(artifacts::text))
        .route("/ui/artifacts/{id}/download", get(artifacts::download))
        .route(
            "/ui/artifacts/{id}/{action}",
            get(artifacts::confirm).post(artifacts::act),
        )
        .layer(DefaultBodyLimit::max(16 << 10))
        .layer(from_fn(security_headers))
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// No framing, no inline script, no third-party anything; pages are not
/// cached (they show live state and carry CSRF tokens).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    resp
}

/// Which page of the navigation is open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Artifacts,
    Stages,
    DeadLetters,
    None,
}

/// A whole page around `body`.
pub(crate) fn page(title: &str, nav: Nav, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · artifact console" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/artifacts" { "artifact console" }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            a href="/ui/artifacts" aria-current=[(nav == Nav::Artifacts).then_some("page")] { "Artifacts" }
                            a href="/ui/stages" aria-current=[(nav == Nav::Stages).then_some("page")] { "Stages" }
                            a href="/ui/dead-letters" aria-current=[(nav == Nav::DeadLetters).then_some("page")] { "Dead letters" }
                        }
                        form.logout method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

/// An error page: what happened and what to do, never an internal cause.
pub(crate) fn error_page(
    status: StatusCode,
    session: Option<&Session>,
    what: &str,
    todo: Markup,
) -> Response {
    let body = html! {
        h1 { (status.canonical_reason().unwrap_or("Error")) }
        p.error role="alert" { (what) }
        p { (todo) }
    };
    (status, page("Error", Nav::None, session, body)).into_response()
}

/// The page of an API problem: its detail is written for callers (the
/// cause stays in the log).
pub(crate) fn problem_page(p: Problem, session: Option<&Session>) -> Response {
    if let Some(cause) = &p.cause {
        tracing::warn!(status = p.status, detail = %p.detail, %cause, "console request failed");
    }
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_page(
        status,
        session,
        &p.detail,
        html! { a href="/ui/artifacts" { "Back to the artifacts" } },
    )
}

/// The session of a page request that may read, or the answer to send
/// instead: the login page for one without a session.
pub(crate) fn reader(
    st: &AppState,
    headers: &HeaderMap,
    uri: &OriginalUri,
) -> Result<Session, Box<Response>> {
    let session = session::cookie_value(headers)
        .and_then(|v| session::verify(&st.access, v, now_ms()))
        .or_else(|| {
            // An API whose reads are open needs no login to read.
            st.access
                .may_read(Caller::Unauthenticated)
                .then(|| Session {
                    caller: Caller::Unauthenticated,
                    csrf: String::new(),
                })
        });
    match session {
        Some(s) if st.access.may_read(s.caller) => Ok(s),
        _ => {
            let next = uri.path_and_query().map_or("/ui/artifacts", |p| p.as_str());
            Err(Box::new(
                Redirect::to(&format!("/ui/login?next={}", encode(next))).into_response(),
            ))
        }
    }
}

/// The session of a form post that may write, with its CSRF token and
/// origin checked, or the refusal.
pub(crate) fn writer(
    st: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Session, Box<Response>> {
    let refuse = |what: &str| {
        Box::new(error_page(
            StatusCode::FORBIDDEN,
            None,
            what,
            html! { a href="/ui/artifacts" { "Open the console" } " and submit the form from there." },
        ))
    };
    if !session::same_origin(headers) {
        return Err(refuse(
            "This form was not sent from the console's own pages, so it was refused.",
        ));
    }
    let Some(s) =
        session::cookie_value(headers).and_then(|v| session::verify(&st.access, v, now_ms()))
    else {
        return Err(Box::new(Redirect::to("/ui/login").into_response()));
    };
    if !session::csrf_matches(&s, csrf) {
        return Err(refuse(
            "The form's security token does not match your session; reload the page and try again.",
        ));
    }
    if !st.access.may_write(s.caller) {
        return Err(refuse("Your token may read but not change artifacts."));
    }
    Ok(s)
}

/// Percent-encodes a query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a login may send the browser back to: a console path only.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("/ui//") && !n.contains('\\') => n,
        _ => "/ui/artifacts",
    }
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn login_form(next: &str, refused: Option<&str>) -> Markup {
    html! {
        h1 { "Log in" }
        @if let Some(why) = refused {
            p.error role="alert" #login-error { (why) }
        }
        form.login method="post" action="/ui/login" {
            input type="hidden" name="next" value=(next);
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            p.hint { "One of the tokens in the API's API_TOKENS (or API_TOKENS_FILE)." }
            button type="submit" { "Log in" }
        }
    }
}

async fn login_page(axum::extract::Query(q): axum::extract::Query<NextQuery>) -> Markup {
    let next = safe_next(q.next.as_deref());
    page("Log in", Nav::None, None, login_form(next, None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref()).to_owned();
    if !session::same_origin(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            None,
            "This login was not sent from the console's own page, so it was refused.",
            html! { a href="/ui/login" { "Log in here" } },
        );
    }
    match st.access.login(f.token.trim().as_bytes()) {
        Some(caller) => {
            let cookie = session::issue(&st.access, caller, now_ms());
            let mut resp = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&cookie)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        None => {
            tracing::info!("console login refused");
            (
                StatusCode::UNAUTHORIZED,
                page(
                    "Log in",
                    Nav::None,
                    None,
                    login_form(
                        &next,
                        Some("That token is not one the API accepts. Check it and try again."),
                    ),
                ),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    // Logging out needs no write permission, only the session's own form.
    let ok = session::same_origin(&headers)
        && session::cookie_value(&headers)
            .and_then(|v| session::verify(&st.access, v, now_ms()))
            .is_some_and(|s| session::csrf_matches(&s, &f.csrf));
    if !ok {
        return Redirect::to("/ui/login").into_response();
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// A time for people: UTC on the server, the viewer's zone once the
/// script ran.
pub(crate) fn time(ms: i64) -> Markup {
    let Ok(ms_u) = u64::try_from(ms) else {
        return html! { "–" };
    };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms_u);
    html! { time data-ms=(ms) { (httpdate::fmt_http_date(t)) } }
}

#[cfg(test)]
mod tests;
