//! The journal's log: records survive reopening, torn and damaged lines are skipped
//! without losing the lines after them, concurrent durable writers share syncs, the log
//! is rewritten when dead lines dominate, and records of older versions are taken over.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::*;

fn record(key: &str, state: State, version: u64) -> Record {
    Record {
        key: key.into(),
        state,
        size: version * 10,
        version,
        meta: vec![("mode".into(), "33188".into())],
        upload_id: None,
    }
}

/// Stage files for the records the tests write (a record without its file is dropped).
fn stage_files(dir: &Path) {
    for name in (0..100).map(|i| format!("s-{i}")).chain(["s-kept".into()]) {
        std::fs::write(dir.join(name), b"data").unwrap();
    }
}

fn logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with(LOG_PREFIX) && !name.ends_with(".tmp")
        })
        .collect();
    logs.sort();
    logs
}

#[test]
fn records_survive_a_reopen_and_the_last_line_of_a_stage_wins() {
    let dir = tempfile::tempdir().unwrap();
    stage_files(dir.path());
    let (j, inherited) = Journal::open(dir.path(), "1-1").unwrap();
    assert!(inherited.is_empty());
    j.put("s-1", &record("docs/a b\nc.pdf", State::Open, 0), false)
        .unwrap();
    j.put("s-1", &record("docs/a b\nc.pdf", State::Committed, 2), true)
        .unwrap();
    j.put("s-2", &record("docs/gone", State::Committed, 1), true)
        .unwrap();
    j.remove("s-2").unwrap();
    j.put("s-3", &record("docs/open", State::Open, 0), false)
        .unwrap();
    let expected: HashMap<String, Record> = [
        (
            "s-1".to_string(),
            record("docs/a b\nc.pdf", State::Committed, 2),
        ),
        ("s-3".to_string(), record("docs/open", State::Open, 0)),
    ]
    .into();
    assert_eq!(j.live(), expected);
    drop(j); // as after kill -9: nothing is closed cleanly
    let (again, inherited) = Journal::open(dir.path(), "2-1").unwrap();
    assert_eq!(inherited, expected);
    assert_eq!(again.live(), expected, "taken over into the new log");
    assert_eq!(logs(dir.path()).len(), 1, "the old log is gone");
    // A removal of a record the new run took over is journaled too.
    again.remove("s-3").unwrap();
    drop(again);
    let (_, inherited) = Journal::open(dir.path(), "3-1").unwrap();
    assert_eq!(inherited.len(), 1);
    assert!(inherited.contains_key("s-1"));
}

#[test]
fn a_torn_or_garbled_line_is_skipped_and_the_lines_after_it_count() {
    let dir = tempfile::tempdir().unwrap();
    stage_files(dir.path());
    let (j, _) = Journal::open(dir.path(), "1-1").unwrap();
    for i in 0..5 {
        j.put(&format!("s-{i}"), &record("k", State::Committed, i), true)
            .unwrap();
    }
    drop(j);
    let log = logs(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&log).unwrap();
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    // Line 1 torn in the middle (no newline: the next line is glued to it), line 3
    // with a flipped byte, and a torn last line.
    let mut damaged = Vec::new();
    damaged.extend_from_slice(lines[0]);
    damaged.extend_from_slice(&lines[1][..lines[1].len() / 2]);
    damaged.extend_from_slice(lines[2]);
    let mut flipped = lines[3].to_vec();
    flipped[20] ^= 0x01;
    damaged.extend_from_slice(&flipped);
    damaged.extend_from_slice(&[0u8; 100]);
    damaged.extend_from_slice(lines[4]);
    damaged.extend_from_slice(&lines[4][..10]);
    std::fs::write(&log, damaged).unwrap();
    let (_, inherited) = Journal::open(dir.path(), "2-1").unwrap();
    let mut names: Vec<&str> = inherited.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["s-0", "s-2", "s-4"]);
    assert_eq!(inherited["s-4"], record("k", State::Committed, 4));
}

#[test]
fn every_prefix_of_a_log_reads_back_as_a_prefix_of_its_history() {
    let dir = tempfile::tempdir().unwrap();
    stage_files(dir.path());
    let (j, _) = Journal::open(dir.path(), "1-1").unwrap();
    let mut history = vec![HashMap::new()];
    let mut state = HashMap::new();
    for i in 0..12u64 {
        let stage = format!("s-{}", i % 4);
        if i % 5 == 4 {
            j.remove(&stage).unwrap();
            state.remove(&stage);
        } else {
            let r = record(&format!("key {i}"), State::Committed, i);
            j.put(&stage, &r, i % 2 == 0).unwrap();
            state.insert(stage, r);
        }
        history.push(state.clone());
    }
    drop(j);
    let log = logs(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&log).unwrap();
    // Every line boundary and the bytes around it, and every third byte between.
    let ends: Vec<usize> = (bytes.iter().enumerate())
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    let mut cuts: Vec<usize> = (0..=bytes.len()).step_by(3).collect();
    for end in ends {
        cuts.extend([end - 1, end, (end + 1).min(bytes.len())]);
    }
    for cut in cuts {
        let sub = tempfile::tempdir().unwrap();
        for i in 0..4 {
            std::fs::write(sub.path().join(format!("s-{i}")), b"data").unwrap();
        }
        std::fs::write(sub.path().join("journal-1-1"), &bytes[..cut]).unwrap();
        let (_, inherited) = Journal::open(sub.path(), "2-1").unwrap();
        assert!(
            history.contains(&inherited),
            "a cut at {cut} of {} read back as {inherited:?}",
            bytes.len()
        );
    }
}

#[test]
fn concurrent_durable_writers_all_return_with_their_lines_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    stage_files(dir.path());
    let (j, _) = Journal::open(dir.path(), "1-1").unwrap();
    let j = Arc::new(j);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let r = record(&format!("k{t}"), State::Committed, i);
                    j.put(&format!("s-{t}"), &r, true).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let live = j.live();
    assert_eq!(live.len(), 16);
    assert!(live.values().all(|r| r.version == 49));
    let inner = j.lock();
    assert_eq!(inner.written, 800);
    assert_eq!(inner.synced, 800);
    drop(inner);
    drop(j);
    let (_, inherited) = Journal::open(dir.path(), "2-1").unwrap();
    assert_eq!(inherited, live);
}

#[test]
fn the_log_is_rewritten_when_dead_lines_dominate() {
    let dir = tempfile::tempdir().unwrap();
    stage_files(dir.path());
    let (j, _) = Journal::open(dir.path(), "1-1").unwrap();
    let keep = record("kept", State::Committed, 1);
    j.put("s-kept", &keep, true).unwrap();
    for i in 0..20_000u64 {
        let stage = format!("s-{}", i % 100);
        j.put(&stage, &record("churn", State::Open, i), false)
            .unwrap();
        j.remove(&stage).unwrap();
    }
    let len = j.lock().len;
    assert!(len < 2 * COMPACT_MIN, "the log stayed small: {len} bytes");
    let on_disk = std::fs::metadata(logs(dir.path()).pop().unwrap())
        .unwrap()
        .len();
    assert_eq!(on_disk, len);
    drop(j);
    let (_, inherited) = Journal::open(dir.path(), "2-1").unwrap();
    assert_eq!(inherited, [("s-kept".to_string(), keep)].into());
}

#[test]
fn records_of_versions_before_the_log_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let old = record("docs/legacy", State::Committed, 3);
    std::fs::write(
        dir.path().join("abc-7.rec"),
        serde_json::to_vec(&old).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("abc-7"), b"data").unwrap();
    std::fs::write(dir.path().join("abc-8.rec.tmp"), b"{half").unwrap();
    std::fs::write(dir.path().join("abc-9.rec"), b"not json").unwrap();
    let (j, inherited) = Journal::open(dir.path(), "1-1").unwrap();
    assert_eq!(inherited, [("abc-7".to_string(), old.clone())].into());
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(
        left,
        ["abc-7", "journal-1-1"],
        "the record files were taken over"
    );
    drop(j);
    let (_, inherited) = Journal::open(dir.path(), "2-1").unwrap();
    assert_eq!(inherited, [("abc-7".to_string(), old)].into());
}

#[test]
fn a_failed_durable_write_fails_and_the_next_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    stage_files(dir.path());
    let (j, _) = Journal::open(dir.path(), "1-1").unwrap();
    j.fail_next_durable_writes(1);
    let r = record("k", State::Committed, 1);
    assert!(j.put("s-1", &r, true).is_err());
    j.put("s-1", &r, true).unwrap();
    drop(j);
    let (_, inherited) = Journal::open(dir.path(), "2-1").unwrap();
    assert_eq!(inherited, [("s-1".to_string(), r)].into());
}

#[test]
fn a_record_whose_stage_file_is_gone_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    stage_files(dir.path());
    let (j, _) = Journal::open(dir.path(), "1-1").unwrap();
    j.put("s-1", &record("k", State::Committed, 1), true)
        .unwrap();
    j.put("s-2", &record("k2", State::Committed, 1), true)
        .unwrap();
    drop(j);
    // The upload finished and the file went, but the removal line never reached disk.
    std::fs::remove_file(dir.path().join("s-2")).unwrap();
    let (j, inherited) = Journal::open(dir.path(), "2-1").unwrap();
    assert_eq!(inherited.keys().collect::<Vec<_>>(), ["s-1"]);
    assert_eq!(j.live().len(), 1);
}

#[test]
fn a_commit_whose_stage_file_cannot_be_opened_syncs_the_file_system_and_succeeds() {
    let cache = tempfile::tempdir().unwrap();
    let stages = crate::stage::StageDir::open(cache.path()).unwrap();
    let stage = stages.create(None).unwrap();
    assert_eq!(stage.try_write_now(0, b"committed").unwrap().unwrap(), 9);
    stage.close_file();
    let (dir, away) = (cache.path().join("stage"), cache.path().join("away"));
    std::fs::rename(&dir, &away).unwrap();
    let attrs = crate::stage::RecordAttrs { meta: Vec::new() };
    let committed = stage.commit("k", attrs);
    std::fs::rename(&away, &dir).unwrap();
    committed.expect("the close does not fail for want of a descriptor");
    let record = stages.journaled().remove(&stage.name).expect("journaled");
    assert_eq!((record.state, record.size), (State::Committed, 9));
    assert_eq!(std::fs::read(stage.path()).unwrap(), b"committed");
}
