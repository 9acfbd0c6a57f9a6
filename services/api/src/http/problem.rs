//! RFC 9457 problem details: every error answer of the API is
//! `application/problem+json` with a title and a detail that says what to fix.
//!
//! A problem's cause inside the service (a blob location, a bucket, a
//! registry or Kafka error naming its URL) never goes into the body: it is
//! logged with the request's id, which the body and the `x-request-id`
//! header carry, so an operator can find it.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URI naming the problem type (`about:blank` for plain HTTP status).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short summary.
    pub title: &'static str,
    /// HTTP status.
    pub status: u16,
    /// What happened and what to do.
    pub detail: String,
    /// The request's id, under which the log holds the problem's cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The internal cause: logged, never sent.
    #[serde(skip)]
    pub cause: Option<Box<str>>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem with a status, title and detail.
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail: detail.into(),
            request_id: None,
            cause: None,
            retry_after: None,
        }
    }

    /// The same, with an internal cause for the log.
    pub fn caused_by(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string().into());
        self
    }

    /// The same, with a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "send a valid token as `Authorization: Bearer <token>` (tokens are configured in API_TOKENS)",
        )
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    /// 408.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "Request timeout", detail)
    }

    /// 429.
    pub fn too_many_requests(retry_after: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            format!(
                "this token sent more requests than API_RATE_LIMIT_PER_SECOND allows; retry in {retry_after} s"
            ),
        )
        .retry_after(retry_after)
    }

    /// 503.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            detail,
        )
    }

    /// 500.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", detail)
    }

    /// The answer, without the extension [`request_ids`] looks for.
    fn render(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(self).unwrap_or_default();
        let mut resp =
            (status, [("content-type", "application/problem+json")], body).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

impl From<crate::readmodel::TableError> for Problem {
    fn from(e: crate::readmodel::TableError) -> Self {
        Self::internal("the read model could not be read").caused_by(e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut resp = self.render();
        resp.extensions_mut().insert(self);
        resp
    }
}

/// Gives every request an id (`x-request-id` on the answer); a problem
/// answer carries it in its body, and its cause, if any, is logged under it.
pub async fn request_ids(req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let mut resp = next.run(req).await;
    if let Some(mut problem) = resp.extensions_mut().remove::<Problem>() {
        problem.request_id = Some(id.clone());
        if let Some(cause) = &problem.cause {
            tracing::warn!(request_id = %id, %method, %path, status = problem.status, detail = %problem.detail, %cause, "request failed");
        }
        let (parts, _) = resp.into_parts();
        let fresh = problem.render();
        resp = Response::from_parts(parts, fresh.into_body());
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
