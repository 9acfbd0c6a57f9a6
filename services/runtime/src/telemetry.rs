//! Logs, metrics and the health endpoints every binary serves.
//!
//! Logs are JSON lines through `tracing`, filtered by `RUST_LOG` (default
//! `info`). Metrics go through the `metrics` facade into a Prometheus
//! recorder; `/metrics` renders them in the text format. `/healthz` answers
//! 200 while the process lives, and 500 with the reason once a sync of its
//! blob store has failed (it can no longer vouch for what it wrote: restart
//! it); `/readyz` answers 200 only while the binary reports itself ready,
//! and 503 with the reason otherwise. `/openapi.json` describes them (and,
//! in the API, its own routes).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::EnvFilter;
use utoipa::OpenApi;
pub use utoipa::openapi::OpenApi as OpenApiDoc;

/// Installs the JSON log subscriber and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set, the span exporter ([`crate::otel`]); log lines then carry the
/// active span's `trace_id` and `span_id`. A second call does nothing.
pub fn init_logging() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (otel, otel_error) = match crate::otel::layer() {
        Ok(layer) => (layer, None),
        Err(e) => (None, Some(e)),
    };
    let installed = match otel {
        // Without traces the filter is global, as it always was: the
        // per-record span costs what it did.
        None => tracing_subscriber::registry()
            .with(filter)
            .with(json_logs(false))
            .try_init(),
        // RUST_LOG filters the logs only: spans at `info` are exported
        // whatever the log level.
        Some(otel) => tracing_subscriber::registry()
            .with(otel.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
            .with(json_logs(true).with_filter(filter))
            .try_init(),
    }
    .is_ok();
    if installed && let Some(e) = otel_error {
        tracing::error!(error = %e, "traces are not exported");
    }
}

/// The JSON log lines, with span ids when `traces` are exported.
fn json_logs<S>(traces: bool) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let format = tracing_subscriber::fmt::format()
        .json()
        .with_current_span(true);
    tracing_subscriber::fmt::layer()
        .event_format(crate::otel::WithTraceIds {
            inner: format,
            on: traces,
        })
        .fmt_fields(crate::logfields::JsonSpanFields)
        .with_writer(std::io::stderr)
}

/// Every binary's version and commit (`ARTIFACT_BUILD_COMMIT`, set by the
/// build script from git).
const BUILD_INFO: &str = "artifact_pipeline_build_info";
const BUILD_COMMIT: &str = match option_env!("ARTIFACT_BUILD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The process collector, its metrics described once.
fn process_collector() -> metrics_process::Collector {
    let c = metrics_process::Collector::default();
    c.describe();
    c
}

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let secs = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &secs)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); rendering
            // then shows nothing of ours, which a test would notice.
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_gauge!(
                BUILD_INFO,
                "1, labelled with the binary's version and the commit it was built from"
            );
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => BUILD_COMMIT)
                .set(1.0);
            handle
        })
        .clone()
}

/// Readiness as a binary reports it.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// Starts not ready, with a reason.
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Health {
            inner: Arc::new(Mutex::new(Some(reason.into()))),
        }
    }

    /// Marks ready.
    pub fn set_ready(&self) {
        *self.inner.lock().expect("health lock") = None;
    }

    /// Marks not ready, with the reason `/readyz` shows.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.inner.lock().expect("health lock") = Some(reason.into());
    }

    /// `None` when ready, else why not.
    pub fn reason(&self) -> Option<String> {
        self.inner.lock().expect("health lock").clone()
    }
}

/// What the health router's handlers read.
#[derive(Clone)]
struct Ops {
    health: Health,
    metrics: PrometheusHandle,
    /// CPU, memory, open files and threads of the process, read at each
    /// scrape (`process_*`, the names Prometheus's client libraries use).
    process: Arc<metrics_process::Collector>,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "The process lives", body = String, content_type = "text/plain"),
        (status = 500, description = "A sync of the blob store failed: the process can no longer vouch for what it wrote; restart it", body = String, content_type = "text/plain"),
    ))]
async fn healthz() -> (StatusCode, String) {
    match crate::blob::failed_sync() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(r) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed: {r}; restart the process\n"),
        ),
    }
}

/// Readiness: a stage is ready while it owns partitions whose dedup state
/// is restored and its Kafka clients work; the API once its read model is
/// restored.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready, and why (e.g. `Kafka unavailable: …`)", body = String, content_type = "text/plain"),
    ))]
async fn readyz(State(ops): State<Ops>) -> (StatusCode, String) {
    match ops.health.reason() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {r}\n")),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Every metric of the process", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    ops.process.collect();
    (
        [("content-type", "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
}

/// The OpenAPI document of the routes every binary serves: `/healthz`,
/// `/readyz`, `/metrics` (and `/openapi.json`, which serves the document).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "artifact-pipeline service",
        description = "Health, readiness and metrics of an artifact-pipeline service."
    ),
    paths(healthz, readyz, metrics),
    tags((name = "operations", description = "Probes and metrics"))
)]
pub struct OpsDoc;

/// The router of `/healthz`, `/readyz`, `/metrics` and `/openapi.json`,
/// which serves `doc`: [`OpsDoc`] for a stage, merged into the API's own
/// document for `artifact-api`.
pub fn health_router(health: Health, metrics: PrometheusHandle, doc: OpenApiDoc) -> Router {
    let doc = bytes::Bytes::from(doc.to_json().expect("an OpenAPI document serializes"));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .route(
            "/openapi.json",
            get(move || async move { ([("content-type", "application/json")], doc) }),
        )
        .with_state(Ops {
            health,
            metrics,
            process: Arc::new(process_collector()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves the health router of `health` with [`OpsDoc`] on a free port.
    async fn serve(health: Health) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = health_router(health, metrics_handle(), OpsDoc::openapi());
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn the_document_lists_what_the_router_serves() {
        let health = Health::not_ready("restoring dedup state of partitions [0]");
        let base = serve(health.clone()).await;
        let doc: serde_json::Value = reqwest::get(format!("{base}/openapi.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut paths: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        paths.sort_unstable();
        assert_eq!(paths, ["/healthz", "/metrics", "/readyz"]);
        for path in paths {
            let documented: Vec<u16> = doc["paths"][path]["get"]["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            let status = reqwest::get(format!("{base}{path}"))
                .await
                .unwrap()
                .status();
            assert!(
                documented.contains(&status.as_u16()),
                "{path} answered {status}, documented {documented:?}"
            );
        }
        // Readiness answers with the documented 503 and the reason, then 200.
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.text().await.unwrap().contains("restoring dedup state"));
        health.set_ready();
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let undocumented = reqwest::get(format!("{base}/status")).await.unwrap();
        assert_eq!(undocumented.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn metrics_carry_the_build_and_the_process() {
        let base = serve(Health::default()).await;
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let build = text
            .lines()
            .find(|l| l.starts_with("artifact_pipeline_build_info{"))
            .unwrap_or_else(|| panic!("no build info in\n{text}"));
        assert!(build.contains(concat!("version=\"", env!("CARGO_PKG_VERSION"), "\"")));
        assert!(build.ends_with(" 1"), "{build}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
        }
    }
}
