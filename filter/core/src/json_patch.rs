//! Top-level JSON field patching without re-serialising nested values.
//!
//! The OpenAI → OpenAI-compatible fast path only needs to swap `model` (and force
//! `stream_options.include_usage`). Nested messages, tools and images are copied as the
//! client sent them, byte for byte.
//!
//! The body has always been parsed as JSON by the caller before it is patched (the request
//! was decoded to plan it), so this walks the top-level object with a byte scanner instead of
//! a second parse: it finds each field's key and value span (strings, escapes and brackets
//! tracked, scalars taken up to the next delimiter) and copies the spans. That is most of the
//! fast path's saving: a 1 KB body costs one pass over its bytes and no allocation per field.

use serde::de::Error as _;

/// A malformed top-level structure (the scanner's only error).
fn malformed(what: &str) -> serde_json::Error {
    serde_json::Error::custom(format!("expected {what}"))
}

/// Walks the top level of one JSON object.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), serde_json::Error> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(malformed(what))
        }
    }

    /// The string starting at the current `"`, quotes included.
    fn string(&mut self) -> Result<&'a [u8], serde_json::Error> {
        let start = self.pos;
        self.pos += 1;
        loop {
            self.pos = skip_plain(self.bytes, self.pos);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(&self.bytes[start..self.pos]);
                }
                Some(b'\\') => self.pos += 2,
                Some(_) => self.pos += 1,
                None => return Err(malformed("a closing quote")),
            }
        }
    }

    /// The value starting here (after whitespace), as its exact bytes.
    fn value(&mut self) -> Result<&'a [u8], serde_json::Error> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        Some(b'"') => {
                            self.string()?;
                            continue;
                        }
                        Some(b'{' | b'[') => depth += 1,
                        Some(b'}' | b']') => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                break;
                            }
                        }
                        Some(_) => {}
                        None => return Err(malformed("a closing bracket")),
                    }
                    self.pos += 1;
                }
            }
            Some(_) => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.pos += 1;
                }
            }
            None => {}
        }
        if self.pos == start {
            return Err(malformed("a value"));
        }
        Ok(&self.bytes[start..self.pos])
    }
}

/// The first index at or after `from` holding `"` or `\\` (or `bytes.len()`), eight bytes at
/// a time: string contents are most of a chat body, and a byte loop was the scanner's cost.
fn skip_plain(bytes: &[u8], mut from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    while let Some(chunk) = bytes.get(from..from + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let found = has(word, b'"') | has(word, b'\\');
        if found != 0 {
            return from + (found.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    while let Some(&b) = bytes.get(from) {
        if b == b'"' || b == b'\\' {
            break;
        }
        from += 1;
    }
    from
}

/// Whether the quoted JSON string `quoted` names `name` (escapes decoded when present, so
/// `"mod\u0065l"` is `model` too and cannot slip past a patch).
fn names(quoted: &[u8], name: &str) -> bool {
    let inner = &quoted[1..quoted.len() - 1];
    if !inner.contains(&b'\\') {
        return inner == name.as_bytes();
    }
    serde_json::from_slice::<String>(quoted).is_ok_and(|s| s == name)
}

/// Replaces (or appends) top-level fields of the JSON object `body`.
///
/// `patches` pairs a field name with its new value as JSON text. Other fields keep their
/// exact bytes and order (whitespace between fields is dropped). `body` must already be known
/// to be JSON (callers parse it first): the scanner checks the object's shape, not its scalars.
pub fn patch_top_level(
    body: &[u8],
    patches: &[(&str, String)],
) -> Result<Vec<u8>, serde_json::Error> {
    let mut scan = Scanner {
        bytes: body,
        pos: 0,
    };
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut seen = vec![false; patches.len()];
    scan.expect(b'{', "a JSON object")?;
    out.push(b'{');
    scan.skip_ws();
    if scan.peek() == Some(b'}') {
        scan.pos += 1;
    } else {
        loop {
            scan.skip_ws();
            if scan.peek() != Some(b'"') {
                return Err(malformed("a field name"));
            }
            let key = scan.string()?;
            scan.expect(b':', "`:` after a field name")?;
            let value = scan.value()?;
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            out.push(b':');
            match patches.iter().position(|(name, _)| names(key, name)) {
                Some(i) => {
                    seen[i] = true;
                    out.extend_from_slice(patches[i].1.as_bytes());
                }
                None => out.extend_from_slice(value),
            }
            scan.skip_ws();
            match scan.peek() {
                Some(b',') => scan.pos += 1,
                Some(b'}') => {
                    scan.pos += 1;
                    break;
                }
                _ => return Err(malformed("`,` or `}` after a field")),
            }
        }
    }
    scan.skip_ws();
    if scan.pos != body.len() {
        return Err(malformed("the end after the object"));
    }
    for ((name, new), seen) in patches.iter().zip(seen) {
        if !seen {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(serde_json::to_string(name).unwrap_or_default().as_bytes());
            out.push(b':');
            out.extend_from_slice(new.as_bytes());
        }
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patched(body: &str, patches: &[(&str, &str)]) -> String {
        let patches: Vec<(&str, String)> =
            patches.iter().map(|(k, v)| (*k, v.to_string())).collect();
        String::from_utf8(patch_top_level(body.as_bytes(), &patches).unwrap()).unwrap()
    }

    #[test]
    fn patches_only_named_fields() {
        assert_eq!(
            patched(
                r#"{"model":"a","messages":[{"role":"user","content":"h\u00e9"}], "x" : 1}"#,
                &[("model", "\"b\""), ("new", "true")]
            ),
            r#"{"model":"b","messages":[{"role":"user","content":"h\u00e9"}],"x":1,"new":true}"#
        );
    }

    #[test]
    fn nested_brackets_and_quotes_inside_strings_are_copied() {
        let body = r#"{ "messages" : [{"content":"a } ] \" { [ b","n":[1,{"x":null}]}] ,"t":-1.5e3,
            "f":false,"model":"m"}"#;
        assert_eq!(
            patched(body, &[("model", "\"z\"")]),
            r#"{"messages":[{"content":"a } ] \" { [ b","n":[1,{"x":null}]}],"t":-1.5e3,"f":false,"model":"z"}"#
        );
    }

    #[test]
    fn escaped_names_are_patched_too() {
        assert_eq!(
            patched(r#"{"mod\u0065l":"a"}"#, &[("model", "\"b\"")]),
            r#"{"mod\u0065l":"b"}"#
        );
    }

    #[test]
    fn empty_object_gets_the_patches() {
        assert_eq!(patched(" { } ", &[("model", "\"b\"")]), r#"{"model":"b"}"#);
    }

    #[test]
    fn output_parses_as_the_same_object_but_the_patch() {
        let body = r#"{"model":"a","temperature":0.2,"messages":[{"role":"user","content":"\\\"}"}],"stream":true}"#;
        let out = patch_top_level(body.as_bytes(), &[("model", "\"b\"".into())]).unwrap();
        let mut expected: serde_json::Value = serde_json::from_str(body).unwrap();
        expected["model"] = "b".into();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            expected
        );
    }

    #[test]
    fn rejects_non_objects() {
        for bad in [
            "[1]",
            "{",
            "",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":[1}",
            "{\"a\":\"x}",
            "{} x",
            "{1:2}",
        ] {
            assert!(patch_top_level(bad.as_bytes(), &[]).is_err(), "{bad}");
        }
    }
}
