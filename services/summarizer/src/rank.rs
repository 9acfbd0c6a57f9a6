//! TextRank over a TF-IDF cosine-similarity graph of sentences.

use std::collections::{BTreeMap, HashMap};

/// Words that carry no topic.
const STOPWORDS: [&str; 64] = [
    "a", "an", "the", "and", "or", "but", "if", "then", "than", "of", "in", "on", "at", "to",
    "for", "from", "by", "with", "as", "is", "are", "was", "were", "be", "been", "being", "it",
    "its", "this", "that", "these", "those", "there", "here", "he", "she", "they", "we", "you",
    "i", "his", "her", "their", "our", "your", "my", "me", "him", "them", "us", "not", "no", "so",
    "do", "does", "did", "has", "have", "had", "will", "would", "can", "could", "into",
];

const DAMPING: f64 = 0.85;
const ITERATIONS: usize = 100;
const TOLERANCE: f64 = 1e-9;

fn terms(sentence: &str) -> BTreeMap<String, f64> {
    let mut tf = BTreeMap::new();
    for word in sentence.split(|c: char| !c.is_alphanumeric()) {
        let word = word.to_lowercase();
        if word.chars().count() < 2 || STOPWORDS.contains(&word.as_str()) {
            continue;
        }
        *tf.entry(word).or_insert(0.0) += 1.0;
    }
    tf
}

/// TextRank scores, one per sentence (higher is more central).
pub(crate) fn textrank(sentences: &[String]) -> Vec<f64> {
    let n = sentences.len();
    let tfs: Vec<BTreeMap<String, f64>> = sentences.iter().map(|s| terms(s)).collect();
    let mut df: BTreeMap<&str, f64> = BTreeMap::new();
    for tf in &tfs {
        for term in tf.keys() {
            *df.entry(term).or_insert(0.0) += 1.0;
        }
    }
    // Terms numbered in their sorted order: the sparse vectors stay sorted
    // (and their sums in the same order) while the n² comparisons below
    // compare numbers instead of strings. Smoothed IDF, so a term in every
    // sentence still weighs something.
    let terms: HashMap<&str, (u32, f64)> = df
        .iter()
        .enumerate()
        .map(|(id, (t, d))| (*t, (id as u32, 1.0 + ((1.0 + n as f64) / (1.0 + d)).ln())))
        .collect();
    let vectors: Vec<Vec<(u32, f64)>> = tfs
        .iter()
        .map(|tf| {
            tf.iter()
                .map(|(t, &f)| {
                    let (id, idf) = terms[t.as_str()];
                    (id, f * idf)
                })
                .collect()
        })
        .collect();
    let norms: Vec<f64> = vectors
        .iter()
        .map(|v| v.iter().map(|(_, w)| w * w).sum::<f64>().sqrt())
        .collect();

    let mut weights = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let sim = cosine(&vectors[i], &vectors[j], norms[i], norms[j]);
            weights[i][j] = sim;
            weights[j][i] = sim;
        }
    }
    let out_sum: Vec<f64> = weights.iter().map(|row| row.iter().sum()).collect();

    let mut scores = vec![1.0 / n as f64; n];
    for _ in 0..ITERATIONS {
        let mut next = vec![(1.0 - DAMPING) / n as f64; n];
        for (j, row) in weights.iter().enumerate() {
            if out_sum[j] == 0.0 {
                continue;
            }
            let share = DAMPING * scores[j] / out_sum[j];
            for (i, w) in row.iter().enumerate() {
                next[i] += share * w;
            }
        }
        let delta: f64 = next.iter().zip(&scores).map(|(a, b)| (a - b).abs()).sum();
        scores = next;
        if delta < TOLERANCE {
            break;
        }
    }
    scores
}

/// Cosine similarity of two sparse vectors sorted by term.
fn cosine(a: &[(u32, f64)], b: &[(u32, f64)], na: f64, nb: f64) -> f64 {
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    let (mut i, mut j, mut dot) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                dot += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    dot / (na * nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolated_sentence_scores_lowest() {
        let s: Vec<String> = [
            "red apples grow",
            "red apples taste sweet",
            "sweet red apples",
            "boats float",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let scores = textrank(&s);
        assert!(scores[3] < scores[0] && scores[3] < scores[1] && scores[3] < scores[2]);
    }
}
