//! Plain text normalised to UTF-8 through encoding_rs, its charset
//! detected by chardetng when neither the bytes nor the declaration say.
//!
//! Order of decisions: a byte-order mark wins (UTF-8, UTF-16 LE/BE); then a
//! declared UTF-16 charset; then valid UTF-8; then the declared charset
//! (any WHATWG label: `iso-8859-2`, `shift_jis`, `gbk`…); else chardetng's
//! guess.

use crate::ParseError;
use encoding_rs::{Encoding, UTF_8, UTF_16BE, UTF_16LE};

/// Bytes chardetng looks at: enough to tell, bounded in time.
const DETECT_BYTES: usize = 1 << 20;

/// Decodes text bytes to UTF-8, using `declared_charset` (the `charset`
/// parameter of the declared type, e.g. `utf-16le` or `iso-8859-2`) only
/// when the bytes themselves do not say.
pub fn extract_text(bytes: &[u8], declared_charset: Option<&str>) -> Result<String, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let declared =
        declared_charset.and_then(|c| Encoding::for_label(c.trim().trim_matches('"').as_bytes()));
    if let Some((encoding, bom)) = Encoding::for_bom(bytes) {
        return Ok(decode(encoding, &bytes[bom..]));
    }
    if let Some(utf16) = declared.filter(|&e| e == UTF_16LE || e == UTF_16BE) {
        return Ok(decode(utf16, bytes));
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok(s.to_owned());
    }
    let encoding = match declared {
        Some(e) if e != UTF_8 => e,
        _ => {
            let mut detector =
                chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Allow);
            let head = &bytes[..bytes.len().min(DETECT_BYTES)];
            detector.feed(head, head.len() == bytes.len());
            detector.guess(None, chardetng::Utf8Detection::Allow)
        }
    };
    Ok(decode(encoding, bytes))
}

fn decode(encoding: &'static Encoding, bytes: &[u8]) -> String {
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

/// Cuts `pages` so that their text, a form feed between pages counted as
/// a character, has at most `max_chars` characters; whether it was longer.
pub(crate) fn truncate_pages(pages: &mut Vec<String>, max_chars: usize) -> bool {
    let mut left = max_chars;
    for i in 0..pages.len() {
        if i > 0 {
            if left == 0 {
                pages.truncate(i);
                return true;
            }
            left -= 1;
        }
        if truncate_chars(&mut pages[i], left) {
            pages.truncate(i + 1);
            return true;
        }
        left -= pages[i].chars().count();
    }
    false
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
    fn declared_and_detected_legacy_charsets() {
        let (latin2, _, _) = encoding_rs::ISO_8859_2.encode("Zażółć gęślą jaźń");
        assert_eq!(
            extract_text(&latin2, Some("iso-8859-2")).unwrap(),
            "Zażółć gęślą jaźń"
        );
        let sentence = "日本語の文章を正しく読めるかどうかを確かめるための文です。";
        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode(sentence);
        assert_eq!(extract_text(&sjis, Some("Shift_JIS")).unwrap(), sentence);
        assert_eq!(extract_text(&sjis, None).unwrap(), sentence, "detected");
        let chinese = "这是一个用来检查中文编码是否被正确识别的句子。";
        let (gbk, _, _) = encoding_rs::GBK.encode(chinese);
        assert_eq!(extract_text(&gbk, Some("gbk")).unwrap(), chinese);
        assert_eq!(extract_text(&gbk, None).unwrap(), chinese, "detected");
    }

    #[test]
    fn pages_are_cut_with_form_feeds_counted() {
        let mut pages = vec!["abc".to_string(), "def".to_string()];
        assert!(!truncate_pages(&mut pages, 7));
        assert!(truncate_pages(&mut pages, 5));
        assert_eq!(pages, vec!["abc", "d"]);
        let mut pages = vec!["abc".to_string(), "def".to_string()];
        assert!(truncate_pages(&mut pages, 3));
        assert_eq!(pages, vec!["abc"]);
    }

    #[test]
    fn empty_is_an_error() {
        assert_eq!(extract_text(b"", None), Err(ParseError::Empty));
    }
}
