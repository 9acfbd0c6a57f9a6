//! Logs, metrics and the health endpoints every binary serves.
//!
//! Logs are JSON lines through `tracing`, filtered by `RUST_LOG` (default
//! `info`). Metrics go through the `metrics` facade into a Prometheus
//! recorder; `/metrics` renders them in the text format. `/healthz` answers
//! 200 while the process lives, and 500 with the reason once a sync of its
//! blob store has failed (it can no longer vouch for what it wrote: restart
//! it); `/readyz` answers 200 only while the binary reports itself ready,
//! and 503 with the reason otherwise.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber. A second call does nothing.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .fmt_fields(crate::logfields::JsonSpanFields)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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

/// The router of `/healthz`, `/readyz` and `/metrics`.
pub fn health_router(health: Health, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async {
                match crate::blob::failed_sync() {
                    None => (StatusCode::OK, "ok\n".to_owned()),
                    Some(r) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("failed: {r}; restart the process\n"),
                    ),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                match h.reason() {
                    None => (StatusCode::OK, "ready\n".to_owned()),
                    Some(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {r}\n")),
                }
            }),
        )
        .with_state(health)
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
}
