//! Extended attributes: `user.*` ones stored in the object's metadata (s3fs's format,
//! see `layout`), the read-only virtual `user.s3.key`, `user.s3.etag`, `user.s3.url` and
//! `user.s3.state` (readable by name, never listed, so copying tools do not copy them),
//! the mount root's hidden `user.s3mount.status` (the status document, see `status.rs`),
//! and the rules of the xattr calls: which names exist, XATTR_CREATE/REPLACE, S3's 2 KiB
//! limit, and how an answer fits the caller's buffer.

use std::ffi::OsStr;

use super::{Extras, FsError, FsResult, Kind, ROOT, S3Fs, XATTR_STATUS, now};
use crate::layout;
use crate::store::ObjectStore;

/// The read-only virtual extended attributes of every file.
const XATTR_VIRTUAL: &str = "user.s3.";
const XATTR_KEY: &str = "user.s3.key";
const XATTR_ETAG: &str = "user.s3.etag";
const XATTR_URL: &str = "user.s3.url";
const XATTR_STATE: &str = "user.s3.state";
/// The mount's own read-only attributes (on the root).
const XATTR_MOUNT: &str = "user.s3mount.";

/// Only `user.` attributes (with a name after the dot) exist here.
fn is_user_name(name: &str) -> bool {
    name.starts_with("user.") && name.len() > "user.".len()
}

/// The stored names listxattr shows: the `user.` ones, which getxattr reads.
fn listed_names<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    names.filter(|n| is_user_name(n)).cloned().collect()
}

/// The answer to a getxattr or listxattr whose caller has a buffer of `size` bytes.
#[derive(Debug, PartialEq)]
pub enum XattrAnswer<'a> {
    /// The caller asked for the size only (size 0).
    Size(u32),
    Value(&'a [u8]),
}

/// The name of an attribute to read or remove, answered without asking S3 when it
/// cannot exist: a name outside `user.` (the ACL and security-label probes, two per
/// file in `ls -l`) is in a namespace this file system does not have, so the answer
/// is ENOTSUP, which `ls` and the ACL library remember for the whole device instead of
/// asking again for every file; `user.` alone names nothing.
pub fn xattr_name_to_read(name: &OsStr) -> FsResult<&str> {
    let name = name.to_str().ok_or(FsError::NoXattr)?;
    if !name.starts_with("user.") {
        return Err(FsError::XattrNamespace);
    }
    Some(name)
        .filter(|n| is_user_name(n))
        .ok_or(FsError::NoXattr)
}

/// The name of an attribute to set: names S3 metadata cannot carry are refused.
pub fn xattr_name_to_write(name: &OsStr) -> FsResult<&str> {
    name.to_str().ok_or(FsError::Unsupported(
        "xattr names must be UTF-8 to be stored",
    ))
}

/// How `value` answers a caller with a buffer of `size` bytes: its size when asked for
/// it, ERANGE when the buffer is too small.
pub fn xattr_answer(value: &[u8], size: u32) -> FsResult<XattrAnswer<'_>> {
    if size == 0 {
        Ok(XattrAnswer::Size(value.len() as u32))
    } else if value.len() > size as usize {
        Err(FsError::BufferTooSmall)
    } else {
        Ok(XattrAnswer::Value(value))
    }
}

/// A listxattr answer: the names, each NUL-terminated.
pub fn xattr_list(names: &[String]) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.extend_from_slice(name.as_bytes());
        list.push(0);
    }
    list
}

impl<S: ObjectStore> S3Fs<S> {
    /// An extended attribute: the read-only `user.s3.key`, `user.s3.etag`,
    /// `user.s3.url` (a presigned GET) and `user.s3.state`, the root's status document,
    /// or one stored in the object's metadata.
    pub async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        if name == XATTR_STATUS && ino == ROOT {
            return Ok(self.status_document());
        }
        let attr = self.ensure_meta(ino).await?;
        let (key, remote, stored) = {
            let table = self.inodes.lock().unwrap();
            let inode = table.get(attr.ino).ok_or(FsError::NotFound)?;
            let key = table.path(attr.ino).map(|p| match attr.kind {
                Kind::Dir => self.layout.dir_prefix(&p),
                _ => self.layout.file_key(&p),
            });
            (
                key,
                inode.remote.clone(),
                inode.extras().xattrs.get(name).cloned(),
            )
        };
        match name {
            XATTR_KEY => key.map(String::into_bytes).ok_or(FsError::NoXattr),
            XATTR_ETAG => remote
                .map(|r| r.etag.0.into_bytes())
                .ok_or(FsError::NoXattr),
            XATTR_STATE => Ok(self.upload_state(attr.ino).to_string().into_bytes()),
            XATTR_URL => match (key, remote) {
                (Some(key), Some(_)) => Ok(self
                    .store
                    .presign_get(&key, self.cfg.url_expiry)
                    .await?
                    .into_bytes()),
                _ => Err(FsError::NoXattr),
            },
            _ => stored.ok_or(FsError::NoXattr),
        }
    }

    /// The names of the stored extended attributes if the table knows them now (no
    /// wait): lets the adapter answer `ls -l`'s probe of every file in its own thread.
    pub fn known_xattr_names(&self, ino: u64) -> Option<Vec<String>> {
        let table = self.inodes.lock().unwrap();
        let inode = table.get(ino)?;
        (inode.meta_known || table.stage(ino).is_some())
            .then(|| listed_names(inode.extras().xattrs.keys()))
    }

    /// The names of the stored extended attributes (the virtual `user.s3.*` ones are
    /// readable by name but not listed, so that copying tools do not copy them). Names
    /// outside `user.` that another client (s3fs) stored are kept, not listed: they
    /// cannot be read here.
    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<String>> {
        let attr = self.ensure_meta(ino).await?;
        let table = self.inodes.lock().unwrap();
        let inode = table.get(attr.ino).ok_or(FsError::NotFound)?;
        Ok(listed_names(inode.extras().xattrs.keys()))
    }

    pub async fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        self.change_xattr(ino, name, Some(value), flags).await
    }

    pub async fn removexattr(&self, ino: u64, name: &str) -> FsResult<()> {
        self.change_xattr(ino, name, None, 0).await
    }

    async fn change_xattr(
        &self,
        ino: u64,
        name: &str,
        value: Option<&[u8]>,
        flags: i32,
    ) -> FsResult<()> {
        self.check_writable()?;
        if name.starts_with(XATTR_VIRTUAL) || name.starts_with(XATTR_MOUNT) {
            return Err(FsError::NotPermitted(
                "the user.s3.* and user.s3mount.* attributes are read-only",
            ));
        }
        if !name.starts_with("user.") {
            return Err(FsError::XattrNamespace);
        }
        if !is_user_name(name) {
            return Err(FsError::Unsupported(
                "an xattr name needs a part after user.",
            ));
        }
        if name.contains(['"', ',']) {
            // s3fs's format splits on them: such a name would come back as another one.
            return Err(FsError::Unsupported(
                "xattr names with '\"' or ',' cannot be stored",
            ));
        }
        let attr = self.ensure_meta(ino).await?;
        if attr.ino != ino {
            return Err(FsError::NotFound);
        }
        {
            let mut table = self.inodes.lock().unwrap();
            let inode = table.get_mut(ino).ok_or(FsError::NotFound)?;
            let exists = inode.extras().xattrs.contains_key(name);
            let mut xattrs = inode.extras().xattrs.clone();
            match value {
                Some(_) if flags & libc::XATTR_CREATE != 0 && exists => {
                    return Err(FsError::Exists);
                }
                Some(_) if flags & libc::XATTR_REPLACE != 0 && !exists => {
                    return Err(FsError::NoXattr);
                }
                Some(v) => {
                    xattrs.insert(name.to_string(), v.to_vec());
                }
                None if !exists => return Err(FsError::NoXattr),
                None => {
                    xattrs.remove(name);
                }
            }
            let extras = Extras {
                xattrs,
                link: inode.extras().link.clone(),
            };
            let headers = Self::headers_of(&inode.attr, &extras, true);
            if layout::user_meta_len(&headers) > layout::MAX_USER_META {
                return Err(FsError::TooBig);
            }
            inode.set_extras(extras);
            inode.attr.ctime = now();
            inode.mark_changed_now();
        }
        self.persist_or_forget(ino).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_answers_follow_the_xattr_rules() {
        assert_eq!(xattr_name_to_read(OsStr::new("user.a")).unwrap(), "user.a");
        for other in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
            assert!(matches!(
                xattr_name_to_read(OsStr::new(other)),
                Err(FsError::XattrNamespace)
            ));
        }
        assert!(matches!(
            xattr_name_to_read(OsStr::new("user.")),
            Err(FsError::NoXattr)
        ));
        assert_eq!(xattr_answer(b"abc", 0).unwrap(), XattrAnswer::Size(3));
        assert_eq!(xattr_answer(b"abc", 3).unwrap(), XattrAnswer::Value(b"abc"));
        assert!(matches!(
            xattr_answer(b"abc", 2),
            Err(FsError::BufferTooSmall)
        ));
        assert_eq!(
            xattr_list(&["user.a".into(), "user.b".into()]),
            b"user.a\0user.b\0"
        );
    }
}
