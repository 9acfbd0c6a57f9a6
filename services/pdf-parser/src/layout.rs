//! Text of one page, from its content stream operators.
//!
//! A small interpreter follows the graphics and text state (`cm`, `q`/`Q`,
//! `BT`, `Tf`, `Tc`, `Tw`, `Tz`, `TL`, `Ts`, `Td`, `TD`, `Tm`, `T*`) and
//! the text-showing operators (`Tj`, `TJ`, `'`, `"`), and places every glyph
//! in device space. Between consecutive glyphs it then decides, by position,
//! what separates them: nothing, a space (a gap along the baseline wider
//! than [`WORD_GAP`] of the font size: kerned `TJ` arrays and separately
//! positioned words, space glyphs), or a line break (a move across the baseline of more
//! than half the font size; a word hyphenated at the line end is joined, as
//! pdftotext does). Form XObjects (`Do`) are followed, with a depth
//! limit and a guard against forms that draw themselves. Glyphs are kept in
//! content-stream order (no column reordering).
//!
//! Bounds: content is read one operator at a time, in pieces of bounded
//! size (see [`crate::content`]), at most [`MAX_OPERATIONS`] per page; a
//! page's text stops growing once it has more characters than the document
//! has left ([`crate::Limits::max_chars`]); every content stream read, a
//! form each time it is drawn, is charged to the document's [`Work`],
//! whose deadline is checked before each page and form and every few
//! thousand operators and glyphs. Decoded forms are kept for the document
//! up to [`FORM_CACHE_BYTES`], so a form drawn on every page is
//! decompressed once.

use crate::fonts::{FontCache, FontInfo, deref};
use crate::work::Work;
use crate::{ParseError, content};
use lopdf::{Dictionary, Document, Object, ObjectId};
use std::collections::HashMap;
use std::rc::Rc;

/// A gap along the baseline wider than this fraction of the font size
/// separates words (poppler's threshold is of the same order).
pub(crate) const WORD_GAP: f64 = 0.15;

/// How deep forms may nest.
const MAX_FORM_DEPTH: usize = 12;

/// How many operators one page may run (forms drawn many times included),
/// so that hostile files cannot make extraction run for ever.
const MAX_OPERATIONS: usize = 5_000_000;

/// Decompression bound for one page's content and each form.
pub(crate) const CONTENT_LIMIT: usize = 64 << 20;

/// Most bytes of decoded forms kept per document: logos and headers drawn
/// on every page are a few kilobytes each.
const FORM_CACHE_BYTES: usize = 16 << 20;

type Matrix = [f64; 6];
const IDENTITY: Matrix = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];

fn mul(m: &Matrix, n: &Matrix) -> Matrix {
    [
        m[0] * n[0] + m[1] * n[2],
        m[0] * n[1] + m[1] * n[3],
        m[2] * n[0] + m[3] * n[2],
        m[2] * n[1] + m[3] * n[3],
        m[4] * n[0] + m[5] * n[2] + n[4],
        m[4] * n[1] + m[5] * n[3] + n[5],
    ]
}

fn translate(tx: f64, ty: f64) -> Matrix {
    [1.0, 0.0, 0.0, 1.0, tx, ty]
}

#[derive(Clone)]
struct GraphicsState {
    ctm: Matrix,
    font: Option<Rc<FontInfo>>,
    size: f64,
    char_spacing: f64,
    word_spacing: f64,
    scaling: f64,
    leading: f64,
    rise: f64,
}

/// Where the previous glyph ended, to decide what separates the next one.
struct Pen {
    end: (f64, f64),
    /// Unit vector along the baseline.
    dir: (f64, f64),
    size: f64,
}

/// The page's text as it is assembled, up to a number of characters.
struct PageText {
    out: String,
    /// Characters in `out`.
    chars: usize,
    /// Characters wanted: once more are settled, the page is `full`.
    limit: usize,
    /// Whether `out` has more than `limit` characters that nothing later
    /// can remove, so reading on cannot change the first `limit`.
    full: bool,
    pen: Option<Pen>,
}

impl PageText {
    fn new(limit: usize) -> Self {
        PageText {
            out: String::new(),
            chars: 0,
            limit,
            full: false,
            pen: None,
        }
    }

    fn push(&mut self, c: char) {
        self.out.push(c);
        self.chars += 1;
    }

    fn pop(&mut self) {
        if self.out.pop().is_some() {
            self.chars -= 1;
        }
    }

    /// Characters of `out` that later glyphs and the final trim cannot
    /// remove: all but trailing whitespace and a hyphen before it (see
    /// [`PageText::glyph`]).
    fn settled(&self) -> usize {
        let mut removable = 0;
        let mut tail = self.out.chars().rev().peekable();
        while tail.next_if(|c| c.is_whitespace()).is_some() {
            removable += 1;
        }
        if tail
            .next_if(|c| matches!(c, '-' | '\u{ad}' | '\u{2010}'))
            .is_some()
        {
            removable += 1;
        }
        self.chars - removable
    }

    /// Whether the text so far ends in a letter and a hyphen and the next
    /// line starts with a lower-case letter: a word hyphenated at a line end.
    fn hyphenated_line_end(&self, next: &str) -> bool {
        let mut tail = self.out.chars().rev();
        matches!(tail.next(), Some('-' | '\u{ad}' | '\u{2010}'))
            && tail.next().is_some_and(char::is_alphabetic)
            && next.chars().next().is_some_and(char::is_lowercase)
    }

    fn glyph(
        &mut self,
        text: &str,
        start: (f64, f64),
        end: (f64, f64),
        dir: (f64, f64),
        size: f64,
    ) {
        if text.is_empty() {
            return;
        }
        if let Some(pen) = &self.pen {
            let (dx, dy) = (start.0 - pen.end.0, start.1 - pen.end.1);
            let along = dx * pen.dir.0 + dy * pen.dir.1;
            let across = -dx * pen.dir.1 + dy * pen.dir.0;
            let size = size.max(pen.size).max(1e-3);
            if across.abs() > 0.5 * size {
                while self.out.ends_with(' ') {
                    self.pop();
                }
                if self.hyphenated_line_end(text) {
                    // Join the word broken across lines, as pdftotext does.
                    self.pop();
                } else if !self.out.is_empty() && !self.out.ends_with('\n') {
                    self.push('\n');
                }
            } else if (along > WORD_GAP * size || along < -size)
                && !self.out.ends_with(char::is_whitespace)
                && !text.starts_with(char::is_whitespace)
            {
                self.push(' ');
            }
        }
        if !(self.out.is_empty() || self.out.ends_with(char::is_whitespace))
            || !text.trim().is_empty()
        {
            self.out.push_str(text);
            self.chars += text.chars().count();
            // Only the characters beyond the limit are ever cut, and only
            // a trailing few can still be removed.
            if self.chars > self.limit && self.settled() > self.limit {
                self.full = true;
            }
        }
        self.pen = Some(Pen { end, dir, size });
    }
}

/// What the pages of one document share as they are read: its fonts, its
/// decoded forms and its work budget.
pub(crate) struct DocumentText<'d> {
    doc: &'d Document,
    fonts: FontCache,
    forms: FormCache,
    work: Work,
}

/// Decoded form streams by object, up to [`FORM_CACHE_BYTES`] in all.
#[derive(Default)]
struct FormCache {
    forms: HashMap<ObjectId, Rc<Vec<u8>>>,
    bytes: usize,
}

/// Runs content streams and collects the text.
struct Interpreter<'a, 'd> {
    doc: &'d Document,
    fonts: &'a mut FontCache,
    forms: &'a mut FormCache,
    work: &'a mut Work,
    page: PageText,
    operations: usize,
    /// Forms being drawn, to stop a form that draws itself.
    form_path: Vec<ObjectId>,
}

impl<'d> DocumentText<'d> {
    pub fn new(doc: &'d Document, work: Work) -> Self {
        DocumentText {
            doc,
            fonts: FontCache::default(),
            forms: FormCache::default(),
            work,
        }
    }

    /// Extracts the text of one page, read until it has more than
    /// `max_chars` characters (the caller cuts it to them). Content that
    /// cannot be decoded yields what was read before it. Errors:
    /// [`ParseError::Malformed`] when the page's content exceeds the
    /// decompression bound, [`ParseError::TooMuchContent`] and
    /// [`ParseError::Timeout`] when the document's work budget or deadline
    /// runs out.
    pub fn page_text(&mut self, page_id: ObjectId, max_chars: usize) -> Result<String, ParseError> {
        let doc = self.doc;
        self.work.check_deadline()?;
        let data = doc
            .get_page_content_with_limit(page_id, CONTENT_LIMIT)
            .map_err(|e| ParseError::Malformed(format!("page content: {e}")))?;
        self.work.decompressed(data.len())?;
        let resources = page_resources(doc, page_id);
        let mut interpreter = Interpreter {
            doc,
            fonts: &mut self.fonts,
            forms: &mut self.forms,
            work: &mut self.work,
            page: PageText::new(max_chars),
            operations: 0,
            form_path: Vec::new(),
        };
        let state = GraphicsState {
            ctm: IDENTITY,
            font: None,
            size: 0.0,
            char_spacing: 0.0,
            word_spacing: 0.0,
            scaling: 1.0,
            leading: 0.0,
            rise: 0.0,
        };
        interpreter.run(&data, resources, state.clone(), 0)?;
        interpreter.annotations(page_id, resources, &state)?;
        let mut text = interpreter.page.out;
        while text.ends_with(char::is_whitespace) {
            text.pop();
        }
        Ok(text)
    }
}

/// The page's resources, inherited from the nearest ancestor that has them.
fn page_resources(doc: &Document, page_id: ObjectId) -> Option<&Dictionary> {
    let mut node = doc.get_dictionary(page_id).ok()?;
    for _ in 0..64 {
        if let Ok(resources) = deref(doc, node.get(b"Resources")).and_then(Object::as_dict) {
            return Some(resources);
        }
        node = deref(doc, node.get(b"Parent"))
            .and_then(Object::as_dict)
            .ok()?;
    }
    None
}

fn num(operands: &[Object], i: usize) -> f64 {
    operands
        .get(i)
        .and_then(|o| o.as_float().ok())
        .map_or(0.0, f64::from)
}

fn matrix(operands: &[Object]) -> Matrix {
    [
        num(operands, 0),
        num(operands, 1),
        num(operands, 2),
        num(operands, 3),
        num(operands, 4),
        num(operands, 5),
    ]
}

impl<'d> Interpreter<'_, 'd> {
    /// Runs one content stream, reading its operators one at a time; stops
    /// at the first that cannot be decoded, past the operator budget or
    /// once the page is full.
    fn run(
        &mut self,
        data: &[u8],
        resources: Option<&'d Dictionary>,
        mut gs: GraphicsState,
        depth: usize,
    ) -> Result<(), ParseError> {
        let mut stack: Vec<GraphicsState> = Vec::new();
        let mut tm = IDENTITY;
        let mut tlm = IDENTITY;
        for op in content::operations(data) {
            let Ok(op) = op else {
                return Ok(());
            };
            self.operations += 1;
            if self.operations > MAX_OPERATIONS || self.page.full {
                return Ok(());
            }
            self.work.tick()?;
            let ops = op.operands.as_slice();
            match op.operator.as_str() {
                "q" => stack.push(gs.clone()),
                "Q" => {
                    if let Some(saved) = stack.pop() {
                        gs = saved;
                    }
                }
                "cm" => gs.ctm = mul(&matrix(ops), &gs.ctm),
                "BT" => {
                    tm = IDENTITY;
                    tlm = IDENTITY;
                }
                "Tf" => {
                    gs.size = num(ops, 1);
                    gs.font = match ops.first().and_then(|o| o.as_name().ok()) {
                        Some(name) => self.font(resources, name)?,
                        None => None,
                    };
                }
                "Tc" => gs.char_spacing = num(ops, 0),
                "Tw" => gs.word_spacing = num(ops, 0),
                "Tz" => gs.scaling = num(ops, 0) / 100.0,
                "TL" => gs.leading = num(ops, 0),
                "Ts" => gs.rise = num(ops, 0),
                "Td" => {
                    tlm = mul(&translate(num(ops, 0), num(ops, 1)), &tlm);
                    tm = tlm;
                }
                "TD" => {
                    gs.leading = -num(ops, 1);
                    tlm = mul(&translate(num(ops, 0), num(ops, 1)), &tlm);
                    tm = tlm;
                }
                "Tm" => {
                    tlm = matrix(ops);
                    tm = tlm;
                }
                "T*" => {
                    tlm = mul(&translate(0.0, -gs.leading), &tlm);
                    tm = tlm;
                }
                "Tj" => {
                    if let Some(Ok(bytes)) = ops.first().map(Object::as_str) {
                        self.show(bytes, &gs, &mut tm)?;
                    }
                }
                "'" | "\"" => {
                    if op.operator == "\"" {
                        gs.word_spacing = num(ops, 0);
                        gs.char_spacing = num(ops, 1);
                    }
                    tlm = mul(&translate(0.0, -gs.leading), &tlm);
                    tm = tlm;
                    if let Some(Ok(bytes)) = ops.last().map(Object::as_str) {
                        self.show(bytes, &gs, &mut tm)?;
                    }
                }
                "TJ" => {
                    if let Some(Ok(items)) = ops.first().map(Object::as_array) {
                        for item in items {
                            match item {
                                Object::String(bytes, _) => self.show(bytes, &gs, &mut tm)?,
                                other => {
                                    if let Ok(n) = other.as_float() {
                                        let tx = -f64::from(n) / 1000.0 * gs.size * gs.scaling;
                                        tm = mul(&translate(tx, 0.0), &tm);
                                    }
                                }
                            }
                        }
                    }
                }
                "Do" => {
                    if let Some(name) = ops.first().and_then(|o| o.as_name().ok()) {
                        self.form(resources, name, &gs, depth)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn font(
        &mut self,
        resources: Option<&Dictionary>,
        name: &[u8],
    ) -> Result<Option<Rc<FontInfo>>, ParseError> {
        let entry = resources
            .and_then(|r| {
                deref(self.doc, r.get(b"Font"))
                    .and_then(Object::as_dict)
                    .ok()
            })
            .and_then(|fonts| fonts.get(name).ok());
        match entry {
            Some(entry) => self.fonts.font(self.doc, entry, self.work),
            None => Ok(None),
        }
    }

    fn show(
        &mut self,
        bytes: &[u8],
        gs: &GraphicsState,
        tm: &mut Matrix,
    ) -> Result<(), ParseError> {
        let Some(font) = gs.font.clone() else {
            return Ok(());
        };
        let text_space = [gs.size * gs.scaling, 0.0, 0.0, gs.size, 0.0, gs.rise];
        // Showing a glyph only translates the text matrix, so the glyphs of
        // one string share the linear part of the rendering matrix: its
        // direction and size are worked out once.
        let linear = mul(&mul(&text_space, tm), &gs.ctm);
        let len = (linear[0] * linear[0] + linear[1] * linear[1]).sqrt();
        let dir = if len > 0.0 {
            (linear[0] / len, linear[1] / len)
        } else {
            (1.0, 0.0)
        };
        let size = font.em * (linear[2] * linear[2] + linear[3] * linear[3]).sqrt();
        for glyph in font.decode(bytes) {
            if self.page.full {
                break;
            }
            self.work.tick()?;
            let trm = mul(&mul(&text_space, tm), &gs.ctm);
            let start = (trm[4], trm[5]);
            let end = (glyph.width * trm[0] + trm[4], glyph.width * trm[1] + trm[5]);
            // A space glyph is not copied: the gap it leaves decides, so a
            // space squeezed by negative word spacing does not split a word.
            if !glyph.blank {
                self.page.glyph(glyph.text, start, end, dir, size);
            }
            let spacing = gs.char_spacing
                + if glyph.is_space_code {
                    gs.word_spacing
                } else {
                    0.0
                };
            let tx = (glyph.width * gs.size + spacing) * gs.scaling;
            *tm = mul(&translate(tx, 0.0), tm);
        }
        Ok(())
    }

    /// Draws the normal appearance of each visible annotation of the page
    /// (form fields' values, stamps, free text), after the page's content
    /// as pdftotext does, each form moved from its box to the annotation's
    /// rectangle. The page's annotations are bounded by the file's size,
    /// their appearances by the work budget, as forms are.
    fn annotations(
        &mut self,
        page_id: ObjectId,
        resources: Option<&'d Dictionary>,
        gs: &GraphicsState,
    ) -> Result<(), ParseError> {
        let doc = self.doc;
        let Ok(annots) = doc
            .get_dictionary(page_id)
            .and_then(|page| deref(doc, page.get(b"Annots")))
            .and_then(Object::as_array)
        else {
            return Ok(());
        };
        // Viewers, pdftotext too, redraw form fields from their values when
        // the form says its appearances are stale; we do not, so then such
        // appearances are left out rather than read stale.
        let stale_fields = doc
            .catalog()
            .and_then(|c| deref(doc, c.get(b"AcroForm")))
            .and_then(Object::as_dict)
            .and_then(|f| deref(doc, f.get(b"NeedAppearances")))
            .and_then(Object::as_bool)
            .unwrap_or(false);
        for annot in annots {
            let Ok(annot) = deref(doc, Ok(annot)).and_then(Object::as_dict) else {
                continue;
            };
            let flags = deref(doc, annot.get(b"F"))
                .and_then(Object::as_i64)
                .unwrap_or(0);
            let widget = annot.get(b"Subtype").and_then(Object::as_name).ok() == Some(b"Widget");
            // Hidden (bit 2) and NoView (bit 6).
            if flags & (2 | 32) != 0 || (stale_fields && widget) {
                continue;
            }
            let Some(normal) = deref(doc, annot.get(b"AP"))
                .and_then(Object::as_dict)
                .and_then(|ap| ap.get(b"N"))
                .ok()
            else {
                continue;
            };
            // A stream, or one stream per state, chosen by /AS.
            let appearance = match deref(doc, Ok(normal)) {
                Ok(Object::Dictionary(states)) => {
                    let Ok(state) = annot.get(b"AS").and_then(Object::as_name) else {
                        continue;
                    };
                    match states.get(state) {
                        Ok(stream) => stream,
                        Err(_) => continue,
                    }
                }
                _ => normal,
            };
            let Ok(stream) = deref(doc, Ok(appearance)).and_then(Object::as_stream) else {
                continue;
            };
            let corner = |o: lopdf::Result<&Object>| -> Option<(f64, f64)> {
                let a = deref(doc, o).and_then(Object::as_array).ok()?;
                let n = |i: usize| a.get(i).and_then(|v| v.as_float().ok()).map(f64::from);
                Some((n(0)?.min(n(2)?), n(1)?.min(n(3)?)))
            };
            let (Some(rect), bbox) = (corner(annot.get(b"Rect")), corner(stream.dict.get(b"BBox")))
            else {
                continue;
            };
            let bbox = bbox.unwrap_or((0.0, 0.0));
            let mut placed = gs.clone();
            placed.ctm = mul(&translate(rect.0 - bbox.0, rect.1 - bbox.1), &gs.ctm);
            self.draw_form(appearance, resources, placed, 0)?;
            if self.page.full {
                break;
            }
        }
        Ok(())
    }

    /// Draws the form `name` of `resources`, if it is one: its content is
    /// charged to the work budget each time.
    fn form(
        &mut self,
        resources: Option<&'d Dictionary>,
        name: &[u8],
        gs: &GraphicsState,
        depth: usize,
    ) -> Result<(), ParseError> {
        if depth >= MAX_FORM_DEPTH {
            return Ok(());
        }
        let doc = self.doc;
        let Some(entry) = resources
            .and_then(|r| deref(doc, r.get(b"XObject")).and_then(Object::as_dict).ok())
            .and_then(|x| x.get(name).ok())
        else {
            return Ok(());
        };
        self.draw_form(entry, resources, gs.clone(), depth)
    }

    /// Draws the form XObject `entry` (a reference or a stream) with `gs`;
    /// anything else draws nothing.
    fn draw_form(
        &mut self,
        entry: &'d Object,
        resources: Option<&'d Dictionary>,
        gs: GraphicsState,
        depth: usize,
    ) -> Result<(), ParseError> {
        let doc = self.doc;
        let id = entry.as_reference().ok();
        if id.is_some_and(|id| self.form_path.contains(&id)) {
            return Ok(());
        }
        let Ok(stream) = deref(doc, Ok(entry)).and_then(Object::as_stream) else {
            return Ok(());
        };
        if stream.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Form".as_slice()) {
            return Ok(());
        }
        self.work.check_deadline()?;
        let Some(data) = self.forms.content(id, stream) else {
            return Ok(());
        };
        self.work.decompressed(data.len())?;
        let mut inner = gs;
        if let Ok(m) = deref(doc, stream.dict.get(b"Matrix")).and_then(Object::as_array) {
            inner.ctm = mul(&matrix(m), &inner.ctm);
        }
        let form_resources = deref(doc, stream.dict.get(b"Resources"))
            .and_then(Object::as_dict)
            .ok()
            .or(resources);
        self.form_path.extend(id);
        let drawn = self.run(&data, form_resources, inner, depth + 1);
        if id.is_some() {
            self.form_path.pop();
        }
        drawn
    }
}

impl FormCache {
    /// The decoded content of the form `stream` (object `id` if it is
    /// one), from the cache or decompressed now; `None` if it cannot be
    /// decoded within [`CONTENT_LIMIT`].
    fn content(&mut self, id: Option<ObjectId>, stream: &lopdf::Stream) -> Option<Rc<Vec<u8>>> {
        if let Some(data) = id.and_then(|id| self.forms.get(&id)) {
            return Some(data.clone());
        }
        let data = Rc::new(stream.get_plain_content_with_limit(CONTENT_LIMIT).ok()?);
        if let Some(id) = id
            && self.bytes + data.len() <= FORM_CACHE_BYTES
        {
            self.bytes += data.len();
            self.forms.insert(id, data.clone());
        }
        Some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(glyphs: &[(&str, f64, f64, f64)]) -> String {
        let mut p = PageText::new(usize::MAX);
        for &(t, x, y, w) in glyphs {
            p.glyph(t, (x, y), (x + w, y), (1.0, 0.0), 10.0);
        }
        p.out
    }

    #[test]
    fn adjacent_glyphs_join_and_gaps_make_spaces() {
        assert_eq!(page(&[("a", 0.0, 0.0, 5.0), ("b", 5.0, 0.0, 5.0)]), "ab");
        assert_eq!(page(&[("a", 0.0, 0.0, 5.0), ("b", 8.0, 0.0, 5.0)]), "a b");
        // A small kerning gap is not a space.
        assert_eq!(page(&[("a", 0.0, 0.0, 5.0), ("b", 6.0, 0.0, 5.0)]), "ab");
    }

    #[test]
    fn baseline_moves_make_line_breaks() {
        assert_eq!(
            page(&[("a", 0.0, 100.0, 5.0), ("b", 0.0, 88.0, 5.0)]),
            "a\nb"
        );
        // A small rise (superscript) stays on the line.
        assert_eq!(
            page(&[("a", 0.0, 100.0, 5.0), ("2", 5.0, 103.0, 5.0)]),
            "a2"
        );
    }

    #[test]
    fn words_hyphenated_at_line_ends_are_joined() {
        let glyphs = [
            ("li", 0.0, 100.0, 8.0),
            ("-", 8.0, 100.0, 3.0),
            ("brary", 0.0, 88.0, 20.0),
        ];
        assert_eq!(page(&glyphs), "library");
        let capital = [("x-", 0.0, 100.0, 8.0), ("Ray", 0.0, 88.0, 20.0)];
        assert_eq!(page(&capital), "x-\nRay");
    }

    #[test]
    fn explicit_spaces_are_not_doubled() {
        assert_eq!(
            page(&[
                ("a", 0.0, 0.0, 5.0),
                (" ", 5.0, 0.0, 3.0),
                ("b", 20.0, 0.0, 5.0)
            ]),
            "a b"
        );
    }

    #[test]
    fn decoded_forms_are_kept_up_to_the_cache_bound() {
        let mut forms = FormCache::default();
        let small = lopdf::Stream::new(Dictionary::new(), b"q Q".to_vec());
        let first = forms.content(Some((1, 0)), &small).unwrap();
        let again = forms.content(Some((1, 0)), &small).unwrap();
        assert!(Rc::ptr_eq(&first, &again), "decoded once");
        let direct = forms.content(None, &small).unwrap();
        assert!(!Rc::ptr_eq(&first, &direct), "a direct stream is not kept");
        let large = lopdf::Stream::new(Dictionary::new(), vec![b' '; FORM_CACHE_BYTES]);
        let first = forms.content(Some((2, 0)), &large).unwrap();
        let again = forms.content(Some((2, 0)), &large).unwrap();
        assert!(!Rc::ptr_eq(&first, &again), "over the bound: not kept");
        assert_eq!(forms.bytes, 3);
    }

    #[test]
    fn matrices_compose_like_pdf() {
        let m = mul(&translate(10.0, 0.0), &[2.0, 0.0, 0.0, 2.0, 5.0, 5.0]);
        assert_eq!(m, [2.0, 0.0, 0.0, 2.0, 25.0, 5.0]);
    }
}
