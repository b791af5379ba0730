//! The reader against bbolt's own view of real files.

use crate::{content_of, fixture};
use ferry_bolt::BoltFile;

#[test]
fn shapes_match_bbolt() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shapes.db");
    fixture::run(&bin, "shapes", &db, &[]);
    let (_, got) = content_of(&db);
    let want = fixture::read_dump(&db);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the reader and bbolt disagree on shapes.db");
    // The shapes the fixture promises are really there.
    let big = got
        .iter()
        .filter(|((b, _), v)| b == &[b"big".to_vec()] && v.as_ref().is_some_and(|v| v.len() > 4096))
        .count();
    assert_eq!(big, 5, "values over a page");
    assert!(got.contains_key(&(
        (0..5).fold(vec![b"nested".to_vec()], |mut p, d| {
            p.push(format!("level-{d}").into_bytes());
            p
        }),
        b"here".to_vec()
    )));
    assert_eq!(
        got.get(&(vec![b"small".to_vec()], b"nil-value".to_vec())),
        Some(&Some(vec![]))
    );
    assert_eq!(got.get(&(vec![], b"empty".to_vec())), Some(&None));
}

#[test]
fn cells_files_match_bbolt() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    fixture::run(&bin, "cells", dir.path(), &[]);
    let mut checked = 0;
    for name in [
        "activities.db",
        "chat.db",
        "configs-versions.db",
        "docstore.db",
        "jobs.db",
        "queue.db",
        "versions.db",
    ] {
        let db = dir.path().join(name);
        let (_, got) = content_of(&db);
        let want = fixture::read_dump(&db);
        assert!(!want.is_empty(), "{name} is empty");
        assert!(got == want, "the reader and bbolt disagree on {name}");
        checked += got.len();
    }
    assert!(checked > 500, "only {checked} entries checked");
}

#[test]
fn lazy_entries_hold_one_page_at_a_time() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shapes.db");
    fixture::run(&bin, "shapes", &db, &[]);
    let file = BoltFile::open(&db).unwrap();
    let snap = file.snapshot().unwrap();
    assert!(snap.is_current().unwrap());
    let mut entries = snap.entries();
    let first = entries.next().unwrap().unwrap();
    assert!(
        entries.pages_read() <= 4,
        "read {} pages for one entry",
        entries.pages_read()
    );
    let rest = entries.count() + 1;
    assert_eq!(rest, fixture::read_dump(&db).len());
    assert!(
        first.value.is_none(),
        "the first top-level entry is a bucket"
    );
}

/// Big enough (about 10,000 pages) that the reader reads ahead on helper
/// threads for most of it; small enough to dump.
#[test]
fn a_file_read_ahead_matches_bbolt() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    fixture::run(&bin, "big", &db, &["-mb", "40"]);
    fixture::run(&bin, "dump", &db, &[]);
    let (_, got) = content_of(&db);
    let want = fixture::read_dump(&db);
    assert!(want.len() > 100_000, "only {} entries", want.len());
    assert!(got == want, "the reader and bbolt disagree on big.db");
    let file = BoltFile::open(&db).unwrap();
    let mut entries = 0u64;
    let n = file
        .snapshot()
        .unwrap()
        .visit(&mut |_, _, _| entries += 1)
        .unwrap();
    assert_eq!((n, entries), (want.len() as u64, want.len() as u64));
}
