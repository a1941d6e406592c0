//! The memory budget of upload bodies: every PUT and part body is read from its source
//! in chunks of at most [`CHUNK`] bytes, each only when the request asks for it, and a
//! chunk holds its share of one budget shared by all uploads of the mount until the
//! last reference to it is dropped (sent). Invariant: the chunk bodies alive at any
//! moment never add up to more than [`MemoryBudget::limit`] bytes, whatever the part
//! sizes, file sizes and number of uploads; a body waits for room instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PartSource;
use crate::store::{Body, ByteChunks, StoreError};

/// Bytes read from a source at a time.
pub const CHUNK: u64 = 1 << 20;

pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    limit: u64,
    held: AtomicU64,
    peak: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (at least one byte).
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS as u64);
        Arc::new(MemoryBudget {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
            held: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The most bytes of bodies ever held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The bytes of bodies held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn chunk(&self) -> u64 {
        CHUNK.min(self.limit)
    }

    /// Waits until `bytes` (at most one chunk) fit in the budget.
    async fn lease(self: &Arc<Self>, bytes: u64) -> Result<Lease, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(bytes as u32)
            .await
            .map_err(|_| StoreError::Other("the upload memory budget is closed".into()))?;
        let now = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok(Lease {
            budget: self.clone(),
            bytes,
            _permit: permit,
        })
    }

    /// The body of bytes `[offset, offset + len)` of `source`: chunks read when the
    /// request asks for them, again from the start when a retry asks again.
    pub fn body<P: PartSource>(self: &Arc<Self>, source: &Arc<P>, offset: u64, len: u64) -> Body {
        let (budget, source) = (self.clone(), source.clone());
        Body::chunked(len, move || budget.chunks(source.clone(), offset, len))
    }

    fn chunks<P: PartSource>(
        self: &Arc<Self>,
        source: Arc<P>,
        offset: u64,
        len: u64,
    ) -> ByteChunks {
        let budget = self.clone();
        let start = (budget, source, offset, offset + len);
        futures::stream::unfold(Some(start), |state| async move {
            let (budget, source, at, end) = state?;
            if at >= end {
                return None;
            }
            let n = budget.chunk().min(end - at);
            let lease = match budget.lease(n).await {
                Ok(lease) => lease,
                Err(e) => return Some((Err(e), None)),
            };
            match source.read_part(at, n as usize) {
                Ok(data) => {
                    let chunk = Bytes::from_owner(Leased {
                        data,
                        _lease: lease,
                    });
                    Some((Ok(chunk), Some((budget, source, at + n, end))))
                }
                Err(e) => {
                    log::warn!("reading bytes {at}.. of a staged file to upload failed: {e}");
                    let e = StoreError::Other(format!("reading the staged file: {e}"));
                    Some((Err(e), None))
                }
            }
        })
        .boxed()
    }
}

/// A share of the budget, given back when dropped.
struct Lease {
    budget: Arc<MemoryBudget>,
    bytes: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A chunk and its share of the budget: freed together.
struct Leased {
    data: Bytes,
    _lease: Lease,
}

impl AsRef<[u8]> for Leased {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}
