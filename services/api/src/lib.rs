//! artifact-api: three parts in one service.
//!
//! - [`http`]: the HTTP API: uploads (streamed to the blob store, then
//!   published as `ArtifactCreated`), reads, reprocess, and the bounds
//!   that keep it answering;
//! - [`projector`]: a stream processor that folds every outcome into the
//!   compacted status topic;
//! - [`readmodel`]: the on-disk table built from that topic by its Kafka
//!   follower, which the reads are served from;
//! - [`reprocess`]: bulk reprocess operations and their executor;
//! - [`webhooks`]: subscriptions and their signed deliveries.
//!
//! [`config`] holds the settings, [`metrics`] every metric, defined once.

pub mod config;
pub mod http;
pub mod metrics;
pub mod projector;
pub mod readmodel;
pub mod reprocess;
pub mod ui;
pub mod webhooks;
