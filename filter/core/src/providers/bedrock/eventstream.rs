//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), decoded
//! incrementally: bytes in, whole messages out, whatever the chunking.
//!
//! Format (<https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html#streaming-event-stream>,
//! the same framing Bedrock's `ConverseStream` uses): every message is
//! - a 12-byte prelude: total length (u32, big-endian), headers length (u32), and the
//!   CRC32 of those 8 bytes;
//! - the headers: name length (u8), name, value type (u8), value;
//! - the payload;
//! - the CRC32 of everything before it.
//!
//! Both checksums are verified; a message longer than [`MAX_MESSAGE_BYTES`] is refused
//! before it is buffered, so a broken or hostile upstream cannot make the decoder hold
//! more than one bounded message.

/// Largest message accepted (AWS's own limit for event-stream messages is 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest headers section accepted (AWS's limit: 128 KiB).
pub const MAX_HEADERS_BYTES: usize = 128 * 1024;
const PRELUDE_BYTES: usize = 12;
const MIN_MESSAGE_BYTES: usize = PRELUDE_BYTES + 4;

/// One header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Types 0 and 1.
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6.
    Bytes(Vec<u8>),
    /// Type 7.
    String(String),
    /// Type 8: milliseconds since the epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Headers in order.
    pub headers: Vec<(String, HeaderValue)>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// A string header's value (`:event-type`, `:message-type`, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Why a stream could not be decoded. Every variant ends the stream: after a bad frame
/// the decoder cannot know where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The prelude's checksum does not match.
    #[error("event-stream prelude checksum mismatch")]
    PreludeChecksum,
    /// The message's checksum does not match.
    #[error("event-stream message checksum mismatch")]
    MessageChecksum,
    /// Lengths that cannot describe a message (too short, too long, headers past the end).
    #[error("event-stream message has an invalid length ({0} bytes)")]
    Length(usize),
    /// A header that runs past its section, has an unknown type, or a name that is not
    /// UTF-8.
    #[error("event-stream header is malformed")]
    Header,
    /// The stream ended inside a message.
    #[error("event-stream ended inside a message ({0} bytes left over)")]
    Truncated(usize),
}

/// The incremental decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    failed: bool,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(b)
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; complete messages are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Message>) -> Result<(), FrameError> {
        if self.failed {
            return Ok(());
        }
        self.buffer.extend_from_slice(bytes);
        let result = self.drain(out);
        if result.is_err() {
            self.failed = true;
            self.buffer = Vec::new();
        }
        result
    }

    /// The stream ended: bytes left over are a truncated message.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if self.failed || self.buffer.is_empty() {
            return Ok(());
        }
        self.failed = true;
        Err(FrameError::Truncated(
            std::mem::take(&mut self.buffer).len(),
        ))
    }

    fn drain(&mut self, out: &mut Vec<Message>) -> Result<(), FrameError> {
        let mut start = 0;
        while self.buffer.len() - start >= PRELUDE_BYTES {
            let rest = &self.buffer[start..];
            let total = u32_at(rest, 0) as usize;
            let headers_len = u32_at(rest, 4) as usize;
            if crc32fast::hash(&rest[..8]) != u32_at(rest, 8) {
                return Err(FrameError::PreludeChecksum);
            }
            if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&total)
                || headers_len > MAX_HEADERS_BYTES
                || headers_len > total - MIN_MESSAGE_BYTES
            {
                return Err(FrameError::Length(total));
            }
            if rest.len() < total {
                break;
            }
            let frame = &rest[..total];
            if crc32fast::hash(&frame[..total - 4]) != u32_at(frame, total - 4) {
                return Err(FrameError::MessageChecksum);
            }
            let headers = parse_headers(&frame[PRELUDE_BYTES..PRELUDE_BYTES + headers_len])?;
            let payload = frame[PRELUDE_BYTES + headers_len..total - 4].to_vec();
            out.push(Message { headers, payload });
            start += total;
        }
        self.buffer.drain(..start);
        Ok(())
    }
}

fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, HeaderValue)>, FrameError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        if bytes.len() < n {
            return Err(FrameError::Header);
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Ok(head)
    }
    fn array<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(take(bytes, N)?);
        Ok(out)
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = usize::from(take(&mut bytes, 1)?[0]);
        let name = std::str::from_utf8(take(&mut bytes, name_len)?)
            .map_err(|_| FrameError::Header)?
            .to_string();
        let value = match take(&mut bytes, 1)?[0] {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(array(&mut bytes)?)),
            3 => HeaderValue::Short(i16::from_be_bytes(array(&mut bytes)?)),
            4 => HeaderValue::Int(i32::from_be_bytes(array(&mut bytes)?)),
            5 => HeaderValue::Long(i64::from_be_bytes(array(&mut bytes)?)),
            8 => HeaderValue::Timestamp(i64::from_be_bytes(array(&mut bytes)?)),
            9 => HeaderValue::Uuid(array(&mut bytes)?),
            kind @ (6 | 7) => {
                let len = usize::from(u16::from_be_bytes(array(&mut bytes)?));
                let value = take(&mut bytes, len)?;
                if kind == 6 {
                    HeaderValue::Bytes(value.to_vec())
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(value)
                            .map_err(|_| FrameError::Header)?
                            .to_string(),
                    )
                }
            }
            _ => return Err(FrameError::Header),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// Encodes one message (string headers only), as an AWS service writes it. The gateway
/// never sends event streams; tests, benchmarks and the fuzz harness build upstream bytes
/// with it.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(name.len().min(255) as u8);
        head.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
        head.push(7);
        let value = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value);
    }
    let total = PRELUDE_BYTES + head.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Message>, FrameError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out)?;
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trips_and_survives_every_split() {
        let mut bytes = encode(
            &[
                (":event-type", "contentBlockDelta"),
                (":message-type", "event"),
            ],
            br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
        );
        bytes.extend(encode(&[(":event-type", "messageStop")], b"{}"));
        let whole = decode_all(&[&bytes]).unwrap();
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].header(":event-type"), Some("contentBlockDelta"));
        assert_eq!(whole[1].payload, b"{}");
        for i in 0..=bytes.len() {
            assert_eq!(
                decode_all(&[&bytes[..i], &bytes[i..]]).unwrap(),
                whole,
                "{i}"
            );
        }
    }

    #[test]
    fn corruption_is_an_error_not_a_panic() {
        let good = encode(&[(":event-type", "x")], b"payload");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(
                decode_all(&[&bad]).is_err(),
                "flipped byte {i} went unnoticed"
            );
        }
        assert_eq!(
            decode_all(&[&good[..good.len() - 1]]),
            Err(FrameError::Truncated(good.len() - 1))
        );
        // A prelude that claims 4 GiB is refused before anything is buffered.
        let mut huge = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        huge.extend(crc32fast::hash(&huge).to_be_bytes());
        assert!(matches!(decode_all(&[&huge]), Err(FrameError::Length(_))));
    }

    #[test]
    fn every_header_type_decodes() {
        let mut head = Vec::new();
        let mut push = |name: &str, kind: u8, value: &[u8]| {
            head.push(name.len() as u8);
            head.extend_from_slice(name.as_bytes());
            head.push(kind);
            head.extend_from_slice(value);
        };
        push("t", 0, &[]);
        push("f", 1, &[]);
        push("b", 2, &[0xff]);
        push("s", 3, &[0, 2]);
        push("i", 4, &[0, 0, 0, 3]);
        push("l", 5, &[0, 0, 0, 0, 0, 0, 0, 4]);
        push("y", 6, &[0, 2, 9, 9]);
        push("r", 7, &[0, 1, b'x']);
        push("m", 8, &[0, 0, 0, 0, 0, 0, 0, 5]);
        push("u", 9, &[7; 16]);
        let total = PRELUDE_BYTES + head.len() + 4;
        let mut msg = (total as u32).to_be_bytes().to_vec();
        msg.extend((head.len() as u32).to_be_bytes());
        msg.extend(crc32fast::hash(&msg).to_be_bytes());
        msg.extend(&head);
        msg.extend(crc32fast::hash(&msg).to_be_bytes());
        let m = &decode_all(&[&msg]).unwrap()[0];
        let values: Vec<&HeaderValue> = m.headers.iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            [
                &HeaderValue::Bool(true),
                &HeaderValue::Bool(false),
                &HeaderValue::Byte(-1),
                &HeaderValue::Short(2),
                &HeaderValue::Int(3),
                &HeaderValue::Long(4),
                &HeaderValue::Bytes(vec![9, 9]),
                &HeaderValue::String("x".into()),
                &HeaderValue::Timestamp(5),
                &HeaderValue::Uuid([7; 16]),
            ]
        );
    }
}
