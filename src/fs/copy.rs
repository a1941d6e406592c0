//! copy_file_range. The one case done here is the one worth a request: a whole object
//! that S3 has as it is (no pending writes) copied onto an empty file of the mount
//! becomes a server-side CopyObject with the target's metadata, and the target's empty
//! stage is replaced by a clean one standing for the copy (as after an upload; nothing is
//! downloaded unless the file is read or written through it). Every other copy is
//! EOPNOTSUPP, on which the kernel copies through read and write itself.

use std::sync::Arc;

use super::handles::Handle;
use super::inodes::Remote;
use super::{FsError, FsResult, Kind, S3Fs, now};
use crate::stage::{RemoteBase, Stage};
use crate::store::{ETag, ObjectStore};

const NOT_WHOLE: FsError = FsError::LeftToKernel("copy_file_range other than a whole object");

/// A server-side copy found possible.
struct WholeCopy {
    from: String,
    etag: ETag,
    size: u64,
    to_ino: u64,
    /// The target's (empty) stage, replaced by a clean one once S3 has the copy.
    to_stage: Arc<Stage>,
}

impl<S: ObjectStore> S3Fs<S> {
    /// Copies `len` bytes at `off_in` of `fh_in` to `off_out` of `fh_out`; returns how
    /// many were copied.
    pub async fn copy_range(
        &self,
        (fh_in, off_in): (u64, u64),
        (fh_out, off_out): (u64, u64),
        len: u64,
    ) -> FsResult<u32> {
        self.check_writable()?;
        if off_in != 0 || off_out != 0 {
            return Err(NOT_WHOLE);
        }
        let plan = self.whole_copy(fh_in, fh_out, len)?;
        let turn = plan.to_stage.upload_turn().await;
        if plan.to_stage.size() != 0 {
            return Err(NOT_WHOLE); // written meanwhile
        }
        let (to, headers) = {
            let mut table = self.inodes.lock().unwrap();
            let t = now();
            let inode = table.get_mut(plan.to_ino).ok_or(FsError::NotFound)?;
            inode.attr.mtime = t;
            inode.attr.ctime = t;
            let path = table.path(plan.to_ino).ok_or(FsError::NotFound)?;
            let headers = Self::headers_for(&table, plan.to_ino, true);
            (self.layout.file_key(&path), headers)
        };
        let (from, size) = (&plan.from, plan.size);
        let etag = (self.store)
            .copy(from, &to, size, headers.as_ref(), Some(&plan.etag))
            .await?;
        self.cache.invalidate(&to);
        // The target's handles keep a stage: a clean one standing for the copy.
        let base = RemoteBase {
            key: to.clone(),
            etag: etag.clone(),
            size,
        };
        let fresh = Arc::new(self.stages.create(Some(base))?);
        fresh.note_open(&to);
        let mut table = self.inodes.lock().unwrap();
        if let Some(inode) = table.get_mut(plan.to_ino) {
            inode.remote = Some(Remote {
                etag,
                size,
                modified: None,
            });
            inode.attr.size = size;
            inode.content_version = inode.content_version.wrapping_add(1);
            inode.valid_until = self.valid_until();
        }
        table.mark_changed(plan.to_ino);
        let current = table.stage(plan.to_ino);
        if current.is_some_and(|s| Arc::ptr_eq(&s, &plan.to_stage)) {
            table.set_stage(plan.to_ino, Some(fresh));
        } else {
            fresh.discard();
        }
        drop(table);
        plan.to_stage.mark_deleted();
        plan.to_stage.discard();
        drop(turn);
        log::debug!("copied {from} to {to} in S3 ({size} bytes)");
        Ok(size as u32)
    }

    /// What a whole-object copy from `fh_in` to `fh_out` needs, if it is one: the
    /// source has an object and no pending writes, `len` covers it, the target is
    /// another, empty, writable file with nothing uploading.
    fn whole_copy(&self, fh_in: u64, fh_out: u64, len: u64) -> FsResult<WholeCopy> {
        let (input, output) = (self.handles.get(fh_in)?, self.handles.get(fh_out)?);
        let (Handle::File(input), Handle::File(output)) = (&*input, &*output) else {
            return Err(FsError::IsDir);
        };
        if !output.writable {
            return Err(FsError::BadHandle);
        }
        let table = self.inodes.lock().unwrap();
        let source = table.get(input.ino).ok_or(FsError::NotFound)?;
        let remote = source.remote.clone().ok_or(NOT_WHOLE)?;
        let source_clean = table.stage(input.ino).is_none_or(|s| !s.is_dirty());
        let target = Self::current_attr(&table, output.ino).ok_or(FsError::NotFound)?;
        // A writable handle's file always has a stage.
        let to_stage = table.stage(output.ino).ok_or(NOT_WHOLE)?;
        let target_idle = !to_stage.is_streaming() && to_stage.broken().is_none();
        let fits = remote.size > 0 && len >= remote.size && remote.size <= u64::from(u32::MAX);
        if input.ino == output.ino
            || source.attr.kind != Kind::File
            || !source_clean
            || target.size != 0
            || !target_idle
            || !fits
        {
            return Err(NOT_WHOLE);
        }
        Ok(WholeCopy {
            from: self
                .layout
                .file_key(&table.path(input.ino).ok_or(NOT_WHOLE)?),
            etag: remote.etag,
            size: remote.size,
            to_ino: output.ino,
            to_stage,
        })
    }
}
