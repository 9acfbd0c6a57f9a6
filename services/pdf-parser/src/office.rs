//! Office documents and EPUB: DOCX, ODT and PPTX through their XML parts
//! ([`crate::zipped`]), XLSX and ODS through calamine, EPUB chapters in
//! spine order through [`crate::web::html_text`]. Every archive is read
//! under [`crate::zipped::Zip`]'s bounds.

use crate::zipped::{TextRules, Zip, attributes, xml_text};
use crate::{Extracted, Limits, Metadata, ParseError, web};
use quick_xml::events::Event;
use std::io::Cursor;

/// The office and e-book formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Office {
    Docx,
    Odt,
    Pptx,
    /// XLSX and ODS.
    Spreadsheet,
    Epub,
}

pub(crate) fn extract(
    kind: Office,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Extracted, ParseError> {
    let mut zip = Zip::open(bytes, limits)?;
    let (pages, metadata) = match kind {
        Office::Docx => (vec![docx(&mut zip)?], ooxml_core(&mut zip)?),
        Office::Pptx => (pptx(&mut zip, limits.max_pages)?, ooxml_core(&mut zip)?),
        Office::Odt => (vec![odt(&mut zip)?], odf_meta(&mut zip)?),
        Office::Spreadsheet => {
            zip.check_all()?;
            let metadata = match zip.names().iter().any(|n| n == "meta.xml") {
                true => odf_meta(&mut zip)?,
                false => ooxml_core(&mut zip)?,
            };
            (spreadsheet(bytes, &mut zip)?, metadata)
        }
        Office::Epub => epub(&mut zip)?,
    };
    let pages = pages.into_iter().map(|p| p.trim().to_owned()).collect();
    let mut x = Extracted {
        metadata,
        ..Extracted::text(pages)
    };
    x.truncated = crate::plain::truncate_pages(&mut x.pages, limits.max_chars);
    Ok(x)
}

fn required(zip: &mut Zip<'_>, name: &str) -> Result<Vec<u8>, ParseError> {
    zip.read(name)?
        .ok_or_else(|| ParseError::BadDocument(format!("the archive has no {name}")))
}

fn docx(zip: &mut Zip<'_>) -> Result<String, ParseError> {
    let xml = required(zip, "word/document.xml")?;
    let rules = TextRules {
        text: &["t"],
        paragraph: &["p"],
        line_break: &["br", "cr"],
        tab: &["tab"],
        space: &[],
    };
    let mut out = String::new();
    xml_text(&xml, &rules, &mut zip.work, &mut out)?;
    Ok(out)
}

/// Slides in the presentation's order (`ppt/presentation.xml`'s slide
/// list, through its relationships), one page each; more slides than
/// `max_pages` fail before any is read.
fn pptx(zip: &mut Zip<'_>, max_pages: usize) -> Result<Vec<String>, ParseError> {
    let presentation = required(zip, "ppt/presentation.xml")?;
    let ids = slide_ids(&presentation, &mut zip.work)?;
    if ids.is_empty() {
        return Err(ParseError::BadDocument(
            "the presentation has no slides".into(),
        ));
    }
    if ids.len() > max_pages.max(1) {
        return Err(ParseError::TooManyPages {
            pages: ids.len(),
            limit: max_pages,
        });
    }
    let rels = required(zip, "ppt/_rels/presentation.xml.rels")?;
    let targets = attributes(&rels, "Relationship", &["Id", "Target"], &mut zip.work)?;
    let rules = TextRules {
        text: &["t"],
        paragraph: &["p"],
        line_break: &["br"],
        tab: &[],
        space: &[],
    };
    let mut pages = Vec::new();
    for id in ids {
        let target = targets
            .iter()
            .find(|r| r[0] == id)
            .map(|r| part_name("ppt", &r[1]))
            .ok_or_else(|| {
                let id: String = id.chars().take(100).collect();
                ParseError::BadDocument(format!(
                    "slide {id} is not in ppt/_rels/presentation.xml.rels"
                ))
            })?;
        let xml = required(zip, &target)?;
        let mut out = String::new();
        xml_text(&xml, &rules, &mut zip.work, &mut out)?;
        pages.push(out);
    }
    Ok(pages)
}

/// The namespace of OOXML relationship ids (`r:id`).
const RELATIONSHIPS: &[u8] = b"http://schemas.openxmlformats.org/officeDocument/2006/relationships";

/// The relationship ids (`r:id`) of `presentation.xml`'s `sldId`
/// elements, in order.
fn slide_ids(xml: &[u8], work: &mut crate::work::Work) -> Result<Vec<String>, ParseError> {
    use quick_xml::name::{Namespace, ResolveResult};
    let bad = |e: &dyn std::fmt::Display| ParseError::BadDocument(format!("bad XML: {e}"));
    let mut reader = quick_xml::NsReader::from_reader(xml);
    let mut ids = Vec::new();
    loop {
        work.tick()?;
        match reader.read_event().map_err(|e| bad(&e))? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"sldId" => {
                for a in e.attributes().flatten() {
                    let (ns, local) = reader.resolver().resolve_attribute(a.key);
                    if ns == ResolveResult::Bound(Namespace(RELATIONSHIPS))
                        && local.as_ref() == b"id"
                    {
                        let value = a
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|e| bad(&e))?;
                        ids.push(value.into_owned());
                    }
                }
            }
            Event::Eof => return Ok(ids),
            _ => {}
        }
    }
}

/// The archive entry a relationship's `target` names, relative to the
/// part directory `base` or absolute (`/ppt/…`); `..` and `.` resolved.
fn part_name(base: &str, target: &str) -> String {
    let mut parts: Vec<&str> = match target.strip_prefix('/') {
        Some(_) => Vec::new(),
        None => base.split('/').filter(|p| !p.is_empty()).collect(),
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

fn odt(zip: &mut Zip<'_>) -> Result<String, ParseError> {
    let xml = required(zip, "content.xml")?;
    // All character data of content.xml is text (styles hold none).
    let rules = TextRules {
        text: &[],
        paragraph: &["p", "h"],
        line_break: &["line-break"],
        tab: &["tab"],
        space: &["s"],
    };
    let mut out = String::new();
    xml_text(&xml, &rules, &mut zip.work, &mut out)?;
    Ok(out)
}

fn spreadsheet(bytes: &[u8], zip: &mut Zip<'_>) -> Result<Vec<String>, ParseError> {
    use calamine::Reader;
    let bad =
        |e: calamine::Error| ParseError::BadDocument(format!("not a readable spreadsheet: {e}"));
    let mut book = calamine::open_workbook_auto_from_rs(Cursor::new(bytes)).map_err(bad)?;
    let mut pages = Vec::new();
    for name in book.sheet_names() {
        zip.work.check_deadline()?;
        let range = book.worksheet_range(&name).map_err(bad)?;
        let mut page = name.clone();
        for row in range.rows() {
            let cells: Vec<String> = row.iter().map(ToString::to_string).collect();
            let used = cells
                .iter()
                .rposition(|c| !c.is_empty())
                .map_or(0, |i| i + 1);
            if used > 0 {
                page.push('\n');
                page.push_str(&cells[..used].join("\t"));
            }
        }
        pages.push(page);
    }
    Ok(pages)
}

/// Chapters in spine order, one page each, with the package's title and
/// creator.
fn epub(zip: &mut Zip<'_>) -> Result<(Vec<String>, Metadata), ParseError> {
    let container = required(zip, "META-INF/container.xml")?;
    let rootfile = attributes(&container, "rootfile", &["full-path"], &mut zip.work)?
        .into_iter()
        .next()
        .map(|mut v| v.remove(0))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ParseError::BadDocument("the EPUB names no package file".into()))?;
    let opf = required(zip, &rootfile)?;
    let base = rootfile.rsplit_once('/').map_or("", |(dir, _)| dir);
    let items = attributes(&opf, "item", &["id", "href"], &mut zip.work)?;
    let spine = attributes(&opf, "itemref", &["idref"], &mut zip.work)?;
    let mut pages = Vec::new();
    for idref in spine {
        let Some(item) = items.iter().find(|i| i[0] == idref[0]) else {
            continue;
        };
        let href = item[1].split('#').next().unwrap_or_default();
        let path = match base {
            "" => href.to_owned(),
            base => format!("{base}/{href}"),
        };
        let Some(chapter) = zip.read(&path)? else {
            continue;
        };
        zip.work.check_deadline()?;
        pages.push(web::html_text(&String::from_utf8_lossy(&chapter)));
    }
    let metadata = Metadata {
        title: first_text(&opf, "title", &mut zip.work)?,
        author: first_text(&opf, "creator", &mut zip.work)?,
        ..Metadata::default()
    };
    Ok((pages, metadata))
}

/// DOCX, PPTX and XLSX: `docProps/core.xml`'s title and creator.
fn ooxml_core(zip: &mut Zip<'_>) -> Result<Metadata, ParseError> {
    let Some(core) = zip.read("docProps/core.xml")? else {
        return Ok(Metadata::default());
    };
    Ok(Metadata {
        title: first_text(&core, "title", &mut zip.work)?,
        author: first_text(&core, "creator", &mut zip.work)?,
        ..Metadata::default()
    })
}

/// ODT and ODS: `meta.xml`'s title and initial creator.
fn odf_meta(zip: &mut Zip<'_>) -> Result<Metadata, ParseError> {
    let Some(meta) = zip.read("meta.xml")? else {
        return Ok(Metadata::default());
    };
    Ok(Metadata {
        title: first_text(&meta, "title", &mut zip.work)?,
        author: first_text(&meta, "initial-creator", &mut zip.work)?,
        creator: first_text(&meta, "generator", &mut zip.work)?,
        ..Metadata::default()
    })
}

/// The text of the elements named `element` in `xml`, trimmed, first
/// non-empty one; at most [`crate::document::MAX_INFO_CHARS`] characters.
fn first_text(
    xml: &[u8],
    element: &str,
    work: &mut crate::work::Work,
) -> Result<Option<String>, ParseError> {
    let rules = TextRules {
        text: &[element],
        paragraph: &[element],
        line_break: &[],
        tab: &[],
        space: &[],
    };
    let mut out = String::new();
    xml_text(xml, &rules, work, &mut out)?;
    Ok(out
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(crate::document::MAX_INFO_CHARS).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relationship_targets_resolve_against_the_part_directory() {
        assert_eq!(
            part_name("ppt", "slides/slide2.xml"),
            "ppt/slides/slide2.xml"
        );
        assert_eq!(part_name("ppt", "/ppt/slides/s.xml"), "ppt/slides/s.xml");
        assert_eq!(
            part_name("ppt", "../ppt/./slides/s.xml"),
            "ppt/slides/s.xml"
        );
        assert_eq!(part_name("ppt", "../../../x.xml"), "x.xml");
    }

    #[test]
    fn slide_ids_are_the_relationship_ids_whatever_the_prefix() {
        let xml = br#"<p:presentation xmlns:p="urn:p" xmlns:rel="http://schemas.openxmlformats.org/officeDocument/2006/relationships">
            <p:sldIdLst><p:sldId id="258" rel:id="rId9"/><p:sldId id="256" rel:id="rId7"/></p:sldIdLst>
            <p:notesMasterIdLst><p:notesMasterId rel:id="rId3"/></p:notesMasterIdLst></p:presentation>"#;
        let mut work = crate::work::Work::new(&Limits::default());
        assert_eq!(slide_ids(xml, &mut work).unwrap(), vec!["rId9", "rId7"]);
    }
}
