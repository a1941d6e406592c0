//! Turning a staged file into an object: one PUT when it fits in a part, otherwise a parallel
//! multipart upload. A file written front to back gets its parts uploaded while the
//! writer is still writing ([`Streaming`]); close then only sends the tail and completes.
//! An upload either completes or is aborted: no other client ever sees half an object.
//! The bytes come from a [`PartSource`] (a staged file): this module knows nothing of
//! stages, and every error it returns is a `StoreError`.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use bytes::Bytes;

use crate::store::{
    CompletedPart, ETag, ObjectHeaders, ObjectStore, StoreError, StoreResult, UploadId,
};

/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;

type SharedId = Shared<BoxFuture<'static, Result<UploadId, StoreError>>>;

/// A multipart upload started while its file is still being written.
pub struct Streaming {
    key: String,
    id: SharedId,
    part_size: u64,
    parts: Vec<JoinHandle<Result<CompletedPart, StoreError>>>,
    /// Bytes `[0, covered)` are in parts already started; they must not change.
    covered: u64,
    invalid: bool,
}

impl Streaming {
    /// A write or truncate reached `offset`: parts at or after it are out of date.
    pub fn touched(&mut self, offset: u64) {
        if offset < self.covered {
            self.invalid = true;
        }
    }
}

/// The bytes of a file to upload. What an upload reads of it must not change while the
/// upload runs (parts of an append-only file, or a snapshot whose changes make the
/// caller discard the upload).
pub trait PartSource: Send + Sync + 'static {
    fn read_part(&self, offset: u64, len: usize) -> std::io::Result<Bytes>;
    /// A multipart upload of this file started (`Some(id)`) or ended (`None`): a crash
    /// in between must be able to abort it.
    fn multipart_started(&self, key: &str, upload_id: Option<&str>);
}

/// Uploads files with the mount's part size and concurrency.
pub struct Uploader<S> {
    store: Arc<S>,
    part_size: u64,
    permits: Arc<Semaphore>,
}

impl<S: ObjectStore> Uploader<S> {
    pub fn new(store: Arc<S>, part_size: u64, concurrency: usize) -> Uploader<S> {
        Uploader {
            store,
            part_size,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// After a write to a file written front to back, now `size` bytes long: starts
    /// the parts that are complete, in the streaming upload of `slot` (started now,
    /// with `headers`, if there is none yet).
    pub fn stream_parts<P: PartSource>(
        &self,
        source: &Arc<P>,
        slot: &mut Option<Streaming>,
        size: u64,
        key: &str,
        headers: Option<&ObjectHeaders>,
    ) {
        if slot.is_none() {
            let Some(headers) = headers else { return };
            if size < 2 * self.part_size {
                return; // might still fit in one PUT, or is too young to tell
            }
            *slot = Some(self.start_streaming(source, key, headers));
        }
        let Some(st) = slot.as_mut() else { return };
        if st.invalid || st.key != key {
            return;
        }
        // Leave the last (possibly partial) part to close.
        while st.covered + st.part_size < size && (st.parts.len() as u64) < MAX_PARTS - 1 {
            let number = st.parts.len() as u32 + 1;
            let range = (st.covered, st.part_size as usize);
            st.covered += st.part_size;
            st.parts
                .push(self.spawn_part(source, key, st.id.clone(), number, range));
        }
    }

    /// A streaming upload whose multipart upload is created when its first part needs
    /// the id (and journaled with the source then).
    fn start_streaming<P: PartSource>(
        &self,
        source: &Arc<P>,
        key: &str,
        headers: &ObjectHeaders,
    ) -> Streaming {
        let (store, key_owned, headers, owner) = (
            self.store.clone(),
            key.to_string(),
            headers.clone(),
            source.clone(),
        );
        let id: SharedId = async move {
            let id = store.create_multipart(&key_owned, &headers).await?;
            owner.multipart_started(&key_owned, Some(&id.0));
            Ok(id)
        }
        .boxed()
        .shared();
        Streaming {
            key: key.to_string(),
            id,
            part_size: self.part_size,
            parts: Vec::new(),
            covered: 0,
            invalid: false,
        }
    }

    fn spawn_part<P: PartSource>(
        &self,
        source: &Arc<P>,
        key: &str,
        id: SharedId,
        number: u32,
        (offset, len): (u64, usize),
    ) -> JoinHandle<Result<CompletedPart, StoreError>> {
        let (store, source, key, permits) = (
            self.store.clone(),
            source.clone(),
            key.to_string(),
            self.permits.clone(),
        );
        tokio::spawn(async move {
            let id = id.await?;
            let _permit = permits.acquire_owned().await.expect("never closed");
            let body = read_part(&*source, offset, len)?;
            let etag = store.upload_part(&key, &id, number, body).await?;
            Ok(CompletedPart { number, etag })
        })
    }

    /// Uploads the first `size` bytes of `source` under `key`; returns the new ETag.
    /// `streaming` is the upload started while the file was written, if any: it is
    /// finished if it still fits, aborted otherwise.
    pub async fn upload<P: PartSource>(
        &self,
        source: &Arc<P>,
        (key, headers): (&str, &ObjectHeaders),
        size: u64,
        streaming: Option<Streaming>,
    ) -> StoreResult<ETag> {
        if let Some(streaming) = streaming {
            if !streaming.invalid && streaming.key == key && size > streaming.covered {
                match self.finish_streaming(source, streaming, size).await {
                    Ok(etag) => return Ok(etag),
                    Err(e) => log::warn!(
                        "{key}: the upload started while writing failed ({e}); uploading the file again"
                    ),
                }
            } else {
                self.abort_streaming(streaming);
            }
        }
        if size <= self.part_size {
            let body = read_part(&**source, 0, size as usize)?;
            self.store.put(key, body, headers).await
        } else {
            self.multipart(source, key, headers, size).await
        }
    }

    async fn multipart<P: PartSource>(
        &self,
        source: &Arc<P>,
        key: &str,
        headers: &ObjectHeaders,
        size: u64,
    ) -> Result<ETag, StoreError> {
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        let id = self.store.create_multipart(key, headers).await?;
        source.multipart_started(key, Some(&id.0));
        let shared: SharedId = futures::future::ready(Ok(id.clone())).boxed().shared();
        let mut parts = Vec::new();
        let mut offset = 0;
        while offset < size {
            let len = part_size.min(size - offset) as usize;
            let number = parts.len() as u32 + 1;
            parts.push(self.spawn_part(source, key, shared.clone(), number, (offset, len)));
            offset += len as u64;
        }
        let result = async {
            let done = join_parts(parts).await?;
            self.store.complete_multipart(key, &id, &done).await
        }
        .await;
        if result.is_err() {
            let _ = self.store.abort_multipart(key, &id).await;
        }
        source.multipart_started(key, None);
        result
    }

    async fn finish_streaming<P: PartSource>(
        &self,
        source: &Arc<P>,
        mut st: Streaming,
        size: u64,
    ) -> Result<ETag, StoreError> {
        while st.covered < size {
            let len = st.part_size.min(size - st.covered) as usize;
            let number = st.parts.len() as u32 + 1;
            let key = st.key.clone();
            st.parts
                .push(self.spawn_part(source, &key, st.id.clone(), number, (st.covered, len)));
            st.covered += len as u64;
        }
        let id = st.id.clone().await?;
        let result = async {
            let done = join_parts(std::mem::take(&mut st.parts)).await?;
            self.store.complete_multipart(&st.key, &id, &done).await
        }
        .await;
        if result.is_err() {
            let _ = self.store.abort_multipart(&st.key, &id).await;
        }
        source.multipart_started(&st.key, None);
        result
    }

    /// Abandons a streaming upload (file deleted, renamed or rewritten): waits for its
    /// parts in the background, then aborts it so no invisible parts stay behind.
    pub fn abort_streaming(&self, st: Streaming) {
        let store = self.store.clone();
        tokio::spawn(async move {
            for part in st.parts {
                let _ = part.await;
            }
            if let Ok(id) = st.id.await {
                let _ = store.abort_multipart(&st.key, &id).await;
            }
        });
    }
}

async fn join_parts(
    parts: Vec<JoinHandle<Result<CompletedPart, StoreError>>>,
) -> Result<Vec<CompletedPart>, StoreError> {
    let mut done = Vec::with_capacity(parts.len());
    let mut first_error = None;
    // Await every part, even after a failure, so none is still running on abort.
    for part in parts {
        match part.await {
            Ok(Ok(p)) => done.push(p),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error.get_or_insert(StoreError::Other(format!("upload task failed: {join}")));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

fn read_part<P: PartSource>(source: &P, offset: u64, len: usize) -> StoreResult<Bytes> {
    source
        .read_part(offset, len)
        .map_err(|e| StoreError::Other(format!("reading the staged file: {e}")))
}
