//! A [`Body`] as the AWS SDK sends it: in-memory bodies as they are, chunked bodies as
//! a streaming HTTP body with an exact length whose chunks are produced as the
//! connection takes them. The SDK may rebuild it for a retry: it then starts again from
//! the first chunk.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use bytes::Bytes;
use futures::StreamExt;
use http_body::{Frame, SizeHint};

use super::{Body, ByteChunks, StoreError};

pub(super) fn byte_stream(body: Body) -> ByteStream {
    if let Some(bytes) = body.in_memory() {
        return ByteStream::from(bytes.clone());
    }
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(Chunked {
            // The SDK wants a Sync body; the mutex makes it one and is never locked
            // (polling has `&mut`).
            chunks: Mutex::new(body.chunks()),
            remaining: body.len(),
        })
    }))
}

struct Chunked {
    chunks: Mutex<ByteChunks>,
    remaining: u64,
}

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = StoreError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StoreError>>> {
        let this = self.get_mut();
        let chunks = this
            .chunks
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match chunks.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
