//! `artifact-api`: the upload API and read model of the artifact pipeline. It
//! loads and validates its configuration; the HTTP API is not built yet, so it
//! says so and exits with status 2 rather than pretend to serve anything.

use artifact_runtime::config::{BlobStoreConfig, ConnectionConfig, HttpConfig};
use clap::Parser;

/// The artifact API.
#[derive(Debug, Parser)]
#[command(name = "artifact-api", version, about)]
struct Config {
    #[command(flatten)]
    conn: ConnectionConfig,
    #[command(flatten)]
    http: HttpConfig,
    #[command(flatten)]
    blobs: BlobStoreConfig,
}

/// Where the API serves HTTP unless `HTTP_ADDR` says otherwise.
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    cfg.conn.validate()?;
    let blobs = cfg.blobs.url()?;
    let http = cfg
        .http
        .http_addr
        .map_or(DEFAULT_HTTP_ADDR.to_owned(), |a| a.to_string());
    eprintln!(
        "artifact-api: configuration valid (kafka {}, registry {}, blobs {blobs}, http {http}); the HTTP API is not built yet",
        cfg.conn.kafka_bootstrap_servers, cfg.conn.schema_registry_url
    );
    std::process::exit(2);
}
