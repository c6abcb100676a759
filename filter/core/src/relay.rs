//! A complete pass-through answer relayed as it arrives: an incremental scanner that finds
//! the top-level `usage` value in the bytes on their way to the client.
//!
//! When the client and the provider speak the same format, the answer's bytes are the
//! client's answer unchanged, so the host need not hold them: it passes each chunk on and
//! shows it to the [`UsageScanner`], which keeps a bounded state (nesting depth, whether it is
//! in a string, the current top-level key's first bytes, and the bytes of the `usage` value
//! once it starts) and never parses the whole answer. It is a structural scan, not a
//! validator: it says whether the bytes had the shape of one JSON object (balanced brackets
//! outside strings, nothing but whitespace around it), which is what the metered status of a
//! relayed answer rests on (see [`crate::exchange`]).

/// The largest `usage` value kept (an OpenAI usage object is a few hundred bytes); a larger
/// one is not read and the answer is metered as one without usage.
const MAX_USAGE_BYTES: usize = 16 * 1024;

/// Finds a JSON object's top-level `usage` value in bytes fed chunk by chunk.
#[derive(Debug, Default)]
pub struct UsageScanner {
    depth: u32,
    in_string: bool,
    escape: bool,
    /// The string being read is a top-level key.
    reading_key: bool,
    /// A top-level key is due (after `{` or `,` at depth 1).
    key_due: bool,
    /// The first bytes of the last top-level key (raw, escapes kept).
    key: [u8; 8],
    key_len: usize,
    /// The bytes of the `usage` value being read.
    capturing: bool,
    captured: Vec<u8>,
    /// The last complete `usage` value.
    usage: Option<Vec<u8>>,
    /// The top-level object was opened, and closed.
    opened: bool,
    closed: bool,
    /// A byte outside the one top-level object that is not whitespace, or a bracket that
    /// closes nothing.
    garbage: bool,
}

impl UsageScanner {
    /// A scanner before the answer's first byte.
    pub fn new() -> Self {
        UsageScanner::default()
    }

    /// Scans the next chunk of the answer.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut at = 0;
        while at < chunk.len() {
            if self.in_string && !self.escape && !self.reading_key {
                // Inside a string only its closing quote and escapes matter: jump to the next
                // one (most of an answer's bytes are its strings' contents).
                let rest = &chunk[at..];
                let skip = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                if self.capturing {
                    self.captured.extend_from_slice(&rest[..skip]);
                }
                at += skip;
                if at == chunk.len() {
                    break;
                }
            }
            self.byte(chunk[at]);
            at += 1;
        }
        if self.captured.len() > MAX_USAGE_BYTES {
            // Too large to be a usage object worth reading: give it up.
            self.capturing = false;
            self.captured = Vec::new();
        }
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.capturing {
                self.captured.push(b);
            }
            if self.escape {
                self.escape = false;
            } else if b == b'"' {
                self.in_string = false;
                self.reading_key = false;
                return;
            } else if b == b'\\' {
                self.escape = true;
            }
            if self.reading_key {
                if self.key_len < self.key.len() {
                    self.key[self.key_len] = b;
                }
                self.key_len += 1;
            }
            return;
        }
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                if self.capturing && !self.captured.is_empty() {
                    self.captured.push(b);
                }
            }
            b'"' => {
                if self.depth == 0 {
                    self.garbage = true;
                }
                self.in_string = true;
                if self.depth == 1 && self.key_due && !self.capturing {
                    self.reading_key = true;
                    self.key_due = false;
                    self.key_len = 0;
                }
                if self.capturing {
                    self.captured.push(b);
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 {
                    if self.opened || b == b'[' {
                        self.garbage = true;
                    }
                    self.opened = true;
                    self.key_due = true;
                } else if self.capturing {
                    self.captured.push(b);
                }
                self.depth += 1;
            }
            b'}' | b']' => match self.depth {
                0 => self.garbage = true,
                1 => {
                    self.end_value();
                    self.depth = 0;
                    self.closed = true;
                }
                _ => {
                    self.depth -= 1;
                    if self.capturing {
                        self.captured.push(b);
                    }
                }
            },
            b':' if self.depth == 1 && !self.capturing => {
                if self.key_len == 5 && &self.key[..5] == b"usage" {
                    self.capturing = true;
                    self.captured.clear();
                }
            }
            b',' if self.depth == 1 => {
                self.end_value();
                self.key_due = true;
            }
            _ => {
                if self.depth == 0 {
                    self.garbage = true;
                } else if self.capturing {
                    self.captured.push(b);
                }
            }
        }
    }

    /// A top-level value ended: keep it if it was `usage`'s.
    fn end_value(&mut self) {
        if self.capturing {
            self.capturing = false;
            let value = std::mem::take(&mut self.captured);
            self.usage = (value.len() <= MAX_USAGE_BYTES).then_some(value);
        }
    }

    /// The bytes of the top-level `usage` value (the last one, if the key repeats), once
    /// it is complete.
    pub fn usage(&self) -> Option<&[u8]> {
        self.usage.as_deref()
    }

    /// Whether the bytes so far are one whole JSON object (by their structure).
    pub fn complete(&self) -> bool {
        self.closed && !self.garbage && !self.in_string && self.depth == 0
    }
}

#[cfg(test)]
mod tests {
    use super::UsageScanner;

    fn scan(chunks: &[&[u8]]) -> UsageScanner {
        let mut s = UsageScanner::new();
        for c in chunks {
            s.push(c);
        }
        s
    }

    const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"a \"usage\": {\"x\":1} }"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":3}}}"#;

    #[test]
    fn finds_the_top_level_usage_in_any_split() {
        let want = r#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":3}}"#;
        for cut in 0..ANSWER.len() {
            let (a, b) = ANSWER.as_bytes().split_at(cut);
            let s = scan(&[a, b]);
            assert_eq!(s.usage(), Some(want.as_bytes()), "cut at {cut}");
            assert!(s.complete());
        }
        let one_by_one: Vec<&[u8]> = ANSWER.as_bytes().chunks(1).collect();
        assert_eq!(scan(&one_by_one).usage(), Some(want.as_bytes()));
    }

    #[test]
    fn nested_usage_keys_and_strings_are_not_the_answer_usage() {
        let s = scan(&[br#"{"choices":[{"usage":{"prompt_tokens":1}}],"note":"\"usage\":2"}"#]);
        assert_eq!(s.usage(), None);
        assert!(s.complete());
        // An escaped backslash ends in a real quote, in any split.
        let text = br#"{"choices":[{"t":"x\\","u":"\"]"}],"usage":{"prompt_tokens":1}}"#;
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            let s = scan(&[a, b]);
            assert_eq!(
                s.usage(),
                Some(&br#"{"prompt_tokens":1}"#[..]),
                "cut at {cut}"
            );
            assert!(s.complete(), "cut at {cut}");
        }
    }

    /// Strings inside the usage value are captured byte for byte, escapes included, wherever
    /// the chunks split them.
    #[test]
    fn strings_in_the_usage_value_are_kept_exactly_in_any_split() {
        let text = br#"{"id":"a\"b","usage":{"note":"q\"u\\","n":[1,"]"]},"model":"m"}"#;
        let want = br#"{"note":"q\"u\\","n":[1,"]"]}"#;
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let s = scan(&[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(s.usage(), Some(&want[..]), "cuts at {cut}, {cut2}");
                assert!(s.complete(), "cuts at {cut}, {cut2}");
            }
        }
    }

    #[test]
    fn usage_first_null_or_scalar_is_kept_raw() {
        let s = scan(&[br#"{ "usage" : {"prompt_tokens":2} , "id":"x"}"#]);
        assert_eq!(s.usage(), Some(&br#"{"prompt_tokens":2} "#[..]));
        let s = scan(&[br#"{"usage":null}"#]);
        assert_eq!(s.usage(), Some(&b"null"[..]));
    }

    #[test]
    fn truncated_or_garbage_answers_are_not_complete() {
        let cut = &ANSWER.as_bytes()[..ANSWER.len() - 1];
        assert!(!scan(&[cut]).complete());
        assert!(!scan(&[b"not json"]).complete());
        assert!(!scan(&[b"{} {}"]).complete());
        assert!(!scan(&[b"[1,2]"]).complete());
        assert!(!scan(&[b"{\"a\":1}}"]).complete());
        assert!(scan(&[b" {\"a\":[1,{}]}\n"]).complete());
        assert!(!scan(&[b""]).complete());
    }

    #[test]
    fn an_oversized_usage_value_is_given_up() {
        let big = format!(
            r#"{{"usage":"{}"}}"#,
            "x".repeat(super::MAX_USAGE_BYTES + 10)
        );
        let parts: Vec<&[u8]> = big.as_bytes().chunks(4096).collect();
        assert!(scan(&parts).usage().is_none());
        assert!(scan(&[big.as_bytes()]).usage().is_none());
    }
}
