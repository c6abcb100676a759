//! Top-level JSON field patching without re-serialising nested values.
//!
//! The OpenAI → OpenAI-compatible fast path only needs to swap `model` (and force
//! `stream_options.include_usage`). Nested messages, tools and images are copied as the
//! client sent them, byte for byte.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

struct OrderedObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for OrderedObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = OrderedObject<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(OrderedObject(fields))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Replaces (or appends) top-level fields of the JSON object `body`.
///
/// `patches` pairs a field name with its new value as JSON text. Other fields keep their
/// exact bytes and order.
pub fn patch_top_level(
    body: &[u8],
    patches: &[(&str, String)],
) -> Result<Vec<u8>, serde_json::Error> {
    let object: OrderedObject = serde_json::from_slice(body)?;
    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    let mut first = true;
    let mut push_field = |out: &mut Vec<u8>, key: &str, value: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        // serde_json string escaping for the key.
        out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    };
    for (key, value) in &object.0 {
        match patches.iter().find(|(k, _)| *k == key.as_ref()) {
            Some((_, new)) => push_field(&mut out, key, new),
            None => push_field(&mut out, key, value.get()),
        }
    }
    for (key, new) in patches {
        if !object.0.iter().any(|(k, _)| k == key) {
            push_field(&mut out, key, new);
        }
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_only_named_fields() {
        let body = br#"{"model":"a","messages":[{"role":"user","content":"h\u00e9"}], "x" : 1}"#;
        let out =
            patch_top_level(body, &[("model", "\"b\"".into()), ("new", "true".into())]).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"b","messages":[{"role":"user","content":"h\u00e9"}],"x":1,"new":true}"#
        );
    }

    #[test]
    fn rejects_non_objects() {
        assert!(patch_top_level(b"[1]", &[]).is_err());
        assert!(patch_top_level(b"{", &[]).is_err());
    }
}
