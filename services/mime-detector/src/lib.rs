//! Content-type detection from an artifact's leading bytes.
//!
//! [`detect`] looks at the first [`SNIFF_BYTES`] bytes of a file and decides
//! its MIME type the way libmagic (`file --mime-type`) would for the types the
//! pipeline cares about: binary formats by magic number (through the `infer`
//! crate, plus PDF and ELF refinements of our own), then text formats by
//! heuristics (JSON, CSV, Markdown, HTML, XML, e-mail, scripts, plain text in UTF-8,
//! UTF-16 or Latin-1). It then compares the result with what the uploader
//! declared; see [`types_agree`] for what counts as agreement.
//!
//! Pure logic: no I/O, no async, deterministic.

mod agree;
mod code;
mod magic;
pub mod stage;
mod text;

pub use agree::{normalize, types_agree};

/// How many leading bytes [`detect`] needs; callers read at most this many.
///
/// 8 KiB covers every magic number we know, the `%PDF-` search window
/// (1 KiB, as libmagic) and enough text for the heuristics to be stable.
pub const SNIFF_BYTES: usize = 8192;

/// The MIME type used for a file with no bytes (libmagic's name).
pub const EMPTY: &str = "application/x-empty";

/// The MIME type used for bytes we cannot identify.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The outcome of [`detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The detected MIME type, lower case, without parameters.
    pub detected: String,
    /// How the type was decided: `magic:<kind>` (magic number), `text:<kind>`
    /// (text heuristic, e.g. `text:json`, `text:utf-8`), `empty` or `binary`.
    pub method: String,
    /// Whether the declared type agrees with the detected one; `false` when
    /// nothing was declared.
    pub agrees: bool,
}

/// Detects the MIME type of a file from its leading bytes `head` (pass the
/// first [`SNIFF_BYTES`] bytes, or the whole file if shorter) and compares it
/// with the `declared` type.
pub fn detect(head: &[u8], declared: Option<&str>) -> Detection {
    let head = &head[..head.len().min(SNIFF_BYTES)];
    let truncated = head.len() == SNIFF_BYTES;
    let (detected, method) = if head.is_empty() {
        (EMPTY.to_string(), "empty".to_string())
    } else if let Some(found) = magic::sniff(head) {
        (found.mime, format!("magic:{}", found.kind))
    } else if let Some(found) = text::sniff(head, truncated) {
        (found.mime.to_string(), format!("text:{}", found.kind))
    } else {
        (OCTET_STREAM.to_string(), "binary".to_string())
    };
    let agrees = declared.is_some_and(|d| types_agree(d, &detected));
    Detection {
        detected,
        method,
        agrees,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zip local file headers for `entries` (name, stored content).
    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
            out.extend_from_slice(&[0; 4]); // CRC, unchecked here
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn office_files_whose_part_comes_after_the_third_entry() {
        let docx = zip(&[
            ("[Content_Types].xml", b"<Types/>"),
            ("_rels/.rels", b"<Relationships/>"),
            ("docProps/core.xml", b"<cp/>"),
            ("docProps/app.xml", b"<Properties/>"),
            ("word/document.xml", b"<w:document/>"),
        ]);
        assert_eq!(
            detect(&docx, None).detected,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        );
        let xlsx = zip(&[
            ("docProps/app.xml", b"<Properties/>"),
            ("docProps/core.xml", b"<cp/>"),
            ("_rels/.rels", b"<Relationships/>"),
            ("xl/workbook.xml", b"<workbook/>"),
        ]);
        assert_eq!(
            detect(&xlsx, None).detected,
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        );
        let plain = zip(&[("a.txt", b"a"), ("b.txt", b"b"), ("word/x", b"x")]);
        assert_eq!(detect(&plain, None).detected, "application/zip");
    }

    #[test]
    fn formats_infer_does_not_know_by_libmagics_magic_numbers() {
        let mut pyc = b"\xcb\x0d\x0d\x0a".to_vec();
        pyc.resize(32, 0);
        assert_eq!(detect(&pyc, None).detected, "application/x-bytecode.python");
        let mut mo = b"\xde\x12\x04\x95".to_vec();
        mo.resize(32, 0);
        assert_eq!(
            detect(&mo, None).detected,
            "application/x-gettext-translation"
        );
        let mut icc = vec![0u8; 36];
        icc.extend_from_slice(b"acspAPPL");
        assert_eq!(detect(&icc, None).detected, "application/vnd.iccprofile");
        let mut jar = zip(&[("META-INF/", b"")]);
        assert_eq!(detect(&jar, None).detected, "application/zip");
        // The same entry with the jar tool's 0xCAFE extra field.
        jar[28] = 4;
        jar.splice(30 + 9..30 + 9, [0xfe, 0xca, 0, 0]);
        assert_eq!(detect(&jar, None).detected, "application/java-archive");
    }

    #[test]
    fn empty_file_is_x_empty() {
        let d = detect(b"", Some("text/plain"));
        assert_eq!(d.detected, EMPTY);
        assert_eq!(d.method, "empty");
        assert!(!d.agrees);
    }

    #[test]
    fn pdf_by_magic_and_agreement_with_alias() {
        let d = detect(
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
            Some("application/x-pdf"),
        );
        assert_eq!(d.detected, "application/pdf");
        assert_eq!(d.method, "magic:pdf");
        assert!(d.agrees);
    }

    #[test]
    fn pdf_with_leading_junk_within_1024_bytes() {
        let mut bytes = vec![b'x'; 700];
        bytes.extend_from_slice(b"%PDF-1.4\n");
        assert_eq!(detect(&bytes, None).detected, "application/pdf");
        let mut far = vec![b'x'; 1100];
        far.extend_from_slice(b"%PDF-1.4\n");
        assert_eq!(detect(&far, None).detected, "text/plain");
    }

    #[test]
    fn png_jpeg_gif_zip_gzip_by_magic() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";
        assert_eq!(detect(png, None).detected, "image/png");
        let jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0";
        let d = detect(jpeg, Some("image/jpg"));
        assert_eq!(d.detected, "image/jpeg");
        assert!(d.agrees);
        assert_eq!(
            detect(b"GIF89a\x01\0\x01\0\0\0\0;", None).detected,
            "image/gif"
        );
        let zip = b"PK\x03\x04\x14\0\0\0\x08\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0a";
        assert_eq!(detect(zip, None).detected, "application/zip");
        let gz = b"\x1f\x8b\x08\0\0\0\0\0\0\x03\x03\0\0\0\0\0\0\0\0\0";
        let d = detect(gz, Some("application/x-gzip"));
        assert_eq!(d.detected, "application/gzip");
        assert!(d.agrees);
    }

    #[test]
    fn elf_kinds() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[16] = 3; // ET_DYN, no program headers: a shared object
        assert_eq!(detect(&elf, None).detected, "application/x-sharedlib");
        elf[16] = 2;
        assert_eq!(detect(&elf, None).detected, "application/x-executable");
        elf[16] = 1;
        assert_eq!(detect(&elf, None).detected, "application/x-object");
    }

    #[test]
    fn elf_program_headers_at_absurd_offsets_read_nothing() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[16] = 3;
        elf[32..40].copy_from_slice(&(u64::MAX - 8).to_le_bytes()); // e_phoff
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&3u16.to_le_bytes()); // e_phnum
        assert_eq!(detect(&elf, None).detected, "application/x-sharedlib");
    }

    #[test]
    fn utf8_and_utf16_text() {
        let d = detect(
            "Grüße aus Köln.\nZweite Zeile.\n".as_bytes(),
            Some("text/plain; charset=UTF-8"),
        );
        assert_eq!(d.detected, "text/plain");
        assert_eq!(d.method, "text:utf-8");
        assert!(d.agrees);

        let mut utf16 = vec![0xff, 0xfe];
        for u in "hello world\n".encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        let d = detect(&utf16, None);
        assert_eq!(d.detected, "text/plain");
        assert_eq!(d.method, "text:utf-16le");
    }

    #[test]
    fn latin1_text_is_plain_text() {
        let d = detect(b"caf\xe9 cr\xe8me br\xfbl\xe9e\n", None);
        assert_eq!(d.detected, "text/plain");
        assert_eq!(d.method, "text:latin-1");
    }

    #[test]
    fn json_csv_markdown_html_xml() {
        let d = detect(
            br#"{"a": [1, 2.5e3, true, null], "b": {"c": "d"}}"#,
            Some("application/json"),
        );
        assert_eq!(
            (d.detected.as_str(), d.method.as_str(), d.agrees),
            ("application/json", "text:json", true)
        );
        let csv = b"name,age,city\nalice,30,paris\nbob,25,\"new york, ny\"\n";
        assert_eq!(detect(csv, None).detected, "text/csv");
        let md =
            b"# Title\n\nSome *text* with a [link](http://x.y).\n\n## Section\n\n- item\n- item\n";
        let d = detect(md, Some("text/markdown"));
        assert_eq!((d.detected.as_str(), d.agrees), ("text/markdown", true));
        let html = b"<!DOCTYPE html>\n<html><head><title>x</title></head><body></body></html>";
        assert_eq!(detect(html, None).detected, "text/html");
        let xml = b"<?xml version=\"1.0\"?>\n<root><a/></root>\n";
        assert_eq!(detect(xml, Some("application/xml")).detected, "text/xml");
        assert!(detect(xml, Some("application/xml")).agrees);
        let svg = b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>";
        assert_eq!(detect(svg, None).detected, "image/svg+xml");
    }

    #[test]
    fn unknown_binary_is_octet_stream() {
        let d = detect(
            &[0u8, 1, 2, 3, 0xfe, 0x00, 0x10, 0x80, 0x81],
            Some("application/pdf"),
        );
        assert_eq!(d.detected, OCTET_STREAM);
        assert_eq!(d.method, "binary");
        assert!(!d.agrees);
    }

    #[test]
    fn head_longer_than_sniff_window_is_cut() {
        let mut big = b"%PDF-1.5\n".to_vec();
        big.resize(SNIFF_BYTES * 3, b'a');
        assert_eq!(detect(&big, None).detected, "application/pdf");
    }
}
