//! Header maps as the guest sees them, and the proxy-wasm wire encoding for whole maps.
//!
//! Envoy presents HTTP/1 and HTTP/2 requests the same way: pseudo headers (`:method`,
//! `:path`, `:authority`, `:scheme`; `:status` on responses) followed by regular headers with
//! lower-case names, duplicates allowed and order preserved. We keep raw bytes because header
//! values are not guaranteed to be UTF-8.

use crate::abi::Status;

/// An ordered multi-map of header names (lower-case) to values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Vec<u8>, Vec<u8>)>);

impl Headers {
    /// An empty map.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Number of entries (counting duplicates), as passed to `proxy_on_*_headers`.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The first value for `name` (names compare case-insensitively), like Envoy's
    /// `proxy_get_header_map_value`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let name = lower(name);
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value for `name` as UTF-8, if any.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Append an entry, keeping any existing ones.
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.0.push((lower(name), value.to_vec()));
    }

    /// Set `name` to exactly one value: the first entry is replaced in place (keeping its
    /// position, which matters for pseudo headers), the others removed, or it is appended.
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        let name = lower(name);
        let mut seen = false;
        self.0.retain_mut(|(k, v)| {
            if *k != name {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *v = value.to_vec();
            true
        });
        if !seen {
            self.0.push((name, value.to_vec()));
        }
    }

    /// Remove every entry for `name`.
    pub fn remove(&mut self, name: &[u8]) {
        let name = lower(name);
        self.0.retain(|(k, _)| *k != name);
    }

    /// Encode the map in the proxy-wasm wire format: a u32 count, then (key length, value
    /// length) u32 pairs, then each key and value followed by a NUL byte. Little-endian.
    pub fn serialize(&self) -> Vec<u8> {
        let mut size = 4;
        for (k, v) in &self.0 {
            size += 8 + k.len() + v.len() + 2;
        }
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in &self.0 {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// Decode the proxy-wasm wire format (see [`Headers::serialize`]). Malformed input is a
    /// `SerializationFailure` status for the guest, never a panic.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, Status> {
        if bytes.is_empty() {
            return Ok(Self::new());
        }
        let read_u32 = |at: usize| -> Result<usize, Status> {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or(Status::SerializationFailure)
        };
        let count = read_u32(0)?;
        // Each entry needs at least 10 bytes; reject absurd counts before allocating.
        if count > bytes.len() / 10 + 1 {
            return Err(Status::SerializationFailure);
        }
        let mut sizes = Vec::with_capacity(count);
        for i in 0..count {
            sizes.push((read_u32(4 + i * 8)?, read_u32(8 + i * 8)?));
        }
        let mut at = 4 + count * 8;
        let mut entries = Vec::with_capacity(count);
        for (klen, vlen) in sizes {
            let key = take(bytes, &mut at, klen)?;
            let value = take(bytes, &mut at, vlen)?;
            entries.push((lower(key), value.to_vec()));
        }
        Ok(Self(entries))
    }
}

/// Take `len` bytes followed by a NUL terminator.
fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], Status> {
    let end = at.checked_add(len).ok_or(Status::SerializationFailure)?;
    let slice = bytes.get(*at..end).ok_or(Status::SerializationFailure)?;
    if bytes.get(end) != Some(&0) {
        return Err(Status::SerializationFailure);
    }
    *at = end + 1;
    Ok(slice)
}

fn lower(name: &[u8]) -> Vec<u8> {
    name.to_ascii_lowercase()
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.add(k.as_ref(), v.as_ref());
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_wire_format() {
        let h: Headers = [(":path", "/v1"), ("X-A", "1"), ("x-a", "2"), ("empty", "")]
            .into_iter()
            .collect();
        let bytes = h.serialize();
        assert_eq!(Headers::deserialize(&bytes).unwrap(), h);
        assert_eq!(h.get(b"X-a"), Some(&b"1"[..]));
    }

    #[test]
    fn rejects_truncated_maps() {
        let h: Headers = [("a", "b")].into_iter().collect();
        let bytes = h.serialize();
        for cut in 1..bytes.len() {
            assert!(Headers::deserialize(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Headers::deserialize(&[255, 255, 255, 255]).is_err());
    }

    #[test]
    fn replace_keeps_position_and_drops_duplicates() {
        let mut h: Headers = [(":method", "GET"), ("a", "1"), ("b", "2"), ("a", "3")]
            .into_iter()
            .collect();
        h.replace(b"a", b"x");
        let v: Vec<_> = h.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(
            v,
            vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b"a".to_vec(), b"x".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
            ]
        );
        h.remove(b"A");
        assert_eq!(h.get(b"a"), None);
    }
}
