//! Reading source files: opened without updating their access time where the kernel
//! allows it (the source is not to change), read with the MD5 of what was read, and
//! checked against the [`Stamp`] the walk saw, so that a file changing while it is read
//! is an error instead of a torn object. Blocking: called on tokio's blocking threads.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};

use super::walk::Stamp;
use crate::store::BodyMd5;

/// Opens `path` for reading with O_NOATIME (only the owner or root may; others open it
/// plainly), and checks it is still the file the walk saw.
pub fn open_source(path: &Path, stamp: &Stamp) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW);
    let file = match options.open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?,
        other => other?,
    };
    check_unchanged(&file, stamp)?;
    Ok(file)
}

fn changed() -> std::io::Error {
    std::io::Error::other("the file changed while it was being copied; run migrate again")
}

/// Fails if the open `file` is no longer what `stamp` describes.
pub fn check_unchanged(file: &File, stamp: &Stamp) -> std::io::Result<()> {
    if Stamp::of(&file.metadata()?) == *stamp {
        Ok(())
    } else {
        Err(changed())
    }
}

/// Whether the entry at `path` is still what `stamp` describes (not following a link).
pub fn is_unchanged(path: &Path, stamp: &Stamp) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| Stamp::of(&m) == *stamp)
}

/// The whole file (of `stamp.size` bytes) and its MD5.
pub fn read_whole(path: &Path, stamp: &Stamp) -> std::io::Result<(Bytes, BodyMd5)> {
    let mut file = open_source(path, stamp)?;
    let mut buf = BytesMut::zeroed(stamp.size as usize);
    file.read_exact(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => changed(),
        _ => e,
    })?;
    check_unchanged(&file, stamp)?;
    let md5 = BodyMd5(Md5::digest(&buf).into());
    Ok((buf.freeze(), md5))
}

/// The MD5 of the whole file, read front to back.
pub fn md5_file(path: &Path, stamp: &Stamp) -> std::io::Result<BodyMd5> {
    let mut file = open_source(path, stamp)?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if total != stamp.size {
        return Err(changed());
    }
    check_unchanged(&file, stamp)?;
    Ok(BodyMd5(hasher.finalize().into()))
}

/// Bytes `offset..offset + len` of an open source file and their MD5.
pub fn read_part(file: &File, offset: u64, len: usize) -> std::io::Result<(Bytes, BodyMd5)> {
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => changed(),
            _ => e,
        })?;
    let md5 = BodyMd5(Md5::digest(&buf).into());
    Ok((buf.freeze(), md5))
}

/// The ETag S3 gives an upload of the file in parts of `part_size`: the MD5 of the
/// parts' MD5s, a dash and their count.
pub fn multipart_etag(path: &Path, stamp: &Stamp, part_size: u64) -> std::io::Result<String> {
    let file = open_source(path, stamp)?;
    let mut all = Md5::new();
    let (mut offset, mut parts) = (0u64, 0u32);
    while offset < stamp.size {
        let len = part_size.min(stamp.size - offset) as usize;
        let (_, md5) = read_part(&file, offset, len)?;
        all.update(md5.0);
        offset += len as u64;
        parts += 1;
    }
    check_unchanged(&file, stamp)?;
    Ok(format!("{:x}-{parts}", all.finalize()))
}

pub fn hex(md5: &BodyMd5) -> String {
    md5.0.iter().map(|b| format!("{b:02x}")).collect()
}
