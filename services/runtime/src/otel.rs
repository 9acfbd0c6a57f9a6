//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set, and not at all otherwise: then there is no exporter and no layer,
//! spans stay what they were (log context), and a record's trace headers
//! are passed on as they came. The SDK reads the other standard variables
//! itself: `OTEL_SERVICE_NAME` (default: the binary's name),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`), the
//! exporter's headers and timeout, and `OTEL_BSP_*` for the batch span
//! processor, which exports from a thread of its own.

use artifact_kafka::trace::{self, TraceHeaders};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use rdkafka::message::Message;
use std::sync::OnceLock;
use std::time::Duration;
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported (set once, at start-up).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Whether the environment asks for traces.
fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The binary's name: the service name unless the environment gives one.
fn binary_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact-pipeline".into())
}

/// The tracing layer that exports spans, when the environment asks for
/// it; `Err` says why it could not be built.
pub(crate) fn layer<S>() -> Result<Option<OpenTelemetryLayer<S, SdkTracer>>, String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    if !configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot build the OTLP span exporter: {e}"))?;
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name(binary_name());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("artifact-pipeline");
    let _ = PROVIDER.set(provider);
    Ok(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_level(false)
            .with_target(false),
    ))
}

/// Exports the spans still buffered and stops the exporter (at shutdown).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5))
    {
        tracing::warn!(error = %e, "exporting the last spans failed");
    }
}

/// Makes `span` (declared with empty `otel.name` and `otel.kind` fields)
/// the consumer span of `msg`, read by `group`: a child of the context the
/// record carries, with OpenTelemetry's messaging attributes for Kafka.
/// `operation` names what is done with the record ("process", "fold").
/// Does nothing when traces are off.
pub fn consume(span: &Span, operation: &'static str, group: &str, msg: &impl Message) {
    if !enabled() || span.is_disabled() {
        return;
    }
    let _ = span.set_parent(trace::extract(msg));
    span.record("otel.name", format!("{operation} {}", msg.topic()).as_str());
    span.record("otel.kind", "consumer");
    span.set_attribute("messaging.system", "kafka");
    span.set_attribute("messaging.operation.type", "process");
    span.set_attribute("messaging.operation.name", operation);
    span.set_attribute("messaging.destination.name", msg.topic().to_owned());
    span.set_attribute(
        "messaging.destination.partition.id",
        msg.partition().to_string(),
    );
    span.set_attribute("messaging.kafka.offset", msg.offset());
    span.set_attribute("messaging.consumer.group.name", group.to_owned());
    if let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
        span.set_attribute("messaging.kafka.message.key", key.to_owned());
    }
}

/// The trace headers for the records written on behalf of `msg` in
/// `span`: the span's context when traces are on, else `msg`'s own
/// headers, passed on unchanged.
pub fn outgoing(span: &Span, msg: &impl Message) -> TraceHeaders {
    if enabled() && !span.is_disabled() {
        trace::inject(&span.context())
    } else {
        trace::copied(msg)
    }
}

/// A JSON event format with the active span's `trace_id` and `span_id`
/// first, when `on` (traces are exported) and a span is active.
pub(crate) struct WithTraceIds<F> {
    pub inner: F,
    pub on: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The OpenTelemetry layer makes an entered span's context current.
        let ids = self
            .on
            .then(|| {
                opentelemetry::Context::map_current(|cx| {
                    let sc = cx.span().span_context().clone();
                    sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
                })
            })
            .flatten();
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let rest = line.strip_prefix('{').ok_or(std::fmt::Error)?;
        write!(
            writer,
            "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
        )
    }
}

/// Reads an HTTP request's headers for the propagator.
struct HttpHeaders<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The server span of an HTTP request (`route` as matched, e.g.
/// `/v1/artifacts/{id}`), continuing the caller's W3C `traceparent` or
/// starting a trace; a disabled span when traces are off. The caller
/// records `http.response.status_code`.
pub fn server_span(
    method: &str,
    route: Option<&str>,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    use opentelemetry::propagation::TextMapPropagator;
    let name = match route {
        Some(r) => format!("{method} {r}"),
        None => method.to_owned(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = name.as_str(),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&HttpHeaders(headers));
    let _ = span.set_parent(parent);
    span
}

/// A producer span for sending a record keyed `key` to `topic`, a child of
/// the current span, and the trace headers the record carries; a disabled
/// span and no headers when traces are off.
pub fn produce(topic: &str, key: &str) -> (Span, TraceHeaders) {
    if !enabled() {
        return (Span::none(), TraceHeaders::new());
    }
    let span = tracing::info_span!(
        "send",
        otel.name = format!("send {topic}").as_str(),
        otel.kind = "producer",
    );
    span.set_attribute("messaging.system", "kafka");
    span.set_attribute("messaging.operation.type", "send");
    span.set_attribute("messaging.operation.name", "send");
    span.set_attribute("messaging.destination.name", topic.to_owned());
    span.set_attribute("messaging.kafka.message.key", key.to_owned());
    let headers = trace::inject(&span.context());
    (span, headers)
}

/// A client span for an outgoing HTTP request (`method` to `url`), a child
/// of the current span, and the headers that carry it to the server; a
/// disabled span and no headers when traces are off. The caller records
/// `http.response.status_code`.
pub fn client(method: &str, url: &str) -> (Span, TraceHeaders) {
    if !enabled() {
        return (Span::none(), TraceHeaders::new());
    }
    let span = tracing::info_span!(
        "request",
        otel.name = method,
        otel.kind = "client",
        http.request.method = method,
        url.full = url,
        http.response.status_code = tracing::field::Empty,
    );
    let headers = trace::inject(&span.context());
    (span, headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logfields::JsonSpanFields;
    use opentelemetry::trace::TraceId;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The JSON lines logged while `f` runs under a subscriber with an
    /// OpenTelemetry layer (a provider that exports nothing) and the
    /// services' log format.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let writer = buf.clone();
        let provider = SdkTracerProvider::builder().build();
        let format = tracing_subscriber::fmt::format()
            .json()
            .with_current_span(true);
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(WithTraceIds {
                        inner: format,
                        on: true,
                    })
                    .fmt_fields(JsonSpanFields)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// A record on topic `t` carrying the `traceparent` header `tp`.
    fn with_traceparent(tp: &str) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(tp),
            })),
        )
    }

    #[test]
    fn log_lines_in_a_span_carry_its_trace_and_span_ids() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let msg = with_traceparent(parent);
        let mut ids = None;
        let lines = logged(|| {
            tracing::info!("outside");
            let span = tracing::info_span!("record", stage = "x");
            span.set_parent(trace::extract(&msg)).unwrap();
            let _g = span.enter();
            tracing::info!("inside");
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            ids = Some((sc.trace_id(), sc.span_id()));
        });
        let (trace_id, span_id) = ids.unwrap();
        assert_eq!(
            trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            "the record's trace continues"
        );
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["trace_id"], trace_id.to_string());
        assert_eq!(lines[1]["span_id"], span_id.to_string());
        assert_ne!(lines[1]["span_id"], "00f067aa0ba902b7", "its own span");
        assert_eq!(lines[1]["span"]["stage"], "x", "the line keeps its shape");
        assert_eq!(lines[1]["fields"]["message"], "inside");
    }

    #[test]
    fn without_traces_a_record_s_headers_pass_on_unchanged() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let msg = with_traceparent(tp);
        assert!(!enabled());
        let span = tracing::info_span!("record");
        consume(&span, "process", "g", &msg);
        assert_eq!(
            outgoing(&span, &msg),
            vec![(trace::TRACEPARENT, tp.to_owned())]
        );
    }
}
