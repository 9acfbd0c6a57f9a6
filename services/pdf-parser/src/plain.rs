//! Plain text (text/plain, text/markdown) normalised to UTF-8.
//!
//! Order of decisions: a byte-order mark wins (UTF-8, UTF-16 LE/BE); then a
//! declared UTF-16 charset; then valid UTF-8; then a declared
//! windows-1252; else Latin-1 (ISO-8859-1), which maps every byte and so
//! never fails.

use crate::ParseError;

/// Decodes text bytes to UTF-8, using `declared_charset` (the `charset`
/// parameter of the declared type, e.g. `utf-16le` or `windows-1252`) only
/// when the bytes themselves do not say.
pub fn extract_text(bytes: &[u8], declared_charset: Option<&str>) -> Result<String, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let charset = declared_charset.map(|c| c.trim().trim_matches('"').to_ascii_lowercase());
    let text = if let Some(rest) = bytes.strip_prefix(b"\xef\xbb\xbf") {
        String::from_utf8_lossy(rest).into_owned()
    } else if let Some(rest) = bytes.strip_prefix(b"\xff\xfe") {
        utf16(rest, u16::from_le_bytes)
    } else if let Some(rest) = bytes.strip_prefix(b"\xfe\xff") {
        utf16(rest, u16::from_be_bytes)
    } else if matches!(charset.as_deref(), Some("utf-16le" | "utf-16")) {
        utf16(bytes, u16::from_le_bytes)
    } else if charset.as_deref() == Some("utf-16be") {
        utf16(bytes, u16::from_be_bytes)
    } else if let Ok(s) = std::str::from_utf8(bytes) {
        s.to_string()
    } else if matches!(charset.as_deref(), Some("windows-1252" | "cp1252")) {
        bytes.iter().map(|&b| windows_1252(b)).collect()
    } else {
        bytes.iter().map(|&b| char::from(b)).collect()
    };
    Ok(text)
}

/// Cuts `text` to its first `max_chars` characters; whether it was longer.
pub(crate) fn truncate_chars(text: &mut String, max_chars: usize) -> bool {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => {
            text.truncate(at);
            true
        }
        None => false,
    }
}

fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> String {
    let units = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// windows-1252: Latin-1 except for 0x80–0x9F.
fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_with_and_without_bom() {
        assert_eq!(extract_text("héllo".as_bytes(), None).unwrap(), "héllo");
        assert_eq!(extract_text(b"\xef\xbb\xbfh\xc3\xa9", None).unwrap(), "hé");
    }

    #[test]
    fn utf16_with_bom_and_declared() {
        let le: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("hé€".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(extract_text(&le, None).unwrap(), "hé€");
        let be: Vec<u8> = [0xfe, 0xff]
            .into_iter()
            .chain("hé€".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(extract_text(&be, Some("utf-8")).unwrap(), "hé€");
        let bare: Vec<u8> = "ok".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(extract_text(&bare, Some("UTF-16BE")).unwrap(), "ok");
    }

    #[test]
    fn latin1_and_windows_1252_fallback() {
        assert_eq!(extract_text(b"caf\xe9", None).unwrap(), "café");
        assert_eq!(
            extract_text(b"\x80 5", Some("windows-1252")).unwrap(),
            "€ 5"
        );
        assert_eq!(extract_text(b"\x93q\x94", Some("cp1252")).unwrap(), "“q”");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut text = String::from("a€b😀c");
        assert!(truncate_chars(&mut text, 4));
        assert_eq!(text, "a€b😀");
        assert!(!truncate_chars(&mut text, 4));
        assert!(truncate_chars(&mut text, 0));
        assert_eq!(text, "");
    }

    #[test]
    fn empty_is_an_error() {
        assert_eq!(extract_text(b"", None), Err(ParseError::Empty));
    }
}
