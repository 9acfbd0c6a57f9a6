//! Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema
//! id, Avro body), through `schema_registry_converter`. Writers use the
//! TopicNameStrategy with the schema from `schemas/` (registered on first
//! use, as Confluent serializers do with auto-registration); readers resolve
//! the writer's schema by the id in the record.

use crate::schemas::EventSchema;
use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
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

/// A writer schema as registered for one topic, ready to write with.
struct Writer {
    id: u32,
    schema: &'static Schema,
    names: crate::avro_write::Names<'static>,
    /// Cleared when a value's shape is one `avro_write` does not handle;
    /// from then on apache-avro writes every value of this writer.
    direct: AtomicBool,
    writer: GenericDatumWriter<'static>,
}

/// Encodes values with the schema registered for one topic.
#[derive(Clone)]
pub struct TopicWriter(Arc<Writer>);

impl TopicWriter {
    /// Whether values are still written by the codec's own one-pass writer;
    /// false once a value's shape needed apache-avro's serializer.
    pub fn writes_directly(&self) -> bool {
        self.0.direct.load(Ordering::Relaxed)
    }

    /// `value` in the Confluent wire format.
    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let w = &self.0;
        let mut bytes = Vec::with_capacity(256);
        bytes.push(0);
        bytes.extend_from_slice(&w.id.to_be_bytes());
        let framing = bytes.len();
        if w.direct.load(Ordering::Relaxed) {
            match crate::avro_write::write(w.schema, &w.names, value, &mut bytes) {
                Ok(()) => return Ok(bytes),
                Err(e) => {
                    tracing::debug!(schema_id = w.id, reason = %e, "values of this schema are written by apache-avro");
                    w.direct.store(false, Ordering::Relaxed);
                    bytes.truncate(framing);
                }
            }
        }
        w.writer
            .write_ser(&mut bytes, value)
            .map_err(|e| CodecError::Unencodable(format!("value does not fit the schema: {e}")))?;
        Ok(bytes)
    }
}

/// Encodes and decodes event values; cheap to share behind an `Arc`.
///
/// The registry is asked once per topic and schema (writers) and once per
/// schema id (readers); after that a record costs its Avro body alone.
/// Parsed schemas are kept for the life of the process: there is one per
/// schema id seen, a handful in practice.
pub struct AvroCodec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    writers: RwLock<HashMap<EventSchema, HashMap<String, Arc<Writer>>>>,
    readers: RwLock<HashMap<u32, Arc<GenericDatumReader<'static>>>>,
    /// Schema ids and types that decode through an Avro `Value` only.
    through_value: RwLock<HashSet<(u32, TypeId)>>,
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
            writers: RwLock::default(),
            readers: RwLock::default(),
            through_value: RwLock::default(),
        })
    }

    /// Encodes `value` for `topic` with `schema`.
    pub async fn encode<T: Serialize>(
        &self,
        topic: &str,
        schema: EventSchema,
        value: &T,
    ) -> Result<Vec<u8>, CodecError> {
        self.writer(topic, schema).await?.encode(value)
    }

    /// The writer for `topic` and `schema`, for encoding many values without
    /// looking it up each time.
    pub async fn writer(
        &self,
        topic: &str,
        schema: EventSchema,
    ) -> Result<TopicWriter, CodecError> {
        let writer = match self.cached_writer(topic, schema) {
            Some(w) => w,
            None => self.register_writer(topic, schema).await?,
        };
        Ok(TopicWriter(writer))
    }

    fn cached_writer(&self, topic: &str, schema: EventSchema) -> Option<Arc<Writer>> {
        let writers = self.writers.read().expect("writers lock");
        writers.get(&schema)?.get(topic).cloned()
    }

    /// Looks the schema up under the topic's subject (registering it if
    /// needed, as Confluent serializers do with auto-registration).
    async fn register_writer(
        &self,
        topic: &str,
        schema: EventSchema,
    ) -> Result<Arc<Writer>, CodecError> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_owned(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, schema.avsc().to_owned()),
        );
        let subject = strategy
            .get_subject()
            .map_err(|e| CodecError::Unencodable(describe(&e)))?;
        let registered = self
            .encoder
            .get_schema_and_id(&subject, strategy)
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
            })?;
        let parsed: &'static Schema = Box::leak(Box::new(registered.parsed.clone()));
        let writer = GenericDatumWriter::builder(parsed)
            .build()
            .map_err(|e| CodecError::Unencodable(format!("schema of {subject}: {e}")))?;
        let names = apache_avro::schema::ResolvedSchema::try_from(parsed)
            .map_err(|e| CodecError::Unencodable(format!("schema of {subject}: {e}")))?
            .get_names()
            .clone();
        let writer = Arc::new(Writer {
            id: registered.id,
            schema: parsed,
            names,
            direct: AtomicBool::new(true),
            writer,
        });
        self.writers
            .write()
            .expect("writers lock")
            .entry(schema)
            .or_default()
            .insert(topic.to_owned(), writer.clone());
        Ok(writer)
    }

    /// Decodes a Confluent-framed Avro record into `T`, with the writer's
    /// schema named by the record's schema id.
    pub async fn decode<T: DeserializeOwned + 'static>(
        &self,
        bytes: Option<&[u8]>,
    ) -> Result<T, CodecError> {
        let Some(bytes) = bytes else {
            return Err(CodecError::Undecodable(
                "record has no value (tombstone)".into(),
            ));
        };
        let (id, mut body) = match bytes {
            [0, a, b, c, d, body @ ..] => (u32::from_be_bytes([*a, *b, *c, *d]), body),
            [] => return Err(CodecError::Undecodable("empty record".into())),
            [m, ..] if *m != 0 => {
                return Err(CodecError::Undecodable(format!(
                    "magic byte is {m:#04x}, not 0x00: not Confluent-framed Avro"
                )));
            }
            short => {
                return Err(CodecError::Undecodable(format!(
                    "record of {} bytes is too short for the Confluent framing",
                    short.len()
                )));
            }
        };
        let reader = match self.cached_reader(id) {
            Some(r) => r,
            None => self.fetch_reader(id).await?,
        };
        // Straight into `T` when its serde record names are the schema's.
        // Where they are not (one generic `StageEvent` serves four record
        // schemas), the direct read fails at once and the record goes
        // through an Avro `Value`; a schema id and type that needed the
        // `Value` once take it from then on.
        let key = (id, TypeId::of::<T>());
        let direct = !self
            .through_value
            .read()
            .expect("through_value lock")
            .contains(&key);
        if direct {
            let mut rest = body;
            if let Ok(value) = reader.read_deser::<T>(&mut rest)
                && rest.is_empty()
            {
                return Ok(value);
            }
        }
        let value = reader.read_value(&mut body).map_err(|e| {
            CodecError::Undecodable(format!("body does not match schema {id}: {e}"))
        })?;
        if !body.is_empty() {
            return Err(CodecError::Undecodable(format!(
                "{} bytes left after the Avro body of schema {id}",
                body.len()
            )));
        }
        let value = apache_avro::from_value::<T>(&value).map_err(|e| {
            CodecError::Undecodable(format!("value does not fit the event type: {e}"))
        })?;
        if direct {
            self.through_value
                .write()
                .expect("through_value lock")
                .insert(key);
        }
        Ok(value)
    }

    fn cached_reader(&self, id: u32) -> Option<Arc<GenericDatumReader<'static>>> {
        self.readers.read().expect("readers lock").get(&id).cloned()
    }

    async fn fetch_reader(&self, id: u32) -> Result<Arc<GenericDatumReader<'static>>, CodecError> {
        let registered = self.decoder.get_schema(id).await.map_err(|e| {
            if e.retriable {
                self.decoder.remove_errors_from_cache();
                CodecError::RegistryUnavailable(describe(&e))
            } else {
                CodecError::Undecodable(format!("schema id {id}: {}", describe(&e)))
            }
        })?;
        let parsed: &'static Schema = Box::leak(Box::new(registered.parsed.clone()));
        let reader = GenericDatumReader::builder(parsed)
            .build()
            .map_err(|e| CodecError::Undecodable(format!("schema id {id}: {e}")))?;
        let reader = Arc::new(reader);
        self.readers
            .write()
            .expect("readers lock")
            .insert(id, reader.clone());
        Ok(reader)
    }
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(c) => format!("{}: {c}", e.error),
        None => e.error.clone(),
    }
}
