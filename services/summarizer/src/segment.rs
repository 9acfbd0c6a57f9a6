//! Sentence segmentation.
//!
//! A sentence ends at `.`, `!` or `?` (with any closing quotes or brackets)
//! followed by whitespace and then something that can start a sentence, or at
//! a paragraph break (a blank line or form feed). A period does not end a
//! sentence after a known abbreviation (`e.g.`, `Dr.`, `etc.` …), after a
//! single capital letter (an initial), or between digits (`3.14`, which has
//! no whitespace after the period anyway).

/// Abbreviations (lower case, without the final period) after which a period
/// does not end a sentence.
const ABBREVIATIONS: [&str; 30] = [
    "e.g", "i.e", "cf", "etc", "vs", "al", "dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st", "mt",
    "no", "nos", "fig", "figs", "eq", "approx", "inc", "ltd", "co", "corp", "dept", "univ", "vol",
    "pp", "p",
];

/// Splits `text` into sentences, each trimmed and with inner runs of
/// whitespace collapsed to one space.
pub fn sentences(text: &str) -> Vec<String> {
    Sentences::new(text).collect()
}

/// The sentences of a text, as [`sentences`] gives them, found as they are
/// asked for: taking the first `n` reads the text only up to the `n`-th
/// sentence's end (and the whitespace after it).
pub struct Sentences<'a> {
    text: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    current: String,
}

impl<'a> Sentences<'a> {
    /// The sentences of `text`.
    pub fn new(text: &'a str) -> Self {
        Sentences {
            text,
            chars: text.char_indices().peekable(),
            current: String::new(),
        }
    }
}

impl Iterator for Sentences<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        while let Some((i, c)) = self.chars.next() {
            if c == '\u{c}' || (c == '\n' && blank_line_follows(&self.text[i + 1..])) {
                if let Some(sentence) = take(&mut self.current) {
                    return Some(sentence);
                }
                continue;
            }
            self.current.push(c);
            if matches!(c, '.' | '!' | '?') {
                let mut end = i + 1;
                // Closing quotes and brackets belong to the sentence.
                while let Some(&(j, n)) = self.chars.peek() {
                    if matches!(n, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
                        || (n == '.' && c == '.')
                    {
                        self.current.push(n);
                        end = j + n.len_utf8();
                        self.chars.next();
                    } else {
                        break;
                    }
                }
                if ends_sentence(&self.text[end..], &self.current, c)
                    && let Some(sentence) = take(&mut self.current)
                {
                    return Some(sentence);
                }
            }
        }
        take(&mut self.current)
    }
}

/// Whether a line break followed by `rest` is followed by a blank line:
/// only whitespace up to the next line break.
fn blank_line_follows(rest: &str) -> bool {
    for c in rest.chars() {
        if c == '\n' {
            return true;
        }
        if !c.is_whitespace() {
            return false;
        }
    }
    false
}

/// Whether the mark `mark` ending `current`, followed by `rest`, ends a
/// sentence.
fn ends_sentence(rest: &str, current: &str, mark: char) -> bool {
    // Must be followed by whitespace (or the end), then a sentence start.
    let Some(next) = rest.chars().next() else {
        return true;
    };
    if !next.is_whitespace() {
        return false;
    }
    let start = rest.chars().find(|c| !c.is_whitespace());
    if let Some(s) = start
        && !(s.is_uppercase() || s.is_numeric() || "\"'“‘([¿¡".contains(s))
    {
        return false;
    }
    if mark != '.' {
        return true;
    }
    let word = current
        .trim_end_matches(|c: char| !c.is_alphanumeric())
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or("")
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    let initial = word.chars().count() == 1 && word.chars().all(char::is_alphabetic);
    !(initial || ABBREVIATIONS.contains(&word.as_str()))
}

/// The sentence collected in `current`, whitespace collapsed, if it has a
/// letter or digit; `current` is emptied either way.
fn take(current: &mut String) -> Option<String> {
    let sentence = current.split_whitespace().collect::<Vec<_>>().join(" ");
    current.clear();
    sentence
        .chars()
        .any(char::is_alphanumeric)
        .then_some(sentence)
}

#[cfg(test)]
mod tests {
    use super::{Sentences, sentences};

    #[test]
    fn abbreviations_initials_and_decimals_do_not_split() {
        let s = sentences(
            "Dr. Smith measured 3.14 units, e.g. in Fig. 2. J. R. R. Tolkien wrote books! \
             Did he? Yes.",
        );
        assert_eq!(
            s,
            vec![
                "Dr. Smith measured 3.14 units, e.g. in Fig. 2.",
                "J. R. R. Tolkien wrote books!",
                "Did he?",
                "Yes."
            ]
        );
    }

    #[test]
    fn lowercase_continuation_does_not_split() {
        assert_eq!(
            sentences("It costs approx. five euros."),
            vec!["It costs approx. five euros."]
        );
        assert_eq!(
            sentences("See the U.S. army. Then go."),
            vec!["See the U.S. army.", "Then go."]
        );
    }

    #[test]
    fn paragraph_breaks_and_quotes() {
        let s = sentences("A heading\n\nHe said \"stop.\" Then left.\u{c}Next page");
        assert_eq!(
            s,
            vec!["A heading", "He said \"stop.\"", "Then left.", "Next page"]
        );
    }

    #[test]
    fn whitespace_only_has_no_sentences() {
        assert!(sentences("  \n\n ").is_empty());
        assert!(sentences("... ---").is_empty());
    }

    #[test]
    fn taking_the_first_sentences_gives_what_splitting_all_gives() {
        let text = "Dr. Who came. Then \"left!\" And?\n\nA new one\u{c}page. x. Y... Z";
        let all = sentences(text);
        assert_eq!(all.len(), 5, "{all:?}");
        for n in 0..=all.len() {
            let first: Vec<String> = Sentences::new(text).take(n).collect();
            assert_eq!(first, all[..n]);
        }
    }
}
