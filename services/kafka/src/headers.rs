//! Headers the pipeline writes on retry-topic records and dead letters (the
//! delivery count and not-before time of a retry, the error, and where the
//! record was first read; `artifactctl dlq` reads them back) and on the
//! records of a stage's batches in flight, and on the records that start a
//! generation at a later stage.

/// Header: the attempt the record will be processed as (1-based).
pub const ATTEMPT: &str = "x-attempt";
/// Header: epoch milliseconds before which the record must not be processed.
pub const NOT_BEFORE: &str = "x-not-before";
/// Header: the last error.
pub const ERROR: &str = "x-error";
/// Header: kind of error (`undecodable`, `retriable`, …).
pub const ERROR_KIND: &str = "x-error-kind";
/// Header: topic the record was first read from.
pub const SOURCE_TOPIC: &str = "x-source-topic";
/// Header: its partition.
pub const SOURCE_PARTITION: &str = "x-source-partition";
/// Header: its offset.
pub const SOURCE_OFFSET: &str = "x-source-offset";
/// Header: the stage that wrote the record.
pub const STAGE: &str = "x-stage";
/// Header (dead letters): the size of the record's bytes, left out because
/// the letter would have been larger than a record may be. The record is
/// still at its source offset, unless compaction removed it since.
pub const PAYLOAD_OMITTED: &str = "x-payload-omitted";
/// Header (batches in flight, as written one record per source partition
/// before they were one per batch, and still read): the first offset of the
/// batch's records of the partition named by the record's key and partition.
pub const FIRST_OFFSET: &str = "x-first-offset";
/// Header (batches in flight): the last offset of those records.
pub const LAST_OFFSET: &str = "x-last-offset";
/// Header (batches in flight): how many times a stage's process ended while
/// processing those offsets, before this attempt.
pub const DEATHS: &str = "x-deaths";
/// Header (a new generation started at a later stage): the stage it starts
/// at. Each earlier stage skips the record, a copy of an outcome it wrote
/// for the generation before.
pub const RESTART_FROM: &str = "x-restart-from";
/// Header (a new generation started by a bulk reprocess): the operation.
pub const OPERATION: &str = "x-operation";
