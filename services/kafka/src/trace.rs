//! W3C trace context carried in Kafka headers, read and written by
//! OpenTelemetry's `TraceContextPropagator`: each processing step reads the
//! context of its input record and writes its own on its outputs, so one
//! trace follows an artifact from upload to summary.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Headers, Message};

/// The header of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The header of vendor trace state, written when there is some.
pub const TRACESTATE: &str = "tracestate";

/// Trace headers for a record: `(name, value)`, the names those above.
pub type TraceHeaders = Vec<(&'static str, String)>;

/// Reads a record's headers for the propagator.
pub struct HeaderExtractor<'a, H>(pub &'a H);

impl<H: Headers> Extractor for HeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// Collects the trace headers the propagator writes; an empty value (no
/// trace state) is left out.
pub struct HeaderInjector<'a>(pub &'a mut TraceHeaders);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            TRACEPARENT => TRACEPARENT,
            TRACESTATE => TRACESTATE,
            _ => return,
        };
        if value.is_empty() {
            return;
        }
        self.0.retain(|(k, _)| *k != key);
        self.0.push((key, value));
    }
}

/// The trace context a record carries (an empty context when it carries
/// none, or an invalid one).
pub fn extract(msg: &impl Message) -> Context {
    match msg.headers() {
        Some(h) => TraceContextPropagator::new().extract(&HeaderExtractor(h)),
        None => Context::new(),
    }
}

/// The headers that carry `cx` (none when it holds no valid span).
pub fn inject(cx: &Context) -> TraceHeaders {
    let mut out = TraceHeaders::new();
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(&mut out));
    out
}

/// A record's own trace headers, copied as they are: what a step that
/// makes no span of its own passes on.
pub fn copied(msg: &impl Message) -> TraceHeaders {
    let Some(h) = msg.headers() else {
        return TraceHeaders::new();
    };
    let mut out = TraceHeaders::new();
    for key in [TRACEPARENT, TRACESTATE] {
        if let Some(v) = HeaderExtractor(h).get(key) {
            out.push((key, v.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn record(headers: &[(&str, &str)]) -> OwnedMessage {
        let mut h = OwnedHeaders::new();
        for (key, value) in headers {
            h = h.insert(Header {
                key,
                value: Some(*value),
            });
        }
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(h),
        )
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_record_s_context_is_read_from_its_headers() {
        let cx = extract(&record(&[("other", "x"), (TRACEPARENT, TP)]));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(sc.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
    }

    #[test]
    fn invalid_or_missing_context_reads_as_none() {
        for headers in [
            vec![],
            vec![(TRACEPARENT, "garbage")],
            vec![(
                TRACEPARENT,
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
        ] {
            let cx = extract(&record(&headers));
            assert!(!cx.span().span_context().is_valid(), "{headers:?}");
        }
        let bare = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        assert!(!extract(&bare).span().span_context().is_valid());
    }

    #[test]
    fn a_context_is_written_in_the_w3c_form_and_reads_back() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let headers = inject(&Context::new().with_remote_span_context(sc));
        assert_eq!(
            headers,
            vec![(TRACEPARENT, TP.to_owned())],
            "no empty tracestate"
        );
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let back = extract(&record(&pairs));
        assert_eq!(
            back.span().span_context().span_id().to_string(),
            "00f067aa0ba902b7"
        );
        assert!(inject(&Context::new()).is_empty(), "no span, no header");
    }

    #[test]
    fn copied_headers_are_the_record_s_own() {
        let m = record(&[(TRACEPARENT, TP), (TRACESTATE, "k=v"), ("x", "y")]);
        assert_eq!(
            copied(&m),
            vec![(TRACEPARENT, TP.to_owned()), (TRACESTATE, "k=v".to_owned())]
        );
        assert!(copied(&record(&[("x", "y")])).is_empty());
    }
}
