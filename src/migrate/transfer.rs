//! Writing one entry's object: a directory marker, a symbolic link (its target as the
//! body), a special file (empty), or a regular file, read and uploaded with the MD5 of
//! exactly the bytes read: one PUT up to the part size, else a multipart upload whose
//! parts are read in order and uploaded in parallel while the next ones are read. S3
//! checks each body against its MD5 (Content-MD5) and refuses a corrupted one. The
//! object records its MD5 (single PUT) or its part size (multipart) for later runs.
//! Invariants: a body is held only with a permit of `bodies` (memory stays at most
//! permits x part size); a multipart upload is completed only when every part was
//! accepted and the file did not change while it was read, and aborted otherwise.

use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::plan::{Fingerprint, headers};
use super::read::{check_unchanged, hex, open_source, read_part, read_whole};
use super::walk::{Entry, EntryKind};
use crate::layout::Layout;
use crate::store::{BodyMd5, CompletedPart, ETag, ObjectStore, StoreError};

/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// What uploads share: the store, the key layout, the part size and the permits for
/// bodies in memory.
pub struct Sender<S> {
    pub store: Arc<S>,
    pub layout: Layout,
    pub part_size: u64,
    pub bodies: Arc<Semaphore>,
}

fn md5_of(body: &[u8]) -> BodyMd5 {
    BodyMd5(Md5::digest(body).into())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("reading task failed: {e}"))?
        .map_err(|e| format!("cannot read: {e}"))
}

/// A store refusal, worded for the operator.
fn refused(what: &str, key: &str, e: StoreError) -> String {
    format!("{what} {key} failed: {e}")
}

/// An ETag that is a plain MD5 must be the MD5 that was sent.
fn check_etag(key: &str, etag: &ETag, expected: &str) -> Result<(), String> {
    let tag = etag.0.trim_matches('"').to_ascii_lowercase();
    let md5_like = tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit());
    let multipart_like = tag.contains('-');
    if (md5_like || multipart_like) && tag != expected {
        return Err(format!(
            "S3 answered ETag {tag} for {key}, expected {expected}: the stored object is not what was read"
        ));
    }
    Ok(())
}

impl<S: ObjectStore> Sender<S> {
    /// Uploads `entry`; returns the bytes sent.
    pub async fn send(&self, entry: &Entry) -> Result<u64, String> {
        match &entry.kind {
            EntryKind::Dir => {
                let key = self.layout.dir_prefix(&entry.path);
                self.put_small(&key, Bytes::new(), headers(entry, Fingerprint::None)?)
                    .await?;
                Ok(0)
            }
            EntryKind::Special => {
                let key = self.layout.file_key(&entry.path);
                self.put_small(&key, Bytes::new(), headers(entry, Fingerprint::None)?)
                    .await?;
                Ok(0)
            }
            EntryKind::Symlink(target) => {
                let key = self.layout.file_key(&entry.path);
                let body = Bytes::copy_from_slice(target.as_bytes());
                self.put_small(&key, body, headers(entry, Fingerprint::None)?)
                    .await?;
                Ok(entry.size)
            }
            EntryKind::File if entry.size <= self.part_size => self.send_small(entry).await,
            EntryKind::File => self.send_in_parts(entry).await,
        }
    }

    async fn put_small(
        &self,
        key: &str,
        body: Bytes,
        headers: crate::store::ObjectHeaders,
    ) -> Result<(), String> {
        let md5 = md5_of(&body);
        let etag = self
            .store
            .put_verified(key, body, &headers, md5)
            .await
            .map_err(|e| refused("PUT", key, e))?;
        check_etag(key, &etag, &hex(&md5))
    }

    async fn send_small(&self, entry: &Entry) -> Result<u64, String> {
        let key = self.layout.file_key(&entry.path);
        let _permit = self.bodies.acquire().await.expect("never closed");
        let (local, stamp) = (entry.local.clone(), entry.stamp);
        let (body, md5) = blocking(move || read_whole(&local, &stamp)).await?;
        let headers = headers(entry, Fingerprint::Md5(&md5))?;
        let etag = self
            .store
            .put_verified(&key, body, &headers, md5)
            .await
            .map_err(|e| refused("PUT", &key, e))?;
        check_etag(&key, &etag, &hex(&md5))?;
        Ok(entry.size)
    }

    /// A multipart upload, its part size recorded in its headers.
    async fn send_in_parts(&self, entry: &Entry) -> Result<u64, String> {
        let key = self.layout.file_key(&entry.path);
        let part_size = self.part_size.max(entry.size.div_ceil(MAX_PARTS));
        let headers = headers(entry, Fingerprint::PartSize(part_size))?;
        let id = self
            .store
            .create_multipart(&key, &headers)
            .await
            .map_err(|e| refused("CreateMultipartUpload", &key, e))?;
        let result = self.upload_parts(entry, &key, &id, part_size).await;
        let done = match result {
            Ok(parts) => {
                let expected = multipart_etag(&parts);
                let done = self
                    .store
                    .complete_multipart(
                        &key,
                        &id,
                        &parts.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
                    )
                    .await
                    .map_err(|e| refused("CompleteMultipartUpload", &key, e));
                match done {
                    Ok(etag) => return check_etag(&key, &etag, &expected).map(|()| entry.size),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = self.store.abort_multipart(&key, &id).await {
            log::warn!(
                "aborting the multipart upload of {key} failed ({e}); the next run aborts it"
            );
        }
        done
    }

    /// Reads the parts in order and uploads them in parallel; the parts and their MD5s,
    /// once every part was accepted and the file did not change while it was read.
    async fn upload_parts(
        &self,
        entry: &Entry,
        key: &str,
        id: &crate::store::UploadId,
        part_size: u64,
    ) -> Result<Vec<(CompletedPart, BodyMd5)>, String> {
        let (local, stamp) = (entry.local.clone(), entry.stamp);
        let file = Arc::new(blocking(move || open_source(&local, &stamp)).await?);
        let mut tasks = JoinSet::new();
        let mut offset = 0u64;
        let mut number = 0u32;
        let mut failure = None;
        let mut parts = Vec::new();
        while offset < entry.size {
            let len = part_size.min(entry.size - offset) as usize;
            number += 1;
            let permit = self
                .bodies
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let file_for_read = file.clone();
            let read = blocking(move || read_part(&file_for_read, offset, len)).await;
            let (body, md5) = match read {
                Ok(r) => r,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let (store, key, id) = (self.store.clone(), key.to_string(), id.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let etag = store
                    .upload_part_verified(&key, &id, number, body, md5)
                    .await
                    .map_err(|e| refused(&format!("UploadPart {number} of"), &key, e))?;
                Ok::<_, String>((CompletedPart { number, etag }, md5))
            });
            offset += len as u64;
            // Parts done so far are collected; a failed one ends the reading early.
            while let Some(done) = tasks.try_join_next() {
                match flatten(done) {
                    Ok(p) => parts.push(p),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        while let Some(done) = tasks.join_next().await {
            match flatten(done) {
                Ok(p) => parts.push(p),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let file_now = file.clone();
        blocking(move || check_unchanged(&file_now, &stamp)).await?;
        parts.sort_by_key(|p| p.0.number);
        // Every part, once: S3 would complete an upload of fewer parts as a shorter object.
        if parts.len() != number as usize
            || parts
                .iter()
                .enumerate()
                .any(|(i, p)| p.0.number != i as u32 + 1)
        {
            return Err(format!(
                "{} of {number} parts were uploaded; not completed",
                parts.len()
            ));
        }
        Ok(parts)
    }
}

fn flatten<T>(done: Result<Result<T, String>, tokio::task::JoinError>) -> Result<T, String> {
    done.map_err(|e| format!("upload task failed: {e}"))?
}

/// The ETag S3 gives a multipart upload: the MD5 of the parts' MD5s, and their count.
fn multipart_etag(parts: &[(CompletedPart, BodyMd5)]) -> String {
    let mut all = Md5::new();
    for (_, md5) in parts {
        all.update(md5.0);
    }
    format!("{:x}-{}", all.finalize(), parts.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_in_parts_arrives_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(12usize << 20) + 1)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let path = dir.path().join("big");
        std::fs::write(&path, &data).unwrap();
        let layout = Layout::new("p/");
        let entry = super::super::walk::entry(&path, "big".into(), &layout).unwrap();
        let store = Arc::new(MemoryStore::new());
        let sender = Sender {
            store: store.clone(),
            layout,
            part_size: 5 << 20,
            bodies: Arc::new(Semaphore::new(4)),
        };
        assert_eq!(sender.send(&entry).await.unwrap(), data.len() as u64);
        assert_eq!(store.object("p/big").unwrap(), data);
        assert_eq!(store.pending_uploads(), 0);
    }

    #[test]
    fn etags_are_checked_when_they_are_md5s() {
        let md5 = hex(&md5_of(b"abc"));
        assert!(check_etag("k", &ETag(format!("\"{md5}\"")), &md5).is_ok());
        assert!(
            check_etag(
                "k",
                &ETag("\"00000000000000000000000000000000\"".into()),
                &md5
            )
            .is_err()
        );
        // Not an MD5 (e.g. a store's own tag): nothing to check.
        assert!(check_etag("k", &ETag("\"v1\"".into()), &md5).is_ok());
    }
}
