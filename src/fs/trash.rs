//! The recycle bin of `--trash` on the delete path: before unlink deletes a file's
//! object, the file's newest content goes to its trash key (the trash prefix + the
//! file's path in the mount) with its metadata (mode, owner, times, xattrs).
//!
//! Invariants: nothing is deleted without its trash copy; a copy that cannot be made
//! fails the unlink (EIO) and leaves the file as it was. A file S3 has as it is, is
//! copied server-side (by the trash's bucket, naming the mount's bucket as the source
//! when the trash is in another one). A file still staged (being written, or queued for
//! upload) goes to the trash from its stage, under the stage's upload turn, so no upload
//! of it runs between the copy and the delete, and none runs after (the stage is marked
//! deleted under the same turn). Only unlink trashes: directory markers, rename over a
//! file and O_TRUNC do not. The keys the trash writes are outside the mount's prefix
//! (`crate::trash` refuses an overlapping trash), so the mount never sees them.

use std::sync::Arc;

use bytes::Bytes;

use super::{FsError, FsResult, S3Fs};
use crate::layout::MAX_KEY;
use crate::stage::{Stage, UploadTurn};
use crate::store::{ETag, ObjectHeaders, ObjectStore, StoreError, StoreResult};
use crate::upload::{PartSource, Uploader};

/// Tries of a server-side copy whose source changed (or vanished) meanwhile.
const COPY_TRIES: usize = 3;

/// Where deleted files go: a store of the trash's bucket and a prefix there.
pub struct Trash<S> {
    store: Arc<S>,
    /// The mount's bucket when the trash is in another one (copies name it).
    source_bucket: Option<String>,
    prefix: String,
    /// Uploads staged files straight to the trash.
    uploader: Uploader<S>,
}

impl<S: ObjectStore> Trash<S> {
    /// A trash under `prefix` (normalized) of `store`'s bucket; `source_bucket` is the
    /// mount's bucket if that is another one. Staged files are uploaded with the mount's
    /// part size and concurrency.
    pub fn new(
        store: Arc<S>,
        source_bucket: Option<String>,
        prefix: &str,
        part_size: u64,
        concurrency: usize,
    ) -> Trash<S> {
        Trash {
            uploader: Uploader::new(store.clone(), part_size, concurrency),
            store,
            source_bucket,
            prefix: prefix.to_string(),
        }
    }

    /// The trash key of the file at `path` (relative to the mount root).
    fn key(&self, path: &str) -> Result<String, String> {
        let key = format!("{}{path}", self.prefix);
        if key.len() > MAX_KEY {
            return Err(format!(
                "its trash key would be {} bytes, more than S3's {MAX_KEY}",
                key.len()
            ));
        }
        Ok(key)
    }

    /// Server-side copy of the mount's object `from` (`size` bytes, ETag `etag`).
    async fn copy_object(&self, from: &str, to: &str, size: u64, etag: &ETag) -> StoreResult<()> {
        match &self.source_bucket {
            None => self.store.copy(from, to, size, None, Some(etag)).await,
            Some(bucket) => {
                (self.store)
                    .copy_from_bucket(bucket, from, to, size, Some(etag))
                    .await
            }
        }
        .map(|_| ())
    }

    /// Uploads the first `size` bytes of a staged file to `to`.
    async fn upload_stage(
        &self,
        stage: &Arc<Stage>,
        to: &str,
        size: u64,
        headers: &ObjectHeaders,
    ) -> StoreResult<()> {
        let source = Arc::new(Unjournaled(stage.clone()));
        (self.uploader)
            .upload(&source, (to, headers), size, None)
            .await
            .map(|_| ())
    }
}

/// A stage read for a copy in the trash. Its multipart upload is not journaled: the
/// stage's record names the file's own key, which a recovery would abort it under; one
/// left by a crash is an incomplete upload in the trash, which the trash bucket's
/// lifecycle rule removes (README).
struct Unjournaled(Arc<Stage>);

impl PartSource for Unjournaled {
    fn read_part(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        self.0.read_part(offset, len)
    }

    fn multipart_started(&self, _key: &str, _upload_id: Option<&str>) {}
}

impl<S: ObjectStore> S3Fs<S> {
    /// This file system with `--trash`: unlink keeps a copy of every file in `trash`.
    pub fn with_trash(mut self, trash: Trash<S>) -> S3Fs<S> {
        self.trash = Some(trash);
        self
    }

    /// Before file `ino` (at `path`, object `key`) is deleted: its newest content goes
    /// to the trash, if there is one. `staged` is its stage with the upload turn the
    /// caller holds until the delete is done. Fails with `TrashFailed` (nothing may
    /// be deleted then).
    pub(super) async fn keep_in_trash(
        &self,
        ino: u64,
        path: &str,
        key: &str,
        staged: Option<(&Arc<Stage>, &UploadTurn<'_>)>,
    ) -> FsResult<()> {
        let Some(trash) = &self.trash else {
            return Ok(());
        };
        self.copy_to_trash(trash, ino, path, key, staged)
            .await
            .map_err(|why| {
                log::error!("{key} was not deleted: it could not be copied to the trash ({why})");
                FsError::TrashFailed(why)
            })
    }

    async fn copy_to_trash(
        &self,
        trash: &Trash<S>,
        ino: u64,
        path: &str,
        key: &str,
        staged: Option<(&Arc<Stage>, &UploadTurn<'_>)>,
    ) -> Result<(), String> {
        let to = trash.key(path)?;
        if let Some((stage, turn)) = staged
            && stage.is_dirty()
        {
            match stage.broken() {
                None => {
                    let snapshot = (turn.snapshot_whole(&*self.store).await)
                        .map_err(|e| format!("reading its staged content: {e}"))?;
                    let headers = Self::headers_for(&self.inodes.lock().unwrap(), ino, true)
                        .ok_or("the file is gone")?;
                    (trash
                        .upload_stage(stage, &to, snapshot.size, &headers)
                        .await)
                        .map_err(|e| e.to_string())?;
                    log::debug!("trashed {key} ({} staged bytes) as {to}", snapshot.size);
                    return Ok(());
                }
                Some(e) => log::warn!(
                    "{key}: its staged content is incomplete ({e}); the trash gets what S3 has of it, if anything"
                ),
            }
        }
        let remote = self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .and_then(|i| i.remote.clone());
        let mut known = remote.map(|r| (r.size, r.etag));
        for _ in 0..COPY_TRIES {
            let (size, etag) = match known.take() {
                Some(k) => k,
                None => match self.store.head(key).await {
                    Ok(meta) => (meta.size, meta.etag),
                    Err(StoreError::NotFound) => {
                        log::debug!("{key} is not in S3: nothing to trash");
                        return Ok(());
                    }
                    Err(e) => return Err(e.to_string()),
                },
            };
            match trash.copy_object(key, &to, size, &etag).await {
                Ok(()) => {
                    log::debug!("trashed {key} ({size} bytes) as {to}");
                    return Ok(());
                }
                // Changed or deleted by another client since it was looked up: ask again.
                Err(StoreError::PreconditionFailed | StoreError::NotFound) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the object kept changing while it was copied".into())
    }
}
