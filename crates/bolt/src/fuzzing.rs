//! Fuzzing entry point (`fuzz/fuzz_targets/bolt_read.rs` calls it), kept
//! here so the invariant runs as a unit test too.

use crate::{BoltFile, ChangeTracker};

/// Arbitrary bytes as a Bolt file: opening, reading every entry and
/// building a change tracker never panic and always end; an error names a
/// page or says the bytes are not a Bolt file.
pub fn bolt_read(data: &[u8]) {
    let Ok(file) = BoltFile::from_bytes("fuzz.db", data.to_vec()) else {
        return;
    };
    if let Ok(snap) = file.snapshot() {
        // Bounded by the walk's visited-page set and depth limit.
        for e in snap.entries() {
            if e.is_err() {
                break;
            }
        }
    }
    if let Ok(mut t) = ChangeTracker::index(&file) {
        // Nothing moves in memory: a poll finds no change.
        assert!(matches!(t.poll(&file), Ok(None)));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn odd_inputs_end_cleanly() {
        super::bolt_read(b"");
        super::bolt_read(&[0u8; 8192]);
        let mut v = vec![0u8; 16384];
        v[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        super::bolt_read(&v);
    }
}
