//! The records a batch's transaction writes, built from its plan and its
//! processing results by two pure steps. [`Records::dispositions`] decides
//! what each record becomes: an outcome, a delayed retry (a copy of the
//! input on the retry topic), a dead letter, or nothing (skipped).
//! [`Records::build`] encodes the outcomes with their dedup entries, after
//! the tombstones of expired entries, and turns an outcome larger than a
//! record may be into a permanent failure (or, when even that is too large,
//! a dead letter): a record the producer refuses would fail every
//! transaction it is in.

use super::StageTopics;
use super::batch::BatchError;
use super::item::{Item, Source};
use super::plan::{Key, Plan};
use super::process::{Attempted, Done};
use crate::retry::RetryPolicy;
use crate::stage::StageInput;
use artifact_domain::dedup::DedupEntry;
use artifact_domain::events::StageEvent;
use artifact_domain::outcome::OutcomeRecord;
use artifact_domain::{ArtifactId, Generation, Outcome, Stage};
use artifact_kafka::client::header;
use artifact_kafka::codec::TopicWriter;
use artifact_kafka::headers;
use artifact_kafka::trace::{self, TraceHeaders};
use rdkafka::message::Message;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// A record to produce in the batch's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Out {
    pub topic: Arc<str>,
    /// Always the input record's partition number: every record of one
    /// artifact stays on one partition number across topics, whichever
    /// partitioner put it on the input topic.
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, String)>,
    /// The metric label: output, dedup, tombstone, retry or dlq.
    pub kind: &'static str,
}

impl Out {
    /// What librdkafka counts against `message.max.bytes`, or a little
    /// more: key, value and headers with a few bytes of framing each, and
    /// the record's own overhead (librdkafka adds 36 bytes).
    fn size(&self) -> usize {
        record_size(
            self.key.as_ref().map_or(0, Vec::len),
            self.payload.as_ref().map_or(0, Vec::len),
            &self.headers,
        )
    }
}

/// [`Out::size`] of a record with a key and value of these lengths.
fn record_size(key: usize, payload: usize, headers: &[(&str, String)]) -> usize {
    64 + key
        + payload
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
}

/// Encodes the values a batch writes.
pub(crate) trait Encode<R> {
    /// An outcome event for the output topic.
    fn outcome(&self, event: &StageEvent<R>) -> Result<Vec<u8>, BatchError>;
    /// A dedup entry for the dedup topic.
    fn dedup(&self, entry: &DedupEntry) -> Result<Vec<u8>, BatchError>;
}

/// The registered writers of the output and dedup topics.
pub(crate) struct Writers<'a> {
    pub topics: &'a StageTopics,
    pub output: TopicWriter,
    pub dedup: TopicWriter,
}

/// `value` encoded for `topic`; a value that does not fit its schema is a
/// bug the runner cannot get past.
fn encoded<T: Serialize>(
    writer: &TopicWriter,
    topic: &str,
    value: &T,
) -> Result<Vec<u8>, BatchError> {
    writer
        .encode(value)
        .map_err(|e| BatchError::Fatal(format!("cannot encode for {topic}: {e}")))
}

impl<R: Serialize> Encode<R> for Writers<'_> {
    fn outcome(&self, event: &StageEvent<R>) -> Result<Vec<u8>, BatchError> {
        encoded(&self.output, &self.topics.output, event)
    }
    fn dedup(&self, entry: &DedupEntry) -> Result<Vec<u8>, BatchError> {
        encoded(&self.dedup, &self.topics.dedup, entry)
    }
}

/// What the batch writes for one record.
pub(crate) enum Disposition<I, R> {
    /// Nothing, for this reason (a metric label).
    Skip(&'static str),
    /// A record other than an outcome: a retry copy or a dead letter.
    Write(Out),
    /// An outcome event, with the input it is for and the trace headers
    /// it carries.
    Outcome {
        input: I,
        event: StageEvent<R>,
        trace: TraceHeaders,
    },
}

impl<I, R> Disposition<I, R> {
    pub fn is_outcome(&self) -> bool {
        matches!(self, Disposition::Outcome { .. })
    }
}

/// A batch's records and what becomes true once they commit.
#[derive(Debug, Default)]
pub(crate) struct Built {
    pub outs: Vec<Out>,
    /// Processed keys with an outcome, and their generation.
    pub recorded: Vec<(Key, Generation)>,
    /// The outcome label of each outcome.
    pub outcome_labels: Vec<&'static str>,
    /// Records skipped, by reason.
    pub skipped: HashMap<&'static str, u64>,
}

/// What building a stage's records depends on.
pub(crate) struct Records<'a> {
    pub stage: Stage,
    pub topics: &'a StageTopics,
    pub policy: RetryPolicy,
    /// The largest record the producer writes (`message.max.bytes`).
    pub max_record_bytes: usize,
    /// The time outcomes are stamped with and retry delays count from.
    pub now_ms: i64,
}

impl Records<'_> {
    /// What each planned record becomes, given its processing result
    /// (`done[i]` is present for every processed record).
    pub fn dispositions<I: StageInput, R>(
        &self,
        items: &[Item],
        plans: Vec<Plan<I>>,
        mut done: Vec<Option<Attempted<R>>>,
    ) -> Vec<Disposition<I, R>> {
        plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| match plan {
                Plan::Skip(reason) => Disposition::Skip(reason),
                Plan::DeadLetter(err) => {
                    let it = &items[i];
                    tracing::warn!(stage = self.stage.name(), topic = it.msg.topic(), partition = it.partition(), offset = it.msg.offset(), error = %err, "undecodable record sent to the dead-letter topic");
                    Disposition::Write(self.dead_letter(it, "undecodable", &err))
                }
                Plan::Process(input) => {
                    let attempted = done[i].take().expect("every processed item has a result");
                    self.after_processing(&items[i], input, attempted)
                }
                Plan::Fail(input, reason) => Disposition::Outcome {
                    event: self.failed(&input, reason),
                    input,
                    trace: trace::copied(&items[i].msg),
                },
            })
            .collect()
    }

    /// A processed record: its outcome, or a copy on the retry topic while
    /// deliveries remain and the copy fits in a record.
    fn after_processing<I: StageInput, R>(
        &self,
        it: &Item,
        input: I,
        attempted: Attempted<R>,
    ) -> Disposition<I, R> {
        let Attempted { done, trace } = attempted;
        let event = match done {
            Done::Ok(processed) => StageEvent {
                artifact_id: input.artifact_id(),
                generation: input.generation(),
                context: processed.context,
                outcome: processed.outcome,
                result: processed.result,
                processed_at: self.now_ms,
            },
            Done::Permanent(reason) => self.failed(&input, reason),
            Done::Retriable(reason) if it.delivery >= self.policy.max_deliveries => self.failed(
                &input,
                format!("gave up after {} deliveries: {reason}", it.delivery),
            ),
            Done::Retriable(reason) if !self.fits_as_copy(it, &reason) => self.failed(
                &input,
                format!(
                    "cannot be retried: the record is too large to copy to the retry topic ({reason})"
                ),
            ),
            Done::Retriable(reason) => {
                return Disposition::Write(self.retry_copy(it, &input, &reason));
            }
        };
        Disposition::Outcome {
            input,
            event,
            trace,
        }
    }

    /// The batch's records: the `tombstones` of expired dedup entries
    /// first (a key processed again in this batch keeps the entry written
    /// after its tombstone), then each record's, in order.
    pub fn build<I: StageInput, R>(
        &self,
        items: &[Item],
        dispositions: Vec<Disposition<I, R>>,
        tombstones: &[(i32, ArtifactId)],
        encoder: &impl Encode<R>,
    ) -> Result<Built, BatchError> {
        let mut built = Built {
            outs: Vec::with_capacity(2 * items.len() + tombstones.len()),
            ..Built::default()
        };
        built
            .outs
            .extend(tombstones.iter().map(|&(p, id)| self.tombstone(p, id)));
        for (it, disposition) in items.iter().zip(dispositions) {
            match disposition {
                Disposition::Skip(reason) => *built.skipped.entry(reason).or_default() += 1,
                Disposition::Write(out) => built.outs.push(out),
                Disposition::Outcome {
                    input,
                    event,
                    trace,
                } => self.outcome(it, &input, event, trace, encoder, &mut built)?,
            }
        }
        Ok(built)
    }

    /// An outcome record and its dedup entry, or what takes their place
    /// when the outcome is larger than a record may be.
    fn outcome<I: StageInput, R>(
        &self,
        it: &Item,
        input: &I,
        mut event: StageEvent<R>,
        trace: TraceHeaders,
        encoder: &impl Encode<R>,
        built: &mut Built,
    ) -> Result<(), BatchError> {
        let (p, id, generation) = (it.partition(), event.artifact_id, event.generation);
        let key = id.to_string().into_bytes();
        let mut output = Out {
            topic: self.topics.output.clone(),
            partition: p,
            key: Some(key.clone()),
            payload: Some(encoder.outcome(&event)?),
            headers: trace,
            kind: "output",
        };
        if output.size() > self.max_record_bytes {
            let reason = format!(
                "its outcome is a record of {} bytes, more than the {} a record may have (message.max.bytes)",
                output.size(),
                self.max_record_bytes
            );
            tracing::warn!(stage = self.stage.name(), artifact_id = %id, %generation, error = %reason, "outcome too large");
            event = self.failed(input, reason);
            output.payload = Some(encoder.outcome(&event)?);
            if output.size() > self.max_record_bytes {
                let reason = format!(
                    "the input's context alone makes an outcome of {} bytes, more than the {} a record may have (message.max.bytes)",
                    output.size(),
                    self.max_record_bytes
                );
                built.outs.push(self.dead_letter(it, "oversized", &reason));
                return Ok(());
            }
        }
        built.outcome_labels.push(event.outcome.label());
        let entry = DedupEntry {
            artifact_id: id,
            generation,
            outcome_status: OutcomeRecord::from(event.outcome.clone()).status,
            processed_at: event.processed_at,
        };
        built.outs.push(output);
        built.outs.push(Out {
            topic: self.topics.dedup.clone(),
            partition: p,
            key: Some(key),
            payload: Some(encoder.dedup(&entry)?),
            headers: vec![],
            kind: "dedup",
        });
        built.recorded.push(((p, id), generation));
        Ok(())
    }

    /// Tombstones of an erased artifact's outcome and dedup entry.
    pub fn erasure(&self, partition: i32, id: ArtifactId) -> [Out; 2] {
        let output = Out {
            topic: self.topics.output.clone(),
            kind: "erasure",
            ..self.tombstone(partition, id)
        };
        [
            output,
            Out {
                kind: "erasure",
                ..self.tombstone(partition, id)
            },
        ]
    }

    fn tombstone(&self, partition: i32, id: ArtifactId) -> Out {
        Out {
            topic: self.topics.dedup.clone(),
            partition,
            key: Some(id.to_string().into_bytes()),
            payload: None,
            headers: vec![],
            kind: "tombstone",
        }
    }

    /// A permanent failure of `input`.
    fn failed<I: StageInput, R>(&self, input: &I, reason: String) -> StageEvent<R> {
        StageEvent {
            artifact_id: input.artifact_id(),
            generation: input.generation(),
            context: input.context(),
            outcome: Outcome::permanent(reason),
            result: None,
            processed_at: self.now_ms,
        }
    }

    /// `it`'s bytes on the retry topic, for its next delivery after the
    /// policy's delay.
    fn retry_copy<I: StageInput>(&self, it: &Item, input: &I, reason: &str) -> Out {
        let next = it.delivery + 1;
        let not_before = self.now_ms + self.policy.topic_delay_for(next).as_millis() as i64;
        let mut headers = self.source_headers(it, "retriable", reason);
        headers.push((headers::ATTEMPT, next.to_string()));
        headers.push((headers::NOT_BEFORE, not_before.to_string()));
        tracing::info!(stage = self.stage.name(), artifact_id = %input.artifact_id(), generation = %input.generation(), delivery = next, not_before, error = %reason, "scheduled a delayed retry");
        Out {
            topic: self.topics.retry.clone(),
            partition: it.partition(),
            key: it.msg.key().map(<[u8]>::to_vec),
            payload: Some(it.msg.payload().unwrap_or_default().to_vec()),
            headers,
            kind: "retry",
        }
    }

    /// Whether `it`'s bytes, with the headers of a retry, fit in a record.
    fn fits_as_copy(&self, it: &Item, err: &str) -> bool {
        let size = record_size(
            it.msg.key().map_or(0, <[u8]>::len),
            it.msg.payload().map_or(0, <[u8]>::len),
            &self.source_headers(it, "retriable", err),
        );
        // Room for the attempt and not-before headers.
        size + 64 <= self.max_record_bytes
    }

    /// `it` as a dead letter: its key, bytes and headers naming the error
    /// and where it came from. Bytes that would make the letter larger
    /// than a record may be are left out (`x-payload-omitted` gives their
    /// size); the record stays where the headers say.
    fn dead_letter(&self, it: &Item, kind: &str, err: &str) -> Out {
        let mut letter = Out {
            topic: self.topics.dlq.clone(),
            partition: it.partition(),
            key: it.msg.key().map(<[u8]>::to_vec),
            payload: Some(it.msg.payload().unwrap_or_default().to_vec()),
            headers: self.source_headers(it, kind, err),
            kind: "dlq",
        };
        if letter.size() > self.max_record_bytes {
            let omitted = letter.payload.take().map_or(0, |p| p.len());
            letter
                .headers
                .push((headers::PAYLOAD_OMITTED, omitted.to_string()));
        }
        letter
    }

    /// The headers naming an error and the record's first source; a retry
    /// record keeps naming where the record was first read.
    fn source_headers(&self, it: &Item, kind: &str, err: &str) -> Vec<(&'static str, String)> {
        let (topic, partition, offset) = match it.source {
            Source::Retry => (
                header(&it.msg, headers::SOURCE_TOPIC)
                    .unwrap_or(it.msg.topic())
                    .to_owned(),
                header(&it.msg, headers::SOURCE_PARTITION)
                    .map_or(it.msg.partition().to_string(), str::to_owned),
                header(&it.msg, headers::SOURCE_OFFSET)
                    .map_or(it.msg.offset().to_string(), str::to_owned),
            ),
            Source::Input => (
                it.msg.topic().to_owned(),
                it.msg.partition().to_string(),
                it.msg.offset().to_string(),
            ),
        };
        let mut h = vec![
            (headers::ERROR, err.to_owned()),
            (headers::ERROR_KIND, kind.to_owned()),
            (headers::SOURCE_TOPIC, topic),
            (headers::SOURCE_PARTITION, partition),
            (headers::SOURCE_OFFSET, offset),
            (headers::STAGE, self.stage.name().to_owned()),
        ];
        h.extend(trace::copied(&it.msg));
        h
    }
}

#[cfg(test)]
mod tests;
