//! TextRank over a TF-IDF cosine-similarity graph of sentences.

use crate::DeadlinePassed;
use std::collections::HashMap;
use std::time::Instant;

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

/// Lower-cases `raw` into `word`.
fn lower(raw: &str, word: &mut String) {
    word.clear();
    if raw.is_ascii() {
        word.push_str(raw);
        word.make_ascii_lowercase();
    } else {
        word.push_str(&raw.to_lowercase());
    }
}

/// Whether a lower-cased word is a term: not a stopword (all of which are
/// at most five bytes long), at least two characters.
fn is_term(word: &str) -> bool {
    word.chars().nth(1).is_some() && !(word.len() <= 5 && STOPWORDS.contains(&word))
}

/// Whether `deadline` is past; checked once per term, row and iteration of
/// the quadratic steps (each at most a few million operations).
fn check(deadline: Option<Instant>) -> Result<(), DeadlinePassed> {
    match deadline {
        Some(d) if Instant::now() >= d => Err(DeadlinePassed),
        _ => Ok(()),
    }
}

/// TextRank scores, one per sentence (higher is more central), or
/// [`DeadlinePassed`] once `deadline` is past.
pub(crate) fn textrank(
    sentences: &[String],
    deadline: Option<Instant>,
) -> Result<Vec<f64>, DeadlinePassed> {
    check(deadline)?;
    let n = sentences.len();
    // Each sentence's terms, numbered as first seen in the text.
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut word = String::new();
    let mut seen: Vec<Vec<u32>> = Vec::with_capacity(n);
    for sentence in sentences {
        let mut terms = Vec::new();
        for raw in sentence.split(|c: char| !c.is_alphanumeric()) {
            lower(raw, &mut word);
            if !is_term(&word) {
                continue;
            }
            let id = match ids.get(word.as_str()) {
                Some(&id) => id,
                None => {
                    let id = ids.len() as u32;
                    ids.insert(word.clone(), id);
                    id
                }
            };
            terms.push(id);
        }
        seen.push(terms);
    }
    // Terms renumbered in their sorted order: the sparse vectors are sorted
    // by term, so every sum below runs in the same order whatever the text
    // looked like, and the comparisons are of numbers, not strings.
    let mut sorted: Vec<(&str, u32)> = ids.iter().map(|(t, &id)| (t.as_str(), id)).collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut rank = vec![0u32; sorted.len()];
    for (r, &(_, id)) in sorted.iter().enumerate() {
        rank[id as usize] = r as u32;
    }
    // Term frequencies per sentence and document frequencies per term.
    let mut df = vec![0.0f64; sorted.len()];
    let tfs: Vec<Vec<(u32, f64)>> = seen
        .into_iter()
        .map(|terms| {
            let mut terms: Vec<u32> = terms.into_iter().map(|id| rank[id as usize]).collect();
            terms.sort_unstable();
            let mut tf: Vec<(u32, f64)> = Vec::new();
            for id in terms {
                match tf.last_mut() {
                    Some((last, count)) if *last == id => *count += 1.0,
                    _ => {
                        df[id as usize] += 1.0;
                        tf.push((id, 1.0));
                    }
                }
            }
            tf
        })
        .collect();
    // Smoothed IDF, so a term in every sentence still weighs something.
    let idf: Vec<f64> = df
        .iter()
        .map(|d| 1.0 + ((1.0 + n as f64) / (1.0 + d)).ln())
        .collect();
    let vectors: Vec<Vec<(u32, f64)>> = tfs
        .into_iter()
        .map(|tf| {
            tf.into_iter()
                .map(|(id, f)| (id, f * idf[id as usize]))
                .collect()
        })
        .collect();
    let norms: Vec<f64> = vectors
        .iter()
        .map(|v| v.iter().map(|(_, w)| w * w).sum::<f64>().sqrt())
        .collect();

    // Dot products through the sentences of each term, terms in ascending
    // order: each pair's products are summed in the order a merge of the
    // two sorted vectors would sum them, but only pairs that share a term
    // cost anything.
    let mut postings: Vec<Vec<(usize, f64)>> = vec![Vec::new(); idf.len()];
    for (i, vector) in vectors.iter().enumerate() {
        for &(id, w) in vector {
            postings[id as usize].push((i, w));
        }
    }
    let mut weights = vec![vec![0.0; n]; n];
    for holders in &postings {
        check(deadline)?;
        for (k, &(i, wi)) in holders.iter().enumerate() {
            for &(j, wj) in &holders[k + 1..] {
                weights[i][j] += wi * wj;
            }
        }
    }
    for i in 0..n {
        check(deadline)?;
        for j in i + 1..n {
            let sim = if norms[i] == 0.0 || norms[j] == 0.0 {
                0.0
            } else {
                weights[i][j] / (norms[i] * norms[j])
            };
            weights[i][j] = sim;
            weights[j][i] = sim;
        }
    }
    let out_sum: Vec<f64> = weights.iter().map(|row| row.iter().sum()).collect();

    let mut scores = vec![1.0 / n as f64; n];
    for _ in 0..ITERATIONS {
        check(deadline)?;
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
    Ok(scores)
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
        let scores = textrank(&s, None).unwrap();
        assert!(scores[3] < scores[0] && scores[3] < scores[1] && scores[3] < scores[2]);
    }
}
