//! The object store boundary: the few S3 operations the file system needs, as a small
//! generic trait. Keys are full keys (the mount prefix is applied by `layout`, never here).
//! Implementations classify their failures into [`StoreError`]; nothing above this module
//! knows about HTTP or the AWS SDK.

mod body;
pub mod memory;
pub mod object_options;
pub mod part_copy;
pub mod s3;
mod s3_answers;
mod s3_body;

pub use body::Body;
mod s3_attempts;
pub mod s3_requests;

use std::future::Future;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

/// An entity tag as the store returned it (quotes included, compared verbatim).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

/// What HEAD tells about an object.
#[derive(Clone, Debug)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: ETag,
    pub last_modified: SystemTime,
    /// `x-amz-meta-*` headers, names lower-cased and without the `x-amz-meta-` prefix.
    pub user_meta: Vec<(String, String)>,
    pub content_type: Option<String>,
}

impl ObjectMeta {
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.user_meta
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One object of a listing page.
#[derive(Clone, Debug)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: ETag,
    pub last_modified: SystemTime,
}

/// One page of ListObjectsV2 with delimiter `/`.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    /// Common prefixes, each ending in `/`.
    pub prefixes: Vec<String>,
    pub next_token: Option<String>,
}

/// Headers written with every new object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectHeaders {
    pub user_meta: Vec<(String, String)>,
    pub content_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadId(pub String);

/// The MD5 of a body, computed where its bytes were read: the store refuses the body
/// (stores nothing) if the bytes it received have another MD5 (S3's Content-MD5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyMd5(pub [u8; 16]);

/// A multipart upload that was created and is neither completed nor aborted.
#[derive(Clone, Debug)]
pub struct PendingUpload {
    pub key: String,
    pub id: UploadId,
    pub initiated: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: u32,
    pub etag: ETag,
}

/// Store failures, by what the caller can do about them.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("the object changed (precondition failed)")]
    PreconditionFailed,
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("throttled: {0}")]
    Throttled(String),
    /// Network trouble, timeouts and 5xx answers that outlived the retries.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The endpoint could not be reached at all (connection refused, DNS).
    #[error("endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// S3 could not answer now (throttled, 5xx, timeouts, unreachable): nothing is
    /// known about the object, as opposed to an answer about it.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled(_) | StoreError::Transient(_) | StoreError::Unreachable(_)
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The body of a ranged GET, chunk by chunk as it arrives.
pub type ByteChunks = BoxStream<'static, StoreResult<Bytes>>;

/// Reads a whole ranged GET into one buffer (for small ranges).
pub async fn get_bytes<S: ObjectStore>(
    store: &S,
    key: &str,
    range: Range<u64>,
    if_match: Option<&ETag>,
) -> StoreResult<Bytes> {
    let expected = (range.end - range.start) as usize;
    let mut chunks = store.get_range(key, range, if_match).await?;
    let mut buf = bytes::BytesMut::with_capacity(expected);
    while let Some(chunk) = chunks.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}

/// The operations s3mount needs from an S3-like store.
pub trait ObjectStore: Send + Sync + 'static {
    /// Does the bucket exist and may we use it?
    fn check_bucket(&self) -> impl Future<Output = StoreResult<()>> + Send;
    fn head(&self, key: &str) -> impl Future<Output = StoreResult<ObjectMeta>> + Send;
    /// What HEAD tells, and the first `limit` bytes (at least 1) of the object, in one
    /// request: for small objects, their metadata and their whole content at once.
    fn head_and_start(
        &self,
        key: &str,
        limit: u64,
    ) -> impl Future<Output = StoreResult<(ObjectMeta, Bytes)>> + Send;
    /// Bytes `range` of `key` as a stream of chunks; fails with `PreconditionFailed` if
    /// `if_match` is given and the object's ETag differs.
    fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> impl Future<Output = StoreResult<ByteChunks>> + Send;
    /// One page of keys under `prefix`, grouped by `/` when `delimited`.
    fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> impl Future<Output = StoreResult<ListPage>> + Send;
    /// One page of at most `max_keys` keys under `prefix`, grouped by `/`, of those after
    /// `start_after` in key order (ListObjectsV2 `StartAfter`): the entries of a directory
    /// from a name on, without listing the ones before it.
    fn list_page_after(
        &self,
        prefix: &str,
        start_after: &str,
        max_keys: i32,
    ) -> impl Future<Output = StoreResult<ListPage>> + Send;
    /// A single PUT (at most 5 GiB).
    fn put(
        &self,
        key: &str,
        body: impl Into<Body> + Send,
        headers: &ObjectHeaders,
    ) -> impl Future<Output = StoreResult<ETag>> + Send;
    fn create_multipart(
        &self,
        key: &str,
        headers: &ObjectHeaders,
    ) -> impl Future<Output = StoreResult<UploadId>> + Send;
    fn upload_part(
        &self,
        key: &str,
        id: &UploadId,
        number: u32,
        body: Body,
    ) -> impl Future<Output = StoreResult<ETag>> + Send;
    /// Part `number` of upload `id` of `key` is bytes `range` of the object `from`,
    /// copied by the store (UploadPartCopy); fails with `PreconditionFailed` if the
    /// source's ETag is not `if_match`.
    fn upload_part_copy(
        &self,
        part: (&str, &UploadId, u32),
        from: &str,
        range: Range<u64>,
        if_match: &ETag,
    ) -> impl Future<Output = StoreResult<ETag>> + Send;
    fn complete_multipart(
        &self,
        key: &str,
        id: &UploadId,
        parts: &[CompletedPart],
    ) -> impl Future<Output = StoreResult<ETag>> + Send;
    fn abort_multipart(
        &self,
        key: &str,
        id: &UploadId,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Server-side copy of an object of `size` bytes (above the 5 GiB limit of a single
    /// copy, parts copied in parallel by [`part_copy::copy_in_parts`]): with its metadata, or with `metadata` instead when given
    /// (a copy onto itself then rewrites the metadata). Fails with `PreconditionFailed`
    /// if `if_match` is given and the source's ETag differs.
    fn copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        metadata: Option<&ObjectHeaders>,
        if_match: Option<&ETag>,
    ) -> impl Future<Output = StoreResult<ETag>> + Send;
    /// Server-side copy of `from` in bucket `source_bucket` to `to` in this store's
    /// bucket, with its metadata (multipart copy above the 5 GiB limit of a single
    /// copy); the request uses this store's credentials, which must be allowed to read
    /// the source. Fails with `PreconditionFailed` if `if_match` is given and the
    /// source's ETag differs. (The trash in another bucket.)
    fn copy_from_bucket(
        &self,
        source_bucket: &str,
        from: &str,
        to: &str,
        size: u64,
        if_match: Option<&ETag>,
    ) -> impl Future<Output = StoreResult<ETag>> + Send;
    /// A URL that lets anyone GET `key` for `expires`.
    fn presign_get(
        &self,
        key: &str,
        expires: std::time::Duration,
    ) -> impl Future<Output = StoreResult<String>> + Send;
    /// Deleting a missing key succeeds, as in S3.
    fn delete(&self, key: &str) -> impl Future<Output = StoreResult<()>> + Send;
    /// [`ObjectStore::put`] of a body whose MD5 is `md5`: refused, nothing stored, if
    /// the store received other bytes.
    fn put_verified(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
        md5: BodyMd5,
    ) -> impl Future<Output = StoreResult<ETag>> + Send;
    /// [`ObjectStore::upload_part`] of a body whose MD5 is `md5`: refused if the store
    /// received other bytes.
    fn upload_part_verified(
        &self,
        key: &str,
        id: &UploadId,
        number: u32,
        body: Bytes,
        md5: BodyMd5,
    ) -> impl Future<Output = StoreResult<ETag>> + Send;
    /// The multipart uploads in progress for keys under `prefix`, all pages.
    fn list_uploads(
        &self,
        prefix: &str,
    ) -> impl Future<Output = StoreResult<Vec<PendingUpload>>> + Send;
}
