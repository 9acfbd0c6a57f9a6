//! What the codes in a PDF string mean: text and advance width per glyph.
//!
//! Text comes, in order of preference (as poppler does), from the font's
//! `/ToUnicode` CMap, then its `/Encoding` differences, then its base
//! encoding: a named one, or the built-in encoding of an embedded Type 1
//! font program (pdfTeX's Computer Modern fonts have no `/Encoding`), or
//! StandardEncoding. Glyph names go through lopdf's glyph list, plus the
//! `uniXXXX`/`uXXXX` and `a_b` ligature conventions. Widths come from
//! `/Widths` (simple fonts) or `/W` and `/DW` (CID fonts).

use lopdf::{Dictionary, Document, Object, ObjectId, Stream};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Decompression bound for font programs and CMaps.
const FONT_STREAM_LIMIT: usize = 16 << 20;

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
    /// CID fonts: width per two-byte code.
    widths: HashMap<u32, f64>,
    default_width: f64,
    /// Glyph space to text space (0.001 except for Type 3 fonts).
    scale: f64,
    /// The em size relative to a 1000-unit font (Type 3 fonts differ).
    pub em: f64,
}

/// Caches of fonts and glyph-name lookups for one document.
#[derive(Default)]
pub(crate) struct FontCache {
    fonts: HashMap<ObjectId, std::rc::Rc<FontInfo>>,
    glyph_names: HashMap<Vec<u8>, Option<String>>,
}

impl FontCache {
    /// The font for a resource entry (a reference or an inline dictionary).
    pub fn font(&mut self, doc: &Document, entry: &Object) -> Option<std::rc::Rc<FontInfo>> {
        match entry {
            Object::Reference(id) => {
                if let Some(font) = self.fonts.get(id) {
                    return Some(font.clone());
                }
                let dict = doc.get_dictionary(*id).ok()?;
                let font = std::rc::Rc::new(self.build(doc, dict));
                self.fonts.insert(*id, font.clone());
                Some(font)
            }
            Object::Dictionary(dict) => Some(std::rc::Rc::new(self.build(doc, dict))),
            _ => None,
        }
    }

    fn build(&mut self, doc: &Document, font: &Dictionary) -> FontInfo {
        let subtype = font
            .get(b"Subtype")
            .and_then(Object::as_name)
            .unwrap_or(b"");
        if subtype == b"Type0" {
            return self.build_cid(doc, font);
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
        let text = self.simple_text(doc, font);
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
        FontInfo {
            two_byte: false,
            simple,
            text: HashMap::new(),
            widths: HashMap::new(),
            default_width,
            scale,
            em,
        }
    }

    /// Text for each single-byte code: ToUnicode, else differences, else
    /// base. Always 256 entries, empty where the code has no text.
    fn simple_text(&mut self, doc: &Document, font: &Dictionary) -> Vec<Cow<'static, str>> {
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
            builtin_encoding(doc, font)
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
                        let text = self.glyph_text(doc, name);
                        if let Some(slot) =
                            usize::try_from(code).ok().and_then(|c| table.get_mut(c))
                        {
                            *slot = text.map_or(Cow::Borrowed(""), expand_ligatures);
                        }
                        code += 1;
                    }
                    _ => {}
                }
            }
        }
        // ToUnicode wins.
        for (code, t) in to_unicode(doc, font) {
            if code < 256 {
                table[code as usize] = expand_ligatures(t);
            }
        }
        table
    }

    fn build_cid(&mut self, doc: &Document, font: &Dictionary) -> FontInfo {
        let text: HashMap<u32, String> = to_unicode(doc, font)
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
        if let Some(d) = descendant {
            if let Ok(dw) = deref(doc, d.get(b"DW")).and_then(Object::as_float) {
                default_width = f64::from(dw);
            }
            if let Ok(w) = deref(doc, d.get(b"W")).and_then(Object::as_array) {
                cid_widths(doc, w, &mut widths);
            }
        }
        FontInfo {
            two_byte: true,
            simple: Vec::new(),
            text,
            widths,
            default_width,
            scale: 0.001,
            em: 1.0,
        }
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
            let text = self.text.get(&code).map_or("", String::as_str);
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

/// The font's `/ToUnicode` CMap as code → text (empty if none or unreadable).
fn to_unicode(doc: &Document, font: &Dictionary) -> HashMap<u32, String> {
    deref(doc, font.get(b"ToUnicode"))
        .and_then(Object::as_stream)
        .and_then(|s| s.get_plain_content_with_limit(FONT_STREAM_LIMIT))
        .map(|data| parse_cmap(&data))
        .unwrap_or_default()
}

/// Parses the `bfchar` and `bfrange` sections of a ToUnicode CMap.
fn parse_cmap(data: &[u8]) -> HashMap<u32, String> {
    #[derive(Debug)]
    enum Token {
        Hex(Vec<u8>),
        Open,
        Close,
        Word(String),
    }
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'<' if data.get(i + 1) != Some(&b'<') => {
                let end = data[i..]
                    .iter()
                    .position(|&b| b == b'>')
                    .map_or(data.len(), |p| i + p);
                let digits: Vec<u8> = data[i + 1..end]
                    .iter()
                    .copied()
                    .filter(u8::is_ascii_hexdigit)
                    .collect();
                let bytes = digits
                    .chunks(2)
                    .map(|c| {
                        let hex = std::str::from_utf8(c).unwrap_or("0");
                        u8::from_str_radix(&format!("{hex:0<2}"), 16).unwrap_or(0)
                    })
                    .collect();
                tokens.push(Token::Hex(bytes));
                i = end + 1;
            }
            b'[' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b']' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b'%' => {
                while i < data.len() && data[i] != b'\n' && data[i] != b'\r' {
                    i += 1;
                }
            }
            b if b.is_ascii_alphabetic() => {
                let start = i;
                while i < data.len() && data[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                tokens.push(Token::Word(
                    String::from_utf8_lossy(&data[start..i]).into_owned(),
                ));
            }
            _ => i += 1,
        }
    }
    let code = |b: &[u8]| {
        b.iter()
            .take(4)
            .fold(0u32, |acc, &x| (acc << 8) | u32::from(x))
    };
    let utf16 = |b: &[u8]| -> String {
        let units: Vec<u16> = b
            .chunks(2)
            .map(|c| (u16::from(c[0]) << 8) | u16::from(*c.get(1).unwrap_or(&0)))
            .collect();
        String::from_utf16_lossy(&units)
    };
    let mut map = HashMap::new();
    let mut section = "";
    let mut t = 0;
    while t < tokens.len() {
        match (&tokens[t], section) {
            (Token::Word(w), _) => {
                section = match w.as_str() {
                    "beginbfchar" => "char",
                    "beginbfrange" => "range",
                    _ => "",
                };
                t += 1;
            }
            (Token::Hex(src), "char") => {
                if let Some(Token::Hex(dst)) = tokens.get(t + 1) {
                    map.insert(code(src), utf16(dst));
                }
                t += 2;
            }
            (Token::Hex(lo), "range") => {
                let (lo, hi) = match tokens.get(t + 1) {
                    Some(Token::Hex(hi)) => (code(lo), code(hi)),
                    _ => {
                        t += 1;
                        continue;
                    }
                };
                // Bound ranges so a hostile CMap cannot allocate without limit.
                let hi = hi.min(lo.saturating_add(0xffff));
                match tokens.get(t + 2) {
                    Some(Token::Hex(dst)) if !dst.is_empty() => {
                        let mut units: Vec<u16> = dst
                            .chunks(2)
                            .map(|c| (u16::from(c[0]) << 8) | u16::from(*c.get(1).unwrap_or(&0)))
                            .collect();
                        for c in lo..=hi {
                            map.insert(c, String::from_utf16_lossy(&units));
                            if let Some(last) = units.last_mut() {
                                *last = last.wrapping_add(1);
                            }
                        }
                        t += 3;
                    }
                    Some(Token::Open) => {
                        let mut k = t + 3;
                        let mut c = lo;
                        while let Some(Token::Hex(dst)) = tokens.get(k) {
                            if c <= hi {
                                map.insert(c, utf16(dst));
                            }
                            c += 1;
                            k += 1;
                        }
                        t = k + 1;
                    }
                    _ => t += 3,
                }
            }
            _ => t += 1,
        }
    }
    map
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
                && let Ok(code) = u32::try_from(first + i as i64)
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

fn cid_widths(doc: &Document, w: &[Object], widths: &mut HashMap<u32, f64>) {
    let num = |o: &Object| {
        deref(doc, Ok(o))
            .and_then(Object::as_float)
            .ok()
            .map(f64::from)
    };
    let mut i = 0;
    while i < w.len() {
        let Some(first) = num(&w[i]) else { break };
        let first = first as u32;
        match w.get(i + 1).map(|o| deref(doc, Ok(o))) {
            Some(Ok(Object::Array(list))) => {
                for (k, v) in list.iter().enumerate() {
                    if let Some(v) = num(v) {
                        widths.insert(first + k as u32, v);
                    }
                }
                i += 2;
            }
            Some(Ok(last)) => {
                let (Some(last), Some(v)) = (num(last), w.get(i + 2).and_then(num)) else {
                    break;
                };
                // Bound ranges so a hostile /W cannot allocate without limit.
                for code in first..=(last as u32).min(first.saturating_add(0xffff)) {
                    widths.insert(code, v);
                }
                i += 3;
            }
            _ => break,
        }
    }
}

/// The built-in encoding of an embedded Type 1 font program (`/FontFile`):
/// the `dup <code> /<name> put` entries of its clear-text part.
fn builtin_encoding(doc: &Document, font: &Dictionary) -> Option<Vec<Option<Vec<u8>>>> {
    let descriptor = deref(doc, font.get(b"FontDescriptor"))
        .and_then(Object::as_dict)
        .ok()?;
    let program: &Stream = deref(doc, descriptor.get(b"FontFile"))
        .and_then(Object::as_stream)
        .ok()?;
    let data = program
        .get_plain_content_with_limit(FONT_STREAM_LIMIT)
        .ok()?;
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

    #[test]
    fn ligatures_expand() {
        assert_eq!(expand_ligatures("\u{fb01}nd \u{fb04}".into()), "find ffl");
    }
}
