//! An in-memory bucket behind [`ObjectStore`], for fast tests of the core and for fault
//! injection (fail the next N operations of a kind, or delay them). It follows S3's flat
//! key space (`x` and `x/y` may both exist, listings are sorted, ETags are content
//! hashes) and S3's size limits: a PUT or CopyObject of at most 5 GiB, parts numbered
//! 1..=10,000 of at most 5 GiB, every part but the last at least 5 MiB, objects of at
//! most 5 TiB. [`MemoryStore::sizes_only`] keeps no bytes, only sizes and fingerprints,
//! so that tests can stream terabytes through the real upload path. Several buckets are
//! several stores: one made known to another by name ([`MemoryStore::add_bucket`]) is the
//! source of its cross-bucket copies.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;

use super::part_copy::{MAX_SINGLE_COPY, copy_in_parts};
use super::{
    Body, BodyMd5, ByteChunks, CompletedPart, ETag, ListPage, ListedObject, ObjectHeaders,
    ObjectMeta, ObjectStore, PendingUpload, StoreError, StoreResult, UploadId,
};

#[derive(Clone)]
struct Object {
    data: Content,
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
    UploadPartCopy,
    Delete,
    ListUploads,
}

/// What an object or a part holds: its bytes, or (sizes-only) the lengths and
/// fingerprints of its parts.
#[derive(Clone, Debug)]
enum Content {
    Bytes(Bytes),
    Sizes(Vec<Fingerprint>),
}

/// The length of a part and a hash of its bytes at every [`SAMPLE_STRIDE`]th offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u64,
    pub hash: u64,
}

/// Distance between the bytes a fingerprint samples.
pub const SAMPLE_STRIDE: u64 = 64 << 10;

impl Fingerprint {
    /// The fingerprint of a part whose byte at offset `i` is `byte(i)`.
    pub fn of(len: u64, byte: impl Fn(u64) -> u8) -> Fingerprint {
        let mut hash = FNV_START;
        let mut i = 0;
        while i < len {
            hash = fnv(hash, byte(i));
            i += SAMPLE_STRIDE;
        }
        Fingerprint { len, hash }
    }
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(0x100_0000_01b3)
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Sizes(parts) => parts.iter().map(|p| p.len).sum(),
        }
    }

    fn bytes(&self) -> StoreResult<&Bytes> {
        match self {
            Content::Bytes(b) => Ok(b),
            Content::Sizes(_) => Err(StoreError::Other(
                "the sizes-only memory store keeps no bytes".into(),
            )),
        }
    }

    fn etag(&self) -> ETag {
        match self {
            Content::Bytes(b) => content_etag(b),
            Content::Sizes(parts) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for p in parts {
                    (p.len, p.hash).hash(&mut h);
                }
                ETag(format!("\"{:016x}-{}\"", h.finish(), parts.len()))
            }
        }
    }
}

/// A multipart upload in progress: its key, headers and the parts received.
type Upload = (String, ObjectHeaders, BTreeMap<u32, Content>);

/// S3's limits, as `memory` enforces them.
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;
const MAX_PARTS: usize = 10_000;
const MAX_OBJECT: u64 = 5 << 40;

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Object>>,
    uploads: Mutex<HashMap<String, Upload>>,
    /// Per kind of operation: how many to let pass, then how many to fail, and how.
    faults: Mutex<HashMap<Op, (u32, u32, StoreError)>>,
    counts: Mutex<HashMap<Op, u64>>,
    /// Per kind of operation: how long each one takes.
    delays: Mutex<HashMap<Op, std::time::Duration>>,
    /// Per kind of operation: how long each answer travels after the store was read.
    late_answers: Mutex<HashMap<Op, std::time::Duration>>,
    /// Per kind of operation: how many run now, and the most that ever ran at once.
    in_flight: Mutex<HashMap<Op, (u64, u64)>>,
    /// Part numbers received per upload, and how often each (a part sent twice shows).
    part_sends: Mutex<HashMap<(String, u32), u32>>,
    sizes_only: bool,
    /// How long a sizes-only store keeps each body chunk after it arrived.
    chunk_hold: Mutex<Option<std::time::Duration>>,
    next_id: AtomicU64,
    /// When each multipart upload (by id) was created.
    initiated: Mutex<HashMap<String, SystemTime>>,
    /// Other buckets by name, readable by [`ObjectStore::copy_from_bucket`].
    buckets: Mutex<HashMap<String, Arc<MemoryStore>>>,
    /// Keys per listing page when the caller sets no limit (0: S3's 1000).
    page_size: AtomicU64,
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

    /// A store that keeps only the sizes and [`Fingerprint`]s of what it is sent.
    pub fn sizes_only() -> MemoryStore {
        MemoryStore {
            sizes_only: true,
            ..MemoryStore::default()
        }
    }

    /// A sizes-only store keeps every body chunk for `hold` after it arrived (as a slow
    /// network keeps what it has not sent yet), without waiting for it.
    pub fn hold_chunks(&self, hold: std::time::Duration) {
        *self.chunk_hold.lock().unwrap() = Some(hold);
    }

    /// Every operation of kind `op` takes `delay` from now on.
    pub fn delay(&self, op: Op, delay: std::time::Duration) {
        self.delays.lock().unwrap().insert(op, delay);
    }

    /// Every listing or HEAD (`op`) reads the store at once but answers `delay` later,
    /// as a reply slow on its way back: what it says may be out of date when it arrives.
    pub fn answer_late(&self, op: Op, delay: std::time::Duration) {
        self.late_answers.lock().unwrap().insert(op, delay);
    }

    /// Waits out the travel time `answer_late` set for answers of kind `op`.
    async fn travel(&self, op: Op) {
        let delay = self.late_answers.lock().unwrap().get(&op).copied();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }

    /// The most operations of kind `op` that ever ran at once.
    pub fn peak_in_flight(&self, op: Op) -> u64 {
        self.in_flight.lock().unwrap().get(&op).map_or(0, |c| c.1)
    }

    /// How many times part `number` of upload `id` was sent, for every part sent.
    pub fn part_sends(&self) -> HashMap<(String, u32), u32> {
        self.part_sends.lock().unwrap().clone()
    }

    /// The size of an object.
    pub fn size(&self, key: &str) -> Option<u64> {
        self.objects.lock().unwrap().get(key).map(|o| o.data.len())
    }

    /// The parts of an object of the sizes-only store.
    pub fn fingerprints(&self, key: &str) -> Option<Vec<Fingerprint>> {
        match &self.objects.lock().unwrap().get(key)?.data {
            Content::Sizes(parts) => Some(parts.clone()),
            Content::Bytes(_) => None,
        }
    }

    /// The next `times` operations of kind `op` fail with `error`.
    pub fn fail_next(&self, op: Op, times: u32, error: StoreError) {
        self.fail_after(op, 0, times, error);
    }

    /// After `pass` more operations of kind `op` succeed, the next `times` fail.
    pub fn fail_after(&self, op: Op, pass: u32, times: u32, error: StoreError) {
        self.faults.lock().unwrap().insert(op, (pass, times, error));
    }

    /// Listing pages hold `n` keys and prefixes unless the caller asks for fewer (S3: 1000),
    /// so that tests cross many page boundaries with few keys.
    pub fn set_page_size(&self, n: u64) {
        self.page_size.store(n, Ordering::Relaxed);
    }

    /// How many operations of kind `op` were attempted.
    pub fn count(&self, op: Op) -> u64 {
        self.counts.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    pub fn object(&self, key: &str) -> Option<Bytes> {
        let objects = self.objects.lock().unwrap();
        objects.get(key)?.data.bytes().ok().cloned()
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
        let data = Content::Bytes(Bytes::copy_from_slice(data));
        self.store(key, data, ObjectHeaders::default());
    }

    /// Puts an object of `len` bytes into a sizes-only store, as another client would.
    pub fn insert_sized(&self, key: &str, len: u64) {
        let content = Content::Sizes(vec![Fingerprint { len, hash: 0 }]);
        self.store(key, content, ObjectHeaders::default());
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
        self.store(key, Content::Bytes(Bytes::copy_from_slice(data)), headers);
    }

    /// Moves the object's Last-Modified `by` into the past (as if written earlier).
    pub fn age(&self, key: &str, by: std::time::Duration) {
        if let Some(object) = self.objects.lock().unwrap().get_mut(key) {
            object.modified -= by;
        }
    }

    fn store(&self, key: &str, data: Content, headers: ObjectHeaders) -> ETag {
        let etag = data.etag();
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

    /// Counts the operation, waits its delay while counted in flight, and fails it if a
    /// fault is armed.
    async fn enter(&self, op: Op) -> StoreResult<()> {
        *self.counts.lock().unwrap().entry(op).or_default() += 1;
        let delay = self.delays.lock().unwrap().get(&op).copied();
        if let Some(delay) = delay {
            {
                let mut in_flight = self.in_flight.lock().unwrap();
                let (now, peak) = in_flight.entry(op).or_default();
                *now += 1;
                *peak = (*peak).max(*now);
            }
            // Counted out even if the caller drops the operation while it waits.
            let _out = InFlight(self, op);
            tokio::time::sleep(delay).await;
        }
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

    /// The bytes a body brings: kept, or reduced to a fingerprint (sizes-only).
    async fn receive(&self, body: &Body) -> StoreResult<Content> {
        if !self.sizes_only {
            return Ok(Content::Bytes(body.collect().await?));
        }
        let (mut hash, mut at) = (FNV_START, 0u64);
        let hold = *self.chunk_hold.lock().unwrap();
        let mut chunks = body.chunks();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let end = at + chunk.len() as u64;
            let mut sample = at.div_ceil(SAMPLE_STRIDE) * SAMPLE_STRIDE;
            while sample < end {
                hash = fnv(hash, chunk[(sample - at) as usize]);
                sample += SAMPLE_STRIDE;
            }
            at = end;
            if let Some(hold) = hold {
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    drop(chunk);
                });
            }
        }
        Ok(Content::Sizes(vec![Fingerprint { len: at, hash }]))
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
        self.enter(Op::Head).await?;
        let o = self.get_object(key);
        self.travel(Op::Head).await;
        let o = o?;
        Ok(ObjectMeta {
            size: o.data.len(),
            etag: o.etag,
            last_modified: o.modified,
            user_meta: o.headers.user_meta,
            content_type: o.headers.content_type,
        })
    }

    async fn head_and_start(&self, key: &str, limit: u64) -> StoreResult<(ObjectMeta, Bytes)> {
        self.enter(Op::Get).await?;
        let o = self.get_object(key)?;
        let data = o.data.bytes()?;
        let start = data.slice(..(limit as usize).min(data.len()));
        let meta = ObjectMeta {
            size: o.data.len(),
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
        self.enter(Op::Get).await?;
        let o = self.get_object(key)?;
        if if_match.is_some_and(|e| *e != o.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let bytes = o.data.bytes()?;
        let len = bytes.len() as u64;
        let data = bytes.slice(range.start.min(len) as usize..range.end.min(len) as usize);
        Ok(futures::stream::iter([Ok(data)]).boxed())
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        let lower = match token {
            Some(t) => Bound::Excluded(t),
            None => Bound::Included(prefix.to_string()),
        };
        self.list_from(prefix, delimited, lower, max_keys).await
    }

    async fn list_page_after(
        &self,
        prefix: &str,
        start_after: &str,
        max_keys: i32,
    ) -> StoreResult<ListPage> {
        let lower = match start_after < prefix {
            true => Bound::Included(prefix.to_string()),
            false => Bound::Excluded(start_after.to_string()),
        };
        self.list_from(prefix, true, lower, Some(max_keys)).await
    }

    async fn put(
        &self,
        key: &str,
        body: impl Into<Body> + Send,
        headers: &ObjectHeaders,
    ) -> StoreResult<ETag> {
        let body: Body = body.into();
        self.enter(Op::Put).await?;
        if body.len() > MAX_PART {
            return Err(too_large("a single PUT takes at most 5 GiB"));
        }
        let data = self.receive(&body).await?;
        Ok(self.store(key, data, headers.clone()))
    }

    async fn create_multipart(&self, key: &str, headers: &ObjectHeaders) -> StoreResult<UploadId> {
        self.enter(Op::CreateMultipart).await?;
        let id = format!("upload-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        (self.initiated.lock().unwrap()).insert(id.clone(), SystemTime::now());
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
        body: Body,
    ) -> StoreResult<ETag> {
        self.enter(Op::UploadPart).await?;
        check_part(number, body.len())?;
        *(self.part_sends.lock().unwrap())
            .entry((id.0.clone(), number))
            .or_default() += 1;
        let content = self.receive(&body).await?;
        self.add_part(id, number, content)
    }

    async fn upload_part_copy(
        &self,
        (_key, id, number): (&str, &UploadId, u32),
        from: &str,
        range: Range<u64>,
        if_match: &ETag,
    ) -> StoreResult<ETag> {
        self.enter(Op::UploadPartCopy).await?;
        check_part(number, range.end.saturating_sub(range.start))?;
        let o = self.get_object(from)?;
        if o.etag != *if_match {
            return Err(StoreError::PreconditionFailed);
        }
        if range.start >= range.end || range.end > o.data.len() {
            return Err(StoreError::Other(format!(
                "InvalidRange: bytes {range:?} of an object of {}",
                o.data.len()
            )));
        }
        let content = match &o.data {
            Content::Bytes(b) => Content::Bytes(b.slice(range.start as usize..range.end as usize)),
            // Bytes it does not keep: the part stands for this range of this version.
            Content::Sizes(_) => Content::Sizes(vec![Fingerprint {
                len: range.end - range.start,
                hash: {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (&o.etag.0, range.start, range.end).hash(&mut h);
                    h.finish()
                },
            }]),
        };
        self.add_part(id, number, content)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        id: &UploadId,
        parts: &[CompletedPart],
    ) -> StoreResult<ETag> {
        self.enter(Op::CompleteMultipart).await?;
        let (upload_key, headers, stored) = self
            .uploads
            .lock()
            .unwrap()
            .remove(&id.0)
            .ok_or_else(|| StoreError::Other("NoSuchUpload".into()))?;
        assert_eq!(upload_key, key, "multipart completed under another key");
        if parts.is_empty() || parts.len() > MAX_PARTS {
            return Err(StoreError::Other(format!(
                "MalformedXML: {} parts (1 to 10,000)",
                parts.len()
            )));
        }
        if parts.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(StoreError::Other("InvalidPartOrder".into()));
        }
        let mut chosen = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let content = stored
                .get(&part.number)
                .ok_or_else(|| StoreError::Other(format!("InvalidPart {}", part.number)))?;
            if content.etag() != part.etag {
                return Err(StoreError::Other(format!("InvalidPart {}", part.number)));
            }
            if i + 1 < parts.len() && content.len() < MIN_PART {
                return Err(StoreError::Other(format!(
                    "EntityTooSmall: part {} has {} bytes, less than 5 MiB",
                    part.number,
                    content.len()
                )));
            }
            chosen.push(content);
        }
        if chosen.iter().map(|c| c.len()).sum::<u64>() > MAX_OBJECT {
            return Err(too_large("an object holds at most 5 TiB"));
        }
        let data = match self.sizes_only {
            true => Content::Sizes(
                chosen
                    .iter()
                    .flat_map(|c| match c {
                        Content::Sizes(p) => p.clone(),
                        Content::Bytes(b) => {
                            vec![Fingerprint::of(b.len() as u64, |i| b[i as usize])]
                        }
                    })
                    .collect(),
            ),
            false => {
                let mut data = Vec::new();
                for c in &chosen {
                    data.extend_from_slice(c.bytes()?);
                }
                Content::Bytes(Bytes::from(data))
            }
        };
        Ok(self.store(key, data, headers))
    }

    async fn abort_multipart(&self, _key: &str, id: &UploadId) -> StoreResult<()> {
        self.uploads.lock().unwrap().remove(&id.0);
        Ok(())
    }

    async fn copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        metadata: Option<&ObjectHeaders>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ETag> {
        let o = self.get_object(from)?;
        if if_match.is_some_and(|e| *e != o.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let headers = metadata.cloned().unwrap_or(o.headers);
        if size > MAX_SINGLE_COPY {
            let source = (from, &o.etag);
            return copy_in_parts(self, source, to, o.data.len(), &headers).await;
        }
        self.enter(Op::Copy).await?;
        if o.data.len() > MAX_SINGLE_COPY {
            return Err(StoreError::Other(
                "InvalidRequest: the copy source is larger than the maximum allowable size \
                 for a copy source: 5368709120"
                    .into(),
            ));
        }
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
        self.enter(Op::Copy).await?;
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
        self.enter(Op::Delete).await?;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn put_verified(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
        md5: BodyMd5,
    ) -> StoreResult<ETag> {
        check_md5(&body, md5)?;
        self.put(key, body, headers).await
    }

    async fn upload_part_verified(
        &self,
        key: &str,
        id: &UploadId,
        number: u32,
        body: Bytes,
        md5: BodyMd5,
    ) -> StoreResult<ETag> {
        check_md5(&body, md5)?;
        self.upload_part(key, id, number, body.into()).await
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        self.enter(Op::ListUploads).await?;
        let initiated = self.initiated.lock().unwrap();
        let mut out: Vec<PendingUpload> = (self.uploads.lock().unwrap().iter())
            .filter(|(_, (key, _, _))| key.starts_with(prefix))
            .map(|(id, (key, _, _))| PendingUpload {
                key: key.clone(),
                id: UploadId(id.clone()),
                initiated: initiated.get(id).copied().unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect();
        out.sort_by(|a, b| (&a.key, &a.id.0).cmp(&(&b.key, &b.id.0)));
        Ok(out)
    }
}

/// S3's BadDigest: the body is not the one whose MD5 the client sent.
fn check_md5(body: &[u8], md5: BodyMd5) -> StoreResult<()> {
    use md5::{Digest, Md5};
    if Md5::digest(body).as_slice() == md5.0 {
        Ok(())
    } else {
        Err(StoreError::Other(
            "HTTP 400 BadDigest: the Content-MD5 you specified did not match what we received"
                .into(),
        ))
    }
}

impl MemoryStore {
    /// Keeps a received part (a part sent again replaces the earlier one, as in S3).
    fn add_part(&self, id: &UploadId, number: u32, content: Content) -> StoreResult<ETag> {
        let etag = content.etag();
        let mut uploads = self.uploads.lock().unwrap();
        let upload = uploads
            .get_mut(&id.0)
            .ok_or_else(|| StoreError::Other("NoSuchUpload".into()))?;
        upload.2.insert(number, content);
        Ok(etag)
    }
}

/// Counts an operation out of flight when dropped.
struct InFlight<'a>(&'a MemoryStore, Op);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0.in_flight.lock().unwrap().get_mut(&self.1) {
            c.0 -= 1;
        }
    }
}

fn too_large(why: &str) -> StoreError {
    StoreError::Other(format!("EntityTooLarge: {why}"))
}

/// S3's rules for one part: numbered 1..=10,000, at most 5 GiB.
fn check_part(number: u32, len: u64) -> StoreResult<()> {
    if !(1..=MAX_PARTS as u32).contains(&number) {
        return Err(StoreError::Other(format!(
            "InvalidArgument: part number {number} is not in 1..=10000"
        )));
    }
    if len > MAX_PART {
        return Err(too_large("a part holds at most 5 GiB"));
    }
    Ok(())
}

impl MemoryStore {
    /// One page of keys under `prefix` from `lower` on (as `list_page` describes).
    async fn list_from(
        &self,
        prefix: &str,
        delimited: bool,
        lower: Bound<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.enter(Op::List).await?;
        let page = self.page_from(prefix, delimited, lower, max_keys);
        self.travel(Op::List).await;
        Ok(page)
    }

    /// One listing page of what the store holds now.
    fn page_from(
        &self,
        prefix: &str,
        delimited: bool,
        lower: Bound<String>,
        max_keys: Option<i32>,
    ) -> ListPage {
        let default = match self.page_size.load(Ordering::Relaxed) {
            0 => 1000,
            n => n,
        };
        let max = max_keys.map_or(default, |m| m.max(1) as u64) as usize;
        let objects = self.objects.lock().unwrap();
        let mut page = ListPage::default();
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
                size: o.data.len(),
                etag: o.etag.clone(),
                last_modified: o.modified,
            });
            count += 1;
        }
        page
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

#[cfg(test)]
mod tests;
