//! How the file system looks in the bucket: path ↔ key under the prefix, the name and
//! key length limits, `dir/` markers, and the s3fs-fuse metadata conventions
//! (`x-amz-meta-mode`, `-uid`, `-gid`, `-mtime`). Pure functions only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fs::error::{FsError, FsResult};
use crate::store::{ObjectHeaders, ObjectMeta};

pub const MAX_NAME: usize = 255;
pub const MAX_KEY: usize = 1024;

/// Normalises a user-given prefix: no leading `/`, a trailing `/` unless empty.
pub fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: normalize_prefix(prefix),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of the file at `path` (relative, `/`-separated, not empty).
    pub fn file_key(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path)
    }

    /// The prefix under which the children of directory `path` live ("" = the root);
    /// also the key of its marker object.
    pub fn dir_prefix(&self, path: &str) -> String {
        if path.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{}/", self.prefix, path)
        }
    }

    /// Fails with ENAMETOOLONG if the key of `path` (with the `/` of a directory
    /// marker when `is_dir`) would exceed S3's limit.
    pub fn check_path(&self, path: &str, is_dir: bool) -> FsResult<()> {
        if self.prefix.len() + path.len() + usize::from(is_dir) > MAX_KEY {
            return Err(FsError::NameTooLong);
        }
        Ok(())
    }

    /// The child name of `key` listed under `dir_prefix`, if it is a usable name.
    pub fn child_name<'k>(&self, dir_prefix: &str, key: &'k str) -> Option<&'k str> {
        let name = key.strip_prefix(dir_prefix)?.trim_end_matches('/');
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.len() > MAX_NAME
        {
            return None;
        }
        Some(name)
    }
}

/// A name given by the kernel, checked: UTF-8 (keys are UTF-8) and at most 255 bytes.
pub fn check_name(name: &std::ffi::OsStr) -> FsResult<&str> {
    if name.len() > MAX_NAME {
        return Err(FsError::NameTooLong);
    }
    let name = name.to_str().ok_or(FsError::Invalid(
        "file names must be UTF-8 to become S3 keys",
    ))?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(name)
}

/// POSIX attributes carried in object metadata (s3fs-fuse conventions).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoredAttrs {
    /// Full st_mode (type bits included), as s3fs writes it.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
}

pub fn parse_attrs(meta: &ObjectMeta) -> StoredAttrs {
    let num = |k: &str| meta.meta(k).and_then(|v| v.trim().parse::<u32>().ok());
    StoredAttrs {
        mode: num("mode"),
        uid: num("uid"),
        gid: num("gid"),
        mtime: meta.meta("mtime").and_then(parse_time),
    }
}

/// Seconds since the epoch, either integer or fractional (`1700000000.123456789`).
pub fn parse_time(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    let (secs, frac) = match v.split_once('.') {
        Some((s, f)) => (s, f),
        None => (v, ""),
    };
    let secs: u64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let scale = 10u32.pow(9 - digits.len() as u32);
        nanos = digits.parse::<u32>().ok()? * scale;
    }
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The headers of a regular file with these attributes.
pub fn file_headers(mode: u32, uid: u32, gid: u32, mtime: SystemTime) -> ObjectHeaders {
    let mtime = epoch_secs(mtime).to_string();
    ObjectHeaders {
        user_meta: vec![
            ("mode".into(), (libc::S_IFREG | (mode & 0o7777)).to_string()),
            ("uid".into(), uid.to_string()),
            ("gid".into(), gid.to_string()),
            ("mtime".into(), mtime.clone()),
            ("ctime".into(), mtime),
        ],
        content_type: Some("application/octet-stream".into()),
    }
}

/// The headers of a directory marker (`dir/`), as s3fs writes them.
pub fn dir_headers(mode: u32, uid: u32, gid: u32, mtime: SystemTime) -> ObjectHeaders {
    let mtime = epoch_secs(mtime).to_string();
    ObjectHeaders {
        user_meta: vec![
            ("mode".into(), (libc::S_IFDIR | (mode & 0o7777)).to_string()),
            ("uid".into(), uid.to_string()),
            ("gid".into(), gid.to_string()),
            ("mtime".into(), mtime.clone()),
            ("ctime".into(), mtime),
        ],
        content_type: Some("application/x-directory".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("docs"), "docs/");
        assert_eq!(normalize_prefix("/docs/a/"), "docs/a/");
    }

    #[test]
    fn keys_and_children() {
        let l = Layout::new("docs");
        assert_eq!(l.file_key("a/b.pdf"), "docs/a/b.pdf");
        assert_eq!(l.dir_prefix(""), "docs/");
        assert_eq!(l.dir_prefix("a"), "docs/a/");
        assert_eq!(l.child_name("docs/a/", "docs/a/x.pdf"), Some("x.pdf"));
        assert_eq!(l.child_name("docs/a/", "docs/a/sub/"), Some("sub"));
        assert_eq!(l.child_name("docs/a/", "docs/a/"), None);
        assert_eq!(l.child_name("docs/a/", "docs/a//"), None);
    }

    #[test]
    fn names_are_checked() {
        use std::ffi::OsStr;
        assert!(check_name(OsStr::new("ok.pdf")).is_ok());
        let long = "x".repeat(256);
        assert!(matches!(
            check_name(OsStr::new(&long)),
            Err(FsError::NameTooLong)
        ));
        let l = Layout::new("p/");
        assert!(l.check_path(&"y".repeat(1022), false).is_ok());
        assert!(l.check_path(&"y".repeat(1021), true).is_ok());
        assert!(matches!(
            l.check_path(&"y".repeat(1022), true),
            Err(FsError::NameTooLong)
        ));
    }

    #[test]
    fn times_parse_in_both_s3fs_forms() {
        assert_eq!(
            parse_time("1700000000"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            parse_time("1700000000.5"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_time("x"), None);
    }
}
