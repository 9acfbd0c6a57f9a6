//! The summarizer stage's logic: the built-in extractive summarizer (this
//! module), and the optional OpenAI-compatible backend ([`llm`], with its
//! text [`chunk`]ing and [`config`]).
//!
//! The extractive summarizer: [`summarize`] splits a text into sentences ([`sentences`]), scores them by
//! TextRank centrality over a TF-IDF cosine-similarity graph, and returns the
//! best-scoring sentences, within [`SummaryOptions`] bounds, in their
//! original order. Deterministic: equal scores are broken by position, and no
//! randomness or hashing order is involved.
//!
//! The extractive summarizer is pure logic: no I/O, no async. Its work is
//! bounded by the input (the sentences ranked) and, with
//! [`summarize_until`], by a deadline checked as it goes, so that a
//! blocking thread does not outlive the attempt it was started for.

pub mod budget;
pub mod chunk;
pub mod config;
pub mod gate;
pub mod llm;
pub mod llm_metrics;
mod rank;
mod segment;
pub mod stage;

pub use segment::{Sentences, sentences};
use std::time::Instant;

/// Bounds of a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryOptions {
    /// At most this many sentences (at least one is always returned for a
    /// non-empty text). Default 3.
    pub max_sentences: usize,
    /// At most this many characters (Unicode scalar values) in the summary.
    /// A single sentence longer than this is cut at a word boundary and ends
    /// with `…`. Default 600.
    pub max_chars: usize,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions {
            max_sentences: 3,
            max_chars: 600,
        }
    }
}

/// Only the first this-many sentences are ranked, bounding the quadratic
/// similarity graph (2 000 sentences is about 40 pages of prose).
pub const MAX_RANKED_SENTENCES: usize = 2000;

/// Summarizes `text` by extracting its most central sentences, or `None`
/// when the text is empty or only whitespace.
///
/// Sentences are joined with a single space, in the order they appear in
/// the text. The result never exceeds `opts.max_chars` characters nor
/// `opts.max_sentences` sentences.
pub fn summarize(text: &str, opts: &SummaryOptions) -> Option<String> {
    summarize_within(text, opts, None).unwrap_or_default()
}

/// The summarizing work passed its deadline and stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePassed;

/// [`summarize`], stopped with [`DeadlinePassed`] once `deadline` is past
/// (checked after segmenting, and often while ranking).
pub fn summarize_until(
    text: &str,
    opts: &SummaryOptions,
    deadline: Instant,
) -> Result<Option<String>, DeadlinePassed> {
    summarize_within(text, opts, Some(deadline))
}

fn summarize_within(
    text: &str,
    opts: &SummaryOptions,
    deadline: Option<Instant>,
) -> Result<Option<String>, DeadlinePassed> {
    if opts.max_chars == 0 {
        return Ok(None);
    }
    // The text may be tens of megabytes: only the ranked sentences are split.
    let all: Vec<String> = Sentences::new(text).take(MAX_RANKED_SENTENCES).collect();
    if all.is_empty() {
        return Ok(None);
    }
    let scores = rank::textrank(&all, deadline)?;
    let mut order: Vec<usize> = (0..all.len()).collect();
    // Best score first; equal scores: earlier sentence first.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));

    let max_sentences = opts.max_sentences.max(1);
    let mut picked: Vec<usize> = Vec::new();
    let mut chars = 0;
    for &i in &order {
        if picked.len() == max_sentences {
            break;
        }
        let len = all[i].chars().count() + usize::from(!picked.is_empty());
        if chars + len <= opts.max_chars {
            picked.push(i);
            chars += len;
        }
    }
    if picked.is_empty() {
        return Ok(Some(cut(&all[order[0]], opts.max_chars)));
    }
    picked.sort_unstable();
    Ok(Some(
        picked
            .iter()
            .map(|&i| all[i].as_str())
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

/// Bounds a summary written by someone else (the LLM backend) as the
/// extractive summary is bounded: runs of whitespace become one space; a
/// summary over `max_chars` characters keeps its leading sentences that fit,
/// or, when even the first does not, is cut at a word boundary and ends with
/// `…`. `None` when nothing but whitespace is left (or `max_chars` is 0).
pub fn bound_summary(summary: &str, max_chars: usize) -> Option<String> {
    let flat = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() || max_chars == 0 {
        return None;
    }
    if flat.chars().count() <= max_chars {
        return Some(flat);
    }
    let mut out = String::new();
    let mut chars = 0;
    for sentence in Sentences::new(&flat) {
        let len = sentence.chars().count() + usize::from(!out.is_empty());
        if chars + len > max_chars {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&sentence);
        chars += len;
    }
    if out.is_empty() {
        out = cut(&flat, max_chars);
    }
    Some(out)
}

/// Cuts `sentence` to at most `max_chars` characters, at a word boundary
/// when there is one, ending with `…`.
fn cut(sentence: &str, max_chars: usize) -> String {
    let keep = max_chars.saturating_sub(1);
    let prefix: String = sentence.chars().take(keep).collect();
    let at_word = match prefix.rfind(char::is_whitespace) {
        Some(i) if i > 0 => prefix[..i].trim_end().to_string(),
        _ => prefix,
    };
    format!("{at_word}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Solar panels convert sunlight into electricity. \
        The weather was pleasant on Tuesday. \
        Modern solar panels convert more sunlight into electricity than older panels. \
        My cat likes to sleep on the sofa. \
        Electricity from solar panels is cheaper when panels convert sunlight efficiently. \
        The bakery sells bread.";

    #[test]
    fn empty_or_whitespace_is_none() {
        assert_eq!(summarize("", &SummaryOptions::default()), None);
        assert_eq!(summarize(" \n\t \u{c} ", &SummaryOptions::default()), None);
    }

    #[test]
    fn picks_central_sentences_in_original_order() {
        let opts = SummaryOptions {
            max_sentences: 2,
            max_chars: 1000,
        };
        let summary = summarize(TEXT, &opts).unwrap();
        let picked = sentences(&summary);
        assert_eq!(picked.len(), 2, "{summary}");
        for sentence in &picked {
            assert!(
                sentence.contains("solar") || sentence.contains("Solar"),
                "{summary}"
            );
        }
        let all = sentences(TEXT);
        let positions: Vec<usize> = picked
            .iter()
            .map(|p| all.iter().position(|s| s == p).unwrap())
            .collect();
        assert!(
            positions[0] < positions[1],
            "original order kept: {summary}"
        );
    }

    #[test]
    fn deterministic() {
        let opts = SummaryOptions::default();
        let first = summarize(TEXT, &opts);
        for _ in 0..20 {
            assert_eq!(summarize(TEXT, &opts), first);
        }
    }

    #[test]
    fn bounds_respected() {
        for max_sentences in 1..5 {
            for max_chars in [1, 10, 50, 80, 120, 300, 10_000] {
                let opts = SummaryOptions {
                    max_sentences,
                    max_chars,
                };
                let s = summarize(TEXT, &opts).unwrap();
                assert!(s.chars().count() <= max_chars, "{max_chars}: {s}");
                assert!(sentences(&s).len() <= max_sentences, "{max_sentences}: {s}");
            }
        }
    }

    #[test]
    fn long_single_sentence_is_cut_at_a_word() {
        let opts = SummaryOptions {
            max_sentences: 1,
            max_chars: 20,
        };
        let s = summarize("A rather long sentence without any full stop in it", &opts).unwrap();
        assert_eq!(s, "A rather long…");
    }

    #[test]
    fn bound_summary_flattens_and_keeps_leading_sentences() {
        assert_eq!(bound_summary(" \n\t ", 100), None);
        assert_eq!(bound_summary("Some text.", 0), None);
        assert_eq!(
            bound_summary("  One  line.\n\nTwo\tlines. ", 100).as_deref(),
            Some("One line. Two lines.")
        );
        assert_eq!(
            bound_summary("First one. Second one. Third one.", 25).as_deref(),
            Some("First one. Second one.")
        );
        assert_eq!(
            bound_summary("A first sentence that is far too long. Short.", 20).as_deref(),
            Some("A first sentence…")
        );
        for max in 1..60 {
            let s = bound_summary(TEXT, max).unwrap();
            assert!(s.chars().count() <= max, "{max}: {s}");
        }
    }

    #[test]
    fn a_passed_deadline_stops_the_work() {
        let opts = SummaryOptions::default();
        let passed = Instant::now();
        assert_eq!(summarize_until(TEXT, &opts, passed), Err(DeadlinePassed));
        let later = Instant::now() + std::time::Duration::from_secs(3600);
        assert_eq!(
            summarize_until(TEXT, &opts, later),
            Ok(summarize(TEXT, &opts))
        );
        assert_eq!(summarize_until(" ", &opts, passed), Ok(None));
    }

    #[test]
    fn ties_break_by_position() {
        // Identical sentences score the same: the first ones win.
        let text = "Alpha beta gamma. Alpha beta gamma. Alpha beta gamma.";
        let opts = SummaryOptions {
            max_sentences: 1,
            max_chars: 100,
        };
        assert_eq!(summarize(text, &opts).unwrap(), "Alpha beta gamma.");
    }
}
