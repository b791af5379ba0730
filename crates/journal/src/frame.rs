//! The record frame: how one event is stored.
//!
//! ```text
//! +----------------+------------------------------------------+
//! | crc32 (4 B, BE) | payload: bincode 2 (standard config) of   |
//! | of the payload  | ferry_core::Event, at most MAX_PAYLOAD B  |
//! +----------------+------------------------------------------+
//! ```
//!
//! The CRC-32 (IEEE, as `crc32fast` computes it) covers the whole payload.
//! The payload repeats the event's shard and sequence, so a record found
//! under the wrong key is detected too (the reader compares them). Decoding
//! never trusts a length inside the payload beyond [`MAX_PAYLOAD`], so a
//! damaged record cannot make the reader allocate without bound.

use ferry_core::Event;

/// Bytes of the frame header (the checksum).
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest payload accepted: above any store's value limit (Mongo's 16 MiB
/// documents) with room for metadata.
pub const MAX_PAYLOAD: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("record is {len} bytes, shorter than its {FRAME_HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Payload(String),
    #[error("{0} bytes follow the payload")]
    Trailing(usize),
}

/// Encodes `event` into a new frame.
pub fn encode_frame(event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, event);
    out
}

/// Appends the frame of `event` to `out`; returns the frame's length.
/// Encoding in place saves an allocation and a copy per event.
pub fn encode_frame_into(out: &mut Vec<u8>, event: &Event) -> usize {
    let start = out.len();
    // Sized up front: growing the buffer while encoding cost more than the
    // encoding itself.
    out.reserve(FRAME_HEADER_LEN + 64 + event.key.len() + value_len(event));
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    // Encoding into a Vec only fails if the size limit is hit; events are
    // checked against store limits long before, so treat it as a bug.
    bincode::serde::encode_into_std_write(event, out, config())
        .expect("an event larger than MAX_PAYLOAD reached the journal");
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_LEN..]);
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    out.len() - start
}

fn value_len(event: &Event) -> usize {
    match &event.op {
        ferry_core::Op::Put { value, .. } => value.len(),
        _ => 0,
    }
}

/// Decodes a frame, checking its checksum first.
pub fn decode_frame(bytes: &[u8]) -> Result<Event, FrameError> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(FrameError::TooShort { len: bytes.len() });
    }
    let (header, payload) = bytes.split_at(FRAME_HEADER_LEN);
    let stored = u32::from_be_bytes(header.try_into().expect("4-byte header"));
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let (event, used): (Event, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| FrameError::Payload(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Trailing(payload.len() - used));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Op, Position, ShardId, StoreMeta, Value};

    fn event() -> Event {
        Event {
            shard: ShardId(2),
            seq: 7,
            position: Position::at(100),
            key: b"key".to_vec(),
            op: Op::Put {
                value: Value::Plain(b"value".to_vec()),
                meta: StoreMeta::Etcd {
                    lease_id: 5,
                    lease_ttl_s: 30,
                },
            },
            source_ts_ms: 1,
            capture_ts_ms: 2,
        }
    }

    #[test]
    fn round_trip() {
        let f = encode_frame(&event());
        assert_eq!(decode_frame(&f).unwrap(), event());
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let f = encode_frame(&event());
        for i in 0..f.len() * 8 {
            let mut g = f.clone();
            g[i / 8] ^= 1 << (i % 8);
            assert!(decode_frame(&g).is_err(), "bit {i} flip undetected");
        }
    }

    #[test]
    fn short_and_trailing() {
        assert_eq!(decode_frame(&[1, 2]), Err(FrameError::TooShort { len: 2 }));
        let mut f = encode_frame(&event());
        f.push(0);
        let crc = crc32fast::hash(&f[4..]);
        f[..4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_frame(&f), Err(FrameError::Trailing(1)));
    }
}
