//! Which event each topic the projector reads carries: an explicit table
//! from topic name to event, so a record from any other topic is an error
//! rather than a guess.
//!
//! Besides the events, the projector reads each stage's retry and
//! dead-letter topics: the runner writes a retry record (a copy of the
//! input, with `x-attempt`, `x-not-before` and `x-error`) for every
//! delivery that failed retriably, and a dead letter for every record it
//! could not process, so they are where attempts and dead letters already
//! are, in the stage's own transaction, with nothing new for a stage to
//! write.

use artifact_domain::{
    ArtifactControl, ArtifactId, DeadLetter, PipelineEvent, RetryScheduled, Stage,
};
use artifact_kafka::client::header;
use artifact_kafka::codec::{AvroCodec, CodecError};
use artifact_kafka::headers;
use artifact_kafka::topics::TopicNames;
use rdkafka::message::{Message, OwnedMessage};

/// The event a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `ArtifactCreated`, on the created topic.
    Created,
    /// A stage's outcome, on its output topic.
    Outcome(Stage),
    /// An operator's cancel or erasure, on the artifact-control topic.
    Control,
    /// A delayed retry of a stage's input, on its retry topic.
    Retry(Stage),
    /// A record a stage could not process, on its dead-letter topic.
    DeadLetter(Stage),
}

/// A record from a topic the table does not name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic {0:?} carries no event the projector folds")]
pub struct UnknownTopic(pub String);

/// The topics the projector reads, each with its event.
#[derive(Debug, Clone)]
pub struct EventTopics(Vec<(String, EventKind)>);

impl EventTopics {
    /// The created topic, every stage's output, retry and dead-letter
    /// topics, and the artifact-control topic.
    pub fn new(names: &TopicNames) -> Self {
        let mut table = vec![(names.created(), EventKind::Created)];
        table.extend(Stage::ALL.map(|s| (names.output(s), EventKind::Outcome(s))));
        table.push((names.artifact_control(), EventKind::Control));
        table.extend(Stage::ALL.map(|s| (names.retry(s), EventKind::Retry(s))));
        table.extend(Stage::ALL.map(|s| (names.dlq(s), EventKind::DeadLetter(s))));
        EventTopics(table)
    }

    /// The topic names, to subscribe to.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(t, _)| t.as_str()).collect()
    }

    /// The event `topic` carries.
    pub fn kind(&self, topic: &str) -> Result<EventKind, UnknownTopic> {
        self.0
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, k)| *k)
            .ok_or_else(|| UnknownTopic(topic.to_owned()))
    }
}

/// What a record the projector reads carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folded {
    /// An event of the artifact.
    Event(Box<PipelineEvent>),
    /// An operator's control of the artifact.
    Control(ArtifactControl),
    /// A delivery that failed retriably and waits on the retry topic.
    Retry(RetryScheduled),
    /// A dead letter keyed by the artifact.
    DeadLetter(ArtifactId, DeadLetter),
}

/// What a record of `kind` carries. `Ok(None)`: nothing to fold (a dead
/// letter whose key is not an artifact id).
pub async fn decode_record(
    codec: &AvroCodec,
    kind: EventKind,
    m: &OwnedMessage,
) -> Result<Option<Folded>, CodecError> {
    let at = m.timestamp().to_millis().unwrap_or_default();
    match kind {
        EventKind::Retry(stage) => {
            // The copy of the stage's input names the generation.
            let input = match stage.previous() {
                Some(prev) => EventKind::Outcome(prev),
                None => EventKind::Created,
            };
            let Folded::Event(event) = decode(codec, input, m.payload()).await? else {
                return Ok(None);
            };
            let number = |h| header(m, h).and_then(|v| v.parse::<i64>().ok());
            Ok(Some(Folded::Retry(RetryScheduled {
                artifact_id: event.artifact_id(),
                generation: event.generation(),
                stage,
                delivery: number(headers::ATTEMPT)
                    .and_then(|d| u32::try_from(d).ok())
                    .unwrap_or(2)
                    .max(2),
                error: header(m, headers::ERROR).unwrap_or_default().to_owned(),
                not_before: number(headers::NOT_BEFORE).unwrap_or(at),
                at,
            })))
        }
        EventKind::DeadLetter(stage) => {
            let id = m
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.parse::<ArtifactId>().ok());
            Ok(id.map(|id| {
                Folded::DeadLetter(
                    id,
                    DeadLetter {
                        stage,
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        error: header(m, headers::ERROR).unwrap_or_default().to_owned(),
                        at,
                    },
                )
            }))
        }
        _ => decode(codec, kind, m.payload()).await.map(Some),
    }
}

/// Decodes a payload as what `kind` carries.
pub async fn decode(
    codec: &AvroCodec,
    kind: EventKind,
    payload: Option<&[u8]>,
) -> Result<Folded, CodecError> {
    let event = match kind {
        EventKind::Control => return Ok(Folded::Control(codec.decode(payload).await?)),
        EventKind::Retry(_) | EventKind::DeadLetter(_) => {
            return Err(CodecError::Undecodable(format!(
                "{kind:?} records carry no event of their own"
            )));
        }
        EventKind::Created => PipelineEvent::Created(codec.decode(payload).await?),
        EventKind::Outcome(Stage::MimeDetector) => {
            PipelineEvent::MimeDetected(codec.decode(payload).await?)
        }
        EventKind::Outcome(Stage::LocationLogger) => {
            PipelineEvent::LocationVerified(codec.decode(payload).await?)
        }
        EventKind::Outcome(Stage::PdfParser) => PipelineEvent::Parsed(codec.decode(payload).await?),
        EventKind::Outcome(Stage::Summarizer) => {
            PipelineEvent::Summarized(codec.decode(payload).await?)
        }
    };
    Ok(Folded::Event(Box::new(event)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifact_kafka::config::ConnectionConfig;

    #[test]
    fn each_topic_names_its_event_and_others_are_errors() {
        let names = TopicNames::from_config(&ConnectionConfig::local("unit"));
        let topics = EventTopics::new(&names);
        assert_eq!(topics.kind(&names.created()), Ok(EventKind::Created));
        for stage in Stage::ALL {
            assert_eq!(
                topics.kind(&names.output(stage)),
                Ok(EventKind::Outcome(stage))
            );
        }
        assert_eq!(
            topics.kind(&names.artifact_control()),
            Ok(EventKind::Control)
        );
        for stage in Stage::ALL {
            assert_eq!(
                topics.kind(&names.retry(stage)),
                Ok(EventKind::Retry(stage))
            );
            assert_eq!(
                topics.kind(&names.dlq(stage)),
                Ok(EventKind::DeadLetter(stage))
            );
        }
        assert_eq!(topics.names().len(), 2 + 3 * Stage::ALL.len());
        for other in [
            names.status(),
            "unit.artifact.other".to_owned(),
            String::new(),
        ] {
            assert_eq!(topics.kind(&other), Err(UnknownTopic(other.clone())));
        }
    }
}
