//! Word recall of extracted text against a reference extraction, the
//! quality measure used against poppler's `pdftotext`.

use std::collections::HashMap;

/// The words of a text for comparison: maximal runs of alphanumeric
/// characters, lower-cased.
fn words(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

/// The share of the reference's words (as a multiset) that `ours` has too:
/// Σ min(ours(w), reference(w)) / Σ reference(w). 1.0 when the reference
/// has no words.
pub fn word_recall(ours: &str, reference: &str) -> f64 {
    let ours = words(ours);
    let reference = words(reference);
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

#[cfg(test)]
mod tests {
    use super::word_recall;

    #[test]
    fn recall_counts_words_as_a_multiset() {
        assert_eq!(word_recall("a b c", "a b c"), 1.0);
        assert_eq!(word_recall("ab c", "a b c"), 1.0 / 3.0);
        assert_eq!(word_recall("A, b!", "a a b b"), 0.5);
        assert_eq!(word_recall("", ""), 1.0);
    }
}
