//! Span fields for the JSON logs, written straight into one JSON object.
//!
//! `tracing-subscriber`'s JSON field formatter collects a span's fields into
//! a map of `serde_json::Value`s and serializes that: about 1.2 µs for the
//! eight fields of the runner's per-record span, on every record at the
//! default `info` level. [`JsonSpanFields`] writes each field as it is
//! visited (strings and `Display`/`Debug` values escaped on the way), so a
//! span costs a few small writes. The JSON event formatter embeds the object
//! as before: log lines keep their shape.

use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// Formats span fields as one JSON object, in the order they are recorded.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = ObjectVisitor::new(&mut writer);
        fields.record(&mut v);
        v.finish()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // The object so far, reopened: `{...}` loses its closing brace.
        let first = match current.fields.pop() {
            Some('}') => current.fields.len() == 1,
            Some(_) => return Err(fmt::Error),
            None => {
                current.fields.push('{');
                true
            }
        };
        let mut v = ObjectVisitor {
            out: &mut current.fields,
            first,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.finish()
    }
}

struct ObjectVisitor<'a> {
    out: &'a mut dyn Write,
    first: bool,
    result: fmt::Result,
}

impl<'a> ObjectVisitor<'a> {
    /// Opens an object on `out`.
    fn new(out: &'a mut dyn Write) -> Self {
        let result = out.write_char('{');
        ObjectVisitor {
            out,
            first: true,
            result,
        }
    }

    fn key(&mut self, field: &Field) {
        if self.result.is_err() {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            ","
        };
        self.result = self.out.write_str(sep).and_then(|()| {
            self.out.write_char('"')?;
            Escaped(&mut *self.out).write_str(field.name())?;
            self.out.write_str("\":")
        });
    }

    fn raw(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        self.key(field);
        if self.result.is_ok() {
            self.result = self.out.write_fmt(value);
        }
    }

    fn string(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        self.key(field);
        if self.result.is_ok() {
            self.result = self.out.write_char('"').and_then(|()| {
                Escaped(&mut *self.out).write_fmt(value)?;
                self.out.write_char('"')
            });
        }
    }

    fn finish(self) -> fmt::Result {
        self.result?;
        self.out.write_char('}')
    }
}

impl Visit for ObjectVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            self.raw(field, format_args!("null"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, format_args!("{value:?}"));
    }
}

/// Writes through to `W`, escaped for the inside of a JSON string.
struct Escaped<'a>(&'a mut dyn Write);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Most values need no escape; a check of every byte without an
        // early exit is cheaper than the loop below.
        if !s.bytes().fold(false, |any, b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        }) {
            return self.0.write_str(s);
        }
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The JSON lines logged while `f` runs, with spans' fields formatted
    /// by `JsonSpanFields`.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .fmt_fields(JsonSpanFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn span_fields_reach_the_log_line_as_json_values() {
        let id = uuid::Uuid::nil();
        let lines = logged(|| {
            let span = tracing::info_span!(
                "record",
                stage = "mime-detector",
                artifact_id = %id,
                partition = 3,
                offset = -1i64,
                ratio = 0.5,
                nan = f64::NAN,
                ok = true,
                note = ?"quote \" backslash \\ newline \n bell \u{7}",
            );
            let _g = span.enter();
            tracing::info!("inside");
        });
        assert_eq!(lines.len(), 1);
        let span = &lines[0]["span"];
        assert_eq!(span["name"], "record");
        assert_eq!(span["stage"], "mime-detector");
        assert_eq!(span["artifact_id"], id.to_string());
        assert_eq!(span["partition"], 3);
        assert_eq!(span["offset"], -1);
        assert_eq!(span["ratio"], 0.5);
        assert!(span["nan"].is_null());
        assert_eq!(span["ok"], true);
        assert_eq!(
            span["note"],
            format!("{:?}", "quote \" backslash \\ newline \n bell \u{7}")
        );
    }

    #[test]
    fn fields_recorded_later_join_the_same_object() {
        let lines = logged(|| {
            let span = tracing::info_span!("record", a = 1, b = tracing::field::Empty);
            span.record("b", "later");
            let _g = span.enter();
            tracing::info!("one");
            let empty = tracing::info_span!("bare", c = tracing::field::Empty);
            empty.record("c", 7);
            let _g2 = empty.enter();
            tracing::info!("two");
        });
        assert_eq!(lines[0]["span"]["a"], 1);
        assert_eq!(lines[0]["span"]["b"], "later");
        assert_eq!(lines[1]["span"]["name"], "bare");
        assert_eq!(lines[1]["span"]["c"], 7);
    }
}
