//! Walking the source folder: every directory, file, symbolic link and special file below
//! it, with the attributes a mount would store for it (mode with type bits, owner, times,
//! device number, `user.*` extended attributes) and a [`Stamp`] to notice later changes.
//! Symbolic links are never followed. Invariants: only reads (lstat, readdir, readlink,
//! listxattr); a directory is reported only after its listing was read, so a directory
//! that cannot be listed gets no marker; a name that cannot become a key (not UTF-8, or a
//! key over S3's 1024 bytes) is reported with its path, never shortened or renamed.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::layout::{Layout, MAX_KEY, PosixMeta, Xattrs};

/// What a source entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    /// A symbolic link and its target.
    Symlink(String),
    /// A FIFO, socket or device node: stored as an empty object whose mode says which
    /// (as the mount's mknod and s3fs store them).
    Special,
}

/// What lstat said about an entry that matters for "has it changed since".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// One entry of the source tree.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Relative to the source folder, `/`-separated: the path the mount will show.
    pub path: String,
    pub local: PathBuf,
    pub kind: EntryKind,
    /// Bytes of the object: the file's size, the link target's length, else 0.
    pub size: u64,
    pub meta: PosixMeta,
    pub stamp: Stamp,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// What the walk found: an entry, or a path it could not take.
#[derive(Debug)]
pub enum Found {
    Entry(Entry),
    Problem {
        local: PathBuf,
        why: String,
        dir: bool,
    },
}

/// Walks `root` depth-first in name order, sending what it finds to `tx`. Blocking: run
/// it on a thread of its own. Fails only if `root` itself cannot be listed.
pub fn walk(root: &Path, layout: &Layout, tx: mpsc::Sender<Found>) -> Result<(), String> {
    let send = |found: Found| tx.blocking_send(found).is_ok();
    // (local path, relative path, the directory's own entry, None for the root)
    let mut stack: Vec<(PathBuf, String, Option<Entry>)> =
        vec![(root.to_path_buf(), String::new(), None)];
    while let Some((dir, rel, own)) = stack.pop() {
        let mut names: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(rd) => match rd.map(|e| e.map(|e| e.file_name())).collect() {
                Ok(names) => names,
                Err(e) => {
                    if own.is_none() {
                        return Err(format!("cannot list {}: {e}", dir.display()));
                    }
                    send(problem(&dir, format!("cannot list this folder: {e}"), true));
                    continue;
                }
            },
            Err(e) => {
                if own.is_none() {
                    return Err(format!("cannot list {}: {e}", dir.display()));
                }
                send(problem(&dir, format!("cannot list this folder: {e}"), true));
                continue;
            }
        };
        if let Some(own) = own
            && !send(Found::Entry(own))
        {
            return Ok(()); // the receiver gave up
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let local = dir.join(&name);
            let found = match name.to_str() {
                None => problem(&local, "the name is not UTF-8 (S3 keys are)".into(), false),
                Some(name) => {
                    let path = if rel.is_empty() {
                        name.to_string()
                    } else {
                        format!("{rel}/{name}")
                    };
                    match entry(&local, path, layout) {
                        Ok(e) if e.is_dir() => {
                            subdirs.push(e);
                            continue;
                        }
                        Ok(e) => Found::Entry(e),
                        Err((why, dir)) => problem(&local, why, dir),
                    }
                }
            };
            if !send(found) {
                return Ok(());
            }
        }
        // Reversed onto the stack, so that directories are visited in name order.
        for sub in subdirs.into_iter().rev() {
            stack.push((sub.local.clone(), sub.path.clone(), Some(sub)));
        }
    }
    Ok(())
}

fn problem(local: &Path, why: String, dir: bool) -> Found {
    Found::Problem {
        local: local.to_path_buf(),
        why,
        dir,
    }
}

/// The entry at `local` (relative path `path`), or why it cannot be copied and whether
/// it is a directory.
pub(super) fn entry(local: &Path, path: String, layout: &Layout) -> Result<Entry, (String, bool)> {
    let meta =
        std::fs::symlink_metadata(local).map_err(|e| (format!("cannot stat: {e}"), false))?;
    let ft = meta.file_type();
    let is_dir = ft.is_dir();
    if layout.check_path(&path, is_dir).is_err() {
        let len = layout.prefix().len() + path.len() + usize::from(is_dir);
        return Err((
            format!("its key would be {len} bytes, over S3's limit of {MAX_KEY}: not copied"),
            is_dir,
        ));
    }
    let (kind, size) = if is_dir {
        (EntryKind::Dir, 0)
    } else if ft.is_file() {
        (EntryKind::File, meta.size())
    } else if ft.is_symlink() {
        let target =
            std::fs::read_link(local).map_err(|e| (format!("cannot read the link: {e}"), false))?;
        let target = target
            .to_str()
            .ok_or(("the link target is not UTF-8".to_string(), false))?
            .to_string();
        let len = target.len() as u64;
        (EntryKind::Symlink(target), len)
    } else if ft.is_fifo() || ft.is_socket() || ft.is_char_device() || ft.is_block_device() {
        (EntryKind::Special, 0)
    } else {
        return Err(("a kind of file S3 cannot hold: not copied".into(), false));
    };
    // Linux has no user.* attributes on symbolic links.
    let xattrs = match kind {
        EntryKind::Symlink(_) => Xattrs::new(),
        _ => user_xattrs(local)
            .map_err(|e| (format!("cannot read extended attributes: {e}"), is_dir))?,
    };
    let rdev = if ft.is_char_device() || ft.is_block_device() {
        kernel_rdev(meta.rdev())
    } else {
        0
    };
    Ok(Entry {
        path,
        local: local.to_path_buf(),
        kind,
        size,
        meta: PosixMeta {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            rdev,
            xattrs,
        },
        stamp: Stamp::of(&meta),
    })
}

/// A device number as the kernel gives it to FUSE (and the mount stores it): minor's low
/// 8 bits, major, then minor's high bits.
fn kernel_rdev(rdev: u64) -> u32 {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    ((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)) as u32
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
    } else {
        // Before 1970: the mount stores no such times either.
        UNIX_EPOCH
    }
}

/// The `user.*` extended attributes of `path` (not following a symlink), those the
/// mount keeps; `user.s3.*` names are the mount's read-only virtual ones and are left out.
fn user_xattrs(path: &Path) -> std::io::Result<Xattrs> {
    let mut out = Xattrs::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for name in names {
        let Some(name) = name.to_str() else {
            log::warn!(
                "{}: an extended attribute name is not UTF-8; not copied",
                path.display()
            );
            continue;
        };
        if !name.starts_with("user.") || name.starts_with("user.s3.") {
            continue;
        }
        if let Some(value) = xattr::get(path, name)? {
            out.insert(name.to_string(), value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(kernel_rdev(nix::sys::stat::makedev(1, 3)), 0x103);
        assert_eq!(
            kernel_rdev(nix::sys::stat::makedev(8, 0x1234)),
            0x34 | (8 << 8) | (0x1200 << 12)
        );
    }
}
