//! Copying an object above the 5 GiB limit of one CopyObject: a multipart upload whose
//! parts are UploadPartCopy requests of ranges of the source, [`COPY_PARALLEL`] at a
//! time, every one conditional on the source's ETag. Invariant: the copy completes
//! whole or is aborted, so no half object and no invisible parts stay behind; no bytes
//! pass through this process, so its memory does not depend on the object's size.

use std::ops::Range;

use futures::{StreamExt, TryStreamExt};

use super::{CompletedPart, ETag, ObjectHeaders, ObjectStore, StoreResult};

/// The largest object one CopyObject copies.
pub const MAX_SINGLE_COPY: u64 = 5 << 30;
/// UploadPartCopy requests in flight for one copy.
pub const COPY_PARALLEL: usize = 8;
/// The smallest part of a multipart copy (larger when 10,000 would not cover the source).
const COPY_PART: u64 = 256 << 20;

/// The byte ranges of the parts copying an object of `size` bytes.
pub fn copy_ranges(size: u64) -> Vec<Range<u64>> {
    let mib = 1 << 20;
    let part = COPY_PART.max(size.div_ceil(10_000).div_ceil(mib) * mib);
    (0..size.div_ceil(part))
        .map(|i| i * part..((i + 1) * part).min(size))
        .collect()
}

/// Copies `from` (`size` bytes, ETag `source_etag`) to `to` with `headers`, in parts.
pub async fn copy_in_parts<S: ObjectStore>(
    store: &S,
    (from, source_etag): (&str, &ETag),
    to: &str,
    size: u64,
    headers: &ObjectHeaders,
) -> StoreResult<ETag> {
    let id = store.create_multipart(to, headers).await?;
    let result = async {
        let parts: Vec<CompletedPart> = futures::stream::iter(copy_ranges(size))
            .enumerate()
            .map(|(i, range)| {
                let (id, number) = (&id, i as u32 + 1);
                async move {
                    let etag = store
                        .upload_part_copy((to, id, number), from, range, source_etag)
                        .await?;
                    Ok::<_, super::StoreError>(CompletedPart { number, etag })
                }
            })
            .buffered(COPY_PARALLEL)
            .try_collect()
            .await?;
        store.complete_multipart(to, &id, &parts).await
    }
    .await;
    if result.is_err() {
        // The parts still in flight were dropped with the stream.
        let _ = store.abort_multipart(to, &id).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_object_within_s3_limits() {
        for size in [MAX_SINGLE_COPY + 1, 6 << 30, 100 << 30, 5 << 40] {
            let ranges = copy_ranges(size);
            assert!(ranges.len() <= 10_000, "{size}");
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, size);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].end - w[0].start >= 5 << 20);
            }
            assert!(ranges.iter().all(|r| r.end - r.start <= 5 << 30));
        }
        assert_eq!(copy_ranges(6 << 30).len(), 24);
    }
}
