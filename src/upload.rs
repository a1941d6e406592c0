//! Turning a stage into an object: one PUT when it fits in a part, otherwise a parallel
//! multipart upload. A file written front to back gets its parts uploaded while the
//! writer is still writing ([`Streaming`]); close then only sends the tail and completes.
//! An upload either completes or is aborted: no other client ever sees half an object.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::fs::error::{FsError, FsResult};
use crate::stage::Stage;
use crate::store::{CompletedPart, ETag, ObjectHeaders, ObjectStore, StoreError, UploadId};

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

/// Uploads stages with the mount's part size and concurrency.
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

    /// After a write: starts the parts of an append-only stage that are complete.
    pub fn stream_parts(&self, stage: &Arc<Stage>, key: &str, headers: &ObjectHeaders) {
        if !stage.may_stream() {
            return;
        }
        stage.with_streaming(|slot, size| {
            if slot.is_none() {
                if size < 2 * self.part_size {
                    return; // might still fit in one PUT, or is too young to tell
                }
                let (store, key_owned, headers, owner) = (
                    self.store.clone(),
                    key.to_string(),
                    headers.clone(),
                    stage.clone(),
                );
                let id: SharedId = async move {
                    let id = store.create_multipart(&key_owned, &headers).await?;
                    owner.note_upload(&key_owned, Some(&id.0));
                    Ok(id)
                }
                .boxed()
                .shared();
                *slot = Some(Streaming {
                    key: key.to_string(),
                    id,
                    part_size: self.part_size,
                    parts: Vec::new(),
                    covered: 0,
                    invalid: false,
                });
            }
            let st = slot.as_mut().expect("just set");
            if st.invalid || st.key != key {
                return;
            }
            // Leave the last (possibly partial) part to close.
            while st.covered + st.part_size < size && (st.parts.len() as u64) < MAX_PARTS - 1 {
                let number = st.parts.len() as u32 + 1;
                let range = (st.covered, st.part_size as usize);
                st.covered += st.part_size;
                st.parts
                    .push(self.spawn_part(stage, key, st.id.clone(), number, range));
            }
        });
    }

    fn spawn_part(
        &self,
        stage: &Arc<Stage>,
        key: &str,
        id: SharedId,
        number: u32,
        (offset, len): (u64, usize),
    ) -> JoinHandle<Result<CompletedPart, StoreError>> {
        let (store, stage, key, permits) = (
            self.store.clone(),
            stage.clone(),
            key.to_string(),
            self.permits.clone(),
        );
        tokio::spawn(async move {
            let id = id.await?;
            let _permit = permits.acquire_owned().await.expect("never closed");
            let body = stage
                .read_exact_at(offset, len)
                .map_err(|e| StoreError::Other(format!("reading the staged file: {e}")))?;
            let etag = store.upload_part(&key, &id, number, body).await?;
            Ok(CompletedPart { number, etag })
        })
    }

    /// Uploads the stage as it is now under `key`; returns the new ETag and the size
    /// uploaded. The caller holds the stage's upload lock.
    pub async fn upload(
        &self,
        stage: &Arc<Stage>,
        key: &str,
        headers: &ObjectHeaders,
    ) -> FsResult<(ETag, u64, u64)> {
        stage.fill(&*self.store).await?;
        let snap = stage.snapshot()?;
        if let Some(streaming) = stage.take_streaming() {
            if !streaming.invalid && streaming.key == key && snap.size > streaming.covered {
                match self.finish_streaming(stage, streaming, snap.size).await {
                    Ok(etag) => return Ok((etag, snap.size, snap.version)),
                    Err(e) => log::warn!(
                        "{key}: the upload started while writing failed ({e}); uploading the file again"
                    ),
                }
            } else {
                self.abort_streaming(streaming);
            }
        }
        let etag = if snap.size <= self.part_size {
            let body = stage.read_exact_at(0, snap.size as usize)?;
            self.store.put(key, body, headers).await?
        } else {
            self.multipart(stage, key, headers, snap.size).await?
        };
        Ok((etag, snap.size, snap.version))
    }

    async fn multipart(
        &self,
        stage: &Arc<Stage>,
        key: &str,
        headers: &ObjectHeaders,
        size: u64,
    ) -> Result<ETag, StoreError> {
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        let id = self.store.create_multipart(key, headers).await?;
        stage.note_upload(key, Some(&id.0));
        let shared: SharedId = futures::future::ready(Ok(id.clone())).boxed().shared();
        let mut parts = Vec::new();
        let mut offset = 0;
        while offset < size {
            let len = part_size.min(size - offset) as usize;
            let number = parts.len() as u32 + 1;
            parts.push(self.spawn_part(stage, key, shared.clone(), number, (offset, len)));
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
        stage.note_upload(key, None);
        result
    }

    async fn finish_streaming(
        &self,
        stage: &Arc<Stage>,
        mut st: Streaming,
        size: u64,
    ) -> Result<ETag, StoreError> {
        while st.covered < size {
            let len = st.part_size.min(size - st.covered) as usize;
            let number = st.parts.len() as u32 + 1;
            let key = st.key.clone();
            st.parts
                .push(self.spawn_part(stage, &key, st.id.clone(), number, (st.covered, len)));
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
        stage.note_upload(&st.key, None);
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

impl From<FsError> for StoreError {
    fn from(e: FsError) -> StoreError {
        match e {
            FsError::Store(s) => s,
            other => StoreError::Other(other.to_string()),
        }
    }
}
