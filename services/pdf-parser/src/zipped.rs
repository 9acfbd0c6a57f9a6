//! Zip archives (DOCX, ODT, PPTX, XLSX, ODS, EPUB) read under bounds, and
//! the text of their XML parts.
//!
//! Every entry is decompressed through [`Zip::read`], which stops as soon
//! as an entry has inflated more than [`Limits::max_zip_ratio`] times its
//! compressed size ([`ParseError::ZipBomb`]) or the document's entries
//! together pass [`Limits::max_content_bytes`]
//! ([`ParseError::ArchiveTooLarge`]); sizes the archive declares are not
//! trusted. The zip crate reads the archive, quick-xml the XML; this module
//! only picks which elements hold text.

use crate::work::Work;
use crate::{Limits, ParseError};
use quick_xml::events::Event;
use std::io::{Cursor, Read};

/// Bytes an entry may inflate to beyond the ratio: small XML parts
/// compress better than large ones.
const RATIO_SLACK: u64 = 64 << 10;

/// An archive and what is left of the document's decompression budget.
pub(crate) struct Zip<'a> {
    archive: zip::ZipArchive<Cursor<&'a [u8]>>,
    left: usize,
    limits: Limits,
    pub work: Work,
}

fn damaged(e: impl std::fmt::Display) -> ParseError {
    ParseError::BadDocument(format!("not a readable zip archive: {e}"))
}

impl<'a> Zip<'a> {
    pub fn open(bytes: &'a [u8], limits: &Limits) -> Result<Self, ParseError> {
        if bytes.is_empty() {
            return Err(ParseError::Empty);
        }
        if bytes.len() > limits.max_bytes {
            return Err(ParseError::TooLarge {
                size: bytes.len(),
                limit: limits.max_bytes,
            });
        }
        let archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(damaged)?;
        Ok(Zip {
            archive,
            left: limits.max_content_bytes,
            limits: limits.clone(),
            work: Work::new(limits),
        })
    }

    /// The entries' names, in the archive's order.
    pub fn names(&self) -> Vec<String> {
        self.archive
            .file_names()
            .filter_map(Result::ok)
            .map(|n| n.into_owned())
            .collect()
    }

    /// The entry `name` decompressed; `None` when there is none.
    pub fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, ParseError> {
        let mut file = match self.archive.by_name(name) {
            Ok(file) => file,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(damaged(e)),
        };
        let ratio = self.limits.max_zip_ratio;
        let compressed = file.compressed_size();
        let allowed = compressed.saturating_mul(ratio).saturating_add(RATIO_SLACK);
        let mut out = Vec::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            self.work.check_deadline()?;
            let n = file.read(&mut buf).map_err(damaged)?;
            if n == 0 {
                return Ok(Some(out));
            }
            if n > self.left {
                return Err(ParseError::ArchiveTooLarge {
                    limit: self.limits.max_content_bytes,
                });
            }
            self.left -= n;
            out.extend_from_slice(&buf[..n]);
            if out.len() as u64 > allowed {
                return Err(ParseError::ZipBomb {
                    name: name.chars().take(200).collect(),
                    compressed,
                    limit: ratio,
                });
            }
        }
    }

    /// Reads every entry, discarding it, so that a crate which reads the
    /// archive itself is handed one already known to be within bounds.
    pub fn check_all(&mut self) -> Result<(), ParseError> {
        for name in self.names() {
            self.read(&name)?;
        }
        Ok(())
    }
}

/// Which elements of an XML part hold text, by local name.
pub(crate) struct TextRules<'r> {
    /// Elements whose character data is text (`t` in DOCX and PPTX);
    /// empty: all character data is.
    pub text: &'r [&'r str],
    /// Elements that end a line when they end (paragraphs, headings).
    pub paragraph: &'r [&'r str],
    /// Empty elements that stand for a line break.
    pub line_break: &'r [&'r str],
    /// Empty elements that stand for a tab.
    pub tab: &'r [&'r str],
    /// Empty elements that stand for a space.
    pub space: &'r [&'r str],
}

/// The text of an XML part, by `rules`, appended to `out`.
pub(crate) fn xml_text(
    xml: &[u8],
    rules: &TextRules<'_>,
    work: &mut Work,
    out: &mut String,
) -> Result<(), ParseError> {
    let bad = |e: &dyn std::fmt::Display| ParseError::BadDocument(format!("bad XML: {e}"));
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut inside_text = 0usize;
    loop {
        work.tick()?;
        let event = reader.read_event().map_err(|e| bad(&e))?;
        match event {
            Event::Start(e) if rules.text.contains(&local(e.local_name().as_ref())) => {
                inside_text += 1;
            }
            Event::Empty(e) => {
                let qname = e.local_name();
                let name = local(qname.as_ref());
                if rules.line_break.contains(&name) || rules.paragraph.contains(&name) {
                    out.push('\n');
                } else if rules.tab.contains(&name) {
                    out.push('\t');
                } else if rules.space.contains(&name) {
                    out.push(' ');
                }
            }
            Event::End(e) => {
                let qname = e.local_name();
                let name = local(qname.as_ref());
                if rules.text.contains(&name) {
                    inside_text = inside_text.saturating_sub(1);
                }
                if rules.paragraph.contains(&name) {
                    out.push('\n');
                }
            }
            Event::Text(t) if rules.text.is_empty() || inside_text > 0 => {
                out.push_str(&t.decode().map_err(|e| bad(&e))?);
            }
            Event::CData(t) if rules.text.is_empty() || inside_text > 0 => {
                out.push_str(&t.decode().map_err(|e| bad(&e))?);
            }
            Event::GeneralRef(r) if rules.text.is_empty() || inside_text > 0 => {
                if let Some(c) = r.resolve_char_ref().map_err(|e| bad(&e))? {
                    out.push(c);
                } else {
                    let name = r.decode().map_err(|e| bad(&e))?;
                    if let Some(s) = quick_xml::escape::resolve_predefined_entity(&name) {
                        out.push_str(s);
                    }
                }
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

fn local(name: &[u8]) -> &str {
    std::str::from_utf8(name).unwrap_or("")
}

/// For every element named `element` (by local name) in `xml`, in
/// order, the values of its attributes `attrs` (by local name; empty when
/// absent).
pub(crate) fn attributes(
    xml: &[u8],
    element: &str,
    attrs: &[&str],
    work: &mut Work,
) -> Result<Vec<Vec<String>>, ParseError> {
    let bad = |e: &dyn std::fmt::Display| ParseError::BadDocument(format!("bad XML: {e}"));
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut found = Vec::new();
    loop {
        work.tick()?;
        match reader.read_event().map_err(|e| bad(&e))? {
            Event::Start(e) | Event::Empty(e) if local(e.local_name().as_ref()) == element => {
                let mut values = vec![String::new(); attrs.len()];
                for a in e.attributes().flatten() {
                    let qname = a.key.local_name();
                    let key = local(qname.as_ref());
                    if let Some(i) = attrs.iter().position(|&n| n == key) {
                        values[i] = a
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|e| bad(&e))?
                            .into_owned();
                    }
                }
                found.push(values);
            }
            Event::Eof => return Ok(found),
            _ => {}
        }
    }
}
