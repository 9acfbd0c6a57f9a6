//! Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema
//! id, Avro body), through `schema_registry_converter`. Writers use the
//! TopicNameStrategy with the schema from `schemas/` (registered on first
//! use, as Confluent serializers do with auto-registration); readers resolve
//! the writer's schema by the id in the record.

use crate::schemas::EventSchema;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The registry could not be reached or answered with a transient error;
    /// the same call may succeed later.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// The bytes are not a Confluent-framed Avro record this registry knows
    /// (bad magic byte, unknown schema id, body that does not match).
    #[error("undecodable record: {0}")]
    Undecodable(String),
    /// The value does not fit the schema, or the registry refused the schema.
    #[error("cannot encode: {0}")]
    Unencodable(String),
}

impl CodecError {
    /// Whether retrying the same call may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable(_))
    }
}

/// Encodes and decodes event values; cheap to share behind an `Arc`.
pub struct AvroCodec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

impl AvroCodec {
    /// A codec for the registry at `url` (the Confluent API base).
    pub fn new(url: &str) -> Result<Self, CodecError> {
        let settings = || {
            SrSettings::new_builder(url.trim_end_matches('/').to_owned())
                .set_timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .map_err(|e| CodecError::Unencodable(format!("registry settings: {e}")))
        };
        Ok(AvroCodec {
            encoder: AvroEncoder::new(settings()?),
            decoder: AvroDecoder::new(settings()?),
        })
    }

    /// Encodes `value` for `topic` with `schema`.
    pub async fn encode<T: Serialize>(
        &self,
        topic: &str,
        schema: EventSchema,
        value: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_owned(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, schema.avsc().to_owned()),
        );
        self.encoder
            .encode_struct(value, &strategy)
            .await
            .map_err(|e| {
                if e.retriable {
                    // Errors are cached per subject; clear them so the
                    // next attempt asks the registry again.
                    self.encoder.remove_errors_from_cache();
                    CodecError::RegistryUnavailable(describe(&e))
                } else {
                    CodecError::Unencodable(describe(&e))
                }
            })
    }

    /// Decodes a record value written in the Confluent wire format.
    pub async fn decode<T: DeserializeOwned>(&self, bytes: Option<&[u8]>) -> Result<T, CodecError> {
        let Some(bytes) = bytes else {
            return Err(CodecError::Undecodable(
                "record has no value (tombstone)".into(),
            ));
        };
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|e| {
            if e.retriable {
                self.decoder.remove_errors_from_cache();
                CodecError::RegistryUnavailable(describe(&e))
            } else {
                CodecError::Undecodable(describe(&e))
            }
        })?;
        apache_avro::from_value::<T>(&decoded.value)
            .map_err(|e| CodecError::Undecodable(format!("value does not fit the event type: {e}")))
    }
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(c) => format!("{}: {c}", e.error),
        None => e.error.clone(),
    }
}
