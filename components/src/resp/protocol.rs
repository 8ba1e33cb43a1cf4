//! RESP2, the Redis wire protocol: commands are arrays of bulk strings; replies are simple
//! strings, errors, integers, bulk strings (or nil) and arrays (or nil), nested.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Nesting deeper than this is refused rather than followed (no reply this client asks for
/// nests more than three levels).
const MAX_DEPTH: usize = 32;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    /// A status reply such as `OK`.
    Status(String),
    Bulk(Bytes),
    Array(Vec<Value>),
    /// An error reply (`-ERR …`): the command failed, the connection is fine.
    Error(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed reply from redis: {0}")]
pub struct ProtocolError(pub String);

impl Value {
    /// The error reply's code (see [`error_code`]).
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Value::Error(text) => Some(error_code(text)),
            _ => None,
        }
    }

    /// The bytes of a bulk or status reply.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// An integer reply, or a bulk or status reply holding a decimal integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            other => std::str::from_utf8(other.as_bytes()?).ok()?.parse().ok(),
        }
    }
}

/// An error reply's code: its first word (`NOSCRIPT`, `WRONGTYPE`, `ERR`, …).
pub fn error_code(text: &str) -> &str {
    text.split(' ').next().unwrap_or_default()
}

/// Appends a command (its name and arguments, each as bytes) to `out`.
pub fn encode_command<'a>(out: &mut Vec<u8>, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    push_header(out, b'*', args.len());
    for arg in args {
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Takes one complete reply off the front of `buf`, or returns `None` (leaving `buf` as it is)
/// when more bytes are needed. A partial reply is only scanned, never copied, so a large reply
/// arriving in many reads costs little; bulk strings of the result share the buffer's memory.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Value>, ProtocolError> {
    let mut len = 0;
    if read_value(buf, &mut len, 0, None)?.is_none() {
        return Ok(None);
    }
    let frame = buf.split_to(len).freeze();
    let mut at = 0;
    read_value(&frame, &mut at, 0, Some(&frame))
}

/// Reads the value starting at `*at`, moving `*at` past it; `None` when the buffer ends inside
/// it. Without `frame` it only checks and measures (bulk strings and arrays come back empty);
/// with it (the same bytes, frozen) it builds the value.
fn read_value(
    buf: &[u8],
    at: &mut usize,
    depth: usize,
    frame: Option<&Bytes>,
) -> Result<Option<Value>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("replies nested too deeply".into()));
    }
    let Some(line) = read_line(buf, at)? else {
        return Ok(None);
    };
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| ProtocolError("empty line".into()))?;
    match kind {
        b'+' => Ok(Some(Value::Status(text(rest)))),
        b'-' => Ok(Some(Value::Error(text(rest)))),
        b':' => Ok(Some(Value::Int(number(rest)?))),
        b'$' => {
            let Some(len) = length(rest)? else {
                return Ok(Some(Value::Nil));
            };
            let start = *at;
            let end = start + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not followed by CRLF".into()));
            }
            *at = end + 2;
            Ok(Some(Value::Bulk(
                frame.map_or_else(Bytes::new, |f| f.slice(start..end)),
            )))
        }
        b'*' => {
            let Some(len) = length(rest)? else {
                return Ok(Some(Value::Nil));
            };
            let mut items = Vec::new();
            if frame.is_some() {
                items.reserve_exact(len);
            }
            for _ in 0..len {
                match read_value(buf, at, depth + 1, frame)? {
                    Some(v) if frame.is_some() => items.push(v),
                    Some(_) => {}
                    None => return Ok(None),
                }
            }
            Ok(Some(Value::Array(items)))
        }
        other => Err(ProtocolError(format!(
            "unknown reply type {:?}",
            char::from(other)
        ))),
    }
}

/// A bulk or array length; `None` for -1 (nil).
fn length(bytes: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match number(bytes)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .map(Some)
            .map_err(|_| ProtocolError(format!("length {n}"))),
    }
}

/// The line at `*at` without its CRLF, moving `*at` past it.
fn read_line<'b>(buf: &'b [u8], at: &mut usize) -> Result<Option<&'b [u8]>, ProtocolError> {
    let Some(rest) = buf.get(*at..) else {
        return Ok(None);
    };
    // A line holds no line feed, so the first one ends it.
    let Some(newline) = memchr::memchr(b'\n', rest) else {
        return Ok(None);
    };
    if newline == 0 || rest[newline - 1] != b'\r' {
        return Err(ProtocolError("line not ended by CRLF".into()));
    }
    *at += newline + 1;
    Ok(Some(&rest[..newline - 1]))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn number(bytes: &[u8]) -> Result<i64, ProtocolError> {
    let not_a_number = || ProtocolError(format!("{:?} is not a number", text(bytes)));
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    // Up to 18 digits cannot overflow; longer ones take the checked path.
    if digits.is_empty() || digits.len() > 18 {
        return std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(not_a_number);
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(not_a_number());
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Value {
        let mut buf = BytesMut::from(input);
        let v = parse(&mut buf).unwrap().expect("complete");
        assert!(buf.is_empty(), "left over: {buf:?}");
        v
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, [&b"GET"[..], b"k\r\n"].into_iter());
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n");
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse_all(b"+OK\r\n"), Value::Status("OK".into()));
        assert_eq!(
            parse_all(b"-NOSCRIPT No matching script\r\n").error_code(),
            Some("NOSCRIPT")
        );
        assert_eq!(parse_all(b":-42\r\n"), Value::Int(-42));
        assert_eq!(
            parse_all(b":-9223372036854775808\r\n"),
            Value::Int(i64::MIN)
        );
        assert_eq!(parse_all(b"$-1\r\n"), Value::Nil);
        assert_eq!(parse_all(b"*-1\r\n"), Value::Nil);
        assert_eq!(
            parse_all(b"$4\r\na\r\nb\r\n"),
            Value::Bulk(Bytes::from_static(b"a\r\nb"))
        );
        assert_eq!(
            parse_all(b"*3\r\n$1\r\nx\r\n$-1\r\n*1\r\n:7\r\n"),
            Value::Array(vec![
                Value::Bulk(Bytes::from_static(b"x")),
                Value::Nil,
                Value::Array(vec![Value::Int(7)]),
            ])
        );
    }

    #[test]
    fn waits_for_the_rest_of_a_split_reply() {
        let whole = b"*2\r\n$5\r\nhello\r\n:1\r\n+OK\r\n";
        for cut in 0..whole.len() - 5 {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(parse(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing is consumed from a partial reply");
        }
        let mut buf = BytesMut::from(&whole[..]);
        assert!(matches!(parse(&mut buf), Ok(Some(Value::Array(_)))));
        assert_eq!(parse(&mut buf).unwrap(), Some(Value::Status("OK".into())));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            &b"?x\r\n"[..],
            b":abc\r\n",
            b":-\r\n",
            b":1-2\r\n",
            b"$3\r\nabcd\r\n",
            b"\r\n",
            b"+OK\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse(&mut buf).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn integers_come_from_integer_and_text_replies() {
        assert_eq!(Value::Int(3).as_int(), Some(3));
        assert_eq!(Value::Bulk(Bytes::from_static(b"12")).as_int(), Some(12));
        assert_eq!(Value::Bulk(Bytes::from_static(b"x")).as_int(), None);
        assert_eq!(Value::Nil.as_int(), None);
    }
}
