//! Where `--trash` keeps deleted files: parsing the option (`PREFIX` in the mount's
//! bucket, or `s3://BUCKET/PREFIX/`), the rules on where it may be, and the check a
//! mount (and `s3mount check`) makes before it serves.
//!
//! Invariants: in the mount's own bucket, the trash prefix and the mount's prefix are
//! disjoint (neither is inside the other), so the trash never shows in the mount and
//! the mount never lists, overwrites or deletes trashed objects; a mount with `--trash`
//! serves only once a small object could be written (and removed) under the trash
//! prefix.

use crate::layout::normalize_prefix;
use crate::store::s3::S3Settings;
use crate::store::{ObjectHeaders, ObjectStore, StoreError};

/// The trash of a mount: a bucket and a key prefix there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrashTarget {
    /// The bucket the trash is in (the mount's own for `--trash PREFIX`).
    pub bucket: String,
    /// Ends in `/`, or is empty (the whole of another bucket).
    pub prefix: String,
    /// In another bucket than the mount's: trash copies name the mount's bucket as
    /// their source.
    pub other_bucket: bool,
}

impl TrashTarget {
    /// Reads the value of `--trash` for a mount of `mount_prefix` (normalized) in
    /// `mount_bucket`, and refuses a trash that overlaps the mount.
    pub fn parse(
        value: &str,
        mount_bucket: &str,
        mount_prefix: &str,
    ) -> Result<TrashTarget, String> {
        let bad = |why: String| format!("invalid value for --trash: '{value}': {why}");
        let (bucket, prefix) = match value.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("it names no bucket (s3://BUCKET/PREFIX/)".into()));
                }
                (bucket.to_string(), normalize_prefix(prefix))
            }
            None => {
                let prefix = normalize_prefix(value);
                if prefix.is_empty() {
                    return Err(bad(
                        "give a prefix (e.g. deleted/) or s3://BUCKET/PREFIX/".into()
                    ));
                }
                (mount_bucket.to_string(), prefix)
            }
        };
        let other_bucket = bucket != mount_bucket;
        if !other_bucket {
            if mount_prefix.is_empty() {
                return Err(bad(format!(
                    "the whole bucket {bucket} is mounted, so a trash in it would show in the mount; use s3://OTHER-BUCKET/PREFIX/"
                )));
            }
            if prefix.starts_with(mount_prefix) {
                return Err(bad(format!(
                    "the trash prefix {prefix} is inside the mount's prefix {mount_prefix} (the trash would show in the mount and be trashed again)"
                )));
            }
            if mount_prefix.starts_with(&prefix) {
                return Err(bad(format!(
                    "the mount's prefix {mount_prefix} is inside the trash prefix {prefix} (or the same)"
                )));
            }
        }
        Ok(TrashTarget {
            bucket,
            prefix,
            other_bucket,
        })
    }

    /// `s3://BUCKET/PREFIX`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The connection settings of the trash's bucket: the mount's, with its bucket.
    pub fn store_settings(&self, mount: &S3Settings) -> S3Settings {
        S3Settings {
            bucket: self.bucket.clone(),
            ..mount.clone()
        }
    }
}

/// Can the trash be used? `store` is a store of the trash's bucket (the mount's own
/// store for a trash in the same bucket). Checks that the bucket exists and that an
/// object can be written under the trash prefix (a small probe object, removed again;
/// a probe that cannot be removed is only a warning, since the mount never deletes from
/// the trash). The error is one line naming the trash and what is wrong.
pub async fn check_trash_destination<S: ObjectStore>(
    store: &S,
    target: &TrashTarget,
) -> Result<(), String> {
    let url = target.url();
    if let Err(e) = store.check_bucket().await {
        return Err(match e {
            StoreError::NoSuchBucket => {
                format!(
                    "trash bucket {} does not exist (--trash {url})",
                    target.bucket
                )
            }
            StoreError::AccessDenied(m) => format!(
                "access denied to trash bucket {} (--trash {url}): {m}",
                target.bucket
            ),
            other => format!("trash bucket {} (--trash {url}): {other}", target.bucket),
        });
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let probe = format!(
        "{}.s3mount-probe-{}-{nanos:x}",
        target.prefix,
        std::process::id()
    );
    let body = bytes::Bytes::from_static(b"s3mount checks that the trash is writable\n");
    if let Err(e) = store.put(&probe, body, &ObjectHeaders::default()).await {
        return Err(match e {
            StoreError::NoSuchBucket => {
                format!(
                    "trash bucket {} does not exist (--trash {url})",
                    target.bucket
                )
            }
            other => format!("the trash {url} is not writable (--trash): {other}"),
        });
    }
    if let Err(e) = store.delete(&probe).await {
        log::warn!(
            "the trash {url} is writable, but its probe object {probe} could not be removed: {e}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_buckets() {
        let t = TrashTarget::parse("deleted", "b", "docs/").unwrap();
        assert_eq!(
            t,
            TrashTarget {
                bucket: "b".into(),
                prefix: "deleted/".into(),
                other_bucket: false
            }
        );
        let t = TrashTarget::parse("s3://recycle/docs", "b", "docs/").unwrap();
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("recycle", "docs/"));
        assert!(t.other_bucket);
        let t = TrashTarget::parse("s3://recycle", "b", "").unwrap();
        assert_eq!(t.prefix, "");
        let t = TrashTarget::parse("s3://b/trash/", "b", "docs/").unwrap();
        assert!(!t.other_bucket, "the mount's bucket named in full");
        // Siblings that share a beginning are not inside each other.
        assert!(TrashTarget::parse("docs-deleted/", "b", "docs/").is_ok());
    }

    #[test]
    fn overlapping_trash_is_refused_naming_the_option() {
        for (value, mount) in [
            ("docs/deleted/", "docs/"),
            ("docs/", "docs/"),
            ("docs/", "docs/app/"),
            ("s3://b/docs/x", "docs/"),
            ("deleted/", ""),
            ("", "docs/"),
            ("/", "docs/"),
            ("s3:///x", "docs/"),
        ] {
            let err = TrashTarget::parse(value, "b", mount).unwrap_err();
            assert!(
                err.starts_with("invalid value for --trash"),
                "{value}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn the_check_writes_and_removes_a_probe() {
        let store = crate::store::memory::MemoryStore::new();
        let target = TrashTarget::parse("deleted/", "b", "docs/").unwrap();
        check_trash_destination(&store, &target).await.unwrap();
        assert!(store.keys().is_empty(), "{:?}", store.keys());
        assert_eq!(store.count(crate::store::memory::Op::Put), 1);
        store.fail_next(
            crate::store::memory::Op::Put,
            1,
            StoreError::AccessDenied("no".into()),
        );
        let err = check_trash_destination(&store, &target).await.unwrap_err();
        assert!(
            err.contains("s3://b/deleted/") && err.contains("not writable"),
            "{err}"
        );
    }
}
