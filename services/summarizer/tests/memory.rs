//! The summarizer's work on a text of tens of megabytes (the stage reads up
//! to `SUMMARY_MAX_TEXT_BYTES`, 50 MiB) costs little memory beyond the text
//! itself: sentences are split only up to the ranking cap, chunks only up
//! to `LLM_MAX_CHUNKS`. Measured as the growth of this process's peak
//! resident set (`VmHWM`, reset through `/proc/self/clear_refs`); one test
//! in this binary, so no other test's memory is counted.

use summarizer::chunk::{TooManyChunks, chunks_at_most};
use summarizer::{SummaryOptions, summarize};

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// How far the peak resident set rose above the resident set at the start
/// while `f` ran, in MiB.
fn peak_growth_mib(f: impl FnOnce()) -> u64 {
    // "5" resets VmHWM to the current resident set (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident set");
    let start = status_kib("VmRSS:");
    f();
    status_kib("VmHWM:").saturating_sub(start) >> 10
}

#[test]
fn a_long_text_is_split_only_up_to_the_caps() {
    // 51 MiB, three million short sentences in one paragraph.
    let text = "Word after word. ".repeat(3 << 20);

    let growth = peak_growth_mib(|| {
        let summary = summarize(&text, &SummaryOptions::default());
        assert_eq!(
            summary.as_deref().map(|s| s.starts_with("Word")),
            Some(true)
        );
    });
    // Holding the whole text as characters alone would be 204 MiB.
    assert!(
        growth < 32,
        "the extractive summary grew the peak by {growth} MiB"
    );

    let growth = peak_growth_mib(|| {
        assert_eq!(chunks_at_most(&text, 4000, 32), Err(TooManyChunks));
    });
    // Splitting it all would hold three million pieces and 13 000 chunks.
    assert!(growth < 32, "chunking grew the peak by {growth} MiB");
}
