//! Kafka plumbing of the artifact pipeline, shared by the stage runtime, the
//! API and `artifactctl`: where Kafka and the Schema Registry are
//! ([`config`]), how clients are configured ([`client`]), the topic
//! catalogue and its creation ([`topics`]), schema registration
//! ([`schemas`]), the Avro codec in the Confluent wire format ([`codec`]),
//! a reader of compacted topics as tables ([`compacted`]), the names of the
//! headers the pipeline writes ([`headers`]), trace propagation ([`trace`]),
//! the stage-control records and their topic ([`stage_control`]), and what
//! operators read from the broker: the stages' consumer lag ([`lag`]) and
//! their dead letters ([`dead_letters`]). Nothing here knows about HTTP.

mod avro_write;
pub mod client;
pub mod codec;
pub mod compacted;
pub mod config;
pub mod dead_letters;
pub mod headers;
pub mod lag;
pub mod schemas;
pub mod stage_control;
pub mod topics;
pub mod trace;

/// Milliseconds since the Unix epoch, the unit of every timestamp in the
/// events (0 if the clock is before the epoch).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
