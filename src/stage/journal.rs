//! The upload journal: an append-only log per run, `<stage dir>/journal-<run id>`, of the
//! records of staged files (which key a stage is for, with which attributes, whether its
//! close has returned — committed — and which multipart upload it may have started).
//!
//! Each line is `<crc32 of the JSON, 8 hex digits> <JSON>\n` and holds a stage's whole
//! record (or `null`: the record is gone); a later line replaces an earlier one. A
//! committed record is durable before the close it stands for returns: the line is
//! written, then one `fdatasync` of the log covers every line written so far, so
//! concurrent closers share one (group commit). Lines nobody waits for (open records,
//! removals) are only written. After a crash only lines after the last sync can be torn
//! or garbled; a line that fails its checksum is skipped, and the line after it still
//! counts.
//!
//! At open, the logs of earlier runs (and the `.rec` files of versions before the log) are
//! read back in run order; their live records are written durably at the head of this
//! run's log before the old files are removed, so a crash at any point leaves them in
//! one of the two. The log is rewritten with only its live lines when dead ones dominate,
//! and after a failed sync (a fresh file, synced and renamed into place, is the only
//! proof the records are on disk again). One process at a time uses a stage dir (the
//! daemon's cache-dir lock).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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

/// One line of the log: the record of the stage file `stage` (a name in the stage dir).
#[derive(Serialize, Deserialize)]
struct Line {
    stage: String,
    record: Option<Record>,
}

const LOG_PREFIX: &str = "journal-";
/// The record files of versions before the log, one beside each stage (`<stage>.rec`).
const LEGACY_SUFFIX: &str = ".rec";
/// Below this size the log is never rewritten.
const COMPACT_MIN: u64 = 1 << 20;
/// The log is rewritten once it is this many times the size of its live lines.
const COMPACT_RATIO: u64 = 4;

/// Is this file in the stage dir part of the journal (not a stage)?
pub fn is_journal_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with(LOG_PREFIX)
        || name.ends_with(LEGACY_SUFFIX)
        || name.ends_with(".rec.tmp")
        || name.ends_with(".tmp")
}

/// This run's log.
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    inner: Mutex<Inner>,
    synced: Condvar,
    /// Test hook: this many of the next durable writes fail.
    fail_next: AtomicU32,
}

struct Inner {
    file: Arc<File>,
    /// Length of the log in whole lines written.
    len: u64,
    /// Lines written so far, and how many of them are known to be on disk.
    written: u64,
    synced: u64,
    /// A sync is under way (by the thread that started it, without the lock).
    syncing: bool,
    /// A sync failed and no rewrite succeeded since: lines may be lost from the file.
    needs_rewrite: bool,
    /// The last line of every stage that has a record, for rewriting the log.
    live: HashMap<String, Vec<u8>>,
    live_bytes: u64,
}

impl Journal {
    /// Opens this run's log in `dir`, taking over what earlier runs journaled: returns
    /// their live records by stage name.
    pub fn open(dir: &Path, run_id: &str) -> io::Result<(Journal, HashMap<String, Record>)> {
        let (mut inherited, old_files) = read_earlier(dir)?;
        // A record whose stage file is gone (its removal was not on disk yet) is moot.
        inherited.retain(|stage, _| dir.join(stage).exists());
        let path = dir.join(format!("{LOG_PREFIX}{run_id}"));
        let mut live = HashMap::new();
        for (stage, record) in &inherited {
            live.insert(stage.clone(), encode(stage, Some(record))?);
        }
        let (file, len) = write_durably(dir, &path, &live)?;
        for old in old_files {
            if let Err(e) = std::fs::remove_file(&old)
                && e.kind() != io::ErrorKind::NotFound
            {
                log::warn!("journal: could not remove {}: {e}", old.display());
            }
        }
        let live_bytes = live.values().map(|l| l.len() as u64).sum();
        let journal = Journal {
            dir: dir.to_path_buf(),
            path,
            inner: Mutex::new(Inner {
                file: Arc::new(file),
                len,
                written: 0,
                synced: 0,
                syncing: false,
                needs_rewrite: false,
                live,
                live_bytes,
            }),
            synced: Condvar::new(),
            fail_next: AtomicU32::new(0),
        };
        Ok((journal, inherited))
    }

    /// Puts everything written to the cache dir's file system on disk (for a stage file
    /// that has no descriptor open).
    pub fn sync_file_system(&self) -> io::Result<()> {
        let file = self.lock().file.clone();
        nix::unistd::syncfs(&*file).map_err(io::Error::from)
    }

    /// Sets the record of `stage` (a name in the stage dir); with `durable`, returns
    /// only once it is on disk.
    pub fn put(&self, stage: &str, record: &Record, durable: bool) -> io::Result<()> {
        self.append(stage, Some(record), durable)
    }

    /// Removes the record of `stage` (not waited for: a lost removal only makes a
    /// restart look at a stage file that is gone, or upload one S3 has again).
    pub fn remove(&self, stage: &str) -> io::Result<()> {
        self.append(stage, None, false)
    }

    /// The live records in this run's log, by stage name (for tests and tools).
    pub fn live(&self) -> HashMap<String, Record> {
        let inner = self.lock();
        (inner.live.iter())
            .filter_map(|(stage, line)| Some((stage.clone(), decode(line)?.record?)))
            .collect()
    }

    /// Makes the next `n` durable writes fail, as a full or failing disk would.
    pub fn fail_next_durable_writes(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, stage: &str, record: Option<&Record>, durable: bool) -> io::Result<()> {
        let line = encode(stage, record)?;
        if durable && take_one(&self.fail_next) {
            return Err(io::Error::other("journal write failed (injected)"));
        }
        let mut inner = self.lock();
        if record.is_none() && !inner.live.contains_key(stage) {
            return Ok(()); // nothing to remove
        }
        let at = inner.len;
        if let Err(e) = inner.file.write_all_at(&line, at) {
            // Cut a partial line off so the next one starts clean; if that fails too,
            // the next line overwrites it from the same offset anyway.
            let _ = inner.file.set_len(at);
            return Err(e);
        }
        inner.len += line.len() as u64;
        inner.written += 1;
        let seq = inner.written;
        if let Some(old) = inner.live.remove(stage) {
            inner.live_bytes -= old.len() as u64;
        }
        if record.is_some() {
            inner.live_bytes += line.len() as u64;
            inner.live.insert(stage.to_string(), line);
        }
        if inner.len > COMPACT_MIN
            && inner.len > COMPACT_RATIO * inner.live_bytes
            && !inner.syncing
            && let Err(e) = self.rewrite(&mut inner)
        {
            log::warn!("journal: could not rewrite {}: {e}", self.path.display());
        }
        if durable {
            self.wait_synced(inner, seq)?;
        }
        Ok(())
    }

    /// Waits until line `seq` is on disk: the first waiter syncs for everyone written
    /// so far; the others wait for it and sync again only if their line came later.
    fn wait_synced<'a>(&'a self, mut inner: MutexGuard<'a, Inner>, seq: u64) -> io::Result<()> {
        loop {
            if inner.synced >= seq {
                return Ok(());
            }
            if inner.syncing {
                inner = self.synced.wait(inner).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let target = inner.written;
            let result = if inner.needs_rewrite {
                self.rewrite(&mut inner)
            } else {
                inner.syncing = true;
                let file = inner.file.clone();
                drop(inner);
                let result = file.sync_data();
                inner = self.lock();
                inner.syncing = false;
                match result {
                    Ok(()) => Ok(()),
                    // After a failed fsync the kernel may have dropped the dirty pages:
                    // only a fresh copy of the live records, synced, proves them on disk
                    // again; until one is made, every sync is such a rewrite.
                    Err(e) => self.rewrite(&mut inner).map_err(|_| e),
                }
            };
            inner.needs_rewrite = result.is_err();
            if result.is_ok() {
                inner.synced = inner.synced.max(target);
            }
            self.synced.notify_all();
            result?;
        }
    }

    /// Replaces the log by one holding only the live lines, synced (so every line
    /// written so far counts as on disk).
    fn rewrite(&self, inner: &mut Inner) -> io::Result<()> {
        let (file, len) = write_durably(&self.dir, &self.path, &inner.live)?;
        inner.file = Arc::new(file);
        inner.len = len;
        inner.synced = inner.written;
        Ok(())
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn encode(stage: &str, record: Option<&Record>) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(&Line {
        stage: stage.to_string(),
        record: record.cloned(),
    })
    .map_err(io::Error::other)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

/// The entry in one line of a log (without or with its newline), or None if no part of
/// it passes its checksum. A line glued to the garbled rest of a torn one is found
/// where it starts.
fn decode(line: &[u8]) -> Option<Line> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    (0..line.len())
        .filter(|&at| line.len() > at + 9 && line[at + 8] == b' ' && line[at + 9] == b'{')
        .find_map(|at| {
            let crc = std::str::from_utf8(&line[at..at + 8]).ok()?;
            let crc = u32::from_str_radix(crc, 16).ok()?;
            let json = &line[at + 9..];
            (crc32fast::hash(json) == crc).then(|| serde_json::from_slice(json).ok())?
        })
}

/// Writes `live` to a temporary file, syncs it, renames it to `path` and syncs the dir.
/// Returns the file, open for appending lines at the returned length.
fn write_durably(
    dir: &Path,
    path: &Path,
    live: &HashMap<String, Vec<u8>>,
) -> io::Result<(File, u64)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let mut len = 0;
    for line in live.values() {
        file.write_all_at(line, len)?;
        len += line.len() as u64;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok((file, len))
}

/// The live records of earlier runs, and the files they came from (in the order they
/// were read: legacy record files, then logs oldest first).
#[allow(clippy::type_complexity)]
fn read_earlier(dir: &Path) -> io::Result<(HashMap<String, Record>, Vec<PathBuf>)> {
    let mut logs = Vec::new();
    let mut legacy = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".tmp") {
            // Half a rewrite (the log it was to replace is still there) or half a
            // legacy record (the record before it is still there).
            let _ = std::fs::remove_file(&path);
        } else if let Some(run) = name.strip_prefix(LOG_PREFIX) {
            logs.push((run_order(run), path));
        } else if let Some(stage) = name.strip_suffix(LEGACY_SUFFIX) {
            legacy.push((stage.to_string(), path));
        }
    }
    logs.sort();
    let mut live = HashMap::new();
    let mut files = Vec::new();
    for (stage, path) in legacy {
        match std::fs::read(&path).map(|b| serde_json::from_slice::<Record>(&b)) {
            Ok(Ok(record)) => {
                live.insert(stage, record);
            }
            Ok(Err(e)) => log::warn!("journal: {} is unreadable: {e}", path.display()),
            Err(e) => log::warn!("journal: {}: {e}", path.display()),
        }
        files.push(path);
    }
    for (_, path) in logs {
        let bytes = std::fs::read(&path)?;
        let mut skipped = 0;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            match decode(line) {
                Some(Line {
                    stage,
                    record: Some(record),
                }) => {
                    live.insert(stage, record);
                }
                Some(Line {
                    stage,
                    record: None,
                }) => {
                    live.remove(&stage);
                }
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            log::warn!(
                "journal: skipped {skipped} torn or damaged lines in {} (written after its \
                 last sync, so nothing promised)",
                path.display()
            );
        }
        files.push(path);
    }
    Ok((live, files))
}

/// Sort key of a run id (`<start time in hex nanoseconds>-<pid>`): runs in start order.
fn run_order(run: &str) -> (u128, String) {
    let time = run.split('-').next().unwrap_or("");
    (u128::from_str_radix(time, 16).unwrap_or(0), run.to_string())
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
        match self.fds() {
            Ok(fds) => fds.file.sync_data()?,
            // No descriptor of the stage file could be opened (it was closed to keep
            // within the bound): a close must not fail for that, so the whole file
            // system of the cache dir is synced through the journal's descriptor.
            Err(_) => self.journal.sync_file_system()?,
        }
        let upload_id = record.as_ref().and_then(|r| r.upload_id.clone());
        let new = Record {
            key: key.to_string(),
            state: State::Committed,
            size,
            version,
            meta: attrs.meta,
            upload_id,
        };
        self.journal.put(&self.name, &new, true)?;
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
        match self.journal.put(&self.name, &new, false) {
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
        let durable = new.state == State::Committed;
        match self.journal.put(&self.name, &new, durable) {
            Ok(()) => *record = Some(new),
            Err(e) => log::warn!("journal {}: {e}", self.path.display()),
        }
    }

    /// The committed record follows a rename.
    pub fn rekey(&self, key: &str) -> StageResult<()> {
        let mut record = self.record.lock().unwrap();
        if let Some(r) = record.as_ref() {
            // The record in memory changes only once the journal has the new key: a
            // failed write must not make a later commit believe the key is journaled.
            let new = Record {
                key: key.to_string(),
                ..r.clone()
            };
            self.journal
                .put(&self.name, &new, new.state == State::Committed)?;
            *record = Some(new);
        }
        Ok(())
    }

    /// S3 has the stage up to `version`: a record promising no more than that goes.
    pub(super) fn settle_record(&self, version: u64) {
        let mut record = self.record.lock().unwrap();
        if record.as_ref().is_some_and(|r| r.version <= version) {
            self.drop_record(&mut record);
        }
    }

    /// The file is gone: its record must not bring it back after a crash.
    pub(super) fn forget_record(&self) {
        let mut record = self.record.lock().unwrap();
        self.drop_record(&mut record);
    }

    fn drop_record(&self, record: &mut Option<Record>) {
        if let Err(e) = self.journal.remove(&self.name) {
            log::warn!("journal {}: {e}", self.path.display());
        }
        *record = None;
    }
}

#[cfg(test)]
mod tests;
