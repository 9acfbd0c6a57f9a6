//! A server span per request when traces are exported
//! (`artifact_runtime::otel`): it continues the caller's W3C `traceparent`
//! or starts a trace, and an upload's `ArtifactCreated` carries it on.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Runs the request in its server span.
pub async fn traced(req: Request, next: Next) -> Response {
    if !artifact_runtime::otel::enabled() {
        return next.run(req).await;
    }
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let span = artifact_runtime::otel::server_span(
        req.method().as_str(),
        route,
        req.uri().path(),
        req.headers(),
    );
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    resp
}
