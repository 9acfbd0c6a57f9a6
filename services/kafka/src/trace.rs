//! W3C trace context carried in Kafka headers: each processing step reads the
//! `traceparent` of its input record and writes a child of it on its output,
//! so one trace id follows an artifact from upload to summary.

use rand::Rng;

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// `bytes` (at most 16) random bytes, never all zero (an all-zero id is
/// invalid).
fn random_id(bytes: usize) -> u128 {
    let mut rng = rand::rng();
    let bits = 8 * bytes as u32;
    let mask = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    loop {
        let n = rng.random::<u128>() & mask;
        if n != 0 {
            break n;
        }
    }
}

/// Appends the low `digits` hex digits of `n`, lowercase, zero-padded.
fn push_hex(out: &mut String, n: u128, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((n >> (4 * i)) & 0xf) as usize]));
    }
}

/// The trace id, parent id and flags of a valid version-00 value.
fn parts(value: &str) -> Option<(&str, &str, u8)> {
    let mut parts = value.trim().split('-');
    let (v, t, p, f) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || v != "00" || !is_hex(t, 32) || !is_hex(p, 16) || f.len() != 2 {
        return None;
    }
    Some((t, p, u8::from_str_radix(f, 16).ok()?))
}

/// The header value of the child of an incoming header value (same trace id
/// and flags, a new parent id), or of a new sampled root when there is none
/// or it is invalid. Built in one allocation: the runner makes one per
/// record.
pub fn child_value(value: Option<&str>) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    let flags = match value.and_then(parts) {
        Some((trace_id, _, flags)) => {
            out.push_str(trace_id);
            flags
        }
        None => {
            push_hex(&mut out, random_id(16), 32);
            1
        }
    };
    out.push('-');
    push_hex(&mut out, random_id(8), 16);
    out.push('-');
    push_hex(&mut out, u128::from(flags), 2);
    out
}

impl TraceParent {
    /// Parses a header value; `None` if it is not a valid version-00 value.
    pub fn parse(value: &str) -> Option<Self> {
        let (trace_id, parent_id, flags) = parts(value)?;
        Some(TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags,
        })
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_w3c_form() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(v).unwrap();
        assert_eq!(p.to_string(), v);
    }

    #[test]
    fn rejects_invalid_values() {
        for v in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(TraceParent::parse(v), None, "{v}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_parent() {
        let root = TraceParent::parse(&child_value(None)).expect("a valid root");
        let child = TraceParent::parse(&child_value(Some(&root.to_string()))).expect("valid");
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.parent_id, root.parent_id);
        let fresh = TraceParent::parse(&child_value(Some("garbage"))).expect("valid");
        assert_ne!(fresh.trace_id, root.trace_id);
    }

    #[test]
    fn a_child_value_is_the_child_in_header_form() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let child = TraceParent::parse(&child_value(Some(parent))).expect("valid");
        assert_eq!(child.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(child.parent_id, "00f067aa0ba902b7");
        assert_eq!(child.flags, 0, "flags carry over");
        for missing in [None, Some("garbage")] {
            let root = TraceParent::parse(&child_value(missing)).expect("valid root");
            assert_ne!(root.trace_id, child.trace_id);
            assert_eq!(root.flags, 1, "a new root is sampled");
        }
        // Ids are zero-padded to their full width.
        let mut s = String::new();
        push_hex(&mut s, 0xab, 16);
        assert_eq!(s, "00000000000000ab");
    }
}
