//! How the file system looks in the bucket: path ↔ key under the prefix, the name and
//! key length limits, `dir/` markers, and the s3fs-fuse metadata conventions
//! (`x-amz-meta-mode` with the type bits, `-uid`, `-gid`, `-atime`, `-mtime`, `-ctime`,
//! `-rdev`, and `-xattr` as URL-encoded JSON of base64 values). Pure functions only.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::store::{ObjectHeaders, ObjectMeta};

pub const MAX_NAME: usize = 255;
pub const MAX_KEY: usize = 1024;

/// The name, at the mount's root, of the prefix that holds the shared metadata index
/// (`--shared-metadata-index`). Reserved: never listed, found or created through the
/// mount, with or without the option.
pub const SHARED_INDEX_NAME: &str = ".s3mount-index";

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

    /// Whether `name` in directory `dir_prefix` is the reserved [`SHARED_INDEX_NAME`].
    pub fn is_reserved(&self, dir_prefix: &str, name: &str) -> bool {
        name == SHARED_INDEX_NAME && dir_prefix == self.prefix
    }

    /// The key of the shared index object of directory `path` ("" = the root) in
    /// index format `format`: a hash of the path, so every directory's key is short.
    pub fn shared_index_key(&self, path: &str, format: u32) -> String {
        use md5::{Digest, Md5};
        let hash: String = Md5::digest(path.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}{SHARED_INDEX_NAME}/v{format}/{hash}", self.prefix)
    }

    /// Fails with ENAMETOOLONG if the key of `path` (with the `/` of a directory
    /// marker when `is_dir`) would exceed S3's limit.
    pub fn check_path(&self, path: &str, is_dir: bool) -> Result<(), NameError> {
        if self.prefix.len() + path.len() + usize::from(is_dir) > MAX_KEY {
            return Err(NameError::TooLong);
        }
        Ok(())
    }

    /// The child name of `key` listed under `dir_prefix`: None if `key` is not a child
    /// (the directory's own marker, or not under it at all), `Some(Err(why))` for a
    /// child whose name cannot be a path of the mount ([`name_problem`]).
    pub fn child_name<'k>(
        &self,
        dir_prefix: &str,
        key: &'k str,
    ) -> Option<Result<&'k str, &'static str>> {
        let rest = key.strip_prefix(dir_prefix)?;
        if rest.is_empty() {
            return None;
        }
        // A common prefix ends in its one `/`; `a//` is the empty name, not `a`.
        let name = rest.strip_suffix('/').unwrap_or(rest);
        if name.contains('/') {
            return Some(Err("a listed name holds a '/'"));
        }
        Some(match name_problem(name) {
            Some(why) => Err(why),
            None => Ok(name),
        })
    }

    /// Why `key`, under directory prefix `dir_prefix`, has no path of its own in the
    /// mount, if it has none: a segment of the rest is empty, `.`, `..`, over 255 bytes
    /// or holds a NUL (a trailing `/` of a directory marker is fine).
    pub fn key_problem(&self, dir_prefix: &str, key: &str) -> Option<&'static str> {
        let rest = key.strip_prefix(dir_prefix)?;
        if rest.is_empty() {
            return None;
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        rest.split('/').find_map(name_problem)
    }
}

/// Why one segment of a key cannot be a file name for the kernel, if it cannot.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty path segment ('//')")
    } else if name == "." || name == ".." {
        Some("a '.' or '..' path segment")
    } else if name.len() > MAX_NAME {
        Some("a name over 255 bytes")
    } else if name.contains('\0') {
        Some("a NUL character in a name")
    } else {
        None
    }
}

/// Why a name or path cannot be stored as a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name too long")]
    TooLong,
    #[error("{0}")]
    Invalid(&'static str),
}

/// A name given by the kernel, checked: UTF-8 (keys are UTF-8) and at most 255 bytes.
pub fn check_name(name: &std::ffi::OsStr) -> Result<&str, NameError> {
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong);
    }
    let name = name.to_str().ok_or(NameError::Invalid(
        "file names must be UTF-8 to become S3 keys",
    ))?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(NameError::Invalid("bad file name"));
    }
    Ok(name)
}

/// POSIX attributes carried in object metadata (s3fs-fuse conventions), as far as an
/// object has them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredAttrs {
    /// Full st_mode (type bits included), as s3fs writes it.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
    pub rdev: Option<u32>,
    /// `user.*` (and other) extended attributes from `x-amz-meta-xattr`.
    pub xattrs: Xattrs,
}

/// Extended attributes by name, in the order s3fs writes them.
pub type Xattrs = BTreeMap<String, Vec<u8>>;

pub fn parse_attrs(meta: &ObjectMeta) -> StoredAttrs {
    let num = |k: &str| meta.meta(k).and_then(|v| parse_number(v.trim()));
    let time = |k: &str| meta.meta(k).and_then(parse_time);
    let mut mode = num("mode");
    if let Some(m) = mode.as_mut()
        && *m & libc::S_IFMT == 0
        && matches!(
            meta.content_type
                .as_deref()
                .map(|c| c.split(';').next().unwrap_or("").trim()),
            Some("application/x-directory" | "httpd/unix-directory")
        )
    {
        *m |= libc::S_IFDIR;
    }
    StoredAttrs {
        mode,
        uid: num("uid"),
        gid: num("gid"),
        atime: time("atime"),
        mtime: time("mtime"),
        ctime: time("ctime"),
        rdev: num("rdev"),
        xattrs: meta.meta("xattr").map(parse_xattrs).unwrap_or_default(),
    }
}

/// A number as s3fs reads it (strtol base 0: decimal, `0x` hex or leading-0 octal).
fn parse_number(v: &str) -> Option<u32> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if v.len() > 1 && v.starts_with('0') {
        u32::from_str_radix(&v[1..], 8).ok()
    } else {
        v.parse().ok()
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
    // Checked: a number of seconds from another client's metadata can be beyond what
    // SystemTime holds (`+` would panic); such a time is no time.
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A time as s3fs writes it: whole seconds, or seconds and nine digits of nanoseconds.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    }
}

/// s3fs's `x-amz-meta-xattr`: URL-encoded `{"name":"base64(value)",...}`. Read by
/// hand, not as JSON: s3fs writes names unescaped, so its header need not be valid JSON.
pub fn parse_xattrs(header: &str) -> Xattrs {
    let json = percent_encoding::percent_decode_str(header).decode_utf8_lossy();
    let mut out = Xattrs::new();
    let (Some(start), Some(end)) = (json.find('{'), json.rfind('}')) else {
        return out;
    };
    if end <= start {
        return out;
    }
    for pair in json[start + 1..end].split(',') {
        // Names may contain ':'; base64 values cannot.
        let Some((name, value)) = pair.rsplit_once(':') else {
            continue;
        };
        let unquote = |s: &str| s.trim().trim_matches('"').to_string();
        let (name, value) = (unquote(name), unquote(value));
        if name.is_empty() {
            continue;
        }
        if let Ok(v) = base64::engine::general_purpose::STANDARD.decode(value.as_bytes()) {
            out.insert(name, v);
        }
    }
    out
}

pub fn format_xattrs(xattrs: &Xattrs) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'.')
        .remove(b'-')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    let encoded: std::collections::BTreeMap<&str, String> = xattrs
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect();
    let json = serde_json::to_string(&encoded).expect("a map of strings serializes");
    percent_encoding::utf8_percent_encode(&json, KEEP).to_string()
}

/// Everything the metadata of one object says about its inode.
#[derive(Clone, Debug, PartialEq)]
pub struct PosixMeta {
    /// Full st_mode, type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub rdev: u32,
    pub xattrs: Xattrs,
}

/// The headers of an object with these attributes, as s3fs writes them. Without
/// `times`, the times are left to the object's Last-Modified (an upload started before
/// the file is complete cannot know its final mtime).
pub fn object_headers(meta: &PosixMeta, times: bool) -> ObjectHeaders {
    let mut user_meta = vec![
        ("mode".to_string(), meta.mode.to_string()),
        ("uid".to_string(), meta.uid.to_string()),
        ("gid".to_string(), meta.gid.to_string()),
    ];
    if times {
        user_meta.push(("atime".into(), format_time(meta.atime)));
        user_meta.push(("mtime".into(), format_time(meta.mtime)));
        user_meta.push(("ctime".into(), format_time(meta.ctime)));
    }
    let kind = meta.mode & libc::S_IFMT;
    if (kind == libc::S_IFCHR || kind == libc::S_IFBLK) && meta.rdev != 0 {
        user_meta.push(("rdev".into(), meta.rdev.to_string()));
    }
    if !meta.xattrs.is_empty() {
        user_meta.push(("xattr".into(), format_xattrs(&meta.xattrs)));
    }
    user_meta.sort();
    let content_type = if kind == libc::S_IFDIR {
        "application/x-directory"
    } else {
        "application/octet-stream"
    };
    ObjectHeaders {
        user_meta,
        content_type: Some(content_type.into()),
    }
}

/// Bytes of user metadata S3 accepts on one object (keys and values, `x-amz-meta-` not
/// counted).
pub const MAX_USER_META: usize = 2048;

pub fn user_meta_len(headers: &ObjectHeaders) -> usize {
    headers
        .user_meta
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum()
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
        assert_eq!(l.child_name("docs/a/", "docs/a/x.pdf"), Some(Ok("x.pdf")));
        assert_eq!(l.child_name("docs/a/", "docs/a/sub/"), Some(Ok("sub")));
        assert_eq!(l.child_name("docs/a/", "docs/a/"), None);
        assert_eq!(l.child_name("docs/b/", "docs/a/x"), None);
        assert!(matches!(l.child_name("docs/a/", "docs/a//"), Some(Err(_))));
        assert!(matches!(
            l.child_name("docs/a/", "docs/a/../"),
            Some(Err(_))
        ));
        assert!(matches!(l.child_name("docs/a/", "docs/a/."), Some(Err(_))));
        let long = format!("docs/a/{}", "n".repeat(256));
        assert!(matches!(l.child_name("docs/a/", &long), Some(Err(_))));
        assert!(matches!(
            l.child_name("docs/a/", "docs/a/n\0ul"),
            Some(Err(_))
        ));
        assert_eq!(
            l.child_name("docs/a/", "docs/a/c\u{1}\t\n\\%é"),
            Some(Ok("c\u{1}\t\n\\%é"))
        );
        assert_eq!(l.key_problem("docs/a/", "docs/a/b/c.txt"), None);
        assert_eq!(l.key_problem("docs/a/", "docs/a/b/"), None);
        assert_eq!(l.key_problem("docs/a/", "docs/a/"), None);
        assert!(l.key_problem("docs/a/", "docs/a/b//c").is_some());
        assert!(l.key_problem("docs/a/", "docs/a/./c").is_some());
        assert!(l.key_problem("docs/a/", "docs/a//").is_some());
    }

    #[test]
    fn the_shared_index_is_reserved_at_the_root_only() {
        for prefix in ["", "docs/"] {
            let l = Layout::new(prefix);
            assert!(l.is_reserved(&l.dir_prefix(""), SHARED_INDEX_NAME));
            assert!(!l.is_reserved(&l.dir_prefix("a"), SHARED_INDEX_NAME));
            assert!(!l.is_reserved(&l.dir_prefix(""), ".s3mount-indexes"));
            let key = l.shared_index_key("a/b", 1);
            assert!(key.starts_with(&format!("{prefix}.s3mount-index/v1/")));
            assert_eq!(key.len(), prefix.len() + ".s3mount-index/v1/".len() + 32);
            assert_ne!(key, l.shared_index_key("a/c", 1));
        }
    }

    #[test]
    fn names_are_checked() {
        use std::ffi::OsStr;
        assert!(check_name(OsStr::new("ok.pdf")).is_ok());
        let long = "x".repeat(256);
        assert!(matches!(
            check_name(OsStr::new(&long)),
            Err(NameError::TooLong)
        ));
        let l = Layout::new("p/");
        assert!(l.check_path(&"y".repeat(1022), false).is_ok());
        assert!(l.check_path(&"y".repeat(1021), true).is_ok());
        assert!(matches!(
            l.check_path(&"y".repeat(1022), true),
            Err(NameError::TooLong)
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
        // Beyond what SystemTime holds (another client's metadata): no time, no panic.
        assert_eq!(parse_time("18446744073709551615"), None);
        assert_eq!(parse_time("18446744073709551615.999999999"), None);
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(format_time(t), "1700000000.000000005");
        assert_eq!(parse_time(&format_time(t)), Some(t));
    }

    #[test]
    fn xattrs_use_the_s3fs_format() {
        let mut x = Xattrs::new();
        x.insert("user.foo".into(), b"bar".to_vec());
        x.insert("user.a:b".into(), vec![0, 255]);
        let header = format_xattrs(&x);
        assert_eq!(
            percent_encoding::percent_decode_str(&header).decode_utf8_lossy(),
            r#"{"user.a:b":"AP8=","user.foo":"YmFy"}"#
        );
        assert_eq!(parse_xattrs(&header), x);
        assert_eq!(parse_xattrs(r#"{"foo":"YmFy"}"#)["foo"], b"bar");
        assert!(parse_xattrs("{}").is_empty());
        assert!(parse_xattrs("garbage").is_empty());
    }

    #[test]
    fn numbers_parse_like_strtol() {
        assert_eq!(parse_number("33188"), Some(33188));
        assert_eq!(parse_number("0755"), Some(0o755));
        assert_eq!(parse_number("0x1ff"), Some(0x1ff));
        assert_eq!(parse_number("0"), Some(0));
    }
}
