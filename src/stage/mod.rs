//! The write-back cache: one staged file per inode under `<cache-dir>/stage/`, shared by
//! every handle open on that inode. Writes, truncates and reads of dirty data go here;
//! `upload` turns a stage into an object. A stage opened on an existing object is filled
//! from S3 lazily: a writer that rewrites the file from offset 0 never downloads it, any
//! other access fetches the rest first. A stage file is deleted only once S3 has its
//! content (or the file was deleted); a stage that failed to upload stays on disk.
//! Uploads of a stage take turns ([`Stage::upload_turn`]); the journal (one log per run)
//! is changed only by `journal.rs`, and what an earlier run left is read back by
//! `recover.rs`. Stage files are created ahead in batches, one directory sync per batch,
//! so a close's fsync never waits for a directory entry. Fallocate and
//! SEEK_DATA/SEEK_HOLE are in `space.rs`. Errors are [`StageError`]s: local I/O, a full
//! cache disk, or S3 when the rest of a file is fetched. A stage owns no descriptor: it
//! borrows its file's from the bounded set in `fds.rs`, which reopens the file by its path
//! when needed, so a backlog of thousands of queued stages keeps at most
//! [`OPEN_STAGE_FILES`] of them open; a stage nobody has open closes its file at once
//! ([`Stage::close_file`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt;

mod fds;
mod journal;
mod recover;
mod space;
mod tail;

pub use fds::OPEN_STAGE_FILES;
pub use recover::{Committed, Leftover};
pub use space::SpaceOp;

use bytes::Bytes;
use fds::{Fds, OpenFiles};
use tail::{Direct, Tail};

use crate::store::{ETag, ObjectStore, StoreError};
use crate::upload::{PartSource, Streaming};
use journal::Journal;
pub use journal::{Record, State as RecordState};

/// What can go wrong with a staged file.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StageError {
    #[error("no space left in the cache directory")]
    NoSpace,
    #[error("local I/O error: {0}")]
    Io(String),
    #[error("S3: {0}")]
    Store(#[from] StoreError),
}

pub type StageResult<T> = Result<T, StageError>;

impl From<io::Error> for StageError {
    fn from(e: io::Error) -> StageError {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StageError::NoSpace,
            _ => StageError::Io(e.to_string()),
        }
    }
}

/// How many stage files are created (and their directory synced) at a time.
const SPARE_BATCH: usize = 32;

/// The folder of staged files.
pub struct StageDir {
    dir: PathBuf,
    next: AtomicU64,
    run_id: String,
    journal: Arc<Journal>,
    /// What earlier runs journaled, by stage file name (for recovery).
    inherited: HashMap<String, Record>,
    /// Empty stage files of this run whose directory entries are on disk already (by
    /// name: a spare holds no descriptor).
    spares: Mutex<Vec<PathBuf>>,
    /// The stage files open now, at most a fixed number.
    files: Arc<OpenFiles>,
}

impl StageDir {
    pub fn open(cache_dir: &Path) -> io::Result<StageDir> {
        let dir = cache_dir.join("stage");
        std::fs::create_dir_all(&dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Unique per open, also when one process opens the same dir twice.
        let run_id = format!("{:x}-{}", now.as_nanos(), std::process::id());
        let (journal, inherited) = Journal::open(&dir, &run_id)?;
        Ok(StageDir {
            dir,
            next: AtomicU64::new(1),
            run_id,
            journal: Arc::new(journal),
            inherited,
            spares: Mutex::new(Vec::new()),
            files: Arc::new(OpenFiles::new(OPEN_STAGE_FILES)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty stage; `base` is the object it stands for, fetched on demand.
    pub fn create(&self, base: Option<RemoteBase>) -> StageResult<Stage> {
        let path = self.spare()?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok(self.stage(path, file, base, 0))
    }

    /// A stage over the stage file `path`, open as `file`, of `size` bytes.
    fn stage(&self, path: PathBuf, file: File, base: Option<RemoteBase>, size: u64) -> Stage {
        let id = self.files.register(file);
        Stage::new(
            path,
            id,
            self.files.clone(),
            base,
            size,
            self.journal.clone(),
        )
    }

    /// An empty stage file whose directory entry is on disk (a data sync of the file
    /// then makes its content durable under its name).
    fn spare(&self) -> io::Result<PathBuf> {
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = spares.pop() {
            return Ok(path);
        }
        let mut made = Vec::with_capacity(SPARE_BATCH);
        let result = (|| {
            for _ in 0..SPARE_BATCH {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                let path = self.dir.join(format!("{}-{n}", self.run_id));
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                made.push(path);
            }
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = result {
            for path in made {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        made.reverse(); // handed out in creation order
        let path = made.pop().expect("a batch is never empty");
        *spares = made;
        Ok(path)
    }

    /// The live journal records of this run, by stage file name.
    pub fn journaled(&self) -> HashMap<String, Record> {
        self.journal.live()
    }

    /// Makes the next `n` journal writes that a close waits for fail (a failing disk).
    pub fn fail_next_journal_writes(&self, n: u32) {
        self.journal.fail_next_durable_writes(n);
    }
}

impl Drop for StageDir {
    fn drop(&mut self) {
        for path in self
            .spares
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The attributes a committed record carries to the object: its user metadata.
#[derive(Clone, Debug)]
pub struct RecordAttrs {
    pub meta: Vec<(String, String)>,
}

/// The remote object a stage was opened on.
#[derive(Clone, Debug)]
pub struct RemoteBase {
    pub key: String,
    pub etag: ETag,
    pub size: u64,
}

struct Lazy {
    base: RemoteBase,
    /// Bytes `[0, filled_to)` of the file hold written data; `[filled_to, base.size)` are
    /// still only in S3 (nothing else has touched them).
    filled_to: u64,
}

struct StageState {
    size: u64,
    /// Bumped on every change; the stage is dirty while it differs from `uploaded_version`.
    version: u64,
    uploaded_version: u64,
    lazy: Option<Lazy>,
    /// Every write so far appended at the end of a stage that started empty: parts
    /// below the end will not change, so they may be uploaded while writing goes on.
    append_only: bool,
    streaming: Option<Streaming>,
    deleted: bool,
    /// Appended bytes not on disk yet (large sequential writers only).
    tail: Option<Tail>,
    /// A write failed (a full cache disk): the stage no longer holds what the
    /// application wrote, so it must never be uploaded.
    broken: Option<StageError>,
    /// Since when the stage holds data S3 does not have (None while clean).
    dirty_since: Option<SystemTime>,
    /// Why the last upload failed, until one succeeds.
    upload_failure: Option<String>,
}

impl StageState {
    /// Counts a change of the data: the stage is dirty from now on, if it was not.
    fn changed(&mut self) {
        if self.version == self.uploaded_version {
            self.dirty_since = Some(SystemTime::now());
        }
        self.version += 1;
    }
}

pub struct Stage {
    path: PathBuf,
    /// The file's name in the stage dir: what the journal knows it by.
    name: String,
    journal: Arc<Journal>,
    /// Its key in `files`, which lends out the file's descriptors.
    id: u64,
    files: Arc<OpenFiles>,
    direct: Direct,
    /// The journal record as last written (None: there is no record file).
    record: Mutex<Option<Record>>,
    state: Mutex<StageState>,
    fill_lock: tokio::sync::Mutex<()>,
    /// Serialises uploads of this stage, and what must not run during one (a DELETE
    /// that an upload could undo); taken through [`Stage::upload_turn`].
    upload_lock: tokio::sync::Mutex<()>,
}

/// The exclusive right to upload a stage (or to keep an upload from running).
pub struct UploadTurn<'a> {
    stage: &'a Stage,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl UploadTurn<'_> {
    /// Brings the whole file into the stage and puts it on disk; returns the size and
    /// version an upload starts from, and the upload started while writing, if any.
    pub async fn prepare<S: ObjectStore>(
        &self,
        store: &S,
    ) -> StageResult<(Snapshot, Option<Streaming>)> {
        self.stage.fill(store).await?;
        let snapshot = self.stage.snapshot()?;
        Ok((snapshot, self.stage.take_streaming()))
    }

    /// Brings the whole file into the stage and puts it on disk, leaving an upload
    /// started while writing in place: the size and version of the content as it is
    /// now, for a copy of it elsewhere (the trash) that does not make the stage clean.
    pub async fn snapshot_whole<S: ObjectStore>(&self, store: &S) -> StageResult<Snapshot> {
        self.stage.fill(store).await?;
        self.stage.snapshot()
    }

    /// S3 now has the stage as it was at `version`: it is clean unless changed since.
    /// Then [`UploadTurn::settle_record`].
    pub fn mark_uploaded(&self, version: u64) {
        self.stage.mark_uploaded(version);
    }

    /// A journal record promising no more than `version` goes (S3 has it).
    pub fn settle_record(&self, version: u64) {
        self.stage.settle_record(version);
    }
}

/// What an upload needs to know about a stage at the moment it starts.
pub struct Snapshot {
    pub size: u64,
    pub version: u64,
}

impl Stage {
    fn new(
        path: PathBuf,
        id: u64,
        files: Arc<OpenFiles>,
        base: Option<RemoteBase>,
        size: u64,
        journal: Arc<Journal>,
    ) -> Stage {
        let append_only = base.is_none() && size == 0;
        let has_base = base.is_some();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Stage {
            direct: Direct::open(&path),
            record: Mutex::new(None),
            name,
            journal,
            path,
            id,
            files,
            state: Mutex::new(StageState {
                size: base.as_ref().map_or(size, |b| b.size),
                version: 1,
                uploaded_version: if base.is_some() { 1 } else { 0 },
                lazy: base.map(|b| Lazy {
                    base: b,
                    filled_to: 0,
                }),
                append_only,
                streaming: None,
                deleted: false,
                tail: None,
                broken: None,
                // A stage without a remote base starts with data S3 does not have.
                dirty_since: (!has_base).then(SystemTime::now),
                upload_failure: None,
            }),
            fill_lock: tokio::sync::Mutex::new(()),
            upload_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptors of the stage file, opened again if they were closed. Held only
    /// for the duration of one operation.
    fn fds(&self) -> io::Result<Arc<Fds>> {
        self.files.get(self.id, &self.path).inspect_err(|e| {
            log::warn!(
                "could not open the staged file {}: {e}",
                self.path.display()
            );
        })
    }

    /// Closes the stage file (nobody has the file open and it is committed: it waits for
    /// its upload without a descriptor). The next operation opens it again.
    pub fn close_file(&self) {
        self.files.close(self.id);
    }

    pub fn size(&self) -> u64 {
        self.state.lock().unwrap().size
    }

    pub fn is_dirty(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.version != s.uploaded_version && !s.deleted
    }

    /// Has this stage never been uploaded, i.e. is there no object for it in S3 yet?
    pub fn is_local_only(&self) -> bool {
        self.state.lock().unwrap().uploaded_version == 0
    }

    /// Puts the bytes of the append tail on disk.
    fn settle(&self, s: &mut StageState) -> StageResult<()> {
        if s.tail.is_none() {
            return Ok(());
        }
        let fds = self.fds()?;
        self.settle_with(&fds, s)
    }

    /// [`Stage::settle`] through descriptors the caller holds.
    fn settle_with(&self, fds: &Fds, s: &mut StageState) -> StageResult<()> {
        if let Some(tail) = s.tail.take()
            && let Err(e) = self.direct.flush(fds, &tail)
        {
            s.tail = Some(tail);
            return Err(e.into());
        }
        Ok(())
    }

    /// Writes `data` at `offset`, fetching the rest of the remote object first unless
    /// this write continues a rewrite from offset 0. Returns the new size.
    pub async fn write<S: ObjectStore>(
        &self,
        store: &S,
        offset: u64,
        data: &[u8],
    ) -> StageResult<u64> {
        self.prepare(store, Access::Write { offset }).await?;
        self.write_filled(offset, data)
    }

    /// Writes at once if no part of the file still has to come from S3 (the common
    /// case); None means the caller must use [`Stage::write`].
    pub fn try_write_now(&self, offset: u64, data: &[u8]) -> Option<StageResult<u64>> {
        if self.state.lock().unwrap().lazy.is_some() {
            return None;
        }
        Some(self.write_filled(offset, data))
    }

    fn write_filled(&self, offset: u64, data: &[u8]) -> StageResult<u64> {
        if let Some(e) = self.broken() {
            return Err(e);
        }
        // A stage file that cannot be opened fails this write and changes nothing: the
        // stage is not broken by it (what it holds is still what was written).
        let fds = self.fds()?;
        self.write_unchecked(&fds, offset, data).inspect_err(|e| {
            log::error!(
                "write to the staged file {} failed: {e}; the file will not be uploaded",
                self.path.display()
            );
            self.state.lock().unwrap().broken = Some(e.clone());
        })
    }

    /// Why this stage may not be uploaded, if a write to it failed.
    pub fn broken(&self) -> Option<StageError> {
        self.state.lock().unwrap().broken.clone()
    }

    fn write_unchecked(&self, fds: &Fds, offset: u64, data: &[u8]) -> StageResult<u64> {
        let end = offset + data.len() as u64;
        let mut s = self.state.lock().unwrap();
        let appending = offset == s.size && s.append_only && s.lazy.is_none();
        if appending && (s.tail.is_some() || self.direct.can_start(s.size)) {
            let size = s.size;
            let tail = s.tail.get_or_insert_with(|| Direct::start_tail(size));
            self.direct.append(fds, tail, data)?;
            s.size = end;
            s.changed();
            return Ok(end);
        }
        self.settle_with(fds, &mut s)?;
        drop(s);
        fds.file.write_all_at(data, offset)?;
        let mut s = self.state.lock().unwrap();
        if offset != s.size {
            s.append_only = false;
            if let Some(st) = &mut s.streaming {
                st.touched(offset);
            }
        }
        if let Some(lazy) = &mut s.lazy {
            lazy.filled_to = lazy.filled_to.max(end);
        }
        s.size = s.size.max(end);
        s.changed();
        Ok(s.size)
    }

    pub async fn read<S: ObjectStore>(
        &self,
        store: &S,
        offset: u64,
        len: u32,
    ) -> StageResult<Vec<u8>> {
        self.prepare(store, Access::Other).await?;
        let fds = self.fds()?;
        let size = {
            let mut s = self.state.lock().unwrap();
            self.settle_with(&fds, &mut s)?;
            s.size
        };
        if offset >= size {
            return Ok(Vec::new());
        }
        let len = (len as u64).min(size - offset) as usize;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = fds.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break; // a hole at the end (truncate up): zeros
            }
            done += n;
        }
        Ok(buf)
    }

    pub async fn truncate<S: ObjectStore>(&self, store: &S, size: u64) -> StageResult<()> {
        // Opened before anything changes: a stage file that cannot be opened fails the
        // truncate and leaves the stage as it was.
        let fds = self.fds()?;
        let keeps_no_remote = {
            let s = self.state.lock().unwrap();
            s.lazy.as_ref().is_some_and(|l| size <= l.filled_to)
        };
        if keeps_no_remote {
            self.state.lock().unwrap().lazy = None;
        } else {
            self.prepare(store, Access::Other).await?;
        }
        let mut s = self.state.lock().unwrap();
        self.settle_with(&fds, &mut s)?;
        fds.file.set_len(size)?;
        if size < s.size {
            s.append_only = size == 0 && s.streaming.is_none() && s.append_only;
            if let Some(st) = &mut s.streaming {
                st.touched(size);
            }
        }
        s.size = size;
        s.changed();
        Ok(())
    }

    /// Brings every byte of the file into the stage (before upload, or any access that
    /// is not a continued rewrite from 0).
    pub async fn fill<S: ObjectStore>(&self, store: &S) -> StageResult<()> {
        self.prepare(store, Access::Other).await
    }

    async fn prepare<S: ObjectStore>(&self, store: &S, access: Access) -> StageResult<()> {
        if self.state.lock().unwrap().lazy.is_none() {
            return Ok(());
        }
        let _fill = self.fill_lock.lock().await;
        let (base, from) = {
            let mut s = self.state.lock().unwrap();
            let Some(lazy) = &s.lazy else { return Ok(()) };
            if let Access::Write { offset } = access
                && offset == lazy.filled_to
            {
                return Ok(());
            }
            if lazy.filled_to >= lazy.base.size {
                s.lazy = None;
                return Ok(());
            }
            (lazy.base.clone(), lazy.filled_to)
        };
        let mut chunks = store
            .get_range(&base.key, from..base.size, Some(&base.etag))
            .await?;
        let mut at = from;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            self.fds()?.file.write_all_at(&chunk, at)?;
            at += chunk.len() as u64;
        }
        if at != base.size {
            return Err(StageError::Io(format!(
                "{}: got {} of {} bytes from S3",
                base.key, at, base.size
            )));
        }
        let mut s = self.state.lock().unwrap();
        s.lazy = None;
        s.size = s.size.max(base.size);
        Ok(())
    }

    /// Waits for any upload of this stage to end and keeps others from starting until
    /// the turn is dropped.
    pub async fn upload_turn(&self) -> UploadTurn<'_> {
        UploadTurn {
            stage: self,
            _guard: self.upload_lock.lock().await,
        }
    }

    /// The size and version an upload starts from; the tail goes to disk first, so
    /// the cache dir holds everything a failed upload leaves behind.
    fn snapshot(&self) -> StageResult<Snapshot> {
        let mut s = self.state.lock().unwrap();
        self.settle(&mut s)?;
        Ok(Snapshot {
            size: s.size,
            version: s.version,
        })
    }

    /// Records that S3 now has the stage as it was at `version`.
    fn mark_uploaded(&self, version: u64) {
        let mut s = self.state.lock().unwrap();
        s.uploaded_version = s.uploaded_version.max(version);
        s.upload_failure = None;
        if s.version == s.uploaded_version {
            s.dirty_since = None;
        }
    }

    /// Since when the stage holds data S3 does not have, if it does.
    pub fn pending_since(&self) -> Option<SystemTime> {
        let s = self.state.lock().unwrap();
        let dirty = s.version != s.uploaded_version && !s.deleted;
        dirty.then(|| s.dirty_since.unwrap_or_else(SystemTime::now))
    }

    /// The last upload of this stage failed, for `reason` (kept until one succeeds).
    pub fn note_upload_failure(&self, reason: String) {
        self.state.lock().unwrap().upload_failure = Some(reason);
    }

    /// Why the last upload failed, if it did and none succeeded since.
    pub fn upload_failure(&self) -> Option<String> {
        self.state.lock().unwrap().upload_failure.clone()
    }

    pub fn fsync(&self) -> StageResult<()> {
        let fds = self.fds()?;
        self.settle_with(&fds, &mut self.state.lock().unwrap())?;
        fds.file.sync_data()?;
        Ok(())
    }

    /// The file was deleted: nothing of it may be uploaded any more.
    pub fn mark_deleted(&self) -> Option<Streaming> {
        self.forget_record();
        let mut s = self.state.lock().unwrap();
        s.deleted = true;
        s.streaming.take()
    }

    pub fn may_stream(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.append_only && s.lazy.is_none() && !s.deleted
    }

    /// Has a streaming upload been started?
    pub fn is_streaming(&self) -> bool {
        self.state.lock().unwrap().streaming.is_some()
    }

    /// Runs `f` on the streaming upload slot and the size, under the state lock, if the
    /// stage may stream ([`Stage::may_stream`]).
    pub fn with_streaming(&self, f: impl FnOnce(&mut Option<Streaming>, u64)) {
        let mut s = self.state.lock().unwrap();
        if s.append_only && s.lazy.is_none() && !s.deleted {
            let size = s.size;
            f(&mut s.streaming, size);
        }
    }

    pub fn take_streaming(&self) -> Option<Streaming> {
        self.state.lock().unwrap().streaming.take()
    }

    /// Removes the staged file; only once S3 has its content or the file is gone. Its
    /// descriptor is closed first, so that the space is free when the name is gone
    /// (a full cache disk serves again as soon as the failed file's stage is removed).
    pub fn discard(&self) {
        self.close_file();
        self.forget_record();
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("could not remove staged file {}: {e}", self.path.display());
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.close_file();
    }
}

impl PartSource for Stage {
    fn read_part(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        // Bytes an upload reads no longer change (an append-only stage, or one whose
        // changes invalidate the upload), so the tail may be read without the lock.
        let (tail, size) = {
            let s = self.state.lock().unwrap();
            (s.tail.as_ref().and_then(|t| t.overlap(offset, len)), s.size)
        };
        let fds = self.fds()?;
        self.direct.read(&fds, (offset, len), size, tail.as_ref())
    }

    fn multipart_started(&self, key: &str, upload_id: Option<&str>) {
        self.note_upload(key, upload_id);
    }
}

enum Access {
    Write { offset: u64 },
    Other,
}
