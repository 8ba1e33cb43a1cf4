//! W3C trace context (`traceparent`): parsing, and new ids for outgoing calls and published
//! events.

use rand::Rng;

/// A W3C traceparent for the outgoing call: the caller's trace id (or a new one) with a new
/// span id, keeping the caller's flags.
pub fn child_traceparent(incoming: Option<&str>) -> String {
    let mut rng = rand::rng();
    let span: u64 = rng.random_range(1..=u64::MAX);
    let mut out = String::with_capacity(TRACEPARENT_LEN);
    out.push_str("00-");
    match incoming.and_then(parse_traceparent) {
        Some((trace, flags)) => {
            out.push_str(trace);
            out.push('-');
            push_hex(&mut out, u128::from(span), 16);
            out.push('-');
            out.push_str(flags);
        }
        None => {
            push_hex(&mut out, rng.random_range(1..=u128::MAX), 32);
            out.push('-');
            push_hex(&mut out, u128::from(span), 16);
            out.push_str("-01");
        }
    }
    out
}

/// `version-traceid-spanid-flags`: 2 + 32 + 16 + 2 hex digits and three dashes.
pub const TRACEPARENT_LEN: usize = 55;

/// The low `digits` hex digits of `value`, zero-padded (a formatter costs more per request).
fn push_hex(out: &mut String, value: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((value >> (4 * i)) & 0xf) as usize]));
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
