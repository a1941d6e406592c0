//! The upload journal: one small record beside each staged file (`<stage>.rec`) saying
//! which key it is for, with which attributes, whether its close has returned
//! (committed) and which multipart upload it may have started. A record is replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory), so after a
//! power cut it is either the old or the new one; a committed record is durable before
//! the close it stands for returns. Every transition of a stage's record is made here,
//! under the stage's record lock; recovery reads the records back.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RecordAttrs, Stage, StageResult};

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
            upload_id: None,
        }
    }
}

fn record_path(stage: &Path) -> PathBuf {
    let mut name = stage.as_os_str().to_owned();
    name.push(".rec");
    PathBuf::from(name)
}

pub fn is_record(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rec" || e == "tmp")
}

/// Replaces the record of `stage`. A committed record (a promise) is made to survive a
/// power cut before this returns; an open one need not be.
fn write(stage: &Path, record: &Record) -> io::Result<()> {
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

impl Stage {
    /// Makes the current content durable in the cache dir and records that it must
    /// reach S3 under `key` (the promise of a returned close or fsync).
    pub fn commit(&self, key: &str, attrs: RecordAttrs) -> StageResult<()> {
        let (size, version) = {
            let mut s = self.state.lock().unwrap();
            self.settle(&mut s)?;
            (s.size, s.version)
        };
        let mut record = self.record.lock().unwrap();
        let already = record.as_ref().is_some_and(|r| {
            r.state == State::Committed
                && r.version == version
                && r.key == key
                && r.meta == attrs.meta
        });
        if already {
            return Ok(()); // this very content is committed already (close, then release)
        }
        self.file.sync_data()?;
        let upload_id = record.as_ref().and_then(|r| r.upload_id.clone());
        let new = Record {
            key: key.to_string(),
            state: State::Committed,
            size,
            version,
            meta: attrs.meta,
            upload_id,
        };
        write(&self.path, &new)?;
        *record = Some(new);
        Ok(())
    }

    /// Journals a new staged file as open (nothing promised yet).
    pub fn note_open(&self, key: &str) {
        let mut record = self.record.lock().unwrap();
        if record.is_some() {
            return;
        }
        let new = Record::open(key);
        match write(&self.path, &new) {
            Ok(()) => *record = Some(new),
            Err(e) => log::warn!("journal {}: {e}", self.path.display()),
        }
    }

    /// Notes a multipart upload started for this file (so a crash cannot leave it
    /// behind), or that it ended (`None`).
    pub(super) fn note_upload(&self, key: &str, upload_id: Option<&str>) {
        let mut record = self.record.lock().unwrap();
        let new = match record.clone() {
            Some(mut r) => {
                r.upload_id = upload_id.map(str::to_string);
                r
            }
            None if upload_id.is_none() => return,
            None => Record {
                upload_id: upload_id.map(str::to_string),
                ..Record::open(key)
            },
        };
        match write(&self.path, &new) {
            Ok(()) => *record = Some(new),
            Err(e) => log::warn!("journal {}: {e}", self.path.display()),
        }
    }

    /// The committed record follows a rename.
    pub fn rekey(&self, key: &str) -> StageResult<()> {
        let mut record = self.record.lock().unwrap();
        if let Some(r) = record.as_mut() {
            r.key = key.to_string();
            write(&self.path, r)?;
        }
        Ok(())
    }

    /// S3 has the stage up to `version`: a record promising no more than that goes.
    pub(super) fn settle_record(&self, version: u64) {
        let mut record = self.record.lock().unwrap();
        if record.as_ref().is_some_and(|r| r.version <= version) {
            if let Err(e) = remove(&self.path) {
                log::warn!("journal {}: {e}", self.path.display());
            }
            *record = None;
        }
    }

    /// The file is gone: its record must not bring it back after a crash.
    pub(super) fn forget_record(&self) {
        let mut record = self.record.lock().unwrap();
        if let Err(e) = remove(&self.path) {
            log::warn!("journal {}: {e}", self.path.display());
        }
        *record = None;
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
