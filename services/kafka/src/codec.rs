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
                if registry_failed(&e, REFUSES_SCHEMA) {
                    // Failed look-ups are cached per subject; clear them so
                    // the next attempt asks the registry again.
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
            if registry_failed(&e, NO_SUCH_SCHEMA) {
                // The decoder caches every failure it does not itself deem
                // retriable (all but 502 and 503); a record must not be
                // dead-lettered for a registry that failed to answer.
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

/// The registry's answer that a schema id does not exist.
const NO_SUCH_SCHEMA: &[u16] = &[404];
/// The registry's answers that refuse a schema: malformed request, an
/// incompatible schema, an invalid schema.
const REFUSES_SCHEMA: &[u16] = &[400, 409, 422];

/// Whether a registry call failed because the registry did not answer the
/// question (unreachable, timed out, a 5xx, 429, 401 or 403, a proxy's
/// error page, a response cut short), so the same call may succeed later,
/// rather than because it answered it: with one of the `definitive`
/// statuses, or with a schema this codec cannot use.
fn registry_failed(e: &SRCError, definitive: &[u16]) -> bool {
    if e.retriable
        || e.error
            .starts_with("could not parse to RawRegisteredSchema")
    {
        return true;
    }
    match http_status(e) {
        Some(status) => !definitive.contains(&status),
        None => false,
    }
}

/// The HTTP status of a registry answer that was not a success, as
/// `schema_registry_converter` reports it ("… failed with status 404 Not
/// Found").
fn http_status(e: &SRCError) -> Option<u16> {
    let (_, rest) = e.error.split_once("failed with status ")?;
    rest.get(..3)?.parse().ok()
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(c) => format!("{}: {c}", e.error),
        None => e.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;

    fn answered(status: &str) -> SRCError {
        SRCError::non_retryable_with_cause(
            "{\"error_code\":0}",
            &format!("HTTP request to schema registry failed with status {status}"),
        )
    }

    #[test]
    fn only_the_registry_s_own_answers_are_final() {
        assert!(!registry_failed(&answered("404 Not Found"), NO_SUCH_SCHEMA));
        for status in [
            "500 Internal Server Error",
            "504 Gateway Timeout",
            "429 Too Many Requests",
            "401 Unauthorized",
        ] {
            assert!(
                registry_failed(&answered(status), NO_SUCH_SCHEMA),
                "{status}"
            );
            assert!(
                registry_failed(&answered(status), REFUSES_SCHEMA),
                "{status}"
            );
        }
        assert!(!registry_failed(&answered("409 Conflict"), REFUSES_SCHEMA));
        assert!(!registry_failed(
            &answered("422 Unprocessable Entity"),
            REFUSES_SCHEMA
        ));
        assert!(registry_failed(&answered("404 Not Found"), REFUSES_SCHEMA));
        let network =
            SRCError::retryable_with_cause("refused", "http call to schema registry failed");
        assert!(registry_failed(&network, NO_SUCH_SCHEMA));
        let cut =
            SRCError::non_retryable_with_cause("eof", "could not parse to RawRegisteredSchema");
        assert!(registry_failed(&cut, NO_SUCH_SCHEMA));
        let unusable = SRCError::non_retryable_without_cause("Could not parse schema");
        assert!(!registry_failed(&unusable, NO_SUCH_SCHEMA));
    }

    /// A listener that answers every request with the next of `statuses`
    /// (the last one again once they run out) and counts the requests.
    fn answering(statuses: &'static [&'static str]) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let status = statuses[n.min(statuses.len() - 1)];
                let body = r#"{"error_code":50001,"message":"store timed out"}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, count)
    }

    fn framed(id: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.push(2);
        bytes
    }

    #[tokio::test]
    async fn a_registry_error_is_not_remembered_for_the_schema_id() {
        let (url, requests) = answering(&["500 Internal Server Error"]);
        let codec = AvroCodec::new(&url).unwrap();
        for asked in 1..=3 {
            let err = codec.decode::<String>(Some(&framed(7))).await.unwrap_err();
            assert!(
                matches!(err, CodecError::RegistryUnavailable(_)),
                "attempt {asked}: {err:?}"
            );
            assert_eq!(
                requests.load(Ordering::SeqCst),
                asked,
                "asked the registry again"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_schema_id_is_undecodable() {
        let (url, _) = answering(&["404 Not Found"]);
        let codec = AvroCodec::new(&url).unwrap();
        let err = codec.decode::<String>(Some(&framed(7))).await.unwrap_err();
        assert!(matches!(err, CodecError::Undecodable(_)), "{err:?}");
        assert!(!err.is_retriable());
    }
}
