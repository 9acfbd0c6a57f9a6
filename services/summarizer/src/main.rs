//! `summarizer`: a stage of the artifact pipeline. It loads and validates its
//! configuration; the processing loop is not wired in yet, so it says so and
//! exits with status 2 rather than pretend to process anything.

use artifact_runtime::config::{BlobStoreConfig, ConnectionConfig, HttpConfig};
use clap::Parser;

/// The summarizer stage.
#[derive(Debug, Parser)]
#[command(name = "summarizer", version, about)]
struct Config {
    #[command(flatten)]
    conn: ConnectionConfig,
    #[command(flatten)]
    http: HttpConfig,
    #[command(flatten)]
    blobs: BlobStoreConfig,
}

/// Where this stage serves HTTP unless `HTTP_ADDR` says otherwise.
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9104";

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    cfg.conn.validate()?;
    let blobs = cfg.blobs.url()?;
    let http = cfg
        .http
        .http_addr
        .map_or(DEFAULT_HTTP_ADDR.to_owned(), |a| a.to_string());
    eprintln!(
        "summarizer: configuration valid (kafka {}, registry {}, blobs {blobs}, http {http}); the processing loop is not built yet",
        cfg.conn.kafka_bootstrap_servers, cfg.conn.schema_registry_url
    );
    std::process::exit(2);
}
