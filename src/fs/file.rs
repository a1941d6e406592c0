//! File I/O: open and create, reads (from the stage when there is one, else from S3),
//! writes into the stage, and the close, fsync and release of a handle.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::handles::{FileHandle, Handle};
use super::inodes::{Found, InodeTable};
use super::page_cache::{self, PageCache};
use super::{Attr, Caller, Extras, FsError, FsResult, Kind, OpenMode, S3Fs, now};
use crate::layout::check_name;
use crate::read::Reader;
use crate::stage::{RemoteBase, Stage};
use crate::store::{ObjectStore, StoreError};

impl<S: ObjectStore> S3Fs<S> {
    /// The stage of `ino`, created if the file has none (empty when `truncate`,
    /// otherwise standing for the object in S3, fetched only when needed).
    pub(super) fn stage_for_write(&self, ino: u64, truncate: bool) -> FsResult<Arc<Stage>> {
        let mut table = self.inodes.lock().unwrap();
        let inode = table.get(ino).ok_or(FsError::NotFound)?;
        if inode.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if let Some(stage) = table.stage(ino) {
            return Ok(stage);
        }
        let base = if truncate {
            None
        } else {
            let key = self
                .layout
                .file_key(&table.path(ino).ok_or(FsError::NotFound)?);
            inode.remote.as_ref().map(|r| RemoteBase {
                key,
                etag: r.etag.clone(),
                size: r.size,
            })
        };
        let base_etag = base.as_ref().map(|b| b.etag.clone());
        let stage = Arc::new(self.stages.create(base)?);
        if let Some(path) = table.path(ino) {
            stage.note_open(&self.layout.file_key(&path));
        }
        table.set_stage(ino, Some(stage.clone()));
        if let Some(inode) = table.get_mut(ino) {
            page_cache::stage_started(inode.page_cache(), &stage, base_etag.as_ref());
        }
        Ok(stage)
    }

    pub async fn open(&self, ino: u64, mode: OpenMode) -> FsResult<(u64, bool)> {
        if mode.truncate && self.handles.has_exec(ino) {
            // The kernel checks this itself before a write-mode open, but an O_RDONLY |
            // O_TRUNC open reaches us first: truncated here, the running program would
            // lose the pages it maps (it dies of SIGBUS or SIGSEGV).
            return Err(FsError::TextBusy);
        }
        // O_TRUNC truncates even a read-only open (Linux does so for whoever may write
        // the file; the kernel checked that): the handle then saves the change as a
        // writer would, at its close.
        let writes = mode.write || mode.truncate;
        if writes {
            self.check_writable()?;
            if self.closing.load(Ordering::Relaxed) {
                return Err(FsError::ReadOnly);
            }
            let stage = self.stage_for_write(ino, mode.truncate)?;
            if mode.truncate {
                if stage.size() > 0 {
                    stage.truncate(&*self.store, 0).await?;
                }
                let t = now();
                if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
                    inode.attr.size = 0;
                    inode.attr.mtime = t;
                    inode.attr.ctime = t;
                }
            }
        }
        if !writes && self.version_unknown(ino) {
            // A read found the version the table had gone: open the current one.
            if self.ensure_meta(ino).await?.ino != ino {
                return Err(FsError::NotFound); // now another kind of object
            }
        }
        let mut table = self.inodes.lock().unwrap();
        let inode = table.get(ino).ok_or(FsError::NotFound)?;
        if inode.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let reader = match (&inode.remote, writes, table.stage(ino)) {
            (Some(remote), false, None) => {
                let path = table.path(ino).ok_or(FsError::NotFound)?;
                Some(Reader::new(
                    self.store.clone(),
                    self.cache.clone(),
                    &self.layout.file_key(&path),
                    remote.etag.clone(),
                    remote.size,
                ))
            }
            _ => None,
        };
        let stage = table.stage(ino);
        let current = PageCache::current(stage.as_ref(), reader.as_ref().map(|r| r.etag()));
        let inode = table.get_mut(ino).expect("present");
        inode.add_open_handle();
        let keep_cache = inode.note_page_cache(current);
        let content_version = inode.content_version;
        drop(table);
        let fh = self.handles.add(Handle::File(FileHandle {
            ino,
            writable: writes,
            reader,
            content_version,
            exec: mode.exec,
        }));
        Ok((fh, keep_cache))
    }

    /// `ino` is a file read from S3 whose version the table no longer trusts
    /// ([`S3Fs::forget_version`]).
    fn version_unknown(&self, ino: u64) -> bool {
        let table = self.inodes.lock().unwrap();
        table.stage(ino).is_none()
            && table
                .get(ino)
                .is_some_and(|i| i.attr.kind == Kind::File && !i.meta_known && i.remote.is_some())
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<(Attr, u64)> {
        self.check_writable()?;
        let name = check_name(name)?;
        super::hidden::check_creatable(parent, name)?;
        let stage = Arc::new(self.stages.create(None)?);
        let mut table = self.inodes.lock().unwrap();
        let dir = self.dir_path(&table, parent)?;
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        if let Err(e) = self.layout.check_path(&path, false) {
            stage.discard();
            return Err(e.into());
        }
        let t = now();
        let mut attr = self.file_attr(0, t);
        attr.perm = (mode & 0o7777) as u16;
        attr.uid = caller.uid;
        attr.gid = caller.gid;
        stage.note_open(&self.layout.file_key(&path));
        let found = Found::made_here(attr, None, Extras::default(), self.valid_until());
        let ino = table.upsert_made_here(parent, name, found);
        table.mark_changed(ino);
        Self::touch_dir(&mut table, parent, t);
        if let Some(old) = table.stage(ino) {
            // The kernel believed the name free while it was staged here: replace it.
            old.mark_deleted();
            old.discard();
        }
        table.set_stage(ino, Some(stage.clone()));
        table.add_lookup(ino);
        let inode = table.get_mut(ino).expect("present");
        inode.add_open_handle();
        page_cache::created(inode.page_cache(), &stage);
        let attr = Self::current_attr(&table, ino).expect("present");
        drop(table);
        let fh = self.handles.add(Handle::File(FileHandle {
            ino,
            writable: true,
            reader: None,
            content_version: 0,
            exec: false,
        }));
        Ok((attr, fh))
    }

    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let handle = self.handles.get(fh)?;
        let Handle::File(file) = &*handle else {
            return Err(FsError::IsDir);
        };
        let (mut stage, changed) = {
            let table = self.inodes.lock().unwrap();
            let changed = (file.reader.as_ref())
                .is_some_and(|reader| Self::changed_underneath(&table, file, reader));
            (table.stage(file.ino), changed)
        };
        if stage.is_none() && file.writable {
            // The release of the file's last other handle dropped its clean stage while
            // this one was being opened (close, then open again): read through a new one.
            stage = Some(self.stage_for_write(file.ino, false)?);
        }
        if let Some(stage) = stage {
            return Ok(Bytes::from(stage.read(&*self.store, offset, len).await?));
        }
        let Some(reader) = &file.reader else {
            return Ok(Bytes::new());
        };
        if changed {
            // Blocks of the old version may still be cached here; served, they would
            // enter the kernel's pages of the file, which newer opens share.
            return Err(FsError::Stale);
        }
        match reader.read(offset, len).await {
            Err(StoreError::PreconditionFailed | StoreError::NotFound) => {
                match self.follow_object(fh, file).as_deref() {
                    Some(Handle::File(FileHandle {
                        reader: Some(reader),
                        ..
                    })) => Ok(reader.read(offset, len).await?),
                    _ => {
                        self.forget_version(file.ino, reader.etag());
                        Err(FsError::Stale)
                    }
                }
            }
            result => Ok(result?),
        }
    }

    /// S3 no longer holds the version `etag` of `ino` that the table holds (a read met
    /// another ETag or none): the next open asks S3 again (a HEAD, not the index, which
    /// answers for the listed version) instead of opening the old version until the
    /// metadata TTL ends, every read of it failing.
    fn forget_version(&self, ino: u64, etag: &crate::store::ETag) {
        let mut table = self.inodes.lock().unwrap();
        if table.stage(ino).is_some() {
            return;
        }
        if let Some(inode) = table.get_mut(ino)
            && let Some(remote) = &mut inode.remote
            && remote.etag == *etag
        {
            remote.modified = None;
            inode.meta_known = false;
            inode.valid_until = std::time::Instant::now();
        }
    }

    /// Another client's version replaced the content this reader's handle opened (this
    /// mount's own changes go through the file's stage, kept while handles are open).
    fn changed_underneath(table: &InodeTable, file: &FileHandle<S>, reader: &Reader<S>) -> bool {
        table.get(file.ino).is_some_and(|inode| {
            inode.content_version != file.content_version
                && inode
                    .remote
                    .as_ref()
                    .is_some_and(|r| r.etag != *reader.etag())
        })
    }

    /// A reader's object is gone or has another ETag. If this mount moved it (rename) or
    /// rewrote only its metadata (a copy onto itself), the content is the same: the
    /// handle follows the object to its current key and ETag. Otherwise None (the
    /// content changed underneath: the read fails rather than mix versions).
    fn follow_object(&self, fh: u64, file: &FileHandle<S>) -> Option<Arc<Handle<S>>> {
        let old = file.reader.as_ref()?;
        let table = self.inodes.lock().unwrap();
        let inode = table.get(file.ino)?;
        if inode.content_version != file.content_version {
            return None;
        }
        let remote = inode.remote.as_ref()?;
        let key = self.layout.file_key(&table.path(file.ino)?);
        if remote.size != old.size() || (*key == *old.key() && remote.etag == *old.etag()) {
            return None;
        }
        let reader = Reader::new(
            self.store.clone(),
            self.cache.clone(),
            &key,
            remote.etag.clone(),
            remote.size,
        );
        drop(table);
        let handle = Arc::new(Handle::File(FileHandle {
            ino: file.ino,
            writable: file.writable,
            reader: Some(reader),
            content_version: file.content_version,
            exec: file.exec,
        }));
        self.handles.replace(fh, handle.clone());
        Some(handle)
    }

    /// The stage a write through `fh` goes to.
    pub(super) fn write_target(&self, fh: u64) -> FsResult<(u64, Arc<Stage>)> {
        let handle = self.handles.get(fh)?;
        let Handle::File(file) = &*handle else {
            return Err(FsError::IsDir);
        };
        if !file.writable {
            return Err(FsError::BadHandle);
        }
        Ok((file.ino, self.stage_for_write(file.ino, false)?))
    }

    /// A file may grow to the largest object the uploads can store (5 TiB).
    pub(super) fn check_file_size(&self, end: u64) -> FsResult<()> {
        match end > self.uploader.max_file_size() {
            true => Err(FsError::FileTooLarge),
            false => Ok(()),
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.check_file_size(offset.saturating_add(data.len() as u64))?;
        let (ino, stage) = self.write_target(fh)?;
        let size = stage.write(&*self.store, offset, data).await?;
        self.after_write(ino, &stage, size);
        Ok(data.len() as u32)
    }

    /// A write that needs no wait (nothing to fetch from S3 first), done in the calling
    /// thread so the data is not copied once more; None means: call [`S3Fs::write`].
    /// Must run inside the runtime (it may start part uploads).
    pub fn try_write_now(&self, fh: u64, offset: u64, data: &[u8]) -> Option<FsResult<u32>> {
        if let Err(e) = self.check_file_size(offset.saturating_add(data.len() as u64)) {
            return Some(Err(e));
        }
        let (ino, stage) = match self.write_target(fh) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let size = match stage.try_write_now(offset, data)? {
            Ok(size) => size,
            Err(e) => return Some(Err(e.into())),
        };
        self.after_write(ino, &stage, size);
        Some(Ok(data.len() as u32))
    }

    /// Updates size and times, and starts the parts a sequential writer has completed.
    pub(super) fn after_write(&self, ino: u64, stage: &Arc<Stage>, size: u64) {
        let target = {
            let mut table = self.inodes.lock().unwrap();
            let t = now();
            if let Some(inode) = table.get_mut(ino) {
                inode.attr.size = size;
                inode.attr.mtime = t;
                inode.attr.ctime = t;
            }
            if size >= 2 * self.cfg.part_size && stage.may_stream() {
                // The headers are needed once, when the streaming upload starts (it
                // completes at close: its Last-Modified is then the mtime).
                let headers = match stage.is_streaming() {
                    true => None,
                    false => Self::headers_for(&table, ino, false),
                };
                table.path(ino).map(|p| (self.layout.file_key(&p), headers))
            } else {
                None
            }
        };
        if let Some((key, headers)) = target {
            stage.with_streaming(|slot, size| {
                self.uploader
                    .stream_parts(stage, slot, size, &key, headers.as_ref())
            });
        }
    }

    /// close(): uploads what this handle's file has staged, if it changed; with
    /// write-back, makes it durable in the cache dir and leaves the upload to the
    /// background.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handles.get(fh)?;
        match &*handle {
            Handle::File(file) if file.writable && self.cfg.write_back => {
                self.commit_and_queue(file.ino).await
            }
            Handle::File(file) if file.writable => self.sync(file.ino).await,
            _ => Ok(()),
        }
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh).await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = self.handles.remove(fh)?;
        let Handle::File(file) = &*handle else {
            return Ok(());
        };
        let ino = file.ino;
        let last = {
            let mut table = self.inodes.lock().unwrap();
            let Some(inode) = table.get_mut(ino) else {
                return Ok(());
            };
            inode.remove_open_handle() == 0
        };
        let mut result = Ok(());
        if file.writable && last {
            // flush() normally did it already; this catches writes after it (mmap).
            if self.cfg.write_back {
                result = self.commit_and_queue(ino).await;
            } else {
                result = self.sync(ino).await;
            }
        }
        if last {
            self.drop_clean_stage(ino);
            // Committed and queued (or kept after a failed upload): no descriptor while
            // it waits.
            self.close_idle_stage_file(ino);
        }
        let mut table = self.inodes.lock().unwrap();
        table.remove_if_unused(ino);
        result
    }
}
