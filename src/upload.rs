//! Turning a staged file into an object: one PUT when it fits in a part, otherwise a parallel
//! multipart upload. A file written front to back gets its parts uploaded while the
//! writer is still writing ([`Streaming`]); close then only sends the tail and completes.
//! An upload either completes or is aborted: no other client ever sees half an object.
//! Parts are cut by one [`PartSchedule`] (`schedule.rs`: parts grow with the file, up to
//! 5 TiB), whether the file streamed or its size was known at close, so a part started
//! while writing is never sent again. Bodies are read from the source in chunks under
//! one [`MemoryBudget`] (`budget.rs`): part sizes never decide how much memory uploads
//! hold. The bytes come from a [`PartSource`] (a staged file): this module knows nothing
//! of stages, and every error it returns is a `StoreError`.

mod budget;
mod schedule;

pub use budget::{CHUNK, MemoryBudget};
pub use schedule::{MAX_OBJECT, MAX_PART, MAX_PARTS, MIN_PART, Part, PartSchedule};

use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use bytes::Bytes;

use crate::store::{
    CompletedPart, ETag, ObjectHeaders, ObjectStore, StoreError, StoreResult, UploadId,
};

/// How uploads are cut into parts and how much they may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// The size of the first parts (`--part-size`).
    pub part_size: u64,
    /// Parts per upload the service takes (`--max-parts`, S3: 10,000).
    pub max_parts: u32,
    /// Parts uploaded at once, for all files together.
    pub concurrency: usize,
    /// Bytes of request bodies in memory at once, for all uploads together.
    pub memory: u64,
}

type SharedId = Shared<BoxFuture<'static, Result<UploadId, StoreError>>>;

/// A multipart upload started while its file is still being written.
pub struct Streaming {
    key: String,
    id: SharedId,
    parts: Vec<JoinHandle<Result<CompletedPart, StoreError>>>,
    /// The last part started (number 0, empty, before the first): bytes up to its end
    /// are in parts already started and must not change.
    last: Part,
    invalid: bool,
}

impl Streaming {
    /// Bytes `[0, covered)` are in parts already started.
    fn covered(&self) -> u64 {
        self.last.offset + self.last.len
    }

    /// A write or truncate reached `offset`: parts at or after it are out of date.
    pub fn touched(&mut self, offset: u64) {
        if offset < self.covered() {
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

/// Uploads files with the mount's part schedule, concurrency and memory budget.
pub struct Uploader<S> {
    store: Arc<S>,
    schedule: PartSchedule,
    permits: Arc<Semaphore>,
    budget: Arc<MemoryBudget>,
}

impl<S: ObjectStore> Uploader<S> {
    pub fn new(store: Arc<S>, limits: UploadLimits) -> Uploader<S> {
        Uploader {
            store,
            schedule: PartSchedule::new(limits.part_size, limits.max_parts),
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            budget: MemoryBudget::new(limits.memory),
        }
    }

    pub fn schedule(&self) -> &PartSchedule {
        &self.schedule
    }

    /// The memory budget of request bodies (its peak shows what uploads held).
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// The largest file this uploader can upload.
    pub fn max_file_size(&self) -> u64 {
        self.schedule.max_object()
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
            if size < 2 * self.schedule.base() {
                return; // might still fit in one PUT, or is too young to tell
            }
            *slot = Some(self.start_streaming(source, key, headers));
        }
        let Some(st) = slot.as_mut() else { return };
        if st.invalid || st.key != key {
            return;
        }
        // Whole parts only, and never the last one: close cuts that.
        loop {
            let number = st.last.number + 1;
            let part = Part {
                number,
                offset: st.covered(),
                len: self.schedule.part_len(number),
            };
            if number >= self.schedule.max_parts() || part.offset + part.len >= size {
                return;
            }
            st.parts
                .push(self.spawn_part(source, key, st.id.clone(), part));
            st.last = part;
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
            parts: Vec::new(),
            last: Part {
                number: 0,
                offset: 0,
                len: 0,
            },
            invalid: false,
        }
    }

    fn spawn_part<P: PartSource>(
        &self,
        source: &Arc<P>,
        key: &str,
        id: SharedId,
        part: Part,
    ) -> JoinHandle<Result<CompletedPart, StoreError>> {
        let (store, key, permits) = (self.store.clone(), key.to_string(), self.permits.clone());
        // Read chunk by chunk as the request sends it, under the budget.
        let body = self.budget.body(source, part.offset, part.len);
        tokio::spawn(async move {
            let id = id.await?;
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| StoreError::Other("the upload permits are closed".into()))?;
            let etag = store.upload_part(&key, &id, part.number, body).await?;
            Ok(CompletedPart {
                number: part.number,
                etag,
            })
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
        if size > self.schedule.max_object() {
            if let Some(streaming) = streaming {
                self.abort_streaming(streaming);
            }
            return Err(StoreError::Other(format!(
                "{key}: {size} bytes is more than the largest object S3 takes ({} bytes)",
                self.schedule.max_object()
            )));
        }
        if let Some(streaming) = streaming {
            if !streaming.invalid && streaming.key == key && size > streaming.covered() {
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
        if size <= self.schedule.base() {
            let body = self.budget.body(source, 0, size);
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
        let cut = self
            .schedule
            .parts(size)
            .ok_or_else(|| StoreError::Other(format!("{key}: {size} bytes take too many parts")))?;
        let id = self.store.create_multipart(key, headers).await?;
        source.multipart_started(key, Some(&id.0));
        let shared: SharedId = futures::future::ready(Ok(id.clone())).boxed().shared();
        let parts = cut
            .into_iter()
            .map(|part| self.spawn_part(source, key, shared.clone(), part))
            .collect();
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
        let Some(rest) = self.schedule.parts_after(st.last, size) else {
            let key = st.key.clone();
            self.abort_streaming(st);
            return Err(StoreError::Other(format!(
                "{key}: {size} bytes take too many parts"
            )));
        };
        for part in rest {
            let key = st.key.clone();
            st.parts
                .push(self.spawn_part(source, &key, st.id.clone(), part));
            st.last = part;
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

#[cfg(test)]
mod tests;
