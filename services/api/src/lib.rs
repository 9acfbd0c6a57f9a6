//! artifact-api: accepts uploads (streamed to the blob store, then published
//! as `ArtifactCreated`), runs the projector that folds every outcome into
//! the compacted status topic, and serves the read model built from that
//! topic.

pub mod app;
pub mod auth;
pub mod completions;
pub mod multipart;
pub mod problem;
pub mod projector;
pub mod readmodel;
pub mod upload;
