//! The memory store refuses what S3 refuses (sizes, part numbers, part counts), and a
//! copy above 5 GiB goes as parallel UploadPartCopy requests, at most COPY_PARALLEL
//! at a time.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::store::part_copy::{COPY_PARALLEL, copy_ranges};

const MIB: u64 = 1 << 20;

/// A body of `len` zero bytes that is never read (refused before) or read cheaply.
fn zeros(len: u64) -> Body {
    static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
    Body::chunked(len, move || {
        let chunks = (0..len.div_ceil(MIB)).map(move |i| {
            let n = MIB.min(len - i * MIB) as usize;
            Ok(Bytes::from_static(&ZEROS[..n]))
        });
        futures::stream::iter(chunks).boxed()
    })
}

fn is_err_with(r: StoreResult<ETag>, what: &str) {
    match r {
        Err(e) => assert!(e.to_string().contains(what), "{e}"),
        Ok(_) => panic!("accepted; S3 answers {what}"),
    }
}

#[tokio::test]
async fn single_requests_take_at_most_5_gib() {
    let store = MemoryStore::sizes_only();
    let h = ObjectHeaders::default();
    is_err_with(
        store.put("k", zeros(MAX_PART + 1), &h).await,
        "EntityTooLarge",
    );
    store.put("k", zeros(6 * MIB), &h).await.unwrap();
    assert_eq!(store.size("k"), Some(6 * MIB));

    store.insert_sized("big", MAX_PART + 1);
    // Claiming a small size does not make a CopyObject of a large object legal.
    is_err_with(
        store.copy("big", "b2", MIB, None, None).await,
        "InvalidRequest",
    );
}

#[tokio::test]
async fn parts_follow_s3_rules() {
    let store = MemoryStore::sizes_only();
    let h = ObjectHeaders::default();
    let id = store.create_multipart("k", &h).await.unwrap();
    is_err_with(
        store.upload_part("k", &id, 0, zeros(MIB)).await,
        "InvalidArgument",
    );
    is_err_with(
        store.upload_part("k", &id, 10_001, zeros(MIB)).await,
        "InvalidArgument",
    );
    is_err_with(
        store.upload_part("k", &id, 1, zeros(MAX_PART + 1)).await,
        "EntityTooLarge",
    );

    let small = store.upload_part("k", &id, 1, zeros(MIB)).await.unwrap();
    let last = store.upload_part("k", &id, 2, zeros(MIB)).await.unwrap();
    let parts = [
        CompletedPart {
            number: 1,
            etag: small,
        },
        CompletedPart {
            number: 2,
            etag: last,
        },
    ];
    is_err_with(
        store.complete_multipart("k", &id, &parts).await,
        "EntityTooSmall",
    );

    let id = store.create_multipart("k", &h).await.unwrap();
    let one = store
        .upload_part("k", &id, 1, zeros(5 * MIB))
        .await
        .unwrap();
    let two = store.upload_part("k", &id, 2, zeros(MIB)).await.unwrap();
    let swapped = [
        CompletedPart {
            number: 2,
            etag: two.clone(),
        },
        CompletedPart {
            number: 1,
            etag: one.clone(),
        },
    ];
    is_err_with(
        store.complete_multipart("k", &id, &swapped).await,
        "InvalidPartOrder",
    );
    let id = store.create_multipart("k", &h).await.unwrap();
    let one = store
        .upload_part("k", &id, 1, zeros(5 * MIB))
        .await
        .unwrap();
    let two = store.upload_part("k", &id, 2, zeros(MIB)).await.unwrap();
    let ok = [
        CompletedPart {
            number: 1,
            etag: one,
        },
        CompletedPart {
            number: 2,
            etag: two,
        },
    ];
    store.complete_multipart("k", &id, &ok).await.unwrap();
    assert_eq!(store.size("k"), Some(6 * MIB));
}

#[tokio::test]
async fn an_object_holds_at_most_5_tib() {
    let store = MemoryStore::sizes_only();
    let h = ObjectHeaders::default();
    store.insert_sized("src", MAX_PART);
    let id = store.create_multipart("k", &h).await.unwrap();
    let src = store.head("src").await.unwrap().etag;
    let mut parts = Vec::new();
    // 1,025 parts of 5 GiB, copied (no bytes move): 5 TiB + 5 GiB.
    for number in 1..=1025 {
        let etag = store
            .upload_part_copy(("k", &id, number), "src", 0..MAX_PART, &src)
            .await
            .unwrap();
        parts.push(CompletedPart { number, etag });
    }
    is_err_with(
        store.complete_multipart("k", &id, &parts).await,
        "EntityTooLarge",
    );
}

#[tokio::test]
async fn a_copy_above_5_gib_copies_parts_in_parallel_within_a_bound() {
    let store = MemoryStore::sizes_only();
    let size = 6 << 30;
    store.insert_sized("from", size);
    store.delay(Op::UploadPartCopy, Duration::from_millis(20));
    store.copy("from", "to", size, None, None).await.unwrap();
    assert_eq!(store.size("to"), Some(size));
    assert_eq!(store.count(Op::Copy), 0, "no single CopyObject");
    assert_eq!(
        store.count(Op::UploadPartCopy),
        copy_ranges(size).len() as u64
    );
    let peak = store.peak_in_flight(Op::UploadPartCopy);
    assert!(
        peak > 1 && peak <= COPY_PARALLEL as u64,
        "{peak} part copies at once"
    );
    assert_eq!(store.pending_uploads(), 0);
}

#[tokio::test]
async fn a_failed_part_copy_aborts_the_copy() {
    let store = MemoryStore::sizes_only();
    store.insert_sized("from", 6 << 30);
    store.fail_after(
        Op::UploadPartCopy,
        3,
        1,
        StoreError::Transient("503".into()),
    );
    assert!(store.copy("from", "to", 6 << 30, None, None).await.is_err());
    assert_eq!(store.size("to"), None);
    assert_eq!(store.pending_uploads(), 0, "the multipart copy was aborted");
}
