//! Binary formats recognised by magic numbers.
//!
//! PDF is searched for ourselves (libmagic accepts `%PDF-` anywhere in the
//! first 1024 bytes, after leading junk), ELF is refined by object type the
//! way libmagic names it, and everything else is asked of the `infer` crate,
//! whose names are mapped to libmagic's where they differ. `infer`'s text
//! matchers are ignored: text is decided in [`crate::text`].

use infer::MatcherType;

/// A binary format found by its magic number.
pub(crate) struct Magic {
    /// The MIME type, in libmagic's spelling.
    pub mime: String,
    /// A short name for the `magic:<kind>` method.
    pub kind: String,
}

/// How far into the file libmagic looks for `%PDF-`.
const PDF_WINDOW: usize = 1024;

/// Finds a binary format by magic number, or `None`.
pub(crate) fn sniff(head: &[u8]) -> Option<Magic> {
    let window = &head[..head.len().min(PDF_WINDOW)];
    if window.windows(5).any(|w| w == b"%PDF-") {
        return Some(magic("application/pdf", "pdf"));
    }
    if head.starts_with(b"\x7fELF") {
        return Some(magic(elf_mime(head), "elf"));
    }
    if head.len() > 6 && head.starts_with(b"\x80\x01") && head[6..].starts_with(b"%!") {
        return Some(magic("font/x-postscript-pfb", "pfb"));
    }
    let Some(kind) = infer::get(head) else {
        let mime = fixed_magic(head)?;
        return Some(magic(
            mime,
            mime.rsplit(['/', '.', '-']).next().unwrap_or(mime),
        ));
    };
    // PEM certificates are text to libmagic.
    if kind.matcher_type() == MatcherType::Text || head.starts_with(b"-----BEGIN") {
        return None;
    }
    let mime = match kind.mime_type() {
        // libmagic's names for the same formats.
        "application/font-sfnt" | "font/otf" if head.starts_with(b"OTTO") => {
            "application/vnd.ms-opentype"
        }
        "application/font-sfnt" | "font/ttf" | "font/otf" => "font/sfnt",
        "application/x-unix-archive" => "application/x-archive",
        "application/x-deb" => "application/vnd.debian.binary-package",
        "image/x-icon" => "image/vnd.microsoft.icon",
        // libmagic names LLVM bitcode but gives it no MIME type.
        "application/x-llvm" => "application/octet-stream",
        "application/zip" => match ooxml_by_entries(head) {
            Some(mime) => return Some(magic(mime, "ooxml")),
            // The `jar` tool marks its first entry with the 0xCAFE extra field.
            None if is_jar(head) => "application/java-archive",
            None => "application/zip",
        },
        other => other,
    };
    Some(magic(mime, kind.extension()))
}

/// Formats `infer` does not know, by the magic numbers libmagic uses for
/// them: Python bytecode (a version number, then `\r\n`), gettext
/// catalogues, compiled terminfo (legacy and extended-number formats), ICC
/// profiles, JDK modules.
fn fixed_magic(head: &[u8]) -> Option<&'static str> {
    let at = |i: usize, bytes: &[u8]| head.get(i..i + bytes.len()) == Some(bytes);
    if at(2, b"\r\n") && head.len() >= 16 {
        // CPython's bytecode magic: 20121 (1.5) up to 3000-3999 (3.x), little-endian.
        let version = u16::from_le_bytes([head[0], head[1]]);
        if (2900..4000).contains(&version) || (20000..=62211).contains(&version) {
            return Some("application/x-bytecode.python");
        }
    }
    if at(0, b"\xde\x12\x04\x95") || at(0, b"\x95\x04\x12\xde") {
        return Some("application/x-gettext-translation");
    }
    if at(0, b"\x1a\x01") && head.len() >= 12 {
        return Some("application/x-terminfo");
    }
    if at(0, b"\x1e\x02") && head.len() >= 12 {
        return Some("application/x-terminfo2");
    }
    if at(36, b"acsp") {
        return Some("application/vnd.iccprofile");
    }
    if at(0, b"JM\x01\x00PK\x03\x04") {
        return Some("application/x-java-jmod");
    }
    None
}

/// A JAR: its first entry's extra field starts with the id 0xCAFE, as
/// libmagic checks.
fn is_jar(head: &[u8]) -> bool {
    let u16_at = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let (Some(name), Some(extra)) = (u16_at(26), u16_at(28)) else {
        return false;
    };
    extra >= 4 && u16_at(30 + usize::from(name)) == Some(0xCAFE)
}

/// An Office Open XML file whose `word/`, `ppt/` or `xl/` entry comes
/// later than `infer` looks (it reads the third and fourth entries; writers
/// such as python-docx put `docProps/` first): the local file headers in
/// `head` are walked, as libmagic's rules search further, once the first
/// entry is one an OOXML package starts with.
fn ooxml_by_entries(head: &[u8]) -> Option<&'static str> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let mut at = 0usize;
    let mut first = true;
    while head.get(at..at + 4) == Some(b"PK\x03\x04") {
        let compressed = u32_at(at + 18)? as usize;
        let name_len = usize::from(u16_at(at + 26)?);
        let extra_len = usize::from(u16_at(at + 28)?);
        let name = head.get(at + 30..at + 30 + name_len)?;
        if first
            && ![&b"[Content_Types].xml"[..], b"_rels/.rels", b"docProps"]
                .iter()
                .any(|p| name.starts_with(p))
        {
            return None;
        }
        first = false;
        for (prefix, mime) in [
            (
                &b"word/"[..],
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
            (
                b"ppt/",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ),
            (
                b"xl/",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ),
        ] {
            if name.starts_with(prefix) {
                return Some(mime);
            }
        }
        at = at
            .checked_add(30 + name_len + extra_len)?
            .checked_add(compressed)?;
    }
    None
}

fn magic(mime: &str, kind: &str) -> Magic {
    Magic {
        mime: mime.to_string(),
        kind: kind.to_string(),
    }
}

/// libmagic's MIME type for an ELF file, from its header's object type. A
/// position-independent executable and a shared library are both `ET_DYN`;
/// like libmagic we call one with a program interpreter (`PT_INTERP`) an
/// executable.
fn elf_mime(head: &[u8]) -> &'static str {
    let little = head.get(5) == Some(&1);
    let is64 = head.get(4) == Some(&2);
    let u16_at = |at: usize| -> Option<u16> {
        let b = head.get(at..at.checked_add(2)?)?;
        Some(if little {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = head.get(at..at.checked_add(4)?)?;
        let b = [b[0], b[1], b[2], b[3]];
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let u64_at = |at: usize| -> Option<u64> {
        if !is64 {
            return u32_at(at).map(u64::from);
        }
        let b = head.get(at..at.checked_add(8)?)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(if little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        })
    };
    match u16_at(16) {
        Some(1) => "application/x-object",
        Some(2) => "application/x-executable",
        Some(4) => "application/x-coredump",
        Some(3) => {
            // e_phoff, e_phentsize, e_phnum
            let (phoff, phentsize, phnum) = if is64 {
                (u64_at(32), u16_at(54), u16_at(56))
            } else {
                (u64_at(28), u16_at(42), u16_at(44))
            };
            let has_interp = match (phoff, phentsize, phnum) {
                (Some(off), Some(size), Some(n)) => (0..usize::from(n)).any(|i| {
                    // Offsets come from the file: an absurd one reads nothing.
                    usize::try_from(off)
                        .ok()
                        .and_then(|off| off.checked_add(i * usize::from(size)))
                        .and_then(u32_at)
                        == Some(3)
                }),
                _ => false,
            };
            if has_interp {
                "application/x-pie-executable"
            } else {
                "application/x-sharedlib"
            }
        }
        _ => "application/octet-stream",
    }
}
