//! Text formats recognised by heuristics.
//!
//! The bytes are first decoded (UTF-8 with or without BOM, UTF-16 with BOM,
//! else Latin-1 if they look like text), then classified by their content:
//! JSON (validated, tolerating a cut at the end of the sniff window), XML,
//! SVG, HTML, scripts by `#!` line, source code and other formats
//! libmagic names by their constructs ([`crate::code`]), CSV (consistent comma-separated field
//! counts), Markdown (headings plus other markup), else plain text.

/// A text format and the `text:<kind>` method that found it.
pub(crate) struct TextKind {
    /// The MIME type, in libmagic's spelling.
    pub mime: &'static str,
    /// A short name for the `text:<kind>` method: the format, or for plain
    /// text the character encoding.
    pub kind: &'static str,
}

/// Classifies `head` as text, or `None` for binary data. `truncated` says
/// the file goes on past `head`, so a format may be cut off at the end.
pub(crate) fn sniff(head: &[u8], truncated: bool) -> Option<TextKind> {
    let (text, encoding) = decode(head, truncated)?;
    Some(classify(&text, truncated).unwrap_or(TextKind {
        mime: "text/plain",
        kind: encoding,
    }))
}

/// Control characters that text files do contain (BEL, backspace for
/// overstrike, tab, line feed, vertical tab, form feed, carriage return, ESC).
fn is_text_control(c: u32) -> bool {
    matches!(c, 7..=13 | 27)
}

fn is_binary_char(c: u32) -> bool {
    (c < 32 && !is_text_control(c)) || c == 0x7f
}

/// Decodes text bytes, naming the encoding, or `None` if they are binary.
fn decode(head: &[u8], truncated: bool) -> Option<(String, &'static str)> {
    if let Some(rest) = head.strip_prefix(b"\xef\xbb\xbf") {
        return utf8(rest, truncated).map(|s| (s, "utf-8"));
    }
    if let Some(rest) = head.strip_prefix(b"\xff\xfe") {
        return utf16(rest, u16::from_le_bytes).map(|s| (s, "utf-16le"));
    }
    if let Some(rest) = head.strip_prefix(b"\xfe\xff") {
        return utf16(rest, u16::from_be_bytes).map(|s| (s, "utf-16be"));
    }
    if let Some(s) = utf8(head, truncated) {
        return Some((s, "utf-8"));
    }
    latin1(head).map(|s| (s, "latin-1"))
}

fn utf8(bytes: &[u8], truncated: bool) -> Option<String> {
    let valid = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        // A multi-byte sequence cut by the end of the sniff window.
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    if valid.chars().any(|c| is_binary_char(c as u32)) {
        return None;
    }
    Some(valid.to_string())
}

fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Option<String> {
    let units = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    let mut out = String::new();
    let mut bad = 0usize;
    for c in char::decode_utf16(units) {
        match c {
            Ok(c) if !is_binary_char(c as u32) => out.push(c),
            _ => bad += 1,
        }
    }
    // Allow a surrogate pair cut at the end of the window, nothing more.
    (bad <= 1).then_some(out)
}

/// Latin-1 (ISO-8859-1) text: no binary control characters and mostly
/// ASCII, so that random binary data is not mistaken for text.
fn latin1(bytes: &[u8]) -> Option<String> {
    if bytes.iter().any(|&b| is_binary_char(u32::from(b))) {
        return None;
    }
    let high = bytes.iter().filter(|&&b| b >= 0x80).count();
    (high * 10 <= bytes.len() * 3).then(|| bytes.iter().map(|&b| char::from(b)).collect())
}

fn classify(text: &str, truncated: bool) -> Option<TextKind> {
    let body = text.trim_start();
    let kind = |mime, kind| Some(TextKind { mime, kind });
    if is_mail(text) {
        return kind("message/rfc822", "mail");
    }
    if body.starts_with('{') || body.starts_with('[') {
        if json::is_json(body, truncated) {
            return kind("application/json", "json");
        }
    } else if body.starts_with('<') {
        if let Some(found) = markup(body) {
            return Some(found);
        }
    } else if let Some(line) = body.strip_prefix("#!")
        && let Some(found) = script(line.lines().next().unwrap_or(""))
    {
        return Some(found);
    }
    if is_troff(body) {
        return kind("text/troff", "troff");
    }
    if let Some((mime, name)) = crate::code::sniff(text) {
        return kind(mime, name);
    }
    if is_csv(text, truncated) {
        return kind("text/csv", "csv");
    }
    if is_markdown(text) {
        return kind("text/markdown", "markdown");
    }
    None
}

/// XML, SVG or HTML by the start of the document.
fn markup(body: &str) -> Option<TextKind> {
    let kind = |mime, kind| Some(TextKind { mime, kind });
    let start: String = body
        .chars()
        .take(2048)
        .collect::<String>()
        .to_ascii_lowercase();
    if start.starts_with("<?xml") {
        if start.contains("<svg") {
            return kind("image/svg+xml", "svg");
        }
        return kind("text/xml", "xml");
    }
    // Skip leading comments, as browsers and libmagic do.
    let mut rest = start.as_str();
    while let Some(after) = rest.strip_prefix("<!--") {
        rest = after.split_once("-->").map_or("", |(_, r)| r).trim_start();
    }
    const HTML_STARTS: [&str; 11] = [
        "<!doctype html",
        "<html",
        "<head",
        "<body",
        "<title",
        "<script",
        "<style",
        "<table",
        "<h1",
        "<a href",
        "<meta",
    ];
    if HTML_STARTS.iter().any(|p| rest.starts_with(p)) {
        return kind("text/html", "html");
    }
    if rest.starts_with("<svg") {
        return kind("image/svg+xml", "svg");
    }
    None
}

/// E-mail: a first header libmagic takes for mail (`From:`, `Received:`,
/// `Relay-Version:` as written; `Delivered-To:`, `Return-Path:` in any
/// case).
fn is_mail(text: &str) -> bool {
    const EXACT: [&str; 3] = ["From:", "Received:", "Relay-Version:"];
    const ANY_CASE: [&str; 2] = ["delivered-to:", "return-path:"];
    EXACT.iter().any(|p| text.starts_with(p))
        || ANY_CASE.iter().any(|p| {
            text.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        })
}

/// troff/man sources: start with a `.\"` comment or a request such as
/// `.TH`, `.SH`, `.de`.
fn is_troff(body: &str) -> bool {
    const STARTS: [&str; 8] = [
        ".\\\"", "'\\\"", ".TH ", ".SH ", ".de ", ".so ", ".Dd ", ".ig",
    ];
    STARTS.iter().any(|p| body.starts_with(p))
}

/// Scripts by their `#!` interpreter line.
fn script(line: &str) -> Option<TextKind> {
    let interpreter = line
        .split_whitespace()
        .find(|w| !w.ends_with("/env") && !w.starts_with('-'))
        .and_then(|w| w.rsplit('/').next())?;
    let kind = |mime, kind| Some(TextKind { mime, kind });
    match interpreter.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.') {
        "sh" | "bash" | "dash" | "zsh" | "ksh" => kind("text/x-shellscript", "shell"),
        "python" => kind("text/x-script.python", "python"),
        "perl" => kind("text/x-perl", "perl"),
        "ruby" => kind("text/x-ruby", "ruby"),
        "node" | "nodejs" => kind("application/javascript", "javascript"),
        _ => None,
    }
}

/// CSV: at least two lines, each with the same number (≥ 2) of
/// comma-separated fields, quotes respected. Only the first ten lines are
/// checked, and a last line cut by the sniff window is ignored.
fn is_csv(text: &str, truncated: bool) -> bool {
    let mut lines: Vec<&str> = text.lines().take(11).collect();
    if truncated || lines.len() == 11 {
        lines.pop();
    }
    let lines: Vec<&str> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() < 2 {
        return false;
    }
    let first = csv_fields(lines[0]);
    first.is_some_and(|n| n >= 2) && lines.iter().all(|l| csv_fields(l) == first)
}

/// Counts the fields of one CSV line, or `None` if a quote is unbalanced.
fn csv_fields(line: &str) -> Option<usize> {
    let mut fields = 1;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields += 1,
            _ => {}
        }
    }
    (!quoted).then_some(fields)
}

/// Markdown: an ATX heading (`# Title`) and at least two other kinds of
/// markup (a blank line after the heading, a fenced code block, a
/// `[link](url)`, `**strong**`, list items, a setext underline), in a text
/// that does not look like code: few runs of `#` lines (comments), few lines ending
/// with `;`, `{`, `}` or `)`.
fn is_markdown(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    let non_empty = lines.iter().filter(|l| !l.trim().is_empty()).count();
    // Runs of `#` lines are comments; Markdown headings stand alone.
    let hash_lines = lines
        .windows(2)
        .filter(|w| w[0].starts_with('#') && w[1].starts_with('#'))
        .count();
    let code_lines = lines
        .iter()
        .filter(|l| l.trim_end().ends_with([';', '{', '}', ')']))
        .count();
    if non_empty == 0 || hash_lines * 5 > non_empty || code_lines * 10 > non_empty {
        return false;
    }
    let is_heading = |l: &str| {
        let level = l.bytes().take_while(|&b| b == b'#').count();
        (1..=6).contains(&level) && l[level..].starts_with(' ') && l.len() > level + 1
    };
    let Some(at) = lines.iter().position(|l| is_heading(l)) else {
        return false;
    };
    let blank_after = lines.get(at + 1).is_some_and(|l| l.trim().is_empty());
    let fence = lines.iter().any(|l| l.starts_with("```"));
    let link = text.contains("](");
    let strong = text.contains("**");
    let list = lines
        .iter()
        .filter(|l| l.starts_with("- ") || l.starts_with("* ") || l.starts_with("1. "))
        .count()
        >= 2;
    let setext = lines
        .iter()
        .any(|l| l.len() >= 3 && (l.bytes().all(|b| b == b'=') || l.bytes().all(|b| b == b'-')));
    [blank_after, fence, link, strong, list, setext]
        .iter()
        .filter(|&&s| s)
        .count()
        >= 2
}

mod json {
    //! A JSON validator that accepts a document cut at the end of the input
    //! when the file goes on (the sniff window ends mid-document).

    enum Frame {
        Object,
        Array,
    }

    /// Whether `s` is a JSON object or array (or a prefix of one, when
    /// `truncated`). Iterative, so deep nesting cannot overflow the stack.
    pub(super) fn is_json(s: &str, truncated: bool) -> bool {
        let b = s.as_bytes();
        let mut p = Parser { b, i: 0 };
        match p.document() {
            Ok(()) => {
                p.ws();
                p.i == b.len()
            }
            Err(Eof) => truncated,
            Err(_) => false,
        }
    }

    #[derive(Debug)]
    enum Fail {
        Eof,
        Syntax,
    }
    use Fail::{Eof, Syntax};

    struct Parser<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            }
        }

        fn peek(&mut self) -> Result<u8, Fail> {
            self.ws();
            self.b.get(self.i).copied().ok_or(Eof)
        }

        fn expect(&mut self, c: u8) -> Result<(), Fail> {
            if self.peek()? == c {
                self.i += 1;
                Ok(())
            } else {
                Err(Syntax)
            }
        }

        fn document(&mut self) -> Result<(), Fail> {
            let mut stack: Vec<Frame> = Vec::new();
            // Parse one value; containers push a frame and their elements
            // are parsed by the loop below.
            'value: loop {
                match self.peek()? {
                    b'{' => {
                        self.i += 1;
                        if self.peek()? == b'}' {
                            self.i += 1;
                        } else {
                            self.string()?;
                            self.expect(b':')?;
                            stack.push(Frame::Object);
                            continue 'value;
                        }
                    }
                    b'[' => {
                        self.i += 1;
                        if self.peek()? == b']' {
                            self.i += 1;
                        } else {
                            stack.push(Frame::Array);
                            continue 'value;
                        }
                    }
                    b'"' => self.string()?,
                    _ => self.scalar()?,
                }
                // A value ended: close containers or go to the next element.
                loop {
                    let Some(top) = stack.last() else {
                        return Ok(());
                    };
                    let c = self.peek()?;
                    self.i += 1;
                    match (top, c) {
                        (Frame::Object, b',') => {
                            self.string()?;
                            self.expect(b':')?;
                            continue 'value;
                        }
                        (Frame::Array, b',') => continue 'value,
                        (Frame::Object, b'}') | (Frame::Array, b']') => {
                            stack.pop();
                        }
                        _ => return Err(Syntax),
                    }
                }
            }
        }

        fn string(&mut self) -> Result<(), Fail> {
            self.expect(b'"')?;
            loop {
                match self.b.get(self.i).ok_or(Eof)? {
                    b'"' => {
                        self.i += 1;
                        return Ok(());
                    }
                    b'\\' => self.i += 2,
                    c if *c < 0x20 => return Err(Syntax),
                    _ => self.i += 1,
                }
            }
        }

        fn scalar(&mut self) -> Result<(), Fail> {
            let start = self.i;
            while self.i < self.b.len()
                && matches!(self.b[self.i], b'a'..=b'z' | b'0'..=b'9' | b'-' | b'+' | b'.' | b'E')
            {
                self.i += 1;
            }
            let token = &self.b[start..self.i];
            if self.i == self.b.len() {
                // Possibly cut in the middle of the token.
                return Err(Eof);
            }
            let number = !token.is_empty()
                && (token[0] == b'-' || token[0].is_ascii_digit())
                && token
                    .iter()
                    .all(|c| c.is_ascii_digit() || b"-+.eE".contains(c));
            if number || matches!(token, b"true" | b"false" | b"null") {
                Ok(())
            } else {
                Err(Syntax)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::is_json;

        #[test]
        fn accepts_valid_and_truncated_documents() {
            assert!(is_json(r#"{"a": [1, {"b": null}], "c": "x\"y"}"#, false));
            assert!(is_json("[]", false));
            assert!(is_json(r#"{"a": [1, 2, {"b": "cut"#, true));
            assert!(!is_json(r#"{"a": [1, 2"#, false));
        }

        #[test]
        fn rejects_non_json() {
            assert!(!is_json("{a: 1}", false));
            assert!(!is_json("[1 2]", false));
            assert!(!is_json("{\"a\": 1} trailing", false));
            assert!(!is_json("[tru]", false));
        }

        #[test]
        fn deep_nesting_does_not_overflow() {
            let deep = "[".repeat(100_000) + &"]".repeat(100_000);
            assert!(is_json(&deep, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_by_shebang() {
        let mime = |s: &[u8]| sniff(s, false).map(|k| k.mime);
        assert_eq!(mime(b"#!/bin/sh\necho hi\n"), Some("text/x-shellscript"));
        assert_eq!(
            mime(b"#!/usr/bin/env python3\nprint(1)\n"),
            Some("text/x-script.python")
        );
    }

    #[test]
    fn mail_by_its_first_header() {
        let mime = |s: &[u8]| sniff(s, false).map(|k| k.mime);
        let mail = b"From: Ada <ada@example.org>\nSubject: hi\n\nBody\n";
        assert_eq!(mime(mail), Some("message/rfc822"));
        assert_eq!(mime(b"Return-path: <a@b>\n\nx\n"), Some("message/rfc822"));
        assert_eq!(mime(b"From the start, a story.\n"), Some("text/plain"));
    }

    #[test]
    fn comments_are_not_markdown() {
        let conf = b"# comment\n# another\n# third\nkey = value\n- x\n- y\n";
        assert_eq!(sniff(conf, false).map(|k| k.mime), Some("text/plain"));
    }

    #[test]
    fn prose_with_commas_is_not_csv() {
        let prose = b"Hello, world. This is prose.\nIt has, sometimes, commas, here.\n";
        assert_eq!(sniff(prose, false).map(|k| k.mime), Some("text/plain"));
    }

    #[test]
    fn binary_is_not_text() {
        assert!(sniff(b"\x00\x01\x02abc", false).is_none());
        assert!(sniff(&[0x90u8; 64], false).is_none());
    }
}
