//! W3C trace context (`traceparent`): parsing, and new ids for outgoing calls and published
//! events.

use rand::Rng;

/// A W3C traceparent for the outgoing call: the caller's trace id (or a new one) with a new
/// span id, keeping the caller's flags.
pub fn child_traceparent(incoming: Option<&str>) -> String {
    let bytes = child_traceparent_bytes(incoming);
    // Only ASCII hex digits and dashes are written.
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `child_traceparent` written into a fixed array (no allocation, for the invocation path).
pub fn child_traceparent_bytes(incoming: Option<&str>) -> [u8; TRACEPARENT_LEN] {
    let mut rng = rand::rng();
    let span: u64 = rng.random_range(1..=u64::MAX);
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    match incoming.and_then(parse_traceparent) {
        Some((trace, flags)) => {
            out[3..35].copy_from_slice(trace.as_bytes());
            out[53..].copy_from_slice(flags.as_bytes());
        }
        None => write_hex(&mut out[3..35], rng.random_range(1..=u128::MAX)),
    }
    write_hex(&mut out[36..52], u128::from(span));
    out
}

/// `version-traceid-spanid-flags`: 2 + 32 + 16 + 2 hex digits and three dashes.
pub const TRACEPARENT_LEN: usize = 55;

/// The low hex digits of `value`, zero-padded, filling `out` (a formatter costs more per
/// request).
fn write_hex(out: &mut [u8], value: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = out.len();
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[((value >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
}

pub fn parse_traceparent(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    let b = text.as_bytes();
    if b.len() != TRACEPARENT_LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (version, trace, span, flags) = (&text[..2], &text[3..35], &text[36..52], &text[53..]);
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version)
        && version != "ff"
        && hex(trace)
        && trace.bytes().any(|b| b != b'0')
        && hex(span)
        && hex(flags);
    valid.then_some((trace, flags))
}

/// A new sampled traceparent (the start of a trace).
pub fn new_traceparent() -> String {
    child_traceparent(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_trace_and_flags_of_a_valid_parent() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let tp = child_traceparent(Some(parent));
        assert_eq!(tp.len(), TRACEPARENT_LEN);
        assert_eq!(&tp[..36], &parent[..36]);
        assert!(tp.ends_with("-00"), "{tp}");
        assert!(parse_traceparent(&tp).is_some(), "{tp}");
        assert!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0").is_none()
        );
        assert!(
            parse_traceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").is_none()
        );
        assert!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-00").is_none()
        );
    }

    #[test]
    fn new_traceparent_when_missing_or_invalid() {
        for incoming in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
        ] {
            let tp = child_traceparent(incoming);
            assert!(parse_traceparent(&tp).is_some(), "{tp}");
            assert_ne!(&tp[3..35], "00000000000000000000000000000000");
        }
    }
}
