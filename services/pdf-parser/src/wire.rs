//! The messages between pdf-parser and its parse workers, over the
//! worker's stdin and stdout (see [`crate::worker`]).
//!
//! A request: [`VERSION`], the limits, the time left and the document's
//! length, all as little-endian u64, then the document. An answer: its
//! length as a u64, then [`VERSION`] and either the extracted text and
//! metadata or the error. The parent reads an answer only up to
//! [`answer_bound`] and decodes it without trusting a length in it: a
//! worker is the process that reads hostile bytes.

use crate::{Extracted, Format, Limits, Metadata, ParseError};
use std::io::{self, Read};
use std::time::Duration;

/// Changes whenever the encoding does, so that a worker started from a
/// different build answers "unreadable" instead of nonsense.
pub(crate) const VERSION: u64 = 2;

/// Bytes of a request before the document.
pub(crate) const REQUEST_HEADER: usize = 9 * 8;

/// Characters kept of an error's message (lopdf's messages may quote the
/// file).
const MAX_MESSAGE_CHARS: usize = 1000;

/// The header of a request for `document_len` bytes: the limits
/// (`limits.deadline` is ignored) and the time left, `None` for none.
pub(crate) fn request_header(
    format: Format,
    limits: &Limits,
    time_left: Option<Duration>,
    document_len: usize,
) -> [u8; REQUEST_HEADER] {
    let fields = [
        VERSION,
        u64::from(format.code()),
        limits.max_bytes as u64,
        limits.max_pages as u64,
        limits.max_chars as u64,
        limits.max_content_bytes as u64,
        limits.max_zip_ratio,
        // 0: no deadline; a deadline already past is 1 ms.
        time_left.map_or(0, |t| (t.as_millis() as u64).max(1)),
        document_len as u64,
    ];
    let mut out = [0; REQUEST_HEADER];
    for (slot, field) in out.chunks_exact_mut(8).zip(fields) {
        slot.copy_from_slice(&field.to_le_bytes());
    }
    out
}

/// A request as the worker reads it.
#[derive(Debug)]
pub(crate) struct Request {
    /// The document's format.
    pub format: Format,
    /// The limits, without a deadline.
    pub limits: Limits,
    /// The time the worker has, from when it read the request.
    pub time_left: Option<Duration>,
    /// The document.
    pub document: Vec<u8>,
}

/// Reads the next request; `None` when the parent closed the pipe.
pub(crate) fn read_request(input: &mut impl Read) -> io::Result<Option<Request>> {
    let mut header = [0u8; REQUEST_HEADER];
    match input.read_exact(&mut header) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        result => result?,
    }
    let mut fields = header
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
    let mut next = || fields.next().expect("seven fields");
    if next() != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request of another version",
        ));
    }
    let format = u8::try_from(next())
        .ok()
        .and_then(Format::from_code)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown format"))?;
    let limits = Limits {
        max_bytes: next() as usize,
        max_pages: next() as usize,
        max_chars: next() as usize,
        max_content_bytes: next() as usize,
        max_zip_ratio: next(),
        deadline: None,
    };
    let time_left = Some(next()).filter(|&ms| ms > 0).map(Duration::from_millis);
    let len = next();
    // The parent never sends more than max_bytes; take no more than that.
    if len > limits.max_bytes as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "document over max_bytes",
        ));
    }
    let mut document = vec![0; len as usize];
    input.read_exact(&mut document)?;
    Ok(Some(Request {
        format,
        limits,
        time_left,
        document,
    }))
}

/// The most bytes an answer within `limits` takes (its length prefix
/// excluded): the text (at most four bytes a character, plus a length per
/// page), the metadata and an error's message.
pub(crate) fn answer_bound(limits: &Limits) -> u64 {
    (limits.max_chars as u64)
        .saturating_mul(4)
        .saturating_add((limits.max_pages as u64 + 1).saturating_mul(16))
        .saturating_add(64 << 10)
}

/// `result` as an answer, its length prefix included.
pub(crate) fn encode_answer(result: &Result<Extracted, ParseError>) -> Vec<u8> {
    let mut out = Writer(vec![0; 8]);
    out.u64(VERSION);
    match result {
        Ok(x) => {
            out.u8(0);
            out.u64(x.page_count as u64);
            out.u8(u8::from(x.truncated));
            let m = &x.metadata;
            for field in [
                &m.title,
                &m.author,
                &m.creator,
                &m.producer,
                &m.creation_date,
                &m.modification_date,
            ] {
                match field {
                    Some(s) => {
                        out.u8(1);
                        out.str(s);
                    }
                    None => out.u8(0),
                }
            }
            out.u64(x.pages.len() as u64);
            for page in &x.pages {
                out.str(page);
            }
            out.u64(x.ocr_pages.len() as u64);
            for &page in &x.ocr_pages {
                out.u64(page as u64);
            }
            match x.ocr_confidence {
                Some(c) => {
                    out.u8(1);
                    out.u64(u64::from(c.to_bits()));
                }
                None => out.u8(0),
            }
        }
        Err(e) => {
            out.u8(1);
            match e {
                ParseError::Encrypted => out.u8(0),
                ParseError::Malformed(message) => {
                    out.u8(1);
                    let cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
                    out.str(&cut);
                }
                ParseError::TooLarge { size, limit } => {
                    out.u8(2);
                    out.u64(*size as u64);
                    out.u64(*limit as u64);
                }
                ParseError::TooManyPages { pages, limit } => {
                    out.u8(3);
                    out.u64(*pages as u64);
                    out.u64(*limit as u64);
                }
                ParseError::Empty => out.u8(4),
                ParseError::TooMuchContent { limit } => {
                    out.u8(5);
                    out.u64(*limit as u64);
                }
                ParseError::Timeout => out.u8(6),
                ParseError::BadDocument(message) => {
                    out.u8(7);
                    let cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
                    out.str(&cut);
                }
                ParseError::ZipBomb {
                    name,
                    compressed,
                    limit,
                } => {
                    out.u8(8);
                    out.str(name);
                    out.u64(*compressed);
                    out.u64(*limit);
                }
                ParseError::ArchiveTooLarge { limit } => {
                    out.u8(9);
                    out.u64(*limit as u64);
                }
                ParseError::ImageTooLarge {
                    width,
                    height,
                    limit,
                } => {
                    out.u8(10);
                    out.u64(*width);
                    out.u64(*height);
                    out.u64(*limit);
                }
                ParseError::Ocr(message) => {
                    out.u8(11);
                    let cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
                    out.str(&cut);
                }
                // Made by the parent only; a worker never sends them.
                ParseError::OutOfMemory { .. } | ParseError::WorkerDied(_) => {
                    out.u8(1);
                    out.str(&e.to_string());
                }
            }
        }
    }
    let len = (out.0.len() - 8) as u64;
    out.0[..8].copy_from_slice(&len.to_le_bytes());
    out.0
}

/// An answer that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the parse worker's answer is unreadable: {0}")]
pub(crate) struct Unreadable(&'static str);

/// Decodes an answer (without its length prefix).
pub(crate) fn decode_answer(body: &[u8]) -> Result<Result<Extracted, ParseError>, Unreadable> {
    let mut r = Reader(body);
    if r.u64()? != VERSION {
        return Err(Unreadable("another version"));
    }
    let answer = match r.u8()? {
        0 => {
            let page_count = r.usize()?;
            let truncated = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(Unreadable("bad flag")),
            };
            let mut fields: [Option<String>; 6] = Default::default();
            for field in &mut fields {
                *field = match r.u8()? {
                    0 => None,
                    1 => Some(r.string()?),
                    _ => return Err(Unreadable("bad option")),
                };
            }
            let [
                title,
                author,
                creator,
                producer,
                creation_date,
                modification_date,
            ] = fields;
            let count = r.usize()?;
            // Every page takes at least its length's 8 bytes.
            if count > r.0.len() / 8 {
                return Err(Unreadable("more pages than bytes"));
            }
            let mut pages = Vec::with_capacity(count);
            for _ in 0..count {
                pages.push(r.string()?);
            }
            let ocr_count = r.usize()?;
            if ocr_count > r.0.len() / 8 {
                return Err(Unreadable("more OCR pages than bytes"));
            }
            let mut ocr_pages = Vec::with_capacity(ocr_count);
            for _ in 0..ocr_count {
                ocr_pages.push(r.usize()?);
            }
            let ocr_confidence = match r.u8()? {
                0 => None,
                1 => Some(f32::from_bits(
                    u32::try_from(r.u64()?).map_err(|_| Unreadable("bad confidence"))?,
                )),
                _ => return Err(Unreadable("bad option")),
            };
            Ok(Extracted {
                pages,
                page_count,
                metadata: Metadata {
                    title,
                    author,
                    creator,
                    producer,
                    creation_date,
                    modification_date,
                },
                truncated,
                ocr_pages,
                ocr_confidence,
            })
        }
        1 => Err(match r.u8()? {
            0 => ParseError::Encrypted,
            1 => ParseError::Malformed(r.string()?),
            2 => ParseError::TooLarge {
                size: r.usize()?,
                limit: r.usize()?,
            },
            3 => ParseError::TooManyPages {
                pages: r.usize()?,
                limit: r.usize()?,
            },
            4 => ParseError::Empty,
            5 => ParseError::TooMuchContent { limit: r.usize()? },
            6 => ParseError::Timeout,
            7 => ParseError::BadDocument(r.string()?),
            8 => ParseError::ZipBomb {
                name: r.string()?,
                compressed: r.u64()?,
                limit: r.u64()?,
            },
            9 => ParseError::ArchiveTooLarge { limit: r.usize()? },
            10 => ParseError::ImageTooLarge {
                width: r.u64()?,
                height: r.u64()?,
                limit: r.u64()?,
            },
            11 => ParseError::Ocr(r.string()?),
            _ => return Err(Unreadable("unknown error")),
        }),
        _ => return Err(Unreadable("unknown answer")),
    };
    if !r.0.is_empty() {
        return Err(Unreadable("trailing bytes"));
    }
    Ok(answer)
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Unreadable> {
        if n > self.0.len() {
            return Err(Unreadable("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Unreadable> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, Unreadable> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn usize(&mut self) -> Result<usize, Unreadable> {
        usize::try_from(self.u64()?).map_err(|_| Unreadable("number too large"))
    }
    fn string(&mut self) -> Result<String, Unreadable> {
        let len = self.usize()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Unreadable("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(result: Result<Extracted, ParseError>) {
        let encoded = encode_answer(&result);
        let len = u64::from_le_bytes(encoded[..8].try_into().unwrap());
        assert_eq!(len as usize, encoded.len() - 8);
        assert_eq!(decode_answer(&encoded[8..]), Ok(result));
    }

    #[test]
    fn answers_round_trip() {
        round_trip(Ok(Extracted {
            pages: vec!["héllo\nworld".into(), String::new(), "three".into()],
            page_count: 4,
            metadata: Metadata {
                title: Some("A title".into()),
                producer: Some(String::new()),
                modification_date: Some("D:2024".into()),
                ..Metadata::default()
            },
            truncated: true,
            ocr_pages: vec![2, 4],
            ocr_confidence: Some(87.5),
        }));
        for e in [
            ParseError::Encrypted,
            ParseError::Malformed("no trailer".into()),
            ParseError::TooLarge { size: 9, limit: 5 },
            ParseError::TooManyPages { pages: 3, limit: 2 },
            ParseError::Empty,
            ParseError::TooMuchContent { limit: 1024 },
            ParseError::Timeout,
            ParseError::BadDocument("no slides".into()),
            ParseError::ZipBomb {
                name: "word/document.xml".into(),
                compressed: 10,
                limit: 100,
            },
            ParseError::ArchiveTooLarge { limit: 7 },
            ParseError::ImageTooLarge {
                width: 1,
                height: 2,
                limit: 1,
            },
            ParseError::Ocr("tesseract failed".into()),
        ] {
            round_trip(Err(e));
        }
    }

    #[test]
    fn a_cut_or_padded_answer_is_unreadable() {
        let encoded = encode_answer(&Ok(Extracted {
            pages: vec!["some text".into()],
            page_count: 1,
            metadata: Metadata::default(),
            truncated: false,
            ocr_pages: vec![],
            ocr_confidence: None,
        }));
        let body = &encoded[8..];
        for cut in 0..body.len() {
            assert!(decode_answer(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = body.to_vec();
        padded.push(0);
        assert_eq!(decode_answer(&padded), Err(Unreadable("trailing bytes")));
        let mut huge = body.to_vec();
        // The page count, claimed as 2^60.
        let at = 8 + 1 + 8 + 1 + 6;
        huge[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert_eq!(
            decode_answer(&huge),
            Err(Unreadable("more pages than bytes"))
        );
    }

    #[test]
    fn requests_round_trip_and_end_at_eof() {
        let limits = Limits {
            max_bytes: 100,
            max_pages: 7,
            max_chars: 50,
            max_content_bytes: 1 << 20,
            max_zip_ratio: 50,
            deadline: None,
        };
        let mut stream =
            request_header(Format::Email, &limits, Some(Duration::from_millis(1500)), 3).to_vec();
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&request_header(Format::Pdf, &limits, None, 0));
        let mut input = stream.as_slice();
        let first = read_request(&mut input).unwrap().unwrap();
        assert_eq!(first.limits, limits);
        assert_eq!(first.time_left, Some(Duration::from_millis(1500)));
        assert_eq!(first.document, b"abc");
        assert_eq!(first.format, Format::Email);
        let second = read_request(&mut input).unwrap().unwrap();
        assert_eq!(second.time_left, None);
        assert!(second.document.is_empty());
        assert!(read_request(&mut input).unwrap().is_none());
        let over = request_header(Format::Pdf, &limits, None, 101);
        assert!(read_request(&mut over.as_slice()).is_err());
    }

    #[test]
    fn the_bound_holds_a_full_answer() {
        let limits = Limits {
            max_chars: 1000,
            max_pages: 10,
            ..Limits::default()
        };
        let answer = encode_answer(&Ok(Extracted {
            pages: vec!["€".repeat(100); 10],
            page_count: 10,
            metadata: Metadata {
                title: Some("€".repeat(1000)),
                author: Some("€".repeat(1000)),
                creator: Some("€".repeat(1000)),
                producer: Some("€".repeat(1000)),
                creation_date: Some("€".repeat(1000)),
                modification_date: Some("€".repeat(1000)),
            },
            truncated: false,
            ocr_pages: (1..=10).collect(),
            ocr_confidence: Some(1.0),
        }));
        assert!((answer.len() - 8) as u64 <= answer_bound(&limits));
    }
}
