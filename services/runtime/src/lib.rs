//! The artifact pipeline's runtime: everything that talks to the outside
//! world. Kafka clients and topic administration, the Schema Registry and the
//! Avro codec in the Confluent wire format, the exactly-once stage runner with
//! its keyed dedup state, retries and dead letters, shared configuration and
//! telemetry. Stages and the API build on it; the domain crate never sees it.

mod avro_write;
pub mod blob;
pub mod codec;
pub mod config;
pub mod dedup;
pub mod kafka;
pub mod logfields;
pub mod retry;
pub mod runner;
pub mod schemas;
pub mod service;
pub mod stage;
pub mod telemetry;
pub mod topics;
pub mod trace;

/// Milliseconds since the Unix epoch, the unit of every timestamp in the
/// events (0 if the clock is before the epoch).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
