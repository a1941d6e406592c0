//! The write-back cache: one staged file per inode under `<cache-dir>/stage/`, shared by
//! every handle open on that inode. Writes, truncates and reads of dirty data go here;
//! `upload` turns a stage into an object. A stage opened on an existing object is filled
//! from S3 lazily: a writer that rewrites the file from offset 0 never downloads it, any
//! other access fetches the rest first. A stage file is deleted only once S3 has its
//! content (or the file was deleted); a stage that failed to upload stays on disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;

mod tail;

use bytes::Bytes;
use tail::{Direct, Tail};

use crate::fs::error::{FsError, FsResult};
use crate::journal::{self, Record};
use crate::store::{ETag, ObjectStore};
use crate::upload::Streaming;

/// The folder of staged files.
pub struct StageDir {
    dir: PathBuf,
    next: AtomicU64,
    run_id: String,
}

impl StageDir {
    pub fn open(cache_dir: &Path) -> io::Result<StageDir> {
        let dir = cache_dir.join("stage");
        std::fs::create_dir_all(&dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(StageDir {
            dir,
            next: AtomicU64::new(1),
            // Unique per open, also when one process opens the same dir twice.
            run_id: format!("{:x}-{}", now.as_nanos(), std::process::id()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Staged data files left by an earlier run (not uploaded when it stopped).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !journal::is_record(p))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with(&self.run_id))
            })
            .collect();
        files.sort();
        files
    }

    /// A stage over a data file an earlier run left, for recovery.
    pub fn adopt(&self, path: &Path) -> FsResult<Stage> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Stage::new(path.to_path_buf(), file, None, size))
    }

    /// A new, empty stage; `base` is the object it stands for, fetched on demand.
    pub fn create(&self, base: Option<RemoteBase>) -> FsResult<Stage> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}", self.run_id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Stage::new(path, file, base, 0))
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
    broken: Option<FsError>,
}

pub struct Stage {
    path: PathBuf,
    file: File,
    direct: Direct,
    /// The journal record as last written (None: there is no record file).
    record: Mutex<Option<Record>>,
    state: Mutex<StageState>,
    fill_lock: tokio::sync::Mutex<()>,
    /// Serialises uploads of this stage.
    pub upload_lock: tokio::sync::Mutex<()>,
}

/// What an upload needs to know about a stage at the moment it starts.
pub struct Snapshot {
    pub size: u64,
    pub version: u64,
}

impl Stage {
    fn new(path: PathBuf, file: File, base: Option<RemoteBase>, size: u64) -> Stage {
        let append_only = base.is_none() && size == 0;
        Stage {
            direct: Direct::open(&path),
            record: Mutex::new(None),
            path,
            file,
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
            }),
            fill_lock: tokio::sync::Mutex::new(()),
            upload_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
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
    fn settle(&self, s: &mut StageState) -> FsResult<()> {
        if let Some(tail) = s.tail.take()
            && let Err(e) = self.direct.flush(&self.file, &tail)
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
    ) -> FsResult<u64> {
        self.prepare(store, Access::Write { offset }).await?;
        self.write_filled(offset, data)
    }

    /// Writes at once if no part of the file still has to come from S3 (the common
    /// case); None means the caller must use [`Stage::write`].
    pub fn try_write_now(&self, offset: u64, data: &[u8]) -> Option<FsResult<u64>> {
        if self.state.lock().unwrap().lazy.is_some() {
            return None;
        }
        Some(self.write_filled(offset, data))
    }

    fn write_filled(&self, offset: u64, data: &[u8]) -> FsResult<u64> {
        if let Some(e) = self.broken() {
            return Err(e);
        }
        self.write_unchecked(offset, data).inspect_err(|e| {
            log::error!(
                "write to the staged file {} failed: {e}; the file will not be uploaded",
                self.path.display()
            );
            self.state.lock().unwrap().broken = Some(e.clone());
        })
    }

    /// Why this stage may not be uploaded, if a write to it failed.
    pub fn broken(&self) -> Option<FsError> {
        self.state.lock().unwrap().broken.clone()
    }

    fn write_unchecked(&self, offset: u64, data: &[u8]) -> FsResult<u64> {
        let end = offset + data.len() as u64;
        let mut s = self.state.lock().unwrap();
        let appending = offset == s.size && s.append_only && s.lazy.is_none();
        if appending && (s.tail.is_some() || self.direct.can_start(s.size)) {
            let size = s.size;
            let tail = s.tail.get_or_insert_with(|| Direct::start_tail(size));
            self.direct.append(&self.file, tail, data)?;
            s.size = end;
            s.version += 1;
            return Ok(end);
        }
        self.settle(&mut s)?;
        drop(s);
        self.file.write_all_at(data, offset)?;
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
        s.version += 1;
        Ok(s.size)
    }

    pub async fn read<S: ObjectStore>(
        &self,
        store: &S,
        offset: u64,
        len: u32,
    ) -> FsResult<Vec<u8>> {
        self.prepare(store, Access::Other).await?;
        let size = {
            let mut s = self.state.lock().unwrap();
            self.settle(&mut s)?;
            s.size
        };
        if offset >= size {
            return Ok(Vec::new());
        }
        let len = (len as u64).min(size - offset) as usize;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break; // a hole at the end (truncate up): zeros
            }
            done += n;
        }
        Ok(buf)
    }

    pub async fn truncate<S: ObjectStore>(&self, store: &S, size: u64) -> FsResult<()> {
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
        self.settle(&mut s)?;
        self.file.set_len(size)?;
        if size < s.size {
            s.append_only = size == 0 && s.streaming.is_none() && s.append_only;
            if let Some(st) = &mut s.streaming {
                st.touched(size);
            }
        }
        s.size = size;
        s.version += 1;
        Ok(())
    }

    /// Brings every byte of the file into the stage (before upload, or any access that
    /// is not a continued rewrite from 0).
    pub async fn fill<S: ObjectStore>(&self, store: &S) -> FsResult<()> {
        self.prepare(store, Access::Other).await
    }

    async fn prepare<S: ObjectStore>(&self, store: &S, access: Access) -> FsResult<()> {
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
            .await
            .map_err(|e| match e {
                crate::store::StoreError::PreconditionFailed => FsError::Stale,
                other => FsError::Store(other),
            })?;
        let mut at = from;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            self.file.write_all_at(&chunk, at)?;
            at += chunk.len() as u64;
        }
        if at != base.size {
            return Err(FsError::Io(format!(
                "{}: got {} of {} bytes from S3",
                base.key, at, base.size
            )));
        }
        let mut s = self.state.lock().unwrap();
        s.lazy = None;
        s.size = s.size.max(base.size);
        Ok(())
    }

    /// Reads `len` bytes at `offset` from the staged file, for uploads.
    pub fn read_exact_at(&self, offset: u64, len: usize) -> FsResult<Bytes> {
        // Bytes an upload reads no longer change (an append-only stage, or one whose
        // changes invalidate the upload), so the tail may be read without the lock.
        let tail = {
            let s = self.state.lock().unwrap();
            s.tail.as_ref().and_then(|t| t.overlap(offset, len))
        };
        Ok(self.direct.read(&self.file, offset, len, tail.as_ref())?)
    }

    /// The size and version an upload starts from; the tail goes to disk first, so
    /// the cache dir holds everything a failed upload leaves behind.
    pub fn snapshot(&self) -> FsResult<Snapshot> {
        let mut s = self.state.lock().unwrap();
        self.settle(&mut s)?;
        Ok(Snapshot {
            size: s.size,
            version: s.version,
        })
    }

    /// Records that S3 now has the stage as it was at `version`.
    pub fn mark_uploaded(&self, version: u64) {
        let mut s = self.state.lock().unwrap();
        s.uploaded_version = s.uploaded_version.max(version);
    }

    pub fn fsync(&self) -> FsResult<()> {
        self.settle(&mut self.state.lock().unwrap())?;
        self.file.sync_data()?;
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

    /// Runs `f` on the streaming upload slot under the state lock.
    pub fn with_streaming<T>(&self, f: impl FnOnce(&mut Option<Streaming>, u64) -> T) -> T {
        let mut s = self.state.lock().unwrap();
        let size = s.size;
        f(&mut s.streaming, size)
    }

    pub fn take_streaming(&self) -> Option<Streaming> {
        self.state.lock().unwrap().streaming.take()
    }

    /// Removes the staged file; only once S3 has its content or the file is gone.
    pub fn discard(&self) {
        self.forget_record();
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("could not remove staged file {}: {e}", self.path.display());
        }
    }

    /// Makes the current content durable in the cache dir and records that it must
    /// reach S3 under `key` (the promise of a returned close or fsync).
    pub fn commit(&self, key: &str, attrs: RecordAttrs) -> FsResult<()> {
        let (size, version) = {
            let mut s = self.state.lock().unwrap();
            self.settle(&mut s)?;
            (s.size, s.version)
        };
        let mut record = self.record.lock().unwrap();
        let already = record.as_ref().is_some_and(|r| {
            r.state == journal::State::Committed
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
            state: journal::State::Committed,
            size,
            version,
            meta: attrs.meta,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            uploading: false,
            upload_id,
        };
        journal::write(&self.path, &new)?;
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
        match journal::write(&self.path, &new) {
            Ok(()) => *record = Some(new),
            Err(e) => log::warn!("journal {}: {e}", self.path.display()),
        }
    }

    /// Journals that an upload of this file starts or stopped.
    pub fn note_uploading(&self, uploading: bool) {
        self.update_record(|r| r.uploading = uploading);
    }

    fn update_record(&self, change: impl FnOnce(&mut Record)) {
        let mut record = self.record.lock().unwrap();
        let Some(mut new) = record.clone() else {
            return;
        };
        change(&mut new);
        match journal::write(&self.path, &new) {
            Ok(()) => *record = Some(new),
            Err(e) => log::warn!("journal {}: {e}", self.path.display()),
        }
    }

    /// Notes a multipart upload started for this file (so a crash cannot leave it
    /// behind), or that it ended (`None`).
    pub fn note_upload(&self, key: &str, upload_id: Option<&str>) {
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
        match journal::write(&self.path, &new) {
            Ok(()) => *record = Some(new),
            Err(e) => log::warn!("journal {}: {e}", self.path.display()),
        }
    }

    /// The committed record follows a rename.
    pub fn rekey(&self, key: &str) -> FsResult<()> {
        let mut record = self.record.lock().unwrap();
        if let Some(r) = record.as_mut() {
            r.key = key.to_string();
            journal::write(&self.path, r)?;
        }
        Ok(())
    }

    /// S3 has the stage up to `version`: a record promising no more than that goes.
    pub fn settle_record(&self, version: u64) {
        let mut record = self.record.lock().unwrap();
        if record.as_ref().is_some_and(|r| r.version <= version) {
            if let Err(e) = journal::remove(&self.path) {
                log::warn!("journal {}: {e}", self.path.display());
            }
            *record = None;
        }
    }

    /// The file is gone: its record must not bring it back after a crash.
    pub fn forget_record(&self) {
        let mut record = self.record.lock().unwrap();
        if let Err(e) = journal::remove(&self.path) {
            log::warn!("journal {}: {e}", self.path.display());
        }
        *record = None;
    }
}

enum Access {
    Write { offset: u64 },
    Other,
}
