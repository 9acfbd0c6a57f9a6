//! The real-world PDF corpus of `bench-pdf-corpus`: its manifest,
//! scripts/fixtures/pdf-corpus.tsv, which scripts/fixtures/fetch-pdf-corpus.sh
//! fetches from.

use std::path::PathBuf;

/// One document of the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name without `.pdf`.
    pub name: String,
    /// What it stands for: `two-column`, `paper`, `report`, `form`,
    /// `slides`, `cid-no-tounicode`, `cjk`.
    pub kind: String,
    /// The package: `deb:PKG=VERSION`, `pypi:NAME==VERSION` or `npm:NAME@VERSION`.
    pub source: String,
    /// Its path inside the package.
    pub member: String,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
    /// Its licence, or that none is stated and who ships it.
    pub licence: String,
}

/// The manifest's path.
pub fn manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/pdf-corpus.tsv")
}

/// Parses the manifest (tab-separated, `#` comments), checking each entry.
pub fn parse_manifest(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [name, kind, source, member, sha256, licence] = f[..] else {
            return Err(format!("line {}: {} fields, want 6", n + 1, f.len()));
        };
        let pinned = match source.split_once(':') {
            Some(("deb", s)) => s.contains('='),
            Some(("pypi", s)) => s.contains("=="),
            Some(("npm", s)) => s.rfind('@').is_some_and(|i| i > 0),
            _ => false,
        };
        if !pinned {
            return Err(format!(
                "line {}: source {source:?} is not a pinned deb:, pypi: or npm: package",
                n + 1
            ));
        }
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("line {}: sha256 {sha256:?}", n + 1));
        }
        if name.is_empty()
            || name.contains('/')
            || kind.is_empty()
            || member.is_empty()
            || licence.is_empty()
        {
            return Err(format!(
                "line {}: empty name, kind, member or licence",
                n + 1
            ));
        }
        if entries.iter().any(|e| e.name == name) {
            return Err(format!("line {}: name {name} twice", n + 1));
        }
        entries.push(Entry {
            name: name.into(),
            kind: kind.into(),
            source: source.into(),
            member: member.into(),
            sha256: sha256.into(),
            licence: licence.into(),
        });
    }
    Ok(entries)
}

/// The corpus manifest, parsed.
pub fn manifest() -> Result<Vec<Entry>, String> {
    let path = manifest_path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_manifest(&text)
}

#[cfg(test)]
mod tests {
    use super::{manifest, parse_manifest};

    #[test]
    fn the_corpus_manifest_parses() {
        let entries = manifest().unwrap();
        assert!(entries.len() >= 20, "{} entries", entries.len());
        for kind in ["two-column", "form", "slides", "cid-no-tounicode"] {
            assert!(entries.iter().any(|e| e.kind == kind), "no {kind} document");
        }
    }

    #[test]
    fn unpinned_or_malformed_entries_are_refused() {
        let sha = "a".repeat(64);
        let ok = format!("x\tform\tpypi:pypdf==5.1.0\tp/x.pdf\t{sha}\tMIT");
        assert_eq!(parse_manifest(&ok).unwrap().len(), 1);
        for bad in [
            ok.replace("==5.1.0", ""),
            ok.replace(&sha, "abc"),
            ok.replace("\tMIT", ""),
            format!("{ok}\n{ok}"),
            ok.replace("pypi:", "http:"),
        ] {
            assert!(parse_manifest(&bad).is_err(), "{bad}");
        }
    }
}
