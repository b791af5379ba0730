//! Integration tests of the Bolt reader and tailer against files written by
//! the real bbolt library (tests/bolt-fixture).

#[path = "../../../../tests/bolt-fixture/fixture.rs"]
mod fixture;

mod corrupt;
mod reader;
mod tail;
mod track;

use ferry_bolt::BoltFile;
use fixture::Content;
use std::path::Path;

/// Everything `file` holds, as the dump format does.
pub fn content_of(path: &Path) -> (u64, Content) {
    let file = BoltFile::open(path).unwrap();
    let (txid, entries) = file.read_all().unwrap();
    let mut out = Content::new();
    for e in entries {
        let dup = out.insert((e.buckets, e.key), e.value);
        assert!(dup.is_none(), "an entry was read twice");
    }
    (txid, out)
}
