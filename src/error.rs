//! The file system's errors and the one place that decides which errno each becomes.
//! The layers below the core return their own errors (`StoreError`, `StageError`,
//! `NameError`); each is turned into an [`FsError`] here, once.

use crate::layout::NameError;
use crate::stage::StageError;
use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("read-only file system")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("no space left in the cache directory")]
    NoSpace,
    #[error("the object changed while it was open")]
    Stale,
    #[error("the object's metadata would exceed what S3 stores (2 KiB)")]
    TooBig,
    #[error("the file would be larger than the largest object S3 stores")]
    FileTooLarge,
    #[error("no such extended attribute")]
    NoXattr,
    /// An extended attribute outside `user.*`: that namespace does not exist here, as on
    /// a file system mounted without ACLs or security labels.
    #[error("only user.* extended attributes exist here")]
    XattrNamespace,
    #[error("local I/O error: {0}")]
    Io(String),
    #[error("the caller's buffer is too small")]
    BufferTooSmall,
    #[error("no data or hole at or after this offset")]
    NoSuchOffset,
    /// Not done here, by design: the kernel does it another way when told EOPNOTSUPP.
    #[error("left to the kernel: {0}")]
    LeftToKernel(&'static str),
    /// A truncating open of a file that is being executed from this mount.
    #[error("text file busy")]
    TextBusy,
    #[error("S3: {0}")]
    Store(StoreError),
    /// `--trash`: the copy a deletion must leave in the trash could not be made, so the
    /// file was not deleted.
    #[error("could not keep a copy in the trash: {0}")]
    TrashFailed(String),
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            // The same number as EOPNOTSUPP on Linux (what fallocate answers).
            FsError::Unsupported(_) => libc::ENOTSUP,
            FsError::LeftToKernel(_) => libc::EOPNOTSUPP,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::TextBusy => libc::ETXTBSY,
            FsError::NoSpace => libc::ENOSPC,
            FsError::TooBig => libc::E2BIG,
            FsError::FileTooLarge => libc::EFBIG,
            FsError::NoXattr => libc::ENODATA,
            // What a file system without ACL or label support answers; `ls -l` and the
            // ACL library then stop asking for the rest of the device.
            FsError::XattrNamespace => libc::ENOTSUP,
            FsError::BufferTooSmall => libc::ERANGE,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::Stale | FsError::Io(_) => libc::EIO,
            // Whatever S3 said (also access denied): the unlink itself was fine, it
            // could not be done safely.
            FsError::TrashFailed(_) => libc::EIO,
            FsError::Store(StoreError::NotFound) => libc::ENOENT,
            FsError::Store(StoreError::AccessDenied(_)) => libc::EACCES,
            FsError::Store(_) => libc::EIO,
        }
    }

    /// Errors that are the normal answer to a question (ENOENT on lookup) are not logged
    /// as failures.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::Exists
                | FsError::NotEmpty
                | FsError::NameTooLong
                | FsError::NotDir
                | FsError::IsDir
                | FsError::NoXattr
                | FsError::XattrNamespace
                | FsError::NoSuchOffset
                | FsError::LeftToKernel(_)
        )
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> FsError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
            _ => FsError::Io(e.to_string()),
        }
    }
}

impl From<StoreError> for FsError {
    /// A failed precondition (If-Match) means the object changed under us.
    fn from(e: StoreError) -> FsError {
        match e {
            StoreError::PreconditionFailed => FsError::Stale,
            e => FsError::Store(e),
        }
    }
}

impl From<NameError> for FsError {
    fn from(e: NameError) -> FsError {
        match e {
            NameError::TooLong => FsError::NameTooLong,
            NameError::Invalid(why) => FsError::Invalid(why),
        }
    }
}

impl From<StageError> for FsError {
    fn from(e: StageError) -> FsError {
        match e {
            StageError::NoSpace => FsError::NoSpace,
            StageError::Io(e) => FsError::Io(e),
            StageError::Store(e) => e.into(),
        }
    }
}
