//! mime-detector's detection on arbitrary leading bytes and declared
//! types. Input: the declared type up to the first line feed (none when
//! empty), then the file's head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mime_detector::{SNIFF_BYTES, detect, types_agree};

fuzz_target!(|data: &[u8]| {
    let (declared, head) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let declared = String::from_utf8_lossy(declared);
    let declared = (!declared.is_empty()).then_some(declared.as_ref());
    let head = &head[..head.len().min(SNIFF_BYTES)];
    let d = detect(head, declared);
    assert!(!d.detected.is_empty());
    assert!(!d.method.is_empty());
    assert_eq!(
        d.agrees,
        declared.is_some_and(|declared| types_agree(declared, &d.detected))
    );
});
