//! The upload journal: one small record beside each staged file (`<stage>.rec`) saying
//! which key it is for, with which attributes, whether its close has returned
//! (committed) and which multipart upload it may have started. A record is replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory), so after a
//! power cut it is either the old or the new one. Recovery reads them back.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being written; nothing was promised yet.
    Open,
    /// A close or fsync returned (or an upload failed): the data must reach S3.
    Committed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub state: State,
    pub size: u64,
    /// The stage version this record promises (a later upload of an older version
    /// does not discharge it).
    #[serde(default)]
    pub version: u64,
    /// The object's user metadata (`x-amz-meta-*` without the prefix).
    #[serde(default)]
    pub meta: Vec<(String, String)>,
    /// Attributes as records before `meta` carried them (read, not written).
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Seconds since the epoch.
    #[serde(default)]
    pub mtime: u64,
    /// An upload of this file is under way.
    #[serde(default)]
    pub uploading: bool,
    /// A multipart upload started for this file, to abort if it is never completed.
    #[serde(default)]
    pub upload_id: Option<String>,
}

impl Record {
    /// The record of a file being written, before anything was promised.
    pub fn open(key: &str) -> Record {
        Record {
            key: key.to_string(),
            state: State::Open,
            size: 0,
            version: 0,
            meta: Vec::new(),
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            uploading: false,
            upload_id: None,
        }
    }
}

thread_local! {
    static INJECTED_FAILURES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Fault injection for tests: the next `n` record writes on this thread fail.
#[doc(hidden)]
pub fn fail_next_writes(n: u32) {
    INJECTED_FAILURES.with(|c| c.set(n));
}

pub fn record_path(stage: &Path) -> PathBuf {
    let mut name = stage.as_os_str().to_owned();
    name.push(".rec");
    PathBuf::from(name)
}

pub fn is_record(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rec" || e == "tmp")
}

/// Replaces the record of `stage`. A committed record (a promise) is made to survive a
/// power cut before this returns; an open one need not be.
pub fn write(stage: &Path, record: &Record) -> io::Result<()> {
    if INJECTED_FAILURES.with(|n| n.replace(n.get().saturating_sub(1))) > 0 {
        return Err(io::Error::other("injected journal failure"));
    }
    let durable = record.state == State::Committed;
    let path = record_path(stage);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(record).map_err(io::Error::other)?)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&tmp, &path)?;
    if durable && let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn read(stage: &Path) -> io::Result<Record> {
    let bytes = std::fs::read(record_path(stage))?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn remove(stage: &Path) -> io::Result<()> {
    match std::fs::remove_file(record_path(stage)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("s-1");
        let mut rec = Record {
            key: "docs/a b\nc.pdf".into(),
            state: State::Open,
            size: 5,
            version: 2,
            meta: vec![("mode".into(), "33188".into())],
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: 3,
            uploading: false,
            upload_id: None,
        };
        write(&stage, &rec).unwrap();
        assert_eq!(read(&stage).unwrap(), rec);
        rec.state = State::Committed;
        rec.upload_id = Some("u".into());
        write(&stage, &rec).unwrap();
        assert_eq!(read(&stage).unwrap(), rec);
        assert!(is_record(&record_path(&stage)));
        remove(&stage).unwrap();
        assert!(read(&stage).is_err());
        remove(&stage).unwrap();
    }
}
