//! pdf-parser's extraction on arbitrary bytes, in process, as a parse
//! worker runs it: no panic in our code, no abort, no hang. Memory is
//! bounded by the worker's limit in the service; here by libFuzzer's
//! `-rss_limit_mb` with inputs of at most `-max_len` bytes (scripts/fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdf_parser::{Limits, extract_pdf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// libFuzzer's panic hook aborts at every panic, caught or not. A panic
/// inside lopdf is caught by the extraction and answered as a damaged PDF
/// (lopdf is not this project's to fix), so only panics elsewhere abort.
fn abort_on_our_panics_only() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let aborting = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_lopdf = info
                .location()
                .is_some_and(|l| l.file().contains("/lopdf-"));
            if !in_lopdf {
                aborting(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    abort_on_our_panics_only();
    let limits = Limits {
        max_content_bytes: 16 << 20,
        deadline: Instant::now().checked_add(Duration::from_secs(5)),
        ..Limits::default()
    };
    if let Ok(x) = extract_pdf(data, &limits) {
        assert!(x.pages.len() <= x.page_count);
        let _ = (
            x.full_text(),
            x.preview(280),
            x.char_count(),
            x.word_count(),
        );
    }
});
