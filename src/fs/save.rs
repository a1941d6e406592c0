//! Saving a file's staged data: commit (durable in the cache dir and journaled as a
//! promise), sync (uploaded now: the close of default mode) and dropping a stage once
//! S3 has it. A stage that failed to upload is journaled as committed and stays until a
//! retry succeeds; a broken stage (a failed local write) is never uploaded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::handles::Handle;
use super::inodes::Remote;
use super::page_cache;
use super::{FsError, FsResult, S3Fs};
use crate::stage::{RecordAttrs, Stage};
use crate::store::{ObjectHeaders, ObjectStore};

impl<S: ObjectStore> S3Fs<S> {
    /// Makes the staged data of `ino` durable and journals it as committed. The syncs
    /// run on a blocking thread, so concurrent closers wait together and share the
    /// journal's sync (group commit) without holding up the async workers.
    pub(super) async fn commit(&self, ino: u64) -> FsResult<()> {
        let Some((stage, key, attrs)) = self.commit_target(ino)? else {
            return Ok(());
        };
        let committed = tokio::task::spawn_blocking(move || stage.commit(&key, attrs)).await;
        Ok(committed.map_err(|e| FsError::Io(format!("journal commit: {e}")))??)
    }

    /// [`S3Fs::commit`] with its syncs in the calling thread (a FUSE thread, which may
    /// wait): no hand-over to a blocking thread and back. Concurrent callers still
    /// share the journal's sync.
    fn commit_here(&self, ino: u64) -> FsResult<()> {
        match self.commit_target(ino)? {
            Some((stage, key, attrs)) => Ok(stage.commit(&key, attrs)?),
            None => Ok(()),
        }
    }

    /// What a commit of `ino` writes: its dirty stage, key and metadata (None: nothing
    /// to commit).
    fn commit_target(&self, ino: u64) -> FsResult<Option<(Arc<Stage>, String, RecordAttrs)>> {
        let (stage, key, headers) = {
            let table = self.inodes.lock().unwrap();
            let Some(stage) = table.stage(ino) else {
                return Ok(None);
            };
            let Some(path) = table.path(ino) else {
                return Ok(None); // unlinked: nothing to keep
            };
            let headers = Self::headers_for(&table, ino, true).ok_or(FsError::NotFound)?;
            (stage, self.layout.file_key(&path), headers)
        };
        if !stage.is_dirty() {
            return Ok(None);
        }
        if let Some(e) = stage.broken() {
            return Err(e.into());
        }
        Ok(Some((stage, key, record_attrs(&headers))))
    }

    /// The close of write-back mode: commit, then leave the upload to the background.
    /// It never waits for S3 (an outage must not hold closes up); a stage S3 already
    /// has (the flush before this release queued it) is not queued again.
    pub(super) async fn commit_and_queue(&self, ino: u64) -> FsResult<()> {
        self.commit(ino).await?;
        self.queue_if_dirty(ino);
        Ok(())
    }

    pub(super) fn queue_if_dirty(&self, ino: u64) {
        let Some(stage) = self.inodes.lock().unwrap().stage(ino) else {
            return;
        };
        if stage.is_dirty() {
            let _ = self.pending_tx.send((ino, tokio::time::Instant::now()));
        }
    }

    /// The close (flush) of handle `fh` where it needs no wait for S3, done in the
    /// calling thread: a reader's, a writer's whose file S3 has already, and with
    /// `--write-back` a writer's while no other close commits here (the commit's syncs
    /// are waited for in this thread). None: call [`S3Fs::flush`] (an upload, or a
    /// commit on the blocking pool).
    pub fn flush_now(&self, fh: u64) -> Option<FsResult<()>> {
        let handle = match self.handles.get(fh) {
            Ok(handle) => handle,
            Err(e) => return Some(Err(e)),
        };
        let Handle::File(file) = &*handle else {
            return Some(Ok(()));
        };
        if !file.writable {
            return Some(Ok(()));
        }
        if self.cfg.write_back {
            // One closer commits here; concurrent ones go to the blocking pool (and share
            // its journal sync), so the FUSE threads never all wait for a disk.
            if self.commits_here.fetch_add(1, Ordering::AcqRel) > 0 {
                self.commits_here.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            let committed = self.commit_here(file.ino);
            self.commits_here.fetch_sub(1, Ordering::AcqRel);
            return Some(committed.map(|()| self.queue_if_dirty(file.ino)));
        }
        let stage = self.inodes.lock().unwrap().stage(file.ino);
        stage.is_none_or(|s| !s.is_dirty()).then_some(Ok(()))
    }

    /// Whether the release of `fh` needs no wait for S3 (so it may run in the calling
    /// thread): anything but the last writer of a default-mode file S3 does not have
    /// yet (written after its close, through mmap).
    pub fn release_is_local(&self, fh: u64) -> bool {
        let Ok(handle) = self.handles.get(fh) else {
            return true;
        };
        match &*handle {
            Handle::File(file) if file.writable && !self.cfg.write_back => {
                let stage = self.inodes.lock().unwrap().stage(file.ino);
                stage.is_none_or(|s| !s.is_dirty())
            }
            _ => true,
        }
    }

    /// Removes the stage of `ino` once S3 has all of it (or the file is gone) and
    /// nobody has it open.
    pub(super) fn drop_clean_stage(&self, ino: u64) {
        let mut table = self.inodes.lock().unwrap();
        let Some(stage) = table.stage(ino) else {
            return;
        };
        if table.get(ino).is_some_and(|i| i.open_handles() > 0) {
            return;
        }
        if stage.is_dirty() && stage.broken().is_none() {
            if !self.cfg.write_back {
                log::warn!(
                    "{}: not in S3 yet; its data stays staged in {}",
                    table.path(ino).unwrap_or_default(),
                    stage.path().display()
                );
            }
            return;
        }
        if stage.broken().is_some() {
            // The failed write is forgotten: the file is what S3 has, if anything.
            match table.get_mut(ino) {
                Some(inode) if inode.remote.is_some() => {
                    inode.attr.size = inode.remote.as_ref().map_or(0, |r| r.size);
                    inode.valid_until = Instant::now();
                }
                _ => table.detach(ino),
            }
        } else if let Some(inode) = table.get_mut(ino) {
            let remote = inode.remote.as_ref().map(|r| r.etag.clone());
            page_cache::stage_released(inode.page_cache(), &stage, remote.as_ref());
        }
        table.set_stage(ino, None);
        drop(table);
        stage.discard();
    }

    /// Uploads the stage of `ino` if S3 does not have its latest content. Returns only
    /// once S3 acknowledged it; on failure the stage stays and the error is EIO.
    pub async fn sync(&self, ino: u64) -> FsResult<()> {
        let Some(stage) = self.inodes.lock().unwrap().stage(ino) else {
            return Ok(());
        };
        if !stage.is_dirty() {
            return Ok(());
        }
        let turn = stage.upload_turn().await;
        if !stage.is_dirty() {
            return Ok(());
        }
        if let Some(e) = stage.broken() {
            // What the application wrote is not all there: upload nothing (S3 keeps
            // the previous version) and tell it again.
            return Err(e.into());
        }
        let (key, headers) = {
            let table = self.inodes.lock().unwrap();
            let Some(path) = table.path(ino) else {
                return Ok(()); // unlinked meanwhile: nothing to upload
            };
            let headers = Self::headers_for(&table, ino, true).ok_or(FsError::NotFound)?;
            (self.layout.file_key(&path), headers)
        };
        let uploaded = async {
            let (snapshot, streaming) = turn.prepare(&*self.store).await?;
            let target = (key.as_str(), &headers);
            let etag = (self.uploader)
                .upload(&stage, target, snapshot.size, streaming)
                .await?;
            Ok::<_, FsError>((etag, snapshot))
        }
        .await;
        match uploaded {
            Ok((etag, snapshot)) => {
                self.cache.invalidate(&key);
                let until = self.valid_until();
                let mut table = self.inodes.lock().unwrap();
                if let Some(inode) = table.get_mut(ino) {
                    page_cache::uploaded(inode.page_cache(), &stage, &etag);
                    inode.remote = Some(Remote {
                        etag,
                        size: snapshot.size,
                        modified: None,
                    });
                    inode.content_version = inode.content_version.wrapping_add(1);
                    inode.attr.size = snapshot.size;
                    inode.valid_until = until;
                    inode.mark_changed_now();
                }
                // Clean only once the inode names the new object (under the same lock):
                // a stage dropped as clean must not leave the next open standing on the
                // old object, whose ranged reads would fail their If-Match.
                turn.mark_uploaded(snapshot.version);
                drop(table);
                turn.settle_record(snapshot.version);
                log::debug!("uploaded {key} ({} bytes)", snapshot.size);
                Ok(())
            }
            Err(e) => Err(self.keep_failed_upload(&stage, &key, &headers, e)),
        }
    }

    /// An upload failed: the stage is journaled as committed, so that a crash before
    /// the retry cannot lose it. The error the close gets is EIO (or ENOSPC).
    fn keep_failed_upload(
        &self,
        stage: &Arc<Stage>,
        key: &str,
        headers: &ObjectHeaders,
        e: FsError,
    ) -> FsError {
        log::error!(
            "upload of {key} failed: {e}; the data stays staged in {} and is retried",
            stage.path().display()
        );
        stage.note_upload_failure(super::status::failure_in_words(&e));
        if let Err(c) = stage.commit(key, record_attrs(headers)) {
            log::error!("could not journal {key} in the cache dir: {c}");
        }
        match e {
            FsError::NoSpace => FsError::NoSpace,
            _ => FsError::Io(e.to_string()),
        }
    }
}

pub(super) fn record_attrs(headers: &ObjectHeaders) -> RecordAttrs {
    RecordAttrs {
        meta: headers.user_meta.clone(),
    }
}
