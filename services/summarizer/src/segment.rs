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
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\u{c}' || (c == '\n' && blank_line_follows(&chars, i)) {
            push(&mut out, &mut current);
            i += 1;
            continue;
        }
        current.push(c);
        if matches!(c, '.' | '!' | '?') {
            // Closing quotes and brackets belong to the sentence.
            while let Some(&n) = chars.get(i + 1) {
                if matches!(n, '"' | '\'' | ')' | ']' | '”' | '’' | '»') || (n == '.' && c == '.')
                {
                    current.push(n);
                    i += 1;
                } else {
                    break;
                }
            }
            if ends_sentence(&chars, i, &current, c) {
                push(&mut out, &mut current);
            }
        }
        i += 1;
    }
    push(&mut out, &mut current);
    out
}

/// Whether the line break at `i` is followed by a blank line.
fn blank_line_follows(chars: &[char], i: usize) -> bool {
    chars[i + 1..]
        .iter()
        .take_while(|&&c| c != '\n')
        .all(|c| c.is_whitespace())
        && chars[i + 1..].contains(&'\n')
}

fn ends_sentence(chars: &[char], i: usize, current: &str, mark: char) -> bool {
    // Must be followed by whitespace (or the end), then a sentence start.
    let Some(&next) = chars.get(i + 1) else {
        return true;
    };
    if !next.is_whitespace() {
        return false;
    }
    let start = chars[i + 1..].iter().find(|c| !c.is_whitespace());
    if let Some(&s) = start
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

fn push(out: &mut Vec<String>, current: &mut String) {
    let sentence = current.split_whitespace().collect::<Vec<_>>().join(" ");
    if sentence.chars().any(char::is_alphanumeric) {
        out.push(sentence);
    }
    current.clear();
}

#[cfg(test)]
mod tests {
    use super::sentences;

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
}
