//! Which event each topic the projector reads carries: an explicit table
//! from topic name to event, so a record from any other topic is an error
//! rather than a guess.

use artifact_domain::{ArtifactControl, PipelineEvent, Stage};
use artifact_kafka::codec::{AvroCodec, CodecError};
use artifact_kafka::topics::TopicNames;

/// The event a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `ArtifactCreated`, on the created topic.
    Created,
    /// A stage's outcome, on its output topic.
    Outcome(Stage),
    /// An operator's cancel or erasure, on the artifact-control topic.
    Control,
}

/// A record from a topic the table does not name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic {0:?} carries no event the projector folds")]
pub struct UnknownTopic(pub String);

/// The topics the projector reads, each with its event.
#[derive(Debug, Clone)]
pub struct EventTopics(Vec<(String, EventKind)>);

impl EventTopics {
    /// The created topic, every stage's output topic and the
    /// artifact-control topic.
    pub fn new(names: &TopicNames) -> Self {
        let mut table = vec![(names.created(), EventKind::Created)];
        table.extend(Stage::ALL.map(|s| (names.output(s), EventKind::Outcome(s))));
        table.push((names.artifact_control(), EventKind::Control));
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
}

/// Decodes a payload as what `kind` carries.
pub async fn decode(
    codec: &AvroCodec,
    kind: EventKind,
    payload: Option<&[u8]>,
) -> Result<Folded, CodecError> {
    let event = match kind {
        EventKind::Control => return Ok(Folded::Control(codec.decode(payload).await?)),
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
        assert_eq!(topics.names().len(), 2 + Stage::ALL.len());
        for other in [
            names.status(),
            "unit.artifact.other".to_owned(),
            String::new(),
        ] {
            assert_eq!(topics.kind(&other), Err(UnknownTopic(other.clone())));
        }
    }
}
