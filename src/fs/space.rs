//! fallocate and lseek's SEEK_DATA/SEEK_HOLE. Both act on the stage of a file being
//! written (the cache dir's file system does the work, see `stage/space.rs`); a fallocate
//! is a write (the file is uploaded at close), and a file without a stage is one extent
//! of data. Which fallocate modes exist is decided here: allocate (0), `KEEP_SIZE`,
//! `PUNCH_HOLE | KEEP_SIZE` and `ZERO_RANGE` (with or without `KEEP_SIZE`); any other
//! mode is EOPNOTSUPP, as on a file system without it.

use super::handles::Handle;
use super::{FsError, FsResult, S3Fs};
use crate::stage::SpaceOp;
use crate::store::ObjectStore;

/// The operation a fallocate mode asks for, and whether it keeps the size.
fn space_op(mode: i32) -> FsResult<(SpaceOp, bool)> {
    let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    match mode & !libc::FALLOC_FL_KEEP_SIZE {
        0 => Ok((SpaceOp::Allocate, keep)),
        libc::FALLOC_FL_PUNCH_HOLE if keep => Ok((SpaceOp::PunchHole, true)),
        libc::FALLOC_FL_ZERO_RANGE => Ok((SpaceOp::ZeroRange, keep)),
        _ => Err(FsError::Unsupported("fallocate mode")),
    }
}

impl<S: ObjectStore> S3Fs<S> {
    pub async fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let (op, keep_size) = space_op(mode)?;
        self.check_writable()?;
        if len == 0 {
            return Err(FsError::Invalid("fallocate of no bytes"));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(FsError::Invalid("fallocate beyond the largest file"));
        }
        if !keep_size {
            self.check_file_size(offset + len)?;
        }
        let (ino, stage) = self.write_target(fh)?;
        let changed = stage
            .fallocate(&*self.store, op, keep_size, offset, len)
            .await?;
        if let Some(size) = changed {
            self.after_write(ino, &stage, size);
        }
        Ok(())
    }

    /// SEEK_DATA or SEEK_HOLE from `offset` in the file of `fh`: the next offset.
    pub async fn seek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<u64> {
        let hole = match whence {
            libc::SEEK_DATA => false,
            libc::SEEK_HOLE => true,
            _ => return Err(FsError::Invalid("lseek whence")),
        };
        let handle = self.handles.get(fh)?;
        let Handle::File(file) = &*handle else {
            return Err(FsError::IsDir);
        };
        let offset = u64::try_from(offset).map_err(|_| FsError::NoSuchOffset)?;
        let (stage, size) = {
            let table = self.inodes.lock().unwrap();
            let attr = Self::current_attr(&table, file.ino).ok_or(FsError::NotFound)?;
            (table.stage(file.ino), attr.size)
        };
        match stage {
            Some(stage) => {
                (stage.seek(&*self.store, offset, hole).await?).ok_or(FsError::NoSuchOffset)
            }
            None if offset >= size => Err(FsError::NoSuchOffset),
            None if hole => Ok(size),
            None => Ok(offset),
        }
    }
}
