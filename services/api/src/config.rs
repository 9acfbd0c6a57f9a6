//! The API's configuration: flags and environment variables, validated at
//! start (secrets never logged).

use crate::http::auth::{Access, AccessError, Tokens};
use crate::http::limits::Limits;
use crate::webhooks::delivery::DeliveryConfig;
use crate::webhooks::policy::UrlPolicy;
use artifact_blob::BlobStoreConfig;
use artifact_kafka::config::ConnectionConfig;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// The artifact API.
#[derive(Debug, Parser)]
#[command(name = "artifact-api", version, about)]
pub struct Config {
    #[command(flatten)]
    pub conn: ConnectionConfig,
    #[command(flatten)]
    pub blobs: BlobStoreConfig,
    /// Address to serve the API, health and metrics on.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Bearer tokens, comma-separated. Without any the API does not start,
    /// unless API_ALLOW_ANONYMOUS=true.
    #[arg(long, env = "API_TOKENS", default_value = "", hide_env_values = true)]
    pub api_tokens: String,
    /// A file with one token per line, added to API_TOKENS.
    #[arg(long, env = "API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// Run without tokens: anyone who reaches the API may upload and
    /// reprocess. Needs API_PROTECT_READS=false too.
    #[arg(long, env = "API_ALLOW_ANONYMOUS", default_value_t = false)]
    pub allow_anonymous: bool,
    /// Require a token on reads (the default); `false` opens them.
    #[arg(long, env = "API_PROTECT_READS")]
    pub protect_reads: Option<bool>,
    /// Largest upload, in bytes.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 100 << 20)]
    pub max_upload_bytes: u64,
    /// Uploads received at once; more are answered 503 with Retry-After.
    #[arg(long, env = "API_MAX_CONCURRENT_UPLOADS", default_value_t = 16)]
    pub max_concurrent_uploads: usize,
    /// Event streams (`/v1/events`, `/v1/artifacts/{id}/events`) open at
    /// once; more are answered 503 with Retry-After.
    #[arg(long, env = "API_MAX_EVENT_STREAMS", default_value_t = 256)]
    pub max_event_streams: usize,
    /// Total time an upload's body may take to arrive, in milliseconds.
    #[arg(long, env = "API_UPLOAD_DEADLINE_MS", default_value_t = 600_000)]
    pub upload_deadline_ms: u64,
    /// Longest wait for the next piece of a request body, in milliseconds.
    #[arg(long, env = "API_BODY_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_idle_timeout_ms: u64,
    /// Longest wait for a request's headers, from its first byte (or from
    /// the end of the previous request on a kept-alive connection), in
    /// milliseconds.
    #[arg(long, env = "API_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Requests per second per token (per address without one) on /v1;
    /// more are answered 429 with Retry-After. 0: no limit.
    #[arg(long, env = "API_RATE_LIMIT_PER_SECOND", default_value_t = 100)]
    pub rate_limit_per_second: u32,
    /// Requests a token may send at once above its rate.
    #[arg(long, env = "API_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Directory of the read-model table's file (created at each start and
    /// unlinked at once; it holds the final snapshot of every artifact).
    #[arg(long, env = "READ_MODEL_DIR", default_value_os_t = std::env::temp_dir())]
    pub read_model_dir: PathBuf,
    /// Consumer group of the projector task.
    #[arg(long, env = "PROJECTOR_GROUP", default_value = "artifact-projector")]
    pub projector_group: String,
    /// Consumer group of the bulk reprocess executor: the instance assigned
    /// an operation's partition runs it.
    #[arg(long, env = "REPROCESS_GROUP", default_value = "artifact-reprocess")]
    pub reprocess_group: String,
    /// Most new generations a bulk reprocess starts a second.
    #[arg(long, env = "REPROCESS_STARTS_PER_SECOND", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub reprocess_starts_per_second: u32,
    /// Most artifacts one bulk reprocess selects.
    #[arg(long, env = "REPROCESS_MAX_ARTIFACTS", default_value_t = crate::reprocess::DEFAULT_MAX_ARTIFACTS)]
    pub reprocess_max_artifacts: usize,
    /// Consumer group of webhook deliveries on the status topic: each
    /// partition's changes are delivered by one API instance.
    #[arg(long, env = "WEBHOOK_GROUP", default_value = "artifact-webhooks")]
    pub webhook_group: String,
    /// Allow webhook URLs whose host is a loopback, private or link-local
    /// address, and plain http (tests, receivers inside the cluster).
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value_t = false)]
    pub webhook_allow_private: bool,
    /// Allow plain http webhook URLs (public addresses only, unless
    /// WEBHOOK_ALLOW_PRIVATE).
    #[arg(long, env = "WEBHOOK_ALLOW_HTTP", default_value_t = false)]
    pub webhook_allow_http: bool,
    /// Longest a webhook request may take, connection included, in
    /// milliseconds.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// Attempts per webhook delivery, the first included.
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = 6)]
    pub webhook_max_attempts: u32,
    /// The wait before a delivery's first retry, in milliseconds; it
    /// doubles after each.
    #[arg(long, env = "WEBHOOK_RETRY_BASE_MS", default_value_t = 1_000)]
    pub webhook_retry_base_ms: u64,
    /// The longest wait between a delivery's attempts, in milliseconds.
    #[arg(long, env = "WEBHOOK_RETRY_MAX_MS", default_value_t = 60_000)]
    pub webhook_retry_max_ms: u64,
    /// How long SIGTERM/SIGINT waits for requests in flight (uploads being
    /// received, moved into place and published) before the process exits
    /// anyway, in milliseconds. New connections are refused meanwhile.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
    /// Prefix of the stages' consumer groups (`<prefix><stage>`), for the
    /// console's stages page.
    #[arg(long, env = "CONSOLE_STAGE_GROUP_PREFIX", default_value = "")]
    pub console_stage_group_prefix: String,
    /// Longest the console waits for a reading of Kafka, in milliseconds.
    #[arg(long, env = "CONSOLE_KAFKA_TIMEOUT_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub console_kafka_timeout_ms: u64,
}

/// Why the configuration cannot start the API.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The token file cannot be read.
    #[error("API_TOKENS_FILE {path}: {source}")]
    TokensFile {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Tokens and anonymity do not agree.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A bound is zero.
    #[error("{0} must be above 0")]
    Zero(&'static str),
    /// A bound is below another.
    #[error("{0} must be at least {1}")]
    Below(&'static str, &'static str),
}

impl Config {
    /// Who may call what: the tokens of API_TOKENS and API_TOKENS_FILE, and
    /// the anonymity and read settings.
    pub fn access(&self) -> Result<Access, ConfigError> {
        let mut list = self.api_tokens.clone();
        if let Some(f) = &self.api_tokens_file {
            let text = std::fs::read_to_string(f).map_err(|source| ConfigError::TokensFile {
                path: f.display().to_string(),
                source,
            })?;
            for line in text.lines() {
                list.push(',');
                list.push_str(line);
            }
        }
        Ok(Access::new(
            Tokens::parse(&list),
            self.allow_anonymous,
            self.protect_reads,
        )?)
    }

    /// The bounds on requests.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let ms = Duration::from_millis;
        for (name, value) in [
            (
                "API_MAX_CONCURRENT_UPLOADS",
                self.max_concurrent_uploads as u64,
            ),
            ("API_MAX_EVENT_STREAMS", self.max_event_streams as u64),
            ("API_UPLOAD_DEADLINE_MS", self.upload_deadline_ms),
            ("API_BODY_IDLE_TIMEOUT_MS", self.body_idle_timeout_ms),
            ("API_HEADER_TIMEOUT_MS", self.header_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(Limits {
            max_upload_bytes: self.max_upload_bytes,
            concurrent_uploads: self.max_concurrent_uploads,
            event_streams: self.max_event_streams,
            upload_deadline: ms(self.upload_deadline_ms),
            body_idle_timeout: ms(self.body_idle_timeout_ms),
            header_timeout: ms(self.header_timeout_ms),
            rate_per_second: self.rate_limit_per_second,
            rate_burst: self.rate_limit_burst.max(1),
        })
    }

    /// How webhook deliveries are made.
    pub fn webhook_delivery(&self) -> Result<DeliveryConfig, ConfigError> {
        for (name, value) in [
            ("WEBHOOK_TIMEOUT_MS", self.webhook_timeout_ms),
            ("WEBHOOK_MAX_ATTEMPTS", u64::from(self.webhook_max_attempts)),
            ("WEBHOOK_RETRY_BASE_MS", self.webhook_retry_base_ms),
            ("WEBHOOK_RETRY_MAX_MS", self.webhook_retry_max_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.webhook_retry_max_ms < self.webhook_retry_base_ms {
            return Err(ConfigError::Below(
                "WEBHOOK_RETRY_MAX_MS",
                "WEBHOOK_RETRY_BASE_MS",
            ));
        }
        Ok(DeliveryConfig {
            policy: UrlPolicy {
                allow_private: self.webhook_allow_private,
                allow_http: self.webhook_allow_http,
            },
            timeout: Duration::from_millis(self.webhook_timeout_ms),
            max_attempts: self.webhook_max_attempts,
            retry_base: Duration::from_millis(self.webhook_retry_base_ms),
            retry_max: Duration::from_millis(self.webhook_retry_max_ms),
        })
    }
}
