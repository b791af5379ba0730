//! Damaged, truncated and foreign files: one clear error naming the page.

use crate::fixture;
use ferry_bolt::{BoltError, BoltFile};
use std::path::Path;

fn shapes() -> Option<(tempfile::TempDir, Vec<u8>)> {
    let bin = fixture::program()?;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shapes.db");
    fixture::run(&bin, "shapes", &db, &[]);
    let bytes = std::fs::read(&db).unwrap();
    Some((dir, bytes))
}

/// Opens and reads `bytes` fully; the first error.
fn read(bytes: Vec<u8>) -> BoltError {
    let file = match BoltFile::from_bytes("x.db", bytes) {
        Ok(f) => f,
        Err(e) => return e,
    };
    file.read_all()
        .expect_err("damaged input read without an error")
        .clone()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Page ids of pages with `flag`, among those the newest tree uses.
fn pages_with(bytes: &[u8], flag: u16) -> Vec<u64> {
    let ps = 4096;
    let file = BoltFile::from_bytes("x.db", bytes.to_vec()).unwrap();
    let hwm = file.head().unwrap().hwm;
    (2..hwm)
        .filter(|p| {
            let at = *p as usize * ps;
            u64_at(bytes, at) == *p && u16::from_le_bytes([bytes[at + 8], bytes[at + 9]]) == flag
        })
        .collect()
}

#[test]
fn not_bolt_files_say_so() {
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("text", b"{\"this\": \"is json\"}".repeat(500)),
        ("zeros", vec![0u8; 65536]),
    ] {
        let e = read(bytes);
        assert!(matches!(e, BoltError::NotBolt { .. }), "{what}: {e}");
        assert!(
            e.to_string().contains("is not a Bolt database"),
            "{what}: {e}"
        );
    }
    let missing = BoltFile::open(Path::new("/nonexistent/cells/docstore.db")).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("/nonexistent/cells/docstore.db"),
        "{missing}"
    );
}

#[test]
fn truncated_file_names_the_meta_page() {
    let Some((_dir, bytes)) = shapes() else {
        return;
    };
    let e = read(bytes[..bytes.len() / 3].to_vec());
    let BoltError::Corrupt {
        page, ref reason, ..
    } = e
    else {
        panic!("{e}")
    };
    assert!(page < 2 && reason.contains("truncated"), "{e}");
    assert!(e.to_string().contains(&format!("page {page}")), "{e}");
}

#[test]
fn damaged_pages_are_named() {
    let Some((_dir, bytes)) = shapes() else {
        return;
    };
    let ps = 4096usize;
    // Leaves whose first element points far past the page (every leaf:
    // some pages belong to older trees, not the newest).
    let mut b = bytes.clone();
    for p in pages_with(&bytes, 0x02) {
        let at = p as usize * ps + 16 + 4;
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    let e = read(b);
    assert!(matches!(e, BoltError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("past the page"), "{e}");

    // A branch that points to itself: a loop, reported, not followed.
    let mut b = bytes.clone();
    for p in pages_with(&bytes, 0x01) {
        let at = p as usize * ps + 16 + 8;
        b[at..at + 8].copy_from_slice(&p.to_le_bytes());
    }
    let e = read(b);
    assert!(e.to_string().contains("reached twice"), "{e}");

    // A page whose header names another page.
    let mut b = bytes.clone();
    for p in pages_with(&bytes, 0x01) {
        let at = p as usize * ps;
        b[at..at + 8].copy_from_slice(&(p + 1000).to_le_bytes());
    }
    let e = read(b);
    let BoltError::Corrupt { page, .. } = e else {
        panic!("{e}")
    };
    assert!(
        e.to_string().contains(&format!(
            "page {page}: the page header says it is page {}",
            page + 1000
        )),
        "{e}"
    );

    // Both meta checksums broken.
    let mut b = bytes.clone();
    b[16 + 50] ^= 0xFF;
    b[ps + 16 + 50] ^= 0xFF;
    let e = read(b);
    assert!(e.to_string().contains("checksum"), "{e}");

    // One broken meta: the other one is used.
    let file = BoltFile::from_bytes("x.db", bytes.clone()).unwrap();
    let newest = file.head().unwrap().txid;
    let mut b = bytes.clone();
    let at = (newest % 2) as usize * ps + 16 + 50;
    b[at] ^= 0xFF;
    let older = BoltFile::from_bytes("x.db", b)
        .unwrap()
        .head()
        .unwrap()
        .txid;
    assert_eq!(older, newest - 1);
}

#[test]
fn every_single_byte_flip_ends_cleanly() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    fixture::run(&bin, "cells", dir.path(), &[]);
    let bytes = std::fs::read(dir.path().join("versions.db")).unwrap();
    let (mut errors, mut reads) = (0, 0);
    // Every 7th byte of the file, flipped: no panic, no hang, and every
    // error names a page or the file's kind.
    for at in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[at] ^= 0xA5;
        match BoltFile::from_bytes("x.db", b).and_then(|f| f.read_all()) {
            Ok(_) => reads += 1,
            Err(e) => {
                errors += 1;
                let s = e.to_string();
                assert!(s.contains("page") || s.contains("not a Bolt"), "{s}");
            }
        }
    }
    assert!(
        errors > 0 && reads > 0,
        "errors {errors}, clean reads {reads}"
    );
}
