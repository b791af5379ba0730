//! Change detection against a live bbolt writer: applying every diff to
//! the first read gives exactly what bbolt reports at the end.

use crate::fixture::{self, Content};
use ferry_bolt::{BoltError, BoltFile, Change, ChangeTracker, SnapshotReader};
use std::path::Path;
use std::time::{Duration, Instant};

pub fn apply(content: &mut Content, changes: Vec<Change>) {
    for c in changes {
        match c {
            Change::Put {
                buckets,
                key,
                value,
            } => {
                content.insert((buckets, key), Some(value));
            }
            Change::Delete { buckets, key } => {
                assert!(
                    content.remove(&(buckets, key)).is_some(),
                    "delete of a key never seen"
                );
            }
            Change::BucketCreate { buckets, name } => {
                content.insert((buckets, name), None);
            }
            Change::BucketDelete { buckets, name } => {
                assert!(
                    content.remove(&(buckets, name)).is_some(),
                    "delete of a bucket never seen"
                );
            }
        }
    }
}

/// Waits (bounded) for `path` to exist.
pub fn wait_for(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn first_read(file: &BoltFile) -> (ChangeTracker, Content) {
    for _ in 0..100 {
        let mut r = SnapshotReader::new(file).unwrap();
        let mut content = Content::new();
        let done = loop {
            match r.next_chunk(file, 1000) {
                Ok(Some(chunk)) => {
                    for e in chunk {
                        content.insert((e.buckets, e.key), e.value);
                    }
                }
                Ok(None) => break true,
                Err(BoltError::Moved { .. }) => break false,
                Err(e) => panic!("{e}"),
            }
        };
        if done {
            return (r.finish(), content);
        }
    }
    panic!("no consistent first read in 100 attempts");
}

#[test]
fn diffs_replay_to_the_final_content() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let started = dir.path().join("started");
    let mut writer = std::process::Command::new(&bin)
        .arg("random")
        .arg(&db)
        .args(["-keys", "20000", "-seed", "3", "-nosync", "-pause", "300us"])
        .arg("-started")
        .arg(&started)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&started, Duration::from_secs(30));
    let file = BoltFile::open(&db).unwrap();
    let (mut tracker, mut content) = first_read(&file);
    let (mut adjacent, mut wide, mut moved) = (0u32, 0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "the writer did not finish in time"
        );
        let exited = writer.try_wait().unwrap().is_some();
        match tracker.poll(&file) {
            Ok(Some(diff)) => {
                if diff.adjacent {
                    adjacent += 1;
                } else {
                    wide += 1;
                }
                apply(&mut content, diff.changes);
            }
            Ok(None) if exited => break,
            Ok(None) => std::thread::sleep(Duration::from_micros(200)),
            Err(BoltError::Moved { .. }) => moved += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    assert_eq!(tracker.txid(), fixture::field(&report, "txid"));
    let want = fixture::read_dump(&db);
    eprintln!(
        "diffs: {adjacent} adjacent, {wide} over several transactions, {moved} reads overtaken; {} entries",
        want.len()
    );
    assert!(adjacent > 0, "no diff took the page-id path");
    assert_eq!(content.len(), want.len());
    assert!(
        content == want,
        "replayed diffs differ from bbolt's final content"
    );
}
