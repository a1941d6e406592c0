//! The body of a PUT or of an uploaded part: `len` bytes, either in memory or produced
//! chunk by chunk by their owner (a staged file read under the upload memory budget).
//! Invariant: a chunked body can be produced again from its start, any number of times
//! (a retried request sends it again), and every production yields exactly `len` bytes
//! or an error.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{ByteChunks, StoreError, StoreResult};

type Open = Arc<dyn Fn() -> ByteChunks + Send + Sync>;

#[derive(Clone)]
pub struct Body {
    len: u64,
    source: Source,
}

#[derive(Clone)]
enum Source {
    Memory(Bytes),
    Chunks(Open),
}

impl Body {
    /// A body of `len` bytes whose chunks `open` produces, from the start each time.
    pub fn chunked(len: u64, open: impl Fn() -> ByteChunks + Send + Sync + 'static) -> Body {
        if len == 0 {
            return Body::from(Bytes::new());
        }
        Body {
            len,
            source: Source::Chunks(Arc::new(open)),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, if the body is held in memory whole.
    pub fn in_memory(&self) -> Option<&Bytes> {
        match &self.source {
            Source::Memory(b) => Some(b),
            Source::Chunks(_) => None,
        }
    }

    /// The chunks from the start, checked to add up to `len` bytes.
    pub fn chunks(&self) -> ByteChunks {
        let chunks = match &self.source {
            Source::Memory(b) => futures::stream::iter([Ok(b.clone())]).boxed(),
            Source::Chunks(open) => open(),
        };
        let expected = self.len;
        futures::stream::unfold(Some((chunks, 0u64)), move |state| async move {
            let (mut chunks, seen) = state?;
            match chunks.next().await {
                Some(Ok(chunk)) if seen + chunk.len() as u64 > expected => Some((
                    Err(StoreError::Other(format!(
                        "a body of {expected} bytes produced more"
                    ))),
                    None,
                )),
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    Some((Ok(chunk), Some((chunks, seen))))
                }
                Some(Err(e)) => Some((Err(e), None)),
                None if seen < expected => Some((
                    Err(StoreError::Other(format!(
                        "a body of {expected} bytes ended after {seen}"
                    ))),
                    None,
                )),
                None => None,
            }
        })
        .boxed()
    }

    /// All the bytes in one buffer (for stores that keep them).
    pub async fn collect(&self) -> StoreResult<Bytes> {
        if let Some(b) = self.in_memory() {
            return Ok(b.clone());
        }
        let mut buf = BytesMut::with_capacity(self.len as usize);
        let mut chunks = self.chunks();
        while let Some(chunk) = chunks.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body {
            len: b.len() as u64,
            source: Source::Memory(b),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({} bytes)", self.len)
    }
}
