//! Logging: JSON lines through `tracing`, filtered by `RUST_LOG` (default
//! `info`). Call once at the start of `main`.

use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber. A second call does nothing.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_writer(std::io::stderr)
        .try_init();
}
