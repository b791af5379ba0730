//! Fuzzing entry points (`fuzz/fuzz_targets/*` call these), kept here so
//! the invariants live beside the code and run as unit tests too.

use crate::frame::{decode_frame, encode_frame};

/// Arbitrary bytes as a frame: never panics; whatever decodes re-encodes to
/// exactly the same bytes (the format has one encoding per event).
pub fn frame(data: &[u8]) {
    if let Ok(event) = decode_frame(data) {
        assert_eq!(
            encode_frame(&event),
            data,
            "frame did not re-encode identically"
        );
    }
}
