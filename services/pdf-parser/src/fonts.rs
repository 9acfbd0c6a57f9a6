//! What the codes in a PDF string mean: text and advance width per glyph.
//!
//! Text comes, in order of preference (as poppler does), from the font's
//! `/ToUnicode` CMap, then its `/Encoding` differences, then its base
//! encoding: a named one, or the built-in encoding of an embedded Type 1
//! font program (pdfTeX's Computer Modern fonts have no `/Encoding`), or
//! StandardEncoding. Glyph names go through lopdf's glyph list, plus the
//! `uniXXXX`/`uXXXX` and `a_b` ligature conventions. Widths come from
//! `/Widths` (simple fonts) or `/W` and `/DW` (CID fonts).
//!
//! Bounds against hostile fonts: each font is built once per document
//! (inline font dictionaries too), its decompressed CMap and program are
//! charged to the document's [`Work`]; only codes up to [`MAX_CODE`] (the
//! ones ever looked up) are kept; a ToUnicode CMap is read until its
//! entries and text reach [`CMAP_BUDGET`], each mapped string cut to
//! [`CMAP_MAX_STRING`] UTF-16 units; `/W` until [`MAX_WIDTH_ENTRIES`]
//! widths were set; code arithmetic cannot overflow.

use crate::ParseError;
use crate::work::Work;
use lopdf::{Dictionary, Document, Object, ObjectId, Stream};
use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;

/// Decompression bound for font programs and CMaps.
const FONT_STREAM_LIMIT: usize = 16 << 20;

/// The largest code ever looked up: simple fonts show one-byte codes, CID
/// fonts two-byte ones. Entries for larger codes would only cost memory.
const MAX_CODE: u32 = 0xffff;

/// Most UTF-16 units kept of one mapped string of a ToUnicode CMap. Real
/// CMaps map a code to one character, a ligature (three) or at most a
/// short cluster; 32 is far beyond those and keeps a hostile string from
/// being copied to every code of a range.
const CMAP_MAX_STRING: usize = 32;

/// What reading one ToUnicode CMap may cost: each entry set counts one
/// plus its UTF-16 units. A font maps at most 65 536 codes, usually to one
/// or two units each (under 200 000 in all, and 2.2 million for every code
/// mapped to a string of [`CMAP_MAX_STRING`]); past 4 million the CMap is
/// hostile (ranges repeated over and over) and the rest of it is not read.
/// Bounds the time to build the map; its memory is bounded by
/// [`MAX_CODE`] and [`CMAP_MAX_STRING`] (about 10 MiB).
const CMAP_BUDGET: usize = 4 << 20;

/// Most widths one `/W` array may set (ranges of it repeated over and
/// over), 16 times the 65 536 codes a font can have.
const MAX_WIDTH_ENTRIES: usize = 1 << 20;

/// One glyph of a shown string.
pub(crate) struct Glyph<'f> {
    /// Its text (empty when unknown).
    pub text: &'f str,
    /// Its advance in text space (glyph width × font matrix), before font
    /// size and spacing.
    pub width: f64,
    /// Whether it is the single-byte code 32, which word spacing applies to.
    pub is_space_code: bool,
    /// Whether its text is empty or only whitespace.
    pub blank: bool,
}

/// Text, advance and blankness of one single-byte code, worked out when
/// the font is built so that showing a glyph is a table lookup.
struct Code {
    text: Cow<'static, str>,
    width: f64,
    blank: bool,
}

/// A font, resolved once per document.
pub(crate) struct FontInfo {
    /// CID fonts use two-byte codes.
    two_byte: bool,
    /// Single-byte fonts: each of the 256 codes (empty for CID fonts).
    simple: Vec<Code>,
    /// CID fonts: text per two-byte code.
    text: HashMap<u32, String>,
    /// CID fonts with an Identity encoding and an Adobe character
    /// collection: text per CID of the collection, for codes the
    /// ToUnicode CMap (if any) does not map.
    collection: &'static [Box<str>],
    /// CID fonts: width per two-byte code.
    widths: HashMap<u32, f64>,
    default_width: f64,
    /// Glyph space to text space (0.001 except for Type 3 fonts).
    scale: f64,
    /// The em size relative to a 1000-unit font (Type 3 fonts differ).
    pub em: f64,
}

/// Caches of fonts and glyph-name lookups for one document. Used with one
/// document only, which it must not outlive: inline font dictionaries are
/// known by their address in it.
#[derive(Default)]
pub(crate) struct FontCache {
    fonts: HashMap<ObjectId, Rc<FontInfo>>,
    /// Fonts given as a dictionary in a resource dictionary rather than by
    /// reference, by the dictionary's address in the document (which is
    /// not changed while the cache lives), so `Tf` does not rebuild them.
    inline: HashMap<*const Dictionary, Rc<FontInfo>>,
    glyph_names: HashMap<Vec<u8>, Option<String>>,
}

impl FontCache {
    /// The font for a resource entry (a reference or an inline dictionary);
    /// `None` if the entry is not a font dictionary. Building one charges
    /// its streams to `work` and checks the deadline.
    pub fn font(
        &mut self,
        doc: &Document,
        entry: &Object,
        work: &mut Work,
    ) -> Result<Option<Rc<FontInfo>>, ParseError> {
        match entry {
            Object::Reference(id) => {
                if let Some(font) = self.fonts.get(id) {
                    return Ok(Some(font.clone()));
                }
                let Ok(dict) = doc.get_dictionary(*id) else {
                    return Ok(None);
                };
                let font = Rc::new(self.build(doc, dict, work)?);
                self.fonts.insert(*id, font.clone());
                Ok(Some(font))
            }
            Object::Dictionary(dict) => {
                let key: *const Dictionary = dict;
                if let Some(font) = self.inline.get(&key) {
                    return Ok(Some(font.clone()));
                }
                let font = Rc::new(self.build(doc, dict, work)?);
                self.inline.insert(key, font.clone());
                Ok(Some(font))
            }
            _ => Ok(None),
        }
    }

    fn build(
        &mut self,
        doc: &Document,
        font: &Dictionary,
        work: &mut Work,
    ) -> Result<FontInfo, ParseError> {
        work.check_deadline()?;
        let subtype = font
            .get(b"Subtype")
            .and_then(Object::as_name)
            .unwrap_or(b"");
        if subtype == b"Type0" {
            return self.build_cid(doc, font, work);
        }
        let mut scale = 0.001;
        let mut em = 1.0;
        if subtype == b"Type3"
            && let Ok(matrix) = deref(doc, font.get(b"FontMatrix")).and_then(Object::as_array)
        {
            let num = |i: usize| matrix.get(i).and_then(|o| o.as_float().ok()).map(f64::from);
            if let (Some(a), Some(d)) = (num(0), num(3)) {
                scale = a.abs();
                em = (d.abs() / 0.001).max(1e-6);
            }
        }
        let text = self.simple_text(doc, font, work)?;
        let (widths, default_width) = simple_widths(doc, font);
        // Codes beyond 255 in `/Differences` or `/Widths` cannot be shown
        // by a single-byte font.
        let simple = text
            .into_iter()
            .zip(0u32..)
            .map(|(text, code)| Code {
                blank: text.chars().all(char::is_whitespace),
                text,
                width: widths.get(&code).copied().unwrap_or(default_width) * scale,
            })
            .collect();
        Ok(FontInfo {
            two_byte: false,
            simple,
            text: HashMap::new(),
            collection: &[],
            widths: HashMap::new(),
            default_width,
            scale,
            em,
        })
    }

    /// Text for each single-byte code: ToUnicode, else differences, else
    /// base. Always 256 entries, empty where the code has no text.
    fn simple_text(
        &mut self,
        doc: &Document,
        font: &Dictionary,
        work: &mut Work,
    ) -> Result<Vec<Cow<'static, str>>, ParseError> {
        // Base encoding: a name, or the embedded program's, or Standard.
        let encoding = deref(doc, font.get(b"Encoding")).ok();
        let base_name = match encoding {
            Some(Object::Name(name)) => Some(name.clone()),
            Some(Object::Dictionary(d)) => d
                .get(b"BaseEncoding")
                .and_then(Object::as_name)
                .ok()
                .map(<[u8]>::to_vec),
            _ => None,
        };
        let builtin = if base_name.is_none() {
            builtin_encoding(doc, font, work)?
        } else {
            None
        };
        let mut table: Vec<Cow<'static, str>> = match builtin {
            Some(names) => {
                let mut table = vec![Cow::Borrowed(""); 256];
                for (code, name) in names.iter().enumerate().take(256) {
                    if let Some(name) = name
                        && let Some(t) = self.glyph_text(doc, name)
                    {
                        table[code] = expand_ligatures(t);
                    }
                }
                table
            }
            None => {
                let name = base_name.unwrap_or_else(|| b"StandardEncoding".to_vec());
                match named_encoding(&name) {
                    Some(known) => known.iter().map(|t| Cow::Borrowed(t.as_str())).collect(),
                    None => encoding_table(doc, name)
                        .into_iter()
                        .map(Cow::Owned)
                        .collect(),
                }
            }
        };
        // Differences on top.
        if let Some(Object::Dictionary(d)) = encoding
            && let Ok(diffs) = deref(doc, d.get(b"Differences")).and_then(Object::as_array)
        {
            let mut code = 0u32;
            for item in diffs {
                match item {
                    Object::Integer(c) => code = u32::try_from(*c).unwrap_or(0),
                    Object::Name(name) => {
                        // Codes past 255 have no slot, so looking their
                        // names up would be wasted.
                        if let Some(slot) =
                            usize::try_from(code).ok().and_then(|c| table.get_mut(c))
                        {
                            let text = self.glyph_text(doc, name);
                            *slot = text.map_or(Cow::Borrowed(""), expand_ligatures);
                        }
                        code = code.saturating_add(1);
                    }
                    _ => {}
                }
            }
        }
        // ToUnicode wins.
        for (code, t) in to_unicode(doc, font, work)? {
            if code < 256 {
                table[code as usize] = expand_ligatures(t);
            }
        }
        Ok(table)
    }

    fn build_cid(
        &mut self,
        doc: &Document,
        font: &Dictionary,
        work: &mut Work,
    ) -> Result<FontInfo, ParseError> {
        let text: HashMap<u32, String> = to_unicode(doc, font, work)?
            .into_iter()
            .map(|(code, t)| (code, expand_ligatures(t).into_owned()))
            .collect();
        let descendant = deref(doc, font.get(b"DescendantFonts"))
            .and_then(Object::as_array)
            .ok()
            .and_then(|a| a.first())
            .and_then(|d| deref(doc, Ok(d)).ok())
            .and_then(|d| d.as_dict().ok());
        let mut widths = HashMap::new();
        let mut default_width = 1000.0;
        // Identity-H/V: the code is the CID.
        let identity = matches!(
            deref(doc, font.get(b"Encoding")).and_then(Object::as_name),
            Ok(b"Identity-H" | b"Identity-V")
        );
        let collection = descendant
            .filter(|_| identity)
            .and_then(|d| deref(doc, d.get(b"CIDSystemInfo")).ok())
            .and_then(|info| info.as_dict().ok())
            .and_then(|info| {
                let string = |key: &[u8]| match deref(doc, info.get(key)) {
                    Ok(Object::String(s, _)) => Some(s.as_slice()),
                    _ => None,
                };
                let ordering = string(b"Ordering")?;
                (string(b"Registry")? == b"Adobe").then(|| collection_text(ordering))
            })
            .unwrap_or(&[]);
        if let Some(d) = descendant {
            if let Ok(dw) = deref(doc, d.get(b"DW")).and_then(Object::as_float) {
                default_width = f64::from(dw);
            }
            if let Ok(w) = deref(doc, d.get(b"W")).and_then(Object::as_array) {
                cid_widths(doc, w, &mut widths);
            }
        }
        Ok(FontInfo {
            two_byte: true,
            simple: Vec::new(),
            text,
            collection,
            widths,
            default_width,
            scale: 0.001,
            em: 1.0,
        })
    }

    /// The text of a glyph name, or `None` if unknown.
    fn glyph_text(&mut self, doc: &Document, name: &[u8]) -> Option<String> {
        if let Some(known) = self.glyph_names.get(name) {
            return known.clone();
        }
        let text = glyph_name_text(doc, name);
        self.glyph_names.insert(name.to_vec(), text.clone());
        text
    }
}

impl FontInfo {
    /// Splits a shown string into glyphs.
    pub fn decode<'f>(&'f self, bytes: &'f [u8]) -> impl Iterator<Item = Glyph<'f>> + 'f {
        let (simple, two_byte) = if self.two_byte {
            (&[][..], bytes)
        } else {
            (bytes, &[][..])
        };
        let simple = simple.iter().map(|&b| {
            let code = &self.simple[usize::from(b)];
            Glyph {
                text: &code.text,
                width: code.width,
                is_space_code: b == 32,
                blank: code.blank,
            }
        });
        let two_byte = two_byte.chunks(2).map(|c| {
            let code = (u32::from(c[0]) << 8) | u32::from(*c.get(1).unwrap_or(&0));
            let text = match self.text.get(&code) {
                Some(text) => text.as_str(),
                None => self.collection.get(code as usize).map_or("", |t| t),
            };
            Glyph {
                text,
                width: self
                    .widths
                    .get(&code)
                    .copied()
                    .unwrap_or(self.default_width)
                    * self.scale,
                is_space_code: false,
                blank: text.chars().all(char::is_whitespace),
            }
        });
        simple.chain(two_byte)
    }
}

/// The font's `/ToUnicode` CMap as code → text (empty if none or
/// unreadable), its decompressed bytes charged to `work`.
fn to_unicode(
    doc: &Document,
    font: &Dictionary,
    work: &mut Work,
) -> Result<HashMap<u32, String>, ParseError> {
    let Ok(data) = deref(doc, font.get(b"ToUnicode"))
        .and_then(Object::as_stream)
        .and_then(|s| s.get_plain_content_with_limit(FONT_STREAM_LIMIT))
    else {
        return Ok(HashMap::new());
    };
    work.decompressed(data.len())?;
    Ok(parse_cmap(&data))
}

/// A token of a CMap, as far as `bfchar` and `bfrange` need them.
#[derive(Debug)]
enum CmapToken<'a> {
    /// A hex string's bytes, at most `2 * CMAP_MAX_STRING` (enough for a
    /// four-byte code and for the longest mapped string kept).
    Hex(Vec<u8>),
    Open,
    Close,
    Word(&'a [u8]),
}

/// The tokens of a CMap, read one at a time so that a CMap of millions of
/// tokens is never held as a list.
struct CmapTokens<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Iterator for CmapTokens<'a> {
    type Item = CmapToken<'a>;

    fn next(&mut self) -> Option<CmapToken<'a>> {
        let data = self.data;
        while self.at < data.len() {
            let i = self.at;
            match data[i] {
                b'<' if data.get(i + 1) != Some(&b'<') => {
                    let end = data[i..]
                        .iter()
                        .position(|&b| b == b'>')
                        .map_or(data.len(), |p| i + p);
                    self.at = end + 1;
                    return Some(CmapToken::Hex(hex_bytes(&data[i + 1..end])));
                }
                b'[' => {
                    self.at += 1;
                    return Some(CmapToken::Open);
                }
                b']' => {
                    self.at += 1;
                    return Some(CmapToken::Close);
                }
                b'%' => {
                    while self.at < data.len() && !matches!(data[self.at], b'\n' | b'\r') {
                        self.at += 1;
                    }
                }
                b if b.is_ascii_alphabetic() => {
                    let len = data[i..]
                        .iter()
                        .position(|b| !b.is_ascii_alphanumeric())
                        .unwrap_or(data.len() - i);
                    self.at = i + len;
                    return Some(CmapToken::Word(&data[i..i + len]));
                }
                _ => self.at += 1,
            }
        }
        None
    }
}

/// The bytes of a hex string's digits (anything else skipped, an odd last
/// digit padded with 0), the first `2 * CMAP_MAX_STRING` of them.
fn hex_bytes(digits: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut high = None;
    for nibble in digits.iter().filter_map(|&d| char::from(d).to_digit(16)) {
        if bytes.len() == 2 * CMAP_MAX_STRING {
            break;
        }
        // `to_digit(16)` is below 16, so the byte cannot overflow.
        match high.take() {
            None => high = Some(nibble as u8),
            Some(h) => bytes.push((h << 4) | nibble as u8),
        }
    }
    bytes.extend(high.map(|h| h << 4));
    bytes
}

/// A ToUnicode map as it is built, within [`CMAP_BUDGET`].
struct CmapBuilder {
    map: HashMap<u32, String>,
    left: usize,
}

impl CmapBuilder {
    /// Maps `code` to the text of `units` (codes past [`MAX_CODE`] are
    /// skipped); false once the budget is spent, when reading must stop.
    fn set(&mut self, code: u32, units: &[u16]) -> bool {
        if code > MAX_CODE {
            return true;
        }
        let cost = 1 + units.len();
        if cost > self.left {
            self.left = 0;
            return false;
        }
        self.left -= cost;
        self.map.insert(code, String::from_utf16_lossy(units));
        true
    }
}

/// Parses the `bfchar` and `bfrange` sections of a ToUnicode CMap, within
/// [`CMAP_BUDGET`]: past it, the map read so far.
fn parse_cmap(data: &[u8]) -> HashMap<u32, String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Section {
        Other,
        Char,
        Range,
    }
    let code = |b: &[u8]| {
        b.iter()
            .take(4)
            .fold(0u32, |acc, &x| (acc << 8) | u32::from(x))
    };
    let units = |b: &[u8]| -> Vec<u16> {
        b.chunks(2)
            .map(|c| (u16::from(c[0]) << 8) | u16::from(*c.get(1).unwrap_or(&0)))
            .collect()
    };
    let is_hex = |t: &CmapToken| matches!(t, CmapToken::Hex(_));
    let mut out = CmapBuilder {
        map: HashMap::new(),
        left: CMAP_BUDGET,
    };
    let mut tokens = CmapTokens { data, at: 0 }.peekable();
    let mut section = Section::Other;
    while let Some(token) = tokens.next() {
        match (token, section) {
            (CmapToken::Word(w), _) => {
                section = match w {
                    b"beginbfchar" => Section::Char,
                    b"beginbfrange" => Section::Range,
                    _ => Section::Other,
                };
            }
            (CmapToken::Hex(src), Section::Char) => {
                // The token after the source is taken whatever it is.
                if let Some(CmapToken::Hex(dst)) = tokens.next()
                    && !out.set(code(&src), &units(&dst))
                {
                    break;
                }
            }
            (CmapToken::Hex(lo), Section::Range) => {
                let Some(CmapToken::Hex(hi)) = tokens.next_if(is_hex) else {
                    continue;
                };
                let lo = code(&lo);
                // Codes past MAX_CODE are never looked up, so a range is
                // at most 65 536 codes.
                let hi = code(&hi).min(MAX_CODE);
                match tokens.next() {
                    Some(CmapToken::Hex(dst)) if !dst.is_empty() => {
                        let mut units = units(&dst);
                        for c in lo..=hi {
                            if !out.set(c, &units) {
                                return out.map;
                            }
                            if let Some(last) = units.last_mut() {
                                *last = last.wrapping_add(1);
                            }
                        }
                    }
                    Some(CmapToken::Open) => {
                        // One string per code from `lo`; `None` once past
                        // the last code a u32 holds.
                        let mut c = Some(lo);
                        while let Some(CmapToken::Hex(dst)) = tokens.next_if(is_hex) {
                            if let Some(code) = c.filter(|&c| c <= hi)
                                && !out.set(code, &units(&dst))
                            {
                                return out.map;
                            }
                            c = c.and_then(|c| c.checked_add(1));
                        }
                        // The token closing the array, normally `]`.
                        tokens.next();
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out.map
}

/// Where poppler-data (Debian package `poppler-data`) keeps the text of
/// each CID of Adobe's character collections (`Adobe-Japan1`, ...), one
/// hexadecimal Unicode value per line, line n for CID n (0000: none).
const CID_TO_UNICODE_DIR: &str = "/usr/share/poppler/cidToUnicode";

/// The text per CID of Adobe's character collection `ordering` (`Japan1`,
/// `GB1`, `CNS1`, `Korea1`), read from poppler-data once per process;
/// empty for another ordering or without poppler-data.
fn collection_text(ordering: &[u8]) -> &'static [Box<str>] {
    static TABLES: [OnceLock<Vec<Box<str>>>; 4] = [const { OnceLock::new() }; 4];
    const ORDERINGS: [&str; 4] = ["Japan1", "GB1", "CNS1", "Korea1"];
    let Some(i) = ORDERINGS.iter().position(|o| o.as_bytes() == ordering) else {
        return &[];
    };
    TABLES[i].get_or_init(|| {
        let path = format!("{CID_TO_UNICODE_DIR}/Adobe-{}", ORDERINGS[i]);
        std::fs::read_to_string(path)
            .map(|table| parse_cid_to_unicode(&table))
            .unwrap_or_default()
    })
}

/// Parses a poppler-data cidToUnicode table, at most [`MAX_CODE`] + 1 lines.
fn parse_cid_to_unicode(table: &str) -> Vec<Box<str>> {
    table
        .lines()
        .take(MAX_CODE as usize + 1)
        .map(|line| {
            u32::from_str_radix(line.trim(), 16)
                .ok()
                .filter(|&c| c != 0)
                .and_then(char::from_u32)
                .map(|c| c.to_string().into_boxed_str())
                .unwrap_or_default()
        })
        .collect()
}

fn font_dict() -> Dictionary {
    let mut d = Dictionary::new();
    d.set("Type", Object::Name(b"Font".to_vec()));
    d.set("Subtype", Object::Name(b"Type1".to_vec()));
    d
}

/// Follows a reference (a few levels) to the object.
pub(crate) fn deref<'a>(
    doc: &'a Document,
    obj: lopdf::Result<&'a Object>,
) -> lopdf::Result<&'a Object> {
    let mut obj = obj?;
    for _ in 0..8 {
        match obj {
            Object::Reference(id) => obj = doc.get_object(*id)?,
            _ => return Ok(obj),
        }
    }
    Err(lopdf::Error::ReferenceLimit)
}

fn simple_widths(doc: &Document, font: &Dictionary) -> (HashMap<u32, f64>, f64) {
    let mut widths = HashMap::new();
    let first = deref(doc, font.get(b"FirstChar"))
        .and_then(Object::as_i64)
        .unwrap_or(0);
    if let Ok(list) = deref(doc, font.get(b"Widths")).and_then(Object::as_array) {
        for (i, w) in list.iter().enumerate() {
            if let Ok(w) = deref(doc, Ok(w)).and_then(Object::as_float)
                && let Some(code) = i64::try_from(i)
                    .ok()
                    .and_then(|i| first.checked_add(i))
                    .and_then(|c| u32::try_from(c).ok())
            {
                widths.insert(code, f64::from(w));
            }
        }
    }
    let missing = deref(doc, font.get(b"FontDescriptor"))
        .and_then(Object::as_dict)
        .and_then(|d| deref(doc, d.get(b"MissingWidth")))
        .and_then(Object::as_float)
        .ok()
        .map(f64::from)
        .filter(|w| *w > 0.0);
    let base = font
        .get(b"BaseFont")
        .and_then(Object::as_name)
        .unwrap_or(b"");
    let monospace = base.windows(7).any(|w| w == b"Courier");
    // Without widths (the standard 14 fonts), an average glyph.
    let default = missing.unwrap_or(if monospace { 600.0 } else { 500.0 });
    (widths, default)
}

/// Reads a CID font's `/W` array: `first [w1 w2 …]` and `first last w`
/// items. Stops at an item it cannot read, at a code past what a u32
/// holds, or after [`MAX_WIDTH_ENTRIES`] widths; codes past [`MAX_CODE`]
/// are skipped, so a range sets at most 65 536.
fn cid_widths(doc: &Document, w: &[Object], widths: &mut HashMap<u32, f64>) {
    let num = |o: &Object| {
        deref(doc, Ok(o))
            .and_then(Object::as_float)
            .ok()
            .map(f64::from)
    };
    let mut left = MAX_WIDTH_ENTRIES;
    let mut set = |code: u32, v: f64| {
        if code <= MAX_CODE {
            widths.insert(code, v);
        }
        left -= 1;
        left > 0
    };
    let mut i = 0;
    while i < w.len() {
        let Some(first) = num(&w[i]) else { break };
        // `as` saturates: negative or huge values become 0 or u32::MAX.
        let first = first as u32;
        match w.get(i + 1).map(|o| deref(doc, Ok(o))) {
            Some(Ok(Object::Array(list))) => {
                let mut code = Some(first);
                for v in list {
                    let Some(c) = code else { return };
                    if let Some(v) = num(v)
                        && !set(c, v)
                    {
                        return;
                    }
                    code = c.checked_add(1);
                }
                i += 2;
            }
            Some(Ok(last)) => {
                let (Some(last), Some(v)) = (num(last), w.get(i + 2).and_then(num)) else {
                    break;
                };
                for code in first..=(last as u32).min(MAX_CODE) {
                    if !set(code, v) {
                        return;
                    }
                }
                i += 3;
            }
            _ => break,
        }
    }
}

/// The built-in encoding of an embedded Type 1 font program (`/FontFile`):
/// the `dup <code> /<name> put` entries of its clear-text part.
/// Its decompressed bytes are charged to `work`.
fn builtin_encoding(
    doc: &Document,
    font: &Dictionary,
    work: &mut Work,
) -> Result<Option<Vec<Option<Vec<u8>>>>, ParseError> {
    let program = deref(doc, font.get(b"FontDescriptor"))
        .and_then(Object::as_dict)
        .and_then(|descriptor| deref(doc, descriptor.get(b"FontFile")))
        .and_then(Object::as_stream);
    let Ok(program) = program else {
        return Ok(None);
    };
    let Ok(data) = program.get_plain_content_with_limit(FONT_STREAM_LIMIT) else {
        return Ok(None);
    };
    work.decompressed(data.len())?;
    Ok(type1_encoding(doc, program, &data))
}

/// The `dup <code> /<name> put` entries of a Type 1 program's clear-text
/// part (`data`, decompressed).
fn type1_encoding(doc: &Document, program: &Stream, data: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
    let clear_len = deref(doc, program.dict.get(b"Length1"))
        .and_then(Object::as_i64)
        .ok()
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(data.len())
        .min(data.len());
    let clear = &data[..clear_len];
    let start = clear.windows(9).position(|w| w == b"/Encoding")?;
    let clear = &clear[start..];
    if clear.starts_with(b"/Encoding StandardEncoding") {
        return None;
    }
    let text = String::from_utf8_lossy(clear);
    let mut names = vec![None; 256];
    let tokens: Vec<&str> = text.split_whitespace().collect();
    for (i, window) in tokens.windows(4).enumerate() {
        if window[0] == "dup" && window[3] == "put" {
            if let (Ok(code), Some(name)) =
                (window[1].parse::<usize>(), window[2].strip_prefix('/'))
                && code < 256
            {
                names[code] = Some(name.as_bytes().to_vec());
            }
        } else if window[0] == "readonly" || (window[0] == "def" && i > 4) {
            break;
        }
    }
    names.iter().any(Option::is_some).then_some(names)
}

/// A glyph name's text: `uniXXXX…`, `uXXXX[XX]`, `a_b` ligatures and
/// `name.suffix` variants handled here, the rest by lopdf's glyph list.
fn glyph_name_text(doc: &Document, name: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(name).ok()?;
    let base = name.split('.').next().unwrap_or(name);
    if base.is_empty() {
        return None;
    }
    if base.contains('_') {
        let parts: Option<Vec<String>> = base
            .split('_')
            .map(|p| glyph_name_text(doc, p.as_bytes()))
            .collect();
        return parts.map(|p| p.concat());
    }
    if let Some(hex) = base.strip_prefix("uni")
        && hex.len() >= 4
        && hex.len() % 4 == 0
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let units: Vec<u16> = (0..hex.len())
            .step_by(4)
            .filter_map(|i| u16::from_str_radix(&hex[i..i + 4], 16).ok())
            .collect();
        return String::from_utf16(&units).ok();
    }
    if let Some(hex) = base.strip_prefix('u')
        && (4..=6).contains(&hex.len())
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return u32::from_str_radix(hex, 16)
            .ok()
            .and_then(char::from_u32)
            .map(String::from);
    }
    // Ask lopdf's glyph list: a one-entry /Differences at code 0, which
    // StandardEncoding leaves undefined, so an unknown name decodes to "".
    let mut encoding = Dictionary::new();
    encoding.set(
        "Differences",
        Object::Array(vec![
            Object::Integer(0),
            Object::Name(base.as_bytes().to_vec()),
        ]),
    );
    let mut probe = font_dict();
    probe.set("Encoding", Object::Dictionary(encoding));
    let text = probe
        .get_font_encoding(doc)
        .ok()?
        .bytes_to_string(&[0])
        .ok()?;
    (!text.is_empty()).then_some(text)
}

/// Spells out Latin ligature characters (ﬁ → fi), as pdftotext does.
fn expand_ligatures(text: String) -> Cow<'static, str> {
    if !text.chars().any(|c| ('\u{fb00}'..='\u{fb06}').contains(&c)) {
        return Cow::Owned(text);
    }
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        match c {
            '\u{fb00}' => out.push_str("ff"),
            '\u{fb01}' => out.push_str("fi"),
            '\u{fb02}' => out.push_str("fl"),
            '\u{fb03}' => out.push_str("ffi"),
            '\u{fb04}' => out.push_str("ffl"),
            '\u{fb05}' | '\u{fb06}' => out.push_str("st"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The text of the 256 codes of a named base encoding, through lopdf's
/// tables (empty where a code has none).
fn encoding_table(doc: &Document, name: Vec<u8>) -> Vec<String> {
    let mut probe = font_dict();
    probe.set("Encoding", Object::Name(name));
    let mut table = vec![String::new(); 256];
    if let Ok(enc) = probe.get_font_encoding(doc) {
        for (code, slot) in (0..=255u8).zip(table.iter_mut()) {
            if let Ok(t) = enc.bytes_to_string(&[code]) {
                *slot = expand_ligatures(t).into_owned();
            }
        }
    }
    table
}

/// The standard base encodings, worked out once per process rather than
/// with 256 lookups through lopdf for every font that names one.
fn named_encoding(name: &[u8]) -> Option<&'static [String]> {
    const NAMES: [&[u8]; 4] = [
        b"StandardEncoding",
        b"WinAnsiEncoding",
        b"MacRomanEncoding",
        b"MacExpertEncoding",
    ];
    static TABLES: [OnceLock<Vec<String>>; 4] = [const { OnceLock::new() }; 4];
    let i = NAMES.iter().position(|n| *n == name)?;
    Some(TABLES[i].get_or_init(|| encoding_table(&Document::new(), name.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyph_names() {
        let doc = Document::new();
        assert_eq!(glyph_name_text(&doc, b"A").as_deref(), Some("A"));
        assert_eq!(glyph_name_text(&doc, b"eacute").as_deref(), Some("é"));
        assert_eq!(glyph_name_text(&doc, b"uni00E9").as_deref(), Some("é"));
        assert_eq!(glyph_name_text(&doc, b"u1F600").as_deref(), Some("😀"));
        assert_eq!(glyph_name_text(&doc, b"f_f_i").as_deref(), Some("ffi"));
        assert_eq!(glyph_name_text(&doc, b"a.sc").as_deref(), Some("a"));
        assert_eq!(glyph_name_text(&doc, b"g123"), None);
    }

    #[test]
    fn cmap_bfchar_and_bfrange() {
        let cmap = b"/CIDInit /ProcSet findresource begin 1 begincodespacerange <0000> <FFFF> endcodespacerange\n\
            2 beginbfchar <0003> <0020> <0011> <00660069> endbfchar\n\
            2 beginbfrange <0024> <0026> <0041> <0030> <0031> [<00E9> <D83DDE00>] endbfrange end";
        let map = parse_cmap(cmap);
        assert_eq!(map[&3], " ");
        assert_eq!(map[&0x11], "fi");
        assert_eq!(map[&0x24], "A");
        assert_eq!(map[&0x26], "C");
        assert_eq!(map[&0x30], "é");
        assert_eq!(map[&0x31], "😀");
    }

    /// A CMap of `ranges` bfrange entries, then `tail`.
    fn cmap(ranges: &[String], tail: &str) -> Vec<u8> {
        format!(
            "{} beginbfrange\n{}\nendbfrange\n{tail}",
            ranges.len(),
            ranges.join("\n")
        )
        .into_bytes()
    }

    #[test]
    fn a_mapped_string_is_cut_to_its_cap() {
        // Without the cap, each of 65 536 codes gets its own copy of a
        // string of 2000 units.
        let long = format!("0041{}", "0042".repeat(1999));
        let map = parse_cmap(&cmap(&[format!("<0000> <FFFF> <{long}>")], ""));
        assert_eq!(map.len(), 0x10000);
        assert!(
            map.values()
                .all(|t| t.encode_utf16().count() <= CMAP_MAX_STRING)
        );
        assert_eq!(map[&0], format!("A{}", "B".repeat(CMAP_MAX_STRING - 1)));
    }

    #[test]
    fn a_cmap_past_its_budget_stops_being_read() {
        // 40 full ranges are 2.6 million entries (5.2 million units of
        // the budget); what follows them is not read.
        let ranges = vec!["<0000> <FFFF> <0041>".to_string(); 40];
        let map = parse_cmap(&cmap(&ranges, "1 beginbfchar <0000> <0042> endbfchar"));
        assert_eq!(map[&0], "A");
        assert_eq!(map[&0x41], "\u{82}");
    }

    #[test]
    fn codes_past_two_bytes_are_not_kept() {
        let ranges: Vec<String> = (0..40u32)
            .map(|k| format!("<{:08X}> <{:08X}> <0041>", k << 16, (k << 16) | 0xffff))
            .collect();
        let map = parse_cmap(&cmap(&ranges, ""));
        assert_eq!(map.len(), 0x10000);
        // 0x41 + 0xffff, wrapped to 16 bits.
        assert_eq!(map[&0xffff], "@");
    }

    #[test]
    fn cmap_code_arithmetic_cannot_overflow() {
        let map = parse_cmap(
            b"1 beginbfrange <FFFFFFFF> <FFFFFFFF> [<0041> <0042>] endbfrange\n\
              1 beginbfrange <FFFF> <FFFF> [<0043> <0044>] endbfrange\n\
              1 beginbfchar <0001> <0045> endbfchar",
        );
        assert_eq!(map.len(), 2);
        assert_eq!(map[&0xffff], "C");
        assert_eq!(map[&1], "E");
    }

    #[test]
    fn cid_widths_cannot_overflow_or_grow_without_bound() {
        let doc = Document::new();
        let mut widths = HashMap::new();
        let w: Vec<Object> = vec![
            1.into(),
            vec![250.into(), 260.into()].into(),
            4_294_967_295i64.into(),
            vec![1.into(), 2.into()].into(),
        ];
        cid_widths(&doc, &w, &mut widths);
        assert_eq!(widths, HashMap::from([(1, 250.0), (2, 260.0)]));
        // 20 full ranges set 1.3 million widths; what follows is not read.
        let mut w: Vec<Object> = Vec::new();
        for _ in 0..20 {
            w.extend([0.into(), 65535.into(), 1.into()]);
        }
        w.extend([0.into(), 0.into(), 7.into()]);
        let mut widths = HashMap::new();
        cid_widths(&doc, &w, &mut widths);
        assert_eq!(widths.len(), 0x10000);
        assert_eq!(widths[&0], 1.0);
    }

    #[test]
    fn simple_font_code_arithmetic_cannot_overflow() {
        let doc = Document::new();
        let mut font = font_dict();
        font.set("FirstChar", i64::MAX);
        font.set("Widths", vec![Object::from(1), 2.into()]);
        let differences = vec![
            Object::Integer(4_294_967_295),
            Object::Name(b"a".to_vec()),
            Object::Name(b"b".to_vec()),
            Object::Integer(65),
            Object::Name(b"B".to_vec()),
        ];
        font.set(
            "Encoding",
            Object::Dictionary(Dictionary::from_iter([(
                "Differences",
                Object::Array(differences),
            )])),
        );
        let mut work = Work::new(&crate::Limits::default());
        let info = FontCache::default().build(&doc, &font, &mut work).unwrap();
        let glyphs: Vec<&str> = info.decode(b"A").map(|g| g.text).collect();
        assert_eq!(glyphs, ["B"]);
    }

    #[test]
    fn ligatures_expand() {
        assert_eq!(expand_ligatures("\u{fb01}nd \u{fb04}".into()), "find ffl");
    }

    #[test]
    fn cid_to_unicode_tables_map_each_line_to_its_cid() {
        let table = super::parse_cid_to_unicode("0000\n0041\n3042\nzz\nd800\n");
        let texts: Vec<&str> = table.iter().map(|t| &**t).collect();
        assert_eq!(texts, ["", "A", "あ", "", ""]);
        let long = "0041\n".repeat(super::MAX_CODE as usize + 10);
        assert_eq!(
            super::parse_cid_to_unicode(&long).len(),
            super::MAX_CODE as usize + 1
        );
    }
}
