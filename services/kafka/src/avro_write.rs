//! Avro binary written in one pass over a value's serde calls, for the
//! shapes the event types have: records whose fields arrive in schema order,
//! `[null, T]` unions for options, enums, strings, numbers, booleans, bytes,
//! arrays and maps of known length, and named references.
//!
//! apache-avro's schema-aware serializer accepts any field order: it finds
//! each field by name in a hash map and checks a second map for fields held
//! back, two SipHash lookups per field, which made encoding the largest part
//! of the runner's per-record work. Here a field is compared with the next
//! one the schema expects. Anything else — a field out of order or skipped,
//! another kind of union, a schema kind not listed — is [`Unsupported`], and
//! the codec writes that type with apache-avro instead. Where both write a
//! value, they write the same bytes (tests compare them for every event).

use apache_avro::Schema;
use apache_avro::schema::{NamesRef, UuidSchema};
use serde::ser::{self, Serialize};
use std::fmt;

/// This writer does not handle the value's shape; apache-avro may.
#[derive(Debug)]
pub(crate) struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

fn unsupported<T>(what: &str, schema: &Schema) -> Result<T, Unsupported> {
    Err(Unsupported(format!(
        "{what} for {:?}",
        apache_avro::schema::SchemaKind::from(schema)
    )))
}

/// Named types of a schema, for `Ref`s.
pub(crate) type Names<'s> = NamesRef<'s>;

/// Appends `value` in Avro binary for `schema` to `out`. On error `out` may
/// hold part of the value; the caller starts again from its own mark.
pub(crate) fn write<T: Serialize + ?Sized>(
    schema: &Schema,
    names: &Names<'_>,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), Unsupported> {
    value.serialize(Writer { schema, names, out })
}

fn zigzag(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn len_prefixed(bytes: &[u8], out: &mut Vec<u8>) {
    zigzag(bytes.len() as i64, out);
    out.extend_from_slice(bytes);
}

struct Writer<'a, 's> {
    schema: &'s Schema,
    names: &'a Names<'s>,
    out: &'a mut Vec<u8>,
}

impl<'a, 's> Writer<'a, 's> {
    /// The schema itself, or the one a `Ref` names.
    fn resolved(&self) -> Result<&'s Schema, Unsupported> {
        match self.schema {
            Schema::Ref { name } => match self.names.get(name) {
                Some(s) => Ok(s),
                None => Err(Unsupported(format!("unknown named type {name}"))),
            },
            s => Ok(s),
        }
    }

    fn with(self, schema: &'s Schema) -> Self {
        Writer { schema, ..self }
    }

    /// The index and schema of the non-null branch of a `[null, T]` union.
    fn optional(&self) -> Result<Option<(usize, usize, &'s Schema)>, Unsupported> {
        let Schema::Union(u) = self.resolved()? else {
            return Ok(None);
        };
        match u.variants() {
            [Schema::Null, t] => Ok(Some((0, 1, t))),
            [t, Schema::Null] => Ok(Some((1, 0, t))),
            _ => Ok(None),
        }
    }

    /// An int, where apache-avro takes one (`i8`, `i16`, `i32`, `u8`, `u16`).
    fn int(self, n: i32) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::Int | Schema::Date | Schema::TimeMillis => {
                zigzag(i64::from(n), self.out);
                Ok(())
            }
            s => unsupported("an int", s),
        }
    }

    /// A long, where apache-avro takes one (`i64`, `u32`).
    fn long(self, n: i64) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => {
                zigzag(n, self.out);
                Ok(())
            }
            s => unsupported("a long", s),
        }
    }

    /// Starts an array's items or a map's values, of `schema`: one block
    /// whose count is written up front.
    fn block(
        self,
        schema: &'s Schema,
        len: Option<usize>,
        what: &str,
    ) -> Result<Block<'a, 's>, Unsupported> {
        let Some(len) = len else {
            return unsupported(&format!("{what} of unknown length"), self.schema);
        };
        if len > 0 {
            zigzag(len as i64, self.out);
        }
        Ok(Block {
            schema,
            names: self.names,
            out: self.out,
            len,
        })
    }
}

impl<'a, 's> ser::Serializer for Writer<'a, 's> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Block<'a, 's>;
    type SerializeTuple = ser::Impossible<(), Unsupported>;
    type SerializeTupleStruct = ser::Impossible<(), Unsupported>;
    type SerializeTupleVariant = ser::Impossible<(), Unsupported>;
    type SerializeMap = Block<'a, 's>;
    type SerializeStruct = Fields<'a, 's>;
    type SerializeStructVariant = ser::Impossible<(), Unsupported>;

    fn is_human_readable(&self) -> bool {
        // apache-avro's process-wide setting; the first call fixes it, to
        // the default unless the program chose before, as apache-avro's own
        // first use does.
        apache_avro::util::set_serde_human_readable(apache_avro::util::DEFAULT_SERDE_HUMAN_READABLE)
    }

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::Boolean => {
                self.out.push(u8::from(v));
                Ok(())
            }
            s => unsupported("a boolean", s),
        }
    }

    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.int(i32::from(v))
    }

    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.int(i32::from(v))
    }

    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.int(v)
    }

    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        self.long(v)
    }

    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.int(i32::from(v))
    }

    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.int(i32::from(v))
    }

    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.long(i64::from(v))
    }

    fn serialize_u64(self, _: u64) -> Result<(), Unsupported> {
        unsupported("a u64", self.schema)
    }

    fn serialize_f32(self, v: f32) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::Float => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            s => unsupported("a float", s),
        }
    }

    fn serialize_f64(self, v: f64) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::Double => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            s => unsupported("a double", s),
        }
    }

    fn serialize_char(self, _: char) -> Result<(), Unsupported> {
        unsupported("a char", self.schema)
    }

    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::String | Schema::Uuid(UuidSchema::String) => {
                len_prefixed(v.as_bytes(), self.out);
                Ok(())
            }
            s => unsupported("a string", s),
        }
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::Bytes => {
                len_prefixed(v, self.out);
                Ok(())
            }
            s => unsupported("bytes", s),
        }
    }

    fn serialize_none(self) -> Result<(), Unsupported> {
        match self.optional()? {
            Some((null, _, _)) => {
                zigzag(null as i64, self.out);
                Ok(())
            }
            None => unsupported("none", self.schema),
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        match self.optional()? {
            Some((_, some, schema)) => {
                zigzag(some as i64, self.out);
                value.serialize(self.with(schema))
            }
            None => unsupported("some", self.schema),
        }
    }

    fn serialize_unit(self) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::Null => Ok(()),
            s => unsupported("a unit", s),
        }
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        unsupported("a unit struct", self.schema)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        match self.resolved()? {
            Schema::Enum(e) => match e.symbols.iter().position(|s| s == variant) {
                Some(i) => {
                    zigzag(i as i64, self.out);
                    Ok(())
                }
                None => Err(Unsupported(format!("no symbol {variant} in {}", e.name))),
            },
            s => unsupported("an enum symbol", s),
        }
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        unsupported("a newtype variant", self.schema)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Block<'a, 's>, Unsupported> {
        match self.resolved()? {
            Schema::Array(a) => self.block(&a.items, len, "a sequence"),
            s => unsupported("a sequence", s),
        }
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("a tuple", self.schema)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("a tuple struct", self.schema)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("a tuple variant", self.schema)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Block<'a, 's>, Unsupported> {
        match self.resolved()? {
            Schema::Map(m) => self.block(&m.types, len, "a map"),
            s => unsupported("a map", s),
        }
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields<'a, 's>, Unsupported> {
        match self.resolved()? {
            Schema::Record(r) => Ok(Fields {
                fields: &r.fields,
                next: 0,
                names: self.names,
                out: self.out,
            }),
            s => unsupported("a struct", s),
        }
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("a struct variant", self.schema)
    }
}

/// A record's fields, expected in schema order.
pub(crate) struct Fields<'a, 's> {
    fields: &'s [apache_avro::schema::RecordField],
    next: usize,
    names: &'a Names<'s>,
    out: &'a mut Vec<u8>,
}

impl ser::SerializeStruct for Fields<'_, '_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        let Some(field) = self.fields.get(self.next).filter(|f| f.name == key) else {
            return Err(Unsupported(format!("field {key} out of schema order")));
        };
        self.next += 1;
        value.serialize(Writer {
            schema: &field.schema,
            names: self.names,
            out: self.out,
        })
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), Unsupported> {
        Err(Unsupported(format!("field {key} skipped")))
    }

    fn end(self) -> Result<(), Unsupported> {
        match self.fields.get(self.next) {
            None => Ok(()),
            Some(f) => Err(Unsupported(format!("field {} not written", f.name))),
        }
    }
}

/// An array's items or a map's entries, in one block whose count was
/// written up front.
pub(crate) struct Block<'a, 's> {
    /// The items' or the values' schema.
    schema: &'s Schema,
    names: &'a Names<'s>,
    out: &'a mut Vec<u8>,
    /// Items or entries still to come.
    len: usize,
}

impl<'a, 's> Block<'a, 's> {
    /// Counts one more item or entry against the announced count.
    fn next(&mut self) -> Result<(), Unsupported> {
        self.len = self
            .len
            .checked_sub(1)
            .ok_or_else(|| Unsupported("more items than announced".into()))?;
        Ok(())
    }

    fn write<T: Serialize + ?Sized>(
        &mut self,
        schema: &'s Schema,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(Writer {
            schema,
            names: self.names,
            out: self.out,
        })
    }

    /// Ends the block, with the zero count that ends an array or a map.
    fn end(self) -> Result<(), Unsupported> {
        if self.len != 0 {
            return Err(Unsupported("fewer items than announced".into()));
        }
        self.out.push(0);
        Ok(())
    }
}

impl ser::SerializeSeq for Block<'_, '_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.next()?;
        self.write(self.schema, value)
    }

    fn end(self) -> Result<(), Unsupported> {
        Block::end(self)
    }
}

impl ser::SerializeMap for Block<'_, '_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.next()?;
        self.write(&Schema::String, key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.write(self.schema, value)
    }

    fn end(self) -> Result<(), Unsupported> {
        Block::end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).expect("valid schema")
    }

    /// What apache-avro writes for `value`, and what this writer writes.
    fn both<T: Serialize>(schema: &Schema, value: &T) -> (Vec<u8>, Result<Vec<u8>, Unsupported>) {
        let reference = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .expect("writer")
            .write_ser_to_vec(value)
            .expect("apache-avro writes it");
        let names = Names::new();
        let mut out = Vec::new();
        let fast = write(schema, &names, value, &mut out).map(|()| out);
        (reference, fast)
    }

    #[derive(Serialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    enum Colour {
        Red,
        Green,
    }

    #[derive(Serialize)]
    struct Inner {
        n: i32,
    }

    #[derive(Serialize)]
    struct Everything {
        s: String,
        id: String,
        i: i32,
        l: i64,
        t: i64,
        b: bool,
        f: f32,
        d: f64,
        by: serde_bytes_like::Bytes,
        none: Option<String>,
        some: Option<i64>,
        colour: Colour,
        maybe_colour: Option<Colour>,
        inner: Option<Inner>,
        again: Inner,
        list: Vec<String>,
        empty: Vec<i64>,
        map: BTreeMap<String, i64>,
    }

    mod serde_bytes_like {
        /// Serializes as bytes (serde's `Vec<u8>` is a sequence).
        pub struct Bytes(pub Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    const EVERYTHING: &str = r#"{
      "type": "record", "name": "Everything", "fields": [
        {"name": "s", "type": "string"},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "b", "type": "boolean"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"},
        {"name": "none", "type": ["null", "string"], "default": null},
        {"name": "some", "type": ["long", "null"]},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
        {"name": "maybe_colour", "type": ["null", "Colour"]},
        {"name": "inner", "type": ["null", {"type": "record", "name": "Inner", "fields": [{"name": "n", "type": "int"}]}]},
        {"name": "again", "type": "Inner"},
        {"name": "list", "type": {"type": "array", "items": "string"}},
        {"name": "empty", "type": {"type": "array", "items": "long"}},
        {"name": "map", "type": {"type": "map", "values": "long"}}
      ]}"#;

    fn everything() -> Everything {
        Everything {
            s: "naïve \u{1F600}".into(),
            id: "01234567-89ab-cdef-0123-456789abcdef".into(),
            i: -70_000,
            l: i64::MIN,
            t: 1_764_000_000_123,
            b: true,
            f: 1.5,
            d: -0.25,
            by: serde_bytes_like::Bytes(vec![0, 1, 255]),
            none: None,
            some: Some(-1),
            colour: Colour::Green,
            maybe_colour: Some(Colour::Red),
            inner: Some(Inner { n: 64 }),
            again: Inner { n: -65 },
            list: vec!["a".into(), String::new()],
            empty: vec![],
            map: [("x".to_owned(), 1), ("y".to_owned(), i64::MAX)].into(),
        }
    }

    #[test]
    fn writes_what_apache_avro_writes() {
        let schema = schema(EVERYTHING);
        let mut names = Names::new();
        // `again` refers to `Inner` by name; apache-avro resolves it itself.
        let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema).expect("resolves");
        names.extend(resolved.get_names().iter().map(|(n, s)| (n.clone(), *s)));
        let value = everything();
        let (reference, _) = both(&schema, &value);
        let mut out = Vec::new();
        write(&schema, &names, &value, &mut out).expect("written");
        assert_eq!(out, reference);
        // Without the names the reference cannot be followed.
        let (_, fast) = both(&schema, &value);
        assert!(fast.is_err());
    }

    #[test]
    fn shapes_it_does_not_handle_are_refused_not_mangled() {
        #[derive(Serialize)]
        struct Swapped {
            b: i32,
            a: i32,
        }
        let two = schema(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "a", "type": "int"}, {"name": "b", "type": "int"}]}"#,
        );
        let (reference, fast) = both(&two, &Swapped { b: 2, a: 1 });
        assert_eq!(reference, [2, 4], "apache-avro reorders");
        assert!(fast.is_err(), "this writer refuses instead");

        #[derive(Serialize)]
        struct Skips {
            a: i32,
            #[serde(skip_serializing)]
            #[allow(dead_code)]
            b: i32,
        }
        let with_default = schema(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "a", "type": "int"}, {"name": "b", "type": "int", "default": 7}]}"#,
        );
        assert!(both(&with_default, &Skips { a: 1, b: 0 }).1.is_err());

        // A plain value for a union: apache-avro picks the branch, this
        // writer leaves it to apache-avro.
        let union = schema(r#"["null", "int", "string"]"#);
        let (reference, fast) = both(&union, &"x");
        assert_eq!(reference, [4, 2, b'x']);
        assert!(fast.is_err());
        // Where apache-avro refuses, so does this writer.
        let int = schema(r#""int""#);
        let mut out = Vec::new();
        assert!(write(&int, &Names::new(), &1i64, &mut out).is_err());
    }
}
