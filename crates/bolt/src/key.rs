//! Event keys: a bucket path and a key in one unambiguous byte string.
//!
//! ```text
//! key    = segment* last
//! segment = escaped(bucket name) 0x00 0x01      one per enclosing bucket
//! last    = escaped(key) 0x00 0x02               a key holding a value
//!         | escaped(name) 0x00 0x03              a bucket itself (create/delete)
//! escaped(b) = b with every 0x00 written as 0x00 0xFF
//! ```
//!
//! Any byte strings round-trip, and no two (path, key) pairs share an
//! encoding. Within one bucket the byte order of encodings is the order of
//! keys, so range-sharded targets see each bucket as one range.

const SEG: u8 = 0x01;
const VALUE: u8 = 0x02;
const BUCKET: u8 = 0x03;

/// What an event key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A key holding a value, in `buckets`.
    Value { buckets: Vec<Vec<u8>>, key: Vec<u8> },
    /// The bucket `name` inside `buckets`.
    Bucket {
        buckets: Vec<Vec<u8>>,
        name: Vec<u8>,
    },
}

fn push_escaped(out: &mut Vec<u8>, b: &[u8]) {
    for &c in b {
        out.push(c);
        if c == 0 {
            out.push(0xFF);
        }
    }
}

fn encode(buckets: &[Vec<u8>], last: &[u8], tag: u8) -> Vec<u8> {
    let len = buckets.iter().map(|b| b.len() + 2).sum::<usize>() + last.len() + 2;
    let mut out = Vec::with_capacity(len);
    for b in buckets {
        push_escaped(&mut out, b);
        out.extend_from_slice(&[0, SEG]);
    }
    push_escaped(&mut out, last);
    out.extend_from_slice(&[0, tag]);
    out
}

/// The event key of `key` in bucket `buckets`.
pub fn encode_key(buckets: &[Vec<u8>], key: &[u8]) -> Vec<u8> {
    encode(buckets, key, VALUE)
}

/// The event key of the bucket `name` inside `buckets`.
pub fn encode_bucket(buckets: &[Vec<u8>], name: &[u8]) -> Vec<u8> {
    encode(buckets, name, BUCKET)
}

/// Decodes an event key; `None` if it is not one this crate made.
pub fn decode_key(mut b: &[u8]) -> Option<KeyRef> {
    let mut segs = Vec::new();
    let mut cur = Vec::new();
    loop {
        let (&c, rest) = b.split_first()?;
        b = rest;
        if c != 0 {
            cur.push(c);
            continue;
        }
        let (&t, rest) = b.split_first()?;
        b = rest;
        match t {
            0xFF => cur.push(0),
            SEG => segs.push(std::mem::take(&mut cur)),
            VALUE | BUCKET if b.is_empty() => {
                return Some(if t == VALUE {
                    KeyRef::Value {
                        buckets: segs,
                        key: cur,
                    }
                } else {
                    KeyRef::Bucket {
                        buckets: segs,
                        name: cur,
                    }
                })
            }
            _ => return None,
        }
    }
}

/// A bucket path for people: names `/`-joined, bytes outside printable
/// ASCII escaped.
pub fn show_path(path: &[Vec<u8>]) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.iter()
        .map(|p| format!("/{}", p.escape_ascii()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_never_collide() {
        let cases: Vec<(Vec<Vec<u8>>, Vec<u8>)> = vec![
            (vec![], b"k".to_vec()),
            (vec![b"a".to_vec()], b"".to_vec()),
            (vec![b"a\0".to_vec(), vec![0, 1]], vec![0, 2]),
            (vec![b"a".to_vec(), b"b".to_vec()], b"c".to_vec()),
            (vec![b"a".to_vec()], b"b\0\x01c".to_vec()),
        ];
        let mut seen = std::collections::HashSet::new();
        for (b, k) in &cases {
            let v = encode_key(b, k);
            let bk = encode_bucket(b, k);
            assert!(seen.insert(v.clone()) && seen.insert(bk.clone()));
            assert_eq!(
                decode_key(&v),
                Some(KeyRef::Value {
                    buckets: b.clone(),
                    key: k.clone()
                })
            );
            assert_eq!(
                decode_key(&bk),
                Some(KeyRef::Bucket {
                    buckets: b.clone(),
                    name: k.clone()
                })
            );
        }
        assert_eq!(decode_key(b"no terminator"), None);
        assert_eq!(decode_key(&[b'a', 0, 2, b'x']), None);
        assert!(encode_key(&[b"b".to_vec()], b"a") < encode_key(&[b"b".to_vec()], b"b"));
        assert_eq!(
            show_path(&[b"USER".to_vec(), vec![0, 1]]),
            "/USER/\\x00\\x01"
        );
    }
}
