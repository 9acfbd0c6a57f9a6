//! The operations of a content stream, read with lopdf in pieces of
//! bounded size.
//!
//! lopdf's `Content::decode_iter` yields one operation at a time, but it
//! builds each operation's operands whole: 64 MiB of `0 0 0 …` without an
//! operator is one operation of 32 million operands, each a 120-byte
//! `Object` (gigabytes). So a stream longer than [`PIECE`] is cut, by a
//! light scan of its syntax, after an operator at most every [`PIECE`]
//! bytes, and lopdf reads one piece at a time: whatever a piece holds,
//! lopdf never builds more than [`PIECE`] bytes' worth of objects. A
//! stream with no operator within [`PIECE`] bytes is read up to there, as
//! a stream that cannot be decoded is. Streams up to [`PIECE`] bytes (nearly
//! every page) are given to lopdf whole; a scan that misjudges where an
//! operation ends can only change what is read of a larger stream, never
//! the bound.

use lopdf::content::{Content, Operation};

/// Largest piece of a content stream lopdf reads at once, and so the
/// longest operation read: no real operation comes near (long `TJ` arrays
/// are a few kilobytes), while the objects of one this long take at most
/// some 30 MiB (60 MiB while their vector grows).
const PIECE: usize = 256 << 10;

/// The operations of a content stream, in order; an error where lopdf
/// cannot decode it (the caller stops there). Ends early, without an
/// error, at an operation longer than [`PIECE`].
pub(crate) fn operations(data: &[u8]) -> impl Iterator<Item = lopdf::Result<Operation>> + '_ {
    Pieces { rest: data }.flat_map(Content::decode_iter)
}

/// Consecutive pieces of a content stream, each ending after an operator.
struct Pieces<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let end = if self.rest.len() <= PIECE {
            self.rest.len()
        } else {
            match last_operation_end(&self.rest[..PIECE]).filter(|&end| end > 0) {
                Some(end) => end,
                // An inline image longer than a piece (a scanned page's,
                // say) is one piece: lopdf keeps its data as bytes, not
                // as objects, so its size is no danger.
                None => leading_inline_image_end(self.rest)?,
            }
        };
        let (piece, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(piece)
    }
}

/// PDF white space.
fn is_white(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\0' | b'\x0c')
}

fn is_delimiter(c: u8) -> bool {
    b"()<>[]{}/%".contains(&c)
}

fn is_regular(c: u8) -> bool {
    !is_white(c) && !is_delimiter(c)
}

/// Characters of an operator, as lopdf reads them.
fn is_operator_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"*'\"".contains(&c)
}

/// Where the last operation that ends within `data` ends: just after its
/// operator, an operator being a run of regular characters outside
/// strings, arrays, dictionaries and inline image data that starts with
/// a letter (or `*`, `'`, `"`) and is not `true`, `false` or `null`.
/// `None` if no operation ends within `data`.
fn last_operation_end(data: &[u8]) -> Option<usize> {
    let mut last = None;
    // Arrays and dictionaries open: their words are operands.
    let mut depth = 0usize;
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        match c {
            b'%' => {
                while i < data.len() && !matches!(data[i], b'\r' | b'\n') {
                    i += 1;
                }
            }
            b'(' => match literal_string_end(data, i) {
                Some(end) => i = end,
                None => break,
            },
            b'<' if data.get(i + 1) == Some(&b'<') => {
                depth += 1;
                i += 2;
            }
            b'<' => match data[i..].iter().position(|&b| b == b'>') {
                Some(end) => i += end + 1,
                None => break,
            },
            b'>' if data.get(i + 1) == Some(&b'>') => {
                depth = depth.saturating_sub(1);
                i += 2;
            }
            b'[' => {
                depth += 1;
                i += 1;
            }
            b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'/' => {
                i += 1;
                while i < data.len() && is_regular(data[i]) {
                    i += 1;
                }
            }
            c if is_regular(c) => {
                let start = i;
                while i < data.len() && is_regular(data[i]) {
                    i += 1;
                }
                let word = &data[start..i];
                let operator = depth == 0
                    && (c.is_ascii_alphabetic() || b"*'\"".contains(&c))
                    && word.iter().all(|&b| is_operator_char(b))
                    && !matches!(word, b"true" | b"false" | b"null");
                if operator && i < data.len() {
                    if word == b"BI" {
                        // An inline image: its data ends at the first `EI`
                        // between white space after `ID`, as lopdf finds it
                        // when it cannot work the length out.
                        match inline_image_end(data, i) {
                            Some(end) => i = end,
                            None => break,
                        }
                    }
                    last = Some(i);
                }
            }
            _ => i += 1,
        }
    }
    last
}

/// Where the literal string opening at `start` ends (after its `)`), with
/// nested parentheses and backslash escapes; `None` if not within `data`.
fn literal_string_end(data: &[u8], start: usize) -> Option<usize> {
    let mut nesting = 0usize;
    let mut i = start;
    while i < data.len() {
        match data[i] {
            b'\\' => i += 1,
            b'(' => nesting += 1,
            b')' => {
                nesting -= 1;
                if nesting == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Where the inline image that `data` starts with (after white space)
/// ends, if it does start with one.
fn leading_inline_image_end(data: &[u8]) -> Option<usize> {
    let start = data.iter().position(|&c| !is_white(c))?;
    let after = start + 2;
    if data.get(start..after) != Some(b"BI") || data.get(after).is_some_and(|&c| is_regular(c)) {
        return None;
    }
    inline_image_end(data, after)
}

/// Where the inline image whose `BI` ends at `from` ends (after its `EI`),
/// found as lopdf finds it: an image without a filter whose size its
/// dictionary gives has exactly that many bytes of data (which may hold
/// ` EI `); any other ends at the first `EI` between white space. `None`
/// if not within `data`.
fn inline_image_end(data: &[u8], from: usize) -> Option<usize> {
    let (dict, id_end) = inline_image_dict(data, from)?;
    // One white-space character (or CR LF) separates `ID` from the data.
    let mut image = id_end;
    if data.get(image..image + 2) == Some(b"\r\n") {
        image += 2;
    } else if data.get(image).is_some_and(|&c| is_white(c)) {
        image += 1;
    }
    if let Some(length) = dict.unfiltered_length() {
        let mut i = image.checked_add(length)?;
        while data.get(i).is_some_and(|&c| is_white(c)) {
            i += 1;
        }
        return (data.get(i..i + 2)? == b"EI").then_some(i + 2);
    }
    let ei = data
        .get(image..)?
        .windows(4)
        .position(|w| is_white(w[0]) && &w[1..3] == b"EI" && is_white(w[3]))?;
    Some(image + ei + 3)
}

/// What an inline image's dictionary says of its data's size.
#[derive(Debug, Default)]
struct InlineImage {
    width: Option<usize>,
    height: Option<usize>,
    bits: Option<usize>,
    mask: bool,
    /// Components per sample; `None` for a colour space lopdf cannot size.
    colours: Option<usize>,
    filtered: bool,
}

impl InlineImage {
    /// Bytes of data, as lopdf works them out, for an image without a
    /// filter; `None` when lopdf would search for `EI` instead.
    fn unfiltered_length(&self) -> Option<usize> {
        if self.filtered {
            return None;
        }
        let bits = match self.bits {
            Some(b) => b,
            None if self.mask => 1,
            None => return None,
        };
        let colours = if self.mask { 1 } else { self.colours? };
        let row_bits = self.width?.checked_mul(bits.checked_mul(colours)?)?;
        row_bits.div_ceil(8).checked_mul(self.height?)
    }
}

/// The dictionary of an inline image whose `BI` ends at `from`, and where
/// its `ID` ends; `None` if `ID` is not within `data`.
fn inline_image_dict(data: &[u8], from: usize) -> Option<(InlineImage, usize)> {
    let mut image = InlineImage::default();
    let mut key: Option<&[u8]> = None;
    let mut i = from;
    loop {
        while data.get(i).is_some_and(|&c| is_white(c)) {
            i += 1;
        }
        let c = *data.get(i)?;
        let value: &[u8] = match c {
            b'/' => {
                let start = i + 1;
                i = start;
                while data.get(i).is_some_and(|&c| is_regular(c)) {
                    i += 1;
                }
                &data[start..i]
            }
            b'[' => {
                // Only its first name matters (`/Indexed`, or a filter).
                let end = i + data[i..].iter().position(|&b| b == b']')?;
                let inner = &data[i + 1..end];
                i = end + 1;
                let first = inner
                    .iter()
                    .position(|&b| b == b'/')
                    .map(|at| {
                        let name = &inner[at + 1..];
                        &name[..name
                            .iter()
                            .position(|&b| !is_regular(b))
                            .unwrap_or(name.len())]
                    })
                    .unwrap_or(b"[");
                if key == Some(b"CS") || key == Some(b"ColorSpace") {
                    image.colours = matches!(first, b"Indexed" | b"I").then_some(1);
                    key = None;
                    continue;
                }
                first
            }
            c if is_regular(c) => {
                let start = i;
                while data.get(i).is_some_and(|&c| is_regular(c)) {
                    i += 1;
                }
                let word = &data[start..i];
                if word == b"ID" && key.is_none() {
                    return Some((image, i));
                }
                word
            }
            _ => {
                // A string or dictionary value: not one that sizes the data.
                i += 1;
                key = None;
                continue;
            }
        };
        match key.take() {
            None => key = Some(value),
            Some(k) => {
                let number = || std::str::from_utf8(value).ok()?.parse::<usize>().ok();
                match k {
                    b"W" | b"Width" => image.width = number(),
                    b"H" | b"Height" => image.height = number(),
                    b"BPC" | b"BitsPerComponent" => image.bits = number(),
                    b"IM" | b"ImageMask" => image.mask = value == b"true",
                    b"F" | b"Filter" => image.filtered = true,
                    b"CS" | b"ColorSpace" => {
                        image.colours = match value {
                            b"DeviceGray" | b"G" | b"Gray" => Some(1),
                            b"DeviceRGB" | b"RGB" => Some(3),
                            b"DeviceRGBA" | b"RGBA" | b"DeviceCMYK" | b"CMYK" => Some(4),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operators(data: &[u8]) -> Vec<String> {
        operations(data)
            .map_while(Result::ok)
            .map(|op| op.operator)
            .collect()
    }

    #[test]
    fn operations_end_after_operators_outside_strings_arrays_and_images() {
        assert_eq!(last_operation_end(b"1 0 0 1 72 700 cm q "), Some(19));
        assert_eq!(last_operation_end(b"0 0 0 0"), None);
        // Words in strings, arrays (references), dictionaries and hex
        // strings are not operators; nor are true, false and null.
        assert_eq!(last_operation_end(b"(a Tj \\) (b) Q) Tj "), Some(18));
        assert_eq!(last_operation_end(b"[1 0 R (x) true] TJ 0 "), Some(19));
        assert_eq!(
            last_operation_end(b"/P <</MCID 0 /A [1 0 R]>> BDC "),
            Some(29)
        );
        assert_eq!(last_operation_end(b"<abcd> Tj true false null "), Some(9));
        assert_eq!(last_operation_end(b"% q Q\n(x) Tj "), Some(12));
        // An inline image's data can hold anything.
        let image = b"BI /W 2 /H 1 /CS /G /BPC 8 ID \xffQ EI Q ";
        assert_eq!(last_operation_end(image), Some(image.len() - 1));
        assert_eq!(last_operation_end(b"BI /W 2 ID \xffQ"), None);
        // An operator cut off at the end of the piece does not count.
        assert_eq!(last_operation_end(b"q Q"), Some(1));
    }

    #[test]
    fn a_long_stream_is_read_in_pieces_with_every_operation() {
        let line = b"BT /F1 12 Tf 72 700 Td [(a \\(b\\) c) -250 (d)] TJ ET\n";
        let mut data = Vec::new();
        while data.len() < 3 * PIECE {
            data.extend_from_slice(line);
        }
        let count = data.len() / line.len();
        let ops = operators(&data);
        assert_eq!(ops.len(), 5 * count);
        assert!(ops.chunks(5).all(|op| op == ["BT", "Tf", "Td", "TJ", "ET"]));
    }

    #[test]
    fn an_unfiltered_inline_image_is_as_long_as_its_dictionary_says() {
        // 4 bytes of grey that read ` EI ` and an unmatched `(`.
        let image = b"BI /W 5 /H 1 /CS /G /BPC 8 ID  EI ( EI Q BT (x) Tj ET ";
        let end = image.len() - "Q BT (x) Tj ET ".len() - 1;
        assert_eq!(inline_image_end(image, 2), Some(end));
        assert_eq!(last_operation_end(image), Some(image.len() - 1));
        // Filtered, or without a size: the first `EI` between white space.
        let filtered = b"BI /W 5 /H 1 /CS /G /BPC 8 /F /AHx ID 00> EI Q ";
        assert_eq!(inline_image_end(filtered, 2), Some(filtered.len() - 3));
        let indexed = b"BI /W 2 /H 1 /CS [/I /RGB 1 <000000ffffff>] /BPC 8 ID \x01\x00 EI Q ";
        assert_eq!(inline_image_end(indexed, 2), Some(indexed.len() - 3));
        // As lopdf, the search starts after the separator: data that
        // begins with `EI` is data.
        let leading = b"BI /W 5 /H 1 /CS /G /BPC 8 /F /AHx ID EI EI Q ";
        assert_eq!(inline_image_end(leading, 2), Some(leading.len() - 3));
        let mask = b"BI /W 16 /H 1 /IM true ID \x00 EI EI Q ";
        assert_eq!(inline_image_end(mask, 2), Some(mask.len() - 6));
    }

    #[test]
    fn an_inline_image_longer_than_a_piece_is_a_piece_of_its_own() {
        let mut data = b"q\n".to_vec();
        let side = 1024;
        data.extend_from_slice(format!("BI /W {side} /H {side} /CS /G /BPC 8 ID ").as_bytes());
        // Grey levels that spell ` EI ` now and then.
        data.extend((0..side * side).map(|i| b" EI "[i % 4]));
        data.extend_from_slice(b"\nEI Q BT /F1 12 Tf (after) Tj ET\n");
        assert!(data.len() > 4 * PIECE);
        assert_eq!(operators(&data), ["q", "BI", "Q", "BT", "Tf", "Tj", "ET"]);
    }

    #[test]
    fn an_operation_longer_than_a_piece_ends_the_stream() {
        let mut data = b"q 1 0 0 1 0 0 cm\n".to_vec();
        while data.len() < 2 * PIECE {
            data.extend_from_slice(b"0 ");
        }
        data.extend_from_slice(b"m Q\n");
        assert_eq!(operators(&data), ["q", "cm"]);
    }
}
