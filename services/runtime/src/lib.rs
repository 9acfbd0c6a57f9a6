//! The artifact pipeline's runtime: everything that talks to the outside
//! world. Kafka clients and topic administration, the Schema Registry and the
//! Avro codec in the Confluent wire format, shared configuration and
//! telemetry. Stages and the API build on it; the domain crate never sees it.

pub mod codec;
pub mod config;
pub mod kafka;
pub mod schemas;
pub mod telemetry;
pub mod topics;
