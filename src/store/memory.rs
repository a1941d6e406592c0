//! An in-memory bucket behind [`ObjectStore`], for fast tests of the core and for fault
//! injection (fail the next N operations of a kind). It follows S3's flat key space:
//! `x` and `x/y` may both exist, listings are sorted, ETags are content hashes.
//! Several buckets are several stores: one made known to another by name
//! ([`MemoryStore::add_bucket`]) is the source of its cross-bucket copies.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;

use super::{
    ByteChunks, CompletedPart, ETag, ListPage, ListedObject, ObjectHeaders, ObjectMeta,
    ObjectStore, StoreError, StoreResult, UploadId,
};

#[derive(Clone)]
struct Object {
    data: Bytes,
    etag: ETag,
    headers: ObjectHeaders,
    modified: SystemTime,
}

/// The kinds of operation a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Head,
    Get,
    List,
    Put,
    CreateMultipart,
    UploadPart,
    CompleteMultipart,
    Copy,
    Delete,
}

/// A multipart upload in progress: its key, headers and the parts received.
type Upload = (String, ObjectHeaders, BTreeMap<u32, Bytes>);

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Object>>,
    uploads: Mutex<HashMap<String, Upload>>,
    /// Per kind of operation: how many to let pass, then how many to fail, and how.
    faults: Mutex<HashMap<Op, (u32, u32, StoreError)>>,
    counts: Mutex<HashMap<Op, u64>>,
    next_id: AtomicU64,
    /// Other buckets by name, readable by [`ObjectStore::copy_from_bucket`].
    buckets: Mutex<HashMap<String, Arc<MemoryStore>>>,
}

fn content_etag(data: &[u8]) -> ETag {
    // Not MD5, but content-derived and stable, which is all the core relies on.
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    ETag(format!("\"{:016x}{:08x}\"", h.finish(), data.len()))
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Makes `store` bucket `name` for this store's cross-bucket copies.
    pub fn add_bucket(&self, name: &str, store: Arc<MemoryStore>) {
        self.buckets.lock().unwrap().insert(name.to_string(), store);
    }

    /// The next `times` operations of kind `op` fail with `error`.
    pub fn fail_next(&self, op: Op, times: u32, error: StoreError) {
        self.fail_after(op, 0, times, error);
    }

    /// After `pass` more operations of kind `op` succeed, the next `times` fail.
    pub fn fail_after(&self, op: Op, pass: u32, times: u32, error: StoreError) {
        self.faults.lock().unwrap().insert(op, (pass, times, error));
    }

    /// How many operations of kind `op` were attempted.
    pub fn count(&self, op: Op) -> u64 {
        self.counts.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|o| o.data.clone())
    }

    pub fn user_meta(&self, key: &str) -> Option<Vec<(String, String)>> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|o| o.headers.user_meta.clone())
    }

    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    pub fn pending_uploads(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }

    pub fn insert(&self, key: &str, data: &[u8]) {
        self.store(key, Bytes::copy_from_slice(data), ObjectHeaders::default());
    }

    /// Puts an object with user metadata, as another client (s3fs) would.
    pub fn insert_with_meta(&self, key: &str, data: &[u8], meta: &[(&str, &str)]) {
        let headers = ObjectHeaders {
            user_meta: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            content_type: None,
        };
        self.store(key, Bytes::copy_from_slice(data), headers);
    }

    /// Moves the object's Last-Modified `by` into the past (as if written earlier).
    pub fn age(&self, key: &str, by: std::time::Duration) {
        if let Some(object) = self.objects.lock().unwrap().get_mut(key) {
            object.modified -= by;
        }
    }

    fn store(&self, key: &str, data: Bytes, headers: ObjectHeaders) -> ETag {
        let etag = content_etag(&data);
        self.objects.lock().unwrap().insert(
            key.to_string(),
            Object {
                data,
                etag: etag.clone(),
                headers,
                modified: SystemTime::now(),
            },
        );
        etag
    }

    /// Counts the operation and fails it if a fault is armed.
    fn enter(&self, op: Op) -> StoreResult<()> {
        *self.counts.lock().unwrap().entry(op).or_default() += 1;
        let mut faults = self.faults.lock().unwrap();
        if let Some((pass, times, err)) = faults.get_mut(&op) {
            if *pass > 0 {
                *pass -= 1;
            } else if *times > 0 {
                *times -= 1;
                return Err(err.clone());
            }
        }
        Ok(())
    }

    fn get_object(&self, key: &str) -> StoreResult<Object> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or(StoreError::NotFound)
    }
}

impl ObjectStore for MemoryStore {
    async fn check_bucket(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.enter(Op::Head)?;
        let o = self.get_object(key)?;
        Ok(ObjectMeta {
            size: o.data.len() as u64,
            etag: o.etag,
            last_modified: o.modified,
            user_meta: o.headers.user_meta,
            content_type: o.headers.content_type,
        })
    }

    async fn head_and_start(&self, key: &str, limit: u64) -> StoreResult<(ObjectMeta, Bytes)> {
        self.enter(Op::Get)?;
        let o = self.get_object(key)?;
        let start = o.data.slice(..(limit as usize).min(o.data.len()));
        let meta = ObjectMeta {
            size: o.data.len() as u64,
            etag: o.etag,
            last_modified: o.modified,
            user_meta: o.headers.user_meta,
            content_type: o.headers.content_type,
        };
        Ok((meta, start))
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ByteChunks> {
        self.enter(Op::Get)?;
        let o = self.get_object(key)?;
        if if_match.is_some_and(|e| *e != o.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let len = o.data.len() as u64;
        let data = o
            .data
            .slice(range.start.min(len) as usize..range.end.min(len) as usize);
        Ok(futures::stream::iter([Ok(data)]).boxed())
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.enter(Op::List)?;
        let max = max_keys.unwrap_or(1000).max(1) as usize;
        let objects = self.objects.lock().unwrap();
        let mut page = ListPage::default();
        let lower = match token {
            Some(t) => Bound::Excluded(t),
            None => Bound::Included(prefix.to_string()),
        };
        let mut last_prefix: Option<String> = None;
        let mut count = 0;
        for (key, o) in objects.range((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if count == max {
                page.next_token = Some(page_token(&page, last_prefix.as_deref()));
                break;
            }
            let rest = &key[prefix.len()..];
            if delimited && let Some(i) = rest.find('/') {
                let p = format!("{prefix}{}", &rest[..=i]);
                if last_prefix.as_deref() != Some(p.as_str()) {
                    last_prefix = Some(p.clone());
                    page.prefixes.push(p);
                    count += 1;
                }
                continue;
            }
            page.objects.push(ListedObject {
                key: key.clone(),
                size: o.data.len() as u64,
                etag: o.etag.clone(),
                last_modified: o.modified,
            });
            count += 1;
        }
        Ok(page)
    }

    async fn put(&self, key: &str, body: Bytes, headers: &ObjectHeaders) -> StoreResult<ETag> {
        self.enter(Op::Put)?;
        Ok(self.store(key, body, headers.clone()))
    }

    async fn create_multipart(&self, key: &str, headers: &ObjectHeaders) -> StoreResult<UploadId> {
        self.enter(Op::CreateMultipart)?;
        let id = format!("upload-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        self.uploads.lock().unwrap().insert(
            id.clone(),
            (key.to_string(), headers.clone(), BTreeMap::new()),
        );
        Ok(UploadId(id))
    }

    async fn upload_part(
        &self,
        _key: &str,
        id: &UploadId,
        number: u32,
        body: Bytes,
    ) -> StoreResult<ETag> {
        self.enter(Op::UploadPart)?;
        let etag = content_etag(&body);
        let mut uploads = self.uploads.lock().unwrap();
        let upload = uploads
            .get_mut(&id.0)
            .ok_or_else(|| StoreError::Other("NoSuchUpload".into()))?;
        upload.2.insert(number, body);
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        id: &UploadId,
        parts: &[CompletedPart],
    ) -> StoreResult<ETag> {
        self.enter(Op::CompleteMultipart)?;
        let (upload_key, headers, stored) = self
            .uploads
            .lock()
            .unwrap()
            .remove(&id.0)
            .ok_or_else(|| StoreError::Other("NoSuchUpload".into()))?;
        assert_eq!(upload_key, key, "multipart completed under another key");
        let mut data = Vec::new();
        for part in parts {
            let body = stored
                .get(&part.number)
                .ok_or_else(|| StoreError::Other(format!("InvalidPart {}", part.number)))?;
            if content_etag(body) != part.etag {
                return Err(StoreError::Other(format!("InvalidPart {}", part.number)));
            }
            data.extend_from_slice(body);
        }
        Ok(self.store(key, Bytes::from(data), headers))
    }

    async fn abort_multipart(&self, _key: &str, id: &UploadId) -> StoreResult<()> {
        self.uploads.lock().unwrap().remove(&id.0);
        Ok(())
    }

    async fn copy(
        &self,
        from: &str,
        to: &str,
        _size: u64,
        metadata: Option<&ObjectHeaders>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ETag> {
        self.enter(Op::Copy)?;
        let o = self.get_object(from)?;
        if if_match.is_some_and(|e| *e != o.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let headers = metadata.cloned().unwrap_or(o.headers);
        Ok(self.store(to, o.data, headers))
    }

    async fn copy_from_bucket(
        &self,
        source_bucket: &str,
        from: &str,
        to: &str,
        _size: u64,
        if_match: Option<&ETag>,
    ) -> StoreResult<ETag> {
        self.enter(Op::Copy)?;
        let source = self.buckets.lock().unwrap().get(source_bucket).cloned();
        let o = source.ok_or(StoreError::NoSuchBucket)?.get_object(from)?;
        if if_match.is_some_and(|e| *e != o.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        Ok(self.store(to, o.data, o.headers))
    }

    async fn presign_get(&self, key: &str, expires: std::time::Duration) -> StoreResult<String> {
        Ok(format!("memory:///{key}?expires={}", expires.as_secs()))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.enter(Op::Delete)?;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
}

/// The continuation token: the last key or prefix returned, so the next page starts after it.
fn page_token(page: &ListPage, last_prefix: Option<&str>) -> String {
    let last_key = page.objects.last().map(|o| o.key.as_str());
    // A prefix token skips everything under that prefix.
    match (last_key, last_prefix) {
        (Some(k), Some(p)) if p > k => format!("{p}\u{10ffff}"),
        (Some(k), _) => k.to_string(),
        (None, Some(p)) => format!("{p}\u{10ffff}"),
        (None, None) => String::new(),
    }
}
