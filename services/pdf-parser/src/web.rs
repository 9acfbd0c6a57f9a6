//! HTML (its readable text, through dom_smoothie, a port of Mozilla's
//! Readability) and e-mail (`message/rfc822`, through mail-parser).

use crate::{Extracted, Limits, Metadata, ParseError, plain};
use mail_parser::{MessageParser, MimeHeaders};

/// Elements an HTML document may have; more is refused before scoring
/// (the whole tree is built first, within the worker's memory limit).
pub(crate) const MAX_HTML_ELEMENTS: usize = 200_000;

/// The readable text of an HTML page: the article Readability finds
/// (without scripts, styles, navigation, boilerplate), or, when it finds
/// none, the body's text without scripts, styles and navigation.
pub(crate) fn html(
    bytes: &[u8],
    charset: Option<&str>,
    limits: &Limits,
) -> Result<Extracted, ParseError> {
    let html = plain::extract_text(bytes, charset)?;
    let cfg = dom_smoothie::Config {
        text_mode: dom_smoothie::TextMode::Formatted,
        max_elements_to_parse: MAX_HTML_ELEMENTS,
        ..dom_smoothie::Config::default()
    };
    let refused = |e: dom_smoothie::ReadabilityError| match e {
        dom_smoothie::ReadabilityError::TooManyElements(found, limit) => ParseError::BadDocument(
            format!("the HTML has {found} elements, over the limit of {limit}; split the page"),
        ),
        e => ParseError::BadDocument(e.to_string()),
    };
    let mut readability =
        dom_smoothie::Readability::new(html.as_str(), None, Some(cfg)).map_err(refused)?;
    let (text, title, byline) = match readability.parse() {
        Ok(article) => (
            article.text_content.to_string(),
            Some(article.title.to_string()),
            article.byline,
        ),
        Err(dom_smoothie::ReadabilityError::GrabFailed) => (html_text(&html), None, None),
        Err(e) => return Err(refused(e)),
    };
    let mut x = Extracted {
        metadata: Metadata {
            title: title.filter(|t| !t.trim().is_empty()),
            author: byline,
            ..Metadata::default()
        },
        ..Extracted::text(vec![tidy(&text)])
    };
    x.truncated = plain::truncate_pages(&mut x.pages, limits.max_chars);
    Ok(x)
}

/// The text of an HTML document's body, without scripts, styles,
/// navigation and other non-content elements.
pub(crate) fn html_text(html: &str) -> String {
    let doc = dom_query::Document::from(html);
    doc.select("script, style, nav, noscript, template, head")
        .remove();
    tidy(&doc.formatted_text())
}

/// Lines trimmed at their end, runs of blank lines made one.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = true;
    for line in text.lines().map(str::trim_end) {
        if line.trim().is_empty() {
            if !blank {
                out.push('\n');
            }
            blank = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
        blank = false;
    }
    out.truncate(out.trim_end().len());
    out
}

/// An e-mail message: its main headers, its text body (the HTML body as
/// text when it has no plain one), and its attachments listed by name,
/// type and size.
pub(crate) fn email(bytes: &[u8], limits: &Limits) -> Result<Extracted, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let message = MessageParser::default()
        .parse(bytes)
        .ok_or_else(|| ParseError::BadDocument("not a readable e-mail message".into()))?;
    let mut text = String::new();
    let addresses = |a: Option<&mail_parser::Address<'_>>| -> Option<String> {
        let list: Vec<String> = a?
            .iter()
            .map(|a| match (a.name(), a.address()) {
                (Some(n), Some(e)) => format!("{n} <{e}>"),
                (n, e) => n.or(e).unwrap_or_default().to_owned(),
            })
            .collect();
        Some(list.join(", "))
    };
    let from = addresses(message.from());
    for (name, value) in [
        ("From", from.clone()),
        ("To", addresses(message.to())),
        ("Cc", addresses(message.cc())),
        ("Date", message.date().map(|d| d.to_rfc3339())),
        ("Subject", message.subject().map(str::to_owned)),
    ] {
        if let Some(value) = value {
            text.push_str(&format!("{name}: {value}\n"));
        }
    }
    text.push('\n');
    if let Some(body) = message.body_text(0) {
        text.push_str(body.trim_end());
        text.push('\n');
    }
    let attachments: Vec<String> = message
        .attachments()
        .map(|part| {
            let name = part.attachment_name().unwrap_or("(no name)");
            let kind = part
                .content_type()
                .map_or("application/octet-stream".into(), |c| match c.subtype() {
                    Some(sub) => format!("{}/{sub}", c.ctype()),
                    None => c.ctype().to_owned(),
                });
            format!("- {name} ({kind}, {} bytes)", part.len())
        })
        .collect();
    if !attachments.is_empty() {
        text.push_str(&format!("\nAttachments:\n{}\n", attachments.join("\n")));
    }
    let mut x = Extracted {
        metadata: Metadata {
            title: message.subject().map(str::to_owned),
            author: from,
            creation_date: message.date().map(|d| d.to_rfc3339()),
            ..Metadata::default()
        },
        ..Extracted::text(vec![text])
    };
    x.truncated = plain::truncate_pages(&mut x.pages, limits.max_chars);
    Ok(x)
}
