//! Comparing a declared MIME type with a detected one.
//!
//! Types are compared after [`normalize`]: lower case, parameters such as
//! `; charset=utf-8` dropped, whitespace trimmed. Beyond equality, only real
//! aliases agree — names that different tools use for the *same* format:
//!
//! | canonical | aliases |
//! | --- | --- |
//! | `application/pdf` | `application/x-pdf`, `application/acrobat` |
//! | `image/jpeg` | `image/jpg`, `image/pjpeg` |
//! | `image/png` | `image/x-png` |
//! | `application/gzip` | `application/x-gzip` |
//! | `application/zip` | `application/x-zip`, `application/x-zip-compressed` |
//! | `text/xml` | `application/xml` |
//! | `application/json` | `text/json`, `application/x-json` |
//! | `text/markdown` | `text/x-markdown` |
//! | `text/csv` | `application/csv`, `text/comma-separated-values` |
//! | `application/x-executable` | the ELF family: `application/x-elf`, `application/x-sharedlib`, `application/x-pie-executable` |
//! | `text/x-script.python` | `text/x-python` |
//! | `application/x-empty` | `inode/x-empty` (libmagic's name for an empty file) |
//!
//! Deliberately *not* aliases: a more specific text type versus `text/plain`
//! (a declared `text/plain` for a detected `text/markdown` disagrees), and
//! container formats versus the formats built on them (`application/zip`
//! versus `.docx`).

/// Lower-cases a MIME type and drops its parameters and surrounding spaces:
/// `"Text/Plain; charset=UTF-8"` becomes `"text/plain"`.
pub fn normalize(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The canonical name of a normalised type: itself unless it is an alias.
fn canonical(mime: &str) -> &str {
    match mime {
        "application/x-pdf" | "application/acrobat" => "application/pdf",
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "image/x-png" => "image/png",
        "application/x-gzip" => "application/gzip",
        "application/x-zip" | "application/x-zip-compressed" => "application/zip",
        "application/xml" => "text/xml",
        "text/json" | "application/x-json" => "application/json",
        "text/x-markdown" => "text/markdown",
        "application/csv" | "text/comma-separated-values" => "text/csv",
        "application/x-elf" | "application/x-sharedlib" | "application/x-pie-executable" => {
            "application/x-executable"
        }
        "text/x-python" => "text/x-script.python",
        "inode/x-empty" => "application/x-empty",
        other => other,
    }
}

/// Whether two MIME types name the same format: equal after [`normalize`],
/// or aliases of each other (see the module docs for the table).
pub fn types_agree(a: &str, b: &str) -> bool {
    let (a, b) = (normalize(a), normalize(b));
    !a.is_empty() && canonical(&a) == canonical(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_and_parameters() {
        assert_eq!(normalize(" Text/Plain ; charset=UTF-8"), "text/plain");
        assert!(types_agree("TEXT/HTML; charset=iso-8859-1", "text/html"));
    }

    #[test]
    fn real_aliases_agree() {
        assert!(types_agree("application/x-pdf", "application/pdf"));
        assert!(types_agree("image/jpg", "image/jpeg"));
        assert!(types_agree("application/xml", "text/xml"));
        assert!(types_agree(
            "application/x-executable",
            "application/x-pie-executable"
        ));
    }

    #[test]
    fn related_but_different_types_disagree() {
        assert!(!types_agree("text/plain", "text/markdown"));
        assert!(!types_agree("text/plain", "application/json"));
        assert!(!types_agree("application/zip", "application/gzip"));
        assert!(!types_agree("", ""));
    }
}
