//! Splitting a long text into chunks for the LLM backend's map step.
//!
//! A chunk holds at most `max_chars` characters (Unicode scalar values). The
//! text is cut at the coarsest boundary that makes the pieces fit: between
//! paragraphs (a blank line or a form feed), then between sentences (after
//! `.`, `!` or `?` and any closing quotes or brackets, before whitespace),
//! then between words, and only for a single word longer than a chunk inside
//! the word. Consecutive pieces are then packed greedily into chunks.
//!
//! Nothing but whitespace is lost: pieces of different paragraphs are joined
//! with a blank line, pieces of one paragraph with a space, the parts of a
//! cut word with nothing, and whitespace inside a piece is kept as it is.
//!
//! Pure logic: no I/O, no async.

/// What joins a piece to the one before it in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// A new paragraph: a blank line.
    Paragraph,
    /// Within a paragraph: one space.
    Space,
    /// The continuation of a word cut in two: nothing.
    Nothing,
}

impl Join {
    fn as_str(self) -> &'static str {
        match self {
            Join::Paragraph => "\n\n",
            Join::Space => " ",
            Join::Nothing => "",
        }
    }
}

/// A piece of the text that fits in a chunk, with its length in characters.
struct Piece<'a> {
    join: Join,
    text: &'a str,
    chars: usize,
}

/// More chunks than allowed: the text was not split further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyChunks;

/// Splits `text` into chunks of at most `max_chars` characters (at least 1
/// is assumed), cut at paragraph, then sentence, then word boundaries.
/// An empty or whitespace-only text has no chunks.
pub fn chunks(text: &str, max_chars: usize) -> Vec<String> {
    chunks_at_most(text, max_chars, usize::MAX).unwrap_or_default()
}

/// [`chunks`], or [`TooManyChunks`] as soon as there would be more than
/// `max_chunks`: the rest of the text is not looked at, so the work and
/// memory are bounded by `max_chunks` chunks whatever the text's length.
pub fn chunks_at_most(
    text: &str,
    max_chars: usize,
    max_chunks: usize,
) -> Result<Vec<String>, TooManyChunks> {
    let mut packer = Packer {
        max_chars: max_chars.max(1),
        max_chunks,
        out: Vec::new(),
        current: String::new(),
        current_chars: 0,
    };
    for_each_paragraph(text, |p| split_paragraph(p, &mut packer))?;
    packer.finish()
}

/// Calls `f` with each paragraph of `text`, trimmed, skipping empty ones:
/// a paragraph ends at a form feed or at a line that is empty or only
/// whitespace.
fn for_each_paragraph<'a, E>(
    text: &'a str,
    mut f: impl FnMut(&'a str) -> Result<(), E>,
) -> Result<(), E> {
    let mut trimmed = |s: &'a str| {
        let s = s.trim();
        if s.is_empty() { Ok(()) } else { f(s) }
    };
    for page in text.split('\u{c}') {
        let mut start = 0;
        let mut pos = 0;
        for line in page.split_inclusive('\n') {
            if line.trim().is_empty() {
                trimmed(&page[start..pos])?;
                start = pos + line.len();
            }
            pos += line.len();
        }
        trimmed(&page[start..])?;
    }
    Ok(())
}

/// Adds `paragraph` as pieces that each fit in a chunk: whole if it fits,
/// else by sentences, words, and as a last resort parts of words.
fn split_paragraph(paragraph: &str, packer: &mut Packer) -> Result<(), TooManyChunks> {
    let max_chars = packer.max_chars;
    let chars = paragraph.chars().count();
    if chars <= max_chars {
        return packer.add(Piece {
            join: Join::Paragraph,
            text: paragraph,
            chars,
        });
    }
    let mut first_sentence = true;
    for_each_sentence(paragraph, |sentence| {
        let join = if first_sentence {
            Join::Paragraph
        } else {
            Join::Space
        };
        first_sentence = false;
        let chars = sentence.chars().count();
        if chars <= max_chars {
            return packer.add(Piece {
                join,
                text: sentence,
                chars,
            });
        }
        for (j, word) in sentence.split_whitespace().enumerate() {
            let join = if j == 0 { join } else { Join::Space };
            let chars = word.chars().count();
            if chars <= max_chars {
                packer.add(Piece {
                    join,
                    text: word,
                    chars,
                })?;
                continue;
            }
            for (k, part) in cut_word(word, max_chars).enumerate() {
                packer.add(Piece {
                    join: if k == 0 { join } else { Join::Nothing },
                    text: part,
                    chars: part.chars().count(),
                })?;
            }
        }
        Ok(())
    })
}

/// Characters that close a sentence after its final mark.
const CLOSERS: &[char] = &['"', '\'', ')', ']', '”', '’', '»'];

/// Calls `f` with each sentence of a paragraph, trimmed: a sentence ends
/// after `.`, `!` or `?` (and any further marks and closing quotes or
/// brackets) followed by whitespace. Abbreviations may split a sentence in
/// two; that only moves a possible chunk boundary, since pieces are joined
/// again when packed.
fn for_each_sentence<'a, E>(
    paragraph: &'a str,
    mut f: impl FnMut(&'a str) -> Result<(), E>,
) -> Result<(), E> {
    let mut trimmed = |s: &'a str| {
        let s = s.trim();
        if s.is_empty() { Ok(()) } else { f(s) }
    };
    let mut start = 0;
    let mut it = paragraph.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let mut end = i + c.len_utf8();
        while let Some(&(j, n)) = it.peek() {
            if CLOSERS.contains(&n) || matches!(n, '.' | '!' | '?') {
                end = j + n.len_utf8();
                it.next();
            } else {
                break;
            }
        }
        if it.peek().is_some_and(|&(_, n)| n.is_whitespace()) {
            trimmed(&paragraph[start..end])?;
            start = end;
        }
    }
    trimmed(&paragraph[start..])
}

/// `word` in consecutive parts of `max_chars` characters (the last shorter).
fn cut_word(word: &str, max_chars: usize) -> impl Iterator<Item = &str> {
    let mut rest = word;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .char_indices()
            .nth(max_chars)
            .map_or(rest.len(), |(i, _)| i);
        let (part, tail) = rest.split_at(end);
        rest = tail;
        Some(part)
    })
}

/// Packs consecutive pieces greedily into chunks of at most `max_chars`,
/// refusing to start chunk number `max_chunks + 1`.
struct Packer {
    max_chars: usize,
    max_chunks: usize,
    out: Vec<String>,
    current: String,
    current_chars: usize,
}

impl Packer {
    fn add(&mut self, piece: Piece<'_>) -> Result<(), TooManyChunks> {
        if !self.current.is_empty() {
            let join = piece.join.as_str();
            if self.current_chars + join.len() + piece.chars <= self.max_chars {
                self.current.push_str(join);
                self.current.push_str(piece.text);
                self.current_chars += join.len() + piece.chars;
                return Ok(());
            }
            self.out.push(std::mem::take(&mut self.current));
        }
        if self.out.len() >= self.max_chunks {
            return Err(TooManyChunks);
        }
        self.current.push_str(piece.text);
        self.current_chars = piece.chars;
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<String>, TooManyChunks> {
        if !self.current.is_empty() {
            self.out.push(self.current);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::{TooManyChunks, chunks, chunks_at_most};

    fn non_whitespace(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    fn check_invariants(text: &str, max: usize) -> Vec<String> {
        let out = chunks(text, max);
        for c in &out {
            let n = c.chars().count();
            assert!(n <= max, "chunk of {n} > {max}: {c:?}");
            assert!(!c.trim().is_empty(), "empty chunk");
            assert_eq!(c.trim(), c, "chunk not trimmed: {c:?}");
        }
        assert_eq!(
            non_whitespace(&out.concat()),
            non_whitespace(text),
            "text lost or reordered"
        );
        out
    }

    #[test]
    fn empty_and_whitespace_have_no_chunks() {
        assert!(chunks("", 10).is_empty());
        assert!(chunks(" \n\n\t\u{c} \n", 10).is_empty());
    }

    #[test]
    fn short_text_is_one_chunk_unchanged() {
        let text = "First paragraph.\nSame paragraph.\n\nSecond one.";
        assert_eq!(check_invariants(text, 1000), vec![text.to_owned()]);
    }

    #[test]
    fn cuts_between_paragraphs_when_they_fit() {
        let paragraphs: Vec<String> = (0..12)
            .map(|i| format!("Paragraph {i} has a few words. It ends here."))
            .collect();
        let text = paragraphs.join("\n\n");
        let out = check_invariants(&text, 120);
        assert!(out.len() > 1);
        for c in &out {
            // Every chunk is whole paragraphs.
            for p in c.split("\n\n") {
                assert!(
                    paragraphs.iter().any(|q| q == p),
                    "{p:?} is not a paragraph"
                );
            }
        }
        // Greedy: two paragraphs (45 + 2 + 45 chars) fit in 120, three do not.
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn form_feeds_and_whitespace_lines_end_paragraphs() {
        let text = "Page one text.\u{c}Page two text.\n   \t\nAfter a blank line.";
        let out = check_invariants(text, 20);
        assert_eq!(
            out,
            vec!["Page one text.", "Page two text.", "After a blank line."]
        );
    }

    #[test]
    fn long_paragraph_is_cut_between_sentences() {
        let text = (0..40)
            .map(|i| format!("Sentence number {i} says something \"quoted.\""))
            .collect::<Vec<_>>()
            .join(" ");
        let out = check_invariants(&text, 200);
        assert!(out.len() > 1);
        for c in &out {
            assert!(c.starts_with("Sentence number"), "{c:?}");
            assert!(c.ends_with(".\""), "{c:?}");
        }
    }

    #[test]
    fn huge_sentence_is_cut_between_words() {
        let text = (0..500)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let out = check_invariants(&text, 100);
        let words: Vec<&str> = text.split(' ').collect();
        for c in &out {
            for w in c.split(' ') {
                assert!(words.contains(&w), "word cut: {w:?}");
            }
        }
        // Greedy packing wastes less than one word per chunk.
        let total: usize = out.iter().map(|c| c.chars().count()).sum();
        assert!(out.len() <= total / 90 + 1, "{} chunks", out.len());
    }

    #[test]
    fn single_huge_word_is_cut_into_full_parts() {
        let text = "é".repeat(1050);
        let out = check_invariants(&text, 100);
        assert_eq!(out.len(), 11);
        assert!(out[..10].iter().all(|c| c.chars().count() == 100));
        assert_eq!(out[10].chars().count(), 50);
        assert_eq!(out.concat(), text);
    }

    #[test]
    fn mixed_text_keeps_order_and_bounds() {
        let mut text = String::new();
        for i in 0..30 {
            text.push_str(&format!("Short paragraph {i}.\n\n"));
            text.push_str(&"Long sentence with many words. ".repeat(i % 7 + 1));
            text.push_str(&"x".repeat(i * 13));
            text.push_str("\n\n\n");
        }
        for max in [1, 2, 7, 31, 64, 100, 333, 5000] {
            check_invariants(&text, max);
        }
    }

    #[test]
    fn zero_is_treated_as_one() {
        assert_eq!(chunks("ab", 0), vec!["a", "b"]);
    }

    #[test]
    fn at_most_stops_at_the_cap() {
        let text = "One sentence here. ".repeat(100);
        let all = chunks(&text, 40);
        assert_eq!(chunks_at_most(&text, 40, all.len()), Ok(all.clone()));
        assert_eq!(chunks_at_most(&text, 40, all.len() - 1), Err(TooManyChunks));
        assert_eq!(chunks_at_most("", 40, 0), Ok(vec![]));
        assert_eq!(chunks_at_most("a", 40, 0), Err(TooManyChunks));
    }
}
