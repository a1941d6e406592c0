//! Deciding, entry by entry, whether the bucket already holds it: the object's size and
//! s3fs metadata (mode with type bits, owner, mtime, device number, `user.*` xattrs)
//! must equal the source's, and its content too. Migrate records what it uploaded: the
//! MD5 of a single PUT in `x-amz-meta-s3mount-md5` (taken as is while the ETag agrees),
//! the part size of a multipart upload in `x-amz-meta-s3mount-part-size` (so that the
//! source's multipart ETag can be computed when the content must be compared). Any
//! other object, written by the mount, s3fs or another client, is compared by hashing
//! the source file against its ETag.
//! Invariant: deciding only reads (LIST, HEAD, the source file), never writes.

use std::collections::HashMap;

use md5::{Digest, Md5};

use super::read::{hex, md5_file, multipart_etag};
use super::walk::{Entry, EntryKind};
use crate::layout::{self, MAX_USER_META};
use crate::store::{BodyMd5, ETag, ObjectHeaders, ObjectStore, StoreError, StoreResult};

/// The user metadata header (without `x-amz-meta-`) holding the MD5 of the content
/// migrate uploaded, in hex.
pub const MD5_HEADER: &str = "s3mount-md5";
/// The user metadata header holding the part size of a multipart upload by migrate.
pub const PART_SIZE_HEADER: &str = "s3mount-part-size";

/// What a regular file's object records of its content.
pub enum Fingerprint<'a> {
    /// Nothing (not a regular file).
    None,
    /// The MD5 of a single PUT.
    Md5(&'a BodyMd5),
    /// The part size of a multipart upload.
    PartSize(u64),
}

/// Every object under the prefix and its size, from one listing before the run.
pub struct RemoteIndex(HashMap<String, u64>);

impl RemoteIndex {
    pub async fn load<S: ObjectStore>(store: &S, prefix: &str) -> StoreResult<RemoteIndex> {
        let mut objects = HashMap::new();
        let mut token = None;
        loop {
            let page = store.list_page(prefix, false, token, None).await?;
            objects.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
            token = page.next_token;
            if token.is_none() {
                return Ok(RemoteIndex(objects));
            }
        }
    }

    pub fn size(&self, key: &str) -> Option<u64> {
        self.0.get(key).copied()
    }

    pub fn objects(&self) -> usize {
        self.0.len()
    }
}

/// What to do with one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Upload it, and why.
    Copy(&'static str),
    /// The bucket has it; `verified` when its content was compared with the source's
    /// bytes in this run (or it has none).
    Skip { verified: bool },
}

/// The headers the object of `entry` gets: the mount's (`layout`), plus a regular
/// file's fingerprint. Fails if they exceed what S3 stores.
pub fn headers(entry: &Entry, fingerprint: Fingerprint) -> Result<ObjectHeaders, String> {
    let mut headers = layout::object_headers(&entry.meta, true);
    match fingerprint {
        Fingerprint::None => {}
        Fingerprint::Md5(md5) => headers.user_meta.push((MD5_HEADER.into(), hex(md5))),
        Fingerprint::PartSize(n) => headers
            .user_meta
            .push((PART_SIZE_HEADER.into(), n.to_string())),
    }
    headers.user_meta.sort();
    if layout::user_meta_len(&headers) > MAX_USER_META {
        return Err(format!(
            "its metadata (mode, times, extended attributes) exceeds the {MAX_USER_META} bytes S3 stores: not copied"
        ));
    }
    Ok(headers)
}

/// The ETag as an MD5 in hex, if it is one (a single PUT's, without KMS encryption).
fn plain_md5(etag: &ETag) -> Option<String> {
    let tag = etag.0.trim_matches('"').to_ascii_lowercase();
    (tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tag)
}

/// Whether the object `key` (of `remote_size` bytes if listed) already is `entry`.
/// `verify`: a skipped regular file must have had its content compared in this run
/// (before the source is deleted).
pub async fn decide<S: ObjectStore>(
    store: &S,
    entry: &Entry,
    key: &str,
    remote_size: Option<u64>,
    verify: bool,
) -> Result<Decision, String> {
    let Some(size) = remote_size else {
        return Ok(Decision::Copy("new"));
    };
    if size != entry.size {
        return Ok(Decision::Copy("size differs"));
    }
    let meta = match store.head(key).await {
        Ok(meta) => meta,
        Err(StoreError::NotFound) => return Ok(Decision::Copy("new")),
        Err(e) => return Err(format!("HEAD {key}: {e}")),
    };
    if meta.size != entry.size {
        return Ok(Decision::Copy("size differs"));
    }
    let stored = layout::parse_attrs(&meta);
    let want = &entry.meta;
    let same_meta = stored.mode == Some(want.mode)
        && stored.uid == Some(want.uid)
        && stored.gid == Some(want.gid)
        && stored.mtime == Some(want.mtime)
        && stored.rdev.unwrap_or(0) == want.rdev
        && stored.xattrs == want.xattrs;
    if !same_meta {
        return Ok(Decision::Copy("metadata differs"));
    }
    let etag_md5 = plain_md5(&meta.etag);
    match &entry.kind {
        EntryKind::Dir | EntryKind::Special => Ok(Decision::Skip { verified: true }),
        EntryKind::Symlink(target) => {
            let local = format!("{:x}", Md5::digest(target.as_bytes()));
            match etag_md5 {
                Some(e) if e == local => Ok(Decision::Skip { verified: true }),
                Some(_) => Ok(Decision::Copy("link target differs")),
                None => Ok(Decision::Copy("content cannot be compared")),
            }
        }
        EntryKind::File => {
            let (local, stamp) = (entry.local.clone(), entry.stamp);
            if let Some(etag) = etag_md5 {
                // Written by migrate, and not replaced since by other bytes?
                let ours = meta.meta(MD5_HEADER).map(str::to_ascii_lowercase);
                if ours.as_deref() == Some(etag.as_str()) && !verify {
                    return Ok(Decision::Skip { verified: false });
                }
                let md5 = hashed(move || md5_file(&local, &stamp)).await?;
                return Ok(match hex(&md5) == etag {
                    true => Decision::Skip { verified: true },
                    false => Decision::Copy("content differs"),
                });
            }
            let part_size = meta
                .meta(PART_SIZE_HEADER)
                .and_then(|v| v.parse::<u64>().ok());
            let Some(part_size) = part_size.filter(|p| *p > 0) else {
                return Ok(Decision::Copy(
                    "uploaded in parts by another client: content cannot be compared",
                ));
            };
            if !verify {
                return Ok(Decision::Skip { verified: false });
            }
            let local_etag = hashed(move || multipart_etag(&local, &stamp, part_size)).await?;
            let remote_etag = meta.etag.0.trim_matches('"').to_ascii_lowercase();
            Ok(match local_etag == remote_etag {
                true => Decision::Skip { verified: true },
                false => Decision::Copy("content differs"),
            })
        }
    }
}

/// Hashes a source file on a blocking thread.
async fn hashed<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("hashing task failed: {e}"))?
        .map_err(|e| format!("cannot read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_md5_etags_are_plain() {
        let md5 = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        assert_eq!(
            plain_md5(&ETag(md5.into())).as_deref(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
        assert_eq!(
            plain_md5(&ETag("\"9e107d9d372bb6826bd81d3542a419d6-3\"".into())),
            None
        );
        assert_eq!(plain_md5(&ETag("\"abc\"".into())), None);
    }
}
