//! Word recall and reading order of extracted text against a reference
//! extraction, the quality measures used against poppler's `pdftotext`.

use std::collections::HashMap;

/// Whether `c` is written without spaces between words (Han, kana,
/// Hangul): each such character counts as a word of its own.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF
        | 0xF900..=0xFAFF | 0xFF66..=0xFF9F | 0x20000..=0x2FFFF)
}

/// The words of a text for comparison, in order: maximal runs of
/// alphanumeric characters, lower-cased, each Han, kana or Hangul
/// character a word of its own.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() && !is_cjk(c) {
            word.extend(c.to_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if is_cjk(c) {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in words(text) {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

/// The share of the reference's words (as a multiset) that `ours` has too:
/// Σ min(ours(w), reference(w)) / Σ reference(w). 1.0 when the reference
/// has no words.
pub fn word_recall(ours: &str, reference: &str) -> f64 {
    let ours = counts(ours);
    let reference = counts(reference);
    let total: usize = reference.values().sum();
    if total == 0 {
        return 1.0;
    }
    let found: usize = reference
        .iter()
        .map(|(w, &n)| n.min(ours.get(w).copied().unwrap_or(0)))
        .sum();
    found as f64 / total as f64
}

/// Reading order of `ours` against `reference` as the parts of
/// 2·LCS / (|ours| + |reference|) over their [`words`], LCS being the
/// length of their longest common subsequence: returns (2·LCS, |ours| +
/// |reference|), so that pages can be summed before dividing. The ratio
/// is 1 for the same words in the same order, and drops both for words
/// missing or extra and for words out of order (two columns read across
/// keep about half).
pub fn order_parts(ours: &str, reference: &str) -> (usize, usize) {
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |w: String| {
        let next = ids.len() as u32;
        *ids.entry(w).or_insert(next)
    };
    let a: Vec<u32> = words(ours).into_iter().map(&mut intern).collect();
    let b: Vec<u32> = words(reference).into_iter().map(&mut intern).collect();
    (2 * lcs(&a, &b), a.len() + b.len())
}

/// 2·LCS / (|ours| + |reference|) of [`order_parts`]; 1.0 when neither
/// has words.
pub fn order_similarity(ours: &str, reference: &str) -> f64 {
    let (common, total) = order_parts(ours, reference);
    if total == 0 {
        1.0
    } else {
        common as f64 / total as f64
    }
}

/// Length of the longest common subsequence, in O(|a|·|b|) time and
/// O(|b|) space.
fn lcs(a: &[u32], b: &[u32]) -> usize {
    let mut row = vec![0u32; b.len() + 1];
    for &x in a {
        let mut diagonal = 0;
        for (j, &y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()] as usize
}

#[cfg(test)]
mod tests {
    use super::{order_similarity, word_recall, words};

    #[test]
    fn recall_counts_words_as_a_multiset() {
        assert_eq!(word_recall("a b c", "a b c"), 1.0);
        assert_eq!(word_recall("ab c", "a b c"), 1.0 / 3.0);
        assert_eq!(word_recall("A, b!", "a a b b"), 0.5);
        assert_eq!(word_recall("", ""), 1.0);
    }

    #[test]
    fn cjk_characters_are_words_of_their_own() {
        assert_eq!(
            words("日本語のPDF, x2"),
            ["日", "本", "語", "の", "pdf", "x2"]
        );
        assert_eq!(word_recall("日本", "日本語"), 2.0 / 3.0);
    }

    #[test]
    fn order_drops_for_words_out_of_order_as_for_missing_ones() {
        assert_eq!(order_similarity("a b c d", "a b c d"), 1.0);
        // Same words, two "columns" swapped: LCS 2 of 4.
        assert_eq!(order_similarity("c d a b", "a b c d"), 0.5);
        // Read across two columns line by line: a1 b1 a2 b2 against a1 a2 b1 b2.
        assert_eq!(order_similarity("a1 b1 a2 b2", "a1 a2 b1 b2"), 0.75);
        // A missing word: 2·3 / (3 + 4).
        assert_eq!(order_similarity("a b d", "a b c d"), 6.0 / 7.0);
        assert_eq!(order_similarity("", "a"), 0.0);
        assert_eq!(order_similarity("", ""), 1.0);
    }
}
