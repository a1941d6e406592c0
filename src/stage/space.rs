//! The space of a staged file: fallocate (allocate, punch a hole, zero a range) and
//! SEEK_DATA/SEEK_HOLE, done by the cache dir's own file system on the stage file. Both
//! bring the rest of a lazily filled object into the stage first and put the append
//! tail on disk. A fallocate that changes the file counts as a write: the stage becomes
//! dirty (uploaded at close), and one that zeroes bytes a streaming upload already
//! covered makes that upload out of date. Where the cache dir's file system cannot
//! punch holes or zero ranges, zeros are written instead (same content, no holes). A
//! failed hole or zero range breaks the stage as a failed write does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::unistd::{Whence, lseek};

use super::{Access, Stage, StageError, StageResult, StageState};
use crate::store::ObjectStore;

/// What a fallocate does to its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceOp {
    /// Mode 0: reserve the blocks; the file grows unless the size is kept.
    Allocate,
    /// Deallocate: the bytes read as zeros (the size is always kept).
    PunchHole,
    /// The bytes read as zeros; the file grows unless the size is kept.
    ZeroRange,
}

/// Bytes of zeros written per call where the file system cannot zero a range itself.
const ZEROS: usize = 1024 * 1024;

impl Stage {
    /// Applies `op` to `[offset, offset + len)`. Returns the new size if the file
    /// changed (its size or bytes), None if it did not (an allocation inside it).
    pub async fn fallocate<S: ObjectStore>(
        &self,
        store: &S,
        op: SpaceOp,
        keep_size: bool,
        offset: u64,
        len: u64,
    ) -> StageResult<Option<u64>> {
        self.prepare(store, Access::Other).await?;
        if let Some(e) = self.broken() {
            return Err(e);
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| StageError::Io("fallocate range overflows".into()))?;
        let keep_size = keep_size || op == SpaceOp::PunchHole;
        // Opened before anything changes: a file that cannot be opened breaks nothing.
        let fds = self.fds()?;
        let mut s = self.state.lock().unwrap();
        self.settle_with(&fds, &mut s)?;
        let old = s.size;
        let grows = !keep_size && end > old;
        let zeroes_data = op != SpaceOp::Allocate && offset < old;
        if let Err(e) = apply(&fds.file, op, keep_size, offset, len, old) {
            let e = StageError::from(e);
            if op != SpaceOp::Allocate {
                // Part of the range may be zeroed: like a failed write, never upload.
                log::error!("fallocate on {} failed: {e}", self.path.display());
                s.broken = Some(e.clone());
            }
            return Err(e);
        }
        if !grows && !zeroes_data {
            return Ok(None);
        }
        if zeroes_data {
            s.append_only = false;
            if let Some(st) = &mut s.streaming {
                st.touched(offset);
            }
        }
        if grows {
            s.size = end;
        }
        s.changed();
        Ok(Some(s.size))
    }

    /// SEEK_DATA (`hole` false) or SEEK_HOLE from `offset`, as the stage file has its
    /// data and holes; None if there is no such place at or after `offset` (ENXIO).
    pub async fn seek<S: ObjectStore>(
        &self,
        store: &S,
        offset: u64,
        hole: bool,
    ) -> StageResult<Option<u64>> {
        self.prepare(store, Access::Other).await?;
        let fds = self.fds()?;
        let mut s = self.state.lock().unwrap();
        self.settle_with(&fds, &mut s)?;
        seek_in(&fds.file, &s, offset, hole)
    }
}

/// The fallocate itself on `file`, or its equivalent where the file system has no such
/// mode.
fn apply(file: &File, op: SpaceOp, keep: bool, offset: u64, len: u64, size: u64) -> io::Result<()> {
    let mut flags = match op {
        SpaceOp::Allocate => FallocateFlags::empty(),
        SpaceOp::PunchHole => FallocateFlags::FALLOC_FL_PUNCH_HOLE,
        SpaceOp::ZeroRange => FallocateFlags::FALLOC_FL_ZERO_RANGE,
    };
    if keep {
        flags |= FallocateFlags::FALLOC_FL_KEEP_SIZE;
    }
    let (at, n) = (off(offset)?, off(len)?);
    match fallocate(file, flags, at, n) {
        Ok(()) => Ok(()),
        Err(Errno::EOPNOTSUPP) => {
            let end = offset + len;
            if op != SpaceOp::Allocate {
                write_zeros(file, offset, end.min(size))?;
            }
            if !keep && end > size {
                file.set_len(end)?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn write_zeros(file: &File, mut from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZEROS];
    while from < to {
        let n = ((to - from) as usize).min(ZEROS);
        file.write_all_at(&zeros[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

fn seek_in(
    file: &std::fs::File,
    s: &StageState,
    offset: u64,
    hole: bool,
) -> StageResult<Option<u64>> {
    if offset >= s.size {
        return Ok(None);
    }
    let whence = if hole {
        Whence::SeekHole
    } else {
        Whence::SeekData
    };
    match lseek(file, off(offset)?, whence) {
        // The stage file is as long as the file; clamp all the same.
        Ok(at) => {
            let at = u64::try_from(at).unwrap_or(0).max(offset);
            match hole {
                true => Ok(Some(at.min(s.size))),
                false => Ok((at < s.size).then_some(at)),
            }
        }
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(io::Error::from(e).into()),
    }
}

fn off(n: u64) -> io::Result<i64> {
    i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))
}
