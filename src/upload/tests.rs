//! The uploader against the sizes-only memory store (which enforces S3's limits): a
//! 5 TiB file streamed front to back through the real streaming path, part bodies read
//! chunk by chunk under the real budget. The file's bytes are slices of one static
//! buffer (byte i is `pattern(i)`), so terabytes cost no copying, and every chunk the
//! source hands out is counted until the last reference to it is dropped.

use std::io;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::*;
use crate::store::memory::{Fingerprint, MemoryStore, Op};

const MIB: u64 = 1 << 20;
/// The pattern repeats every PERIOD bytes; odd, so parts and chunks never line up with it.
const PERIOD: u64 = MIB + 7;

static BACKING: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let period: Vec<u8> = (0..PERIOD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    // Any chunk starting inside the period is one slice.
    let mut backing = period.clone();
    backing.extend_from_slice(&period[..CHUNK as usize]);
    backing
});

fn pattern(i: u64) -> u8 {
    BACKING[(i % PERIOD) as usize]
}

/// A file of synthetic bytes that counts the bytes it handed out and are still alive.
#[derive(Default)]
struct Synthetic {
    live: Arc<AtomicU64>,
    peak: AtomicU64,
    read: AtomicU64,
}

struct Counted {
    data: &'static [u8],
    live: Arc<AtomicU64>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        self.data
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live
            .fetch_sub(self.data.len() as u64, Ordering::SeqCst);
    }
}

impl PartSource for Synthetic {
    fn read_part(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        assert!(len as u64 <= CHUNK, "a body read {len} bytes at once");
        let start = (offset % PERIOD) as usize;
        let backing: &'static [u8] = &BACKING;
        let now = self.live.fetch_add(len as u64, Ordering::SeqCst) + len as u64;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.read.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Bytes::from_owner(Counted {
            data: &backing[start..start + len],
            live: self.live.clone(),
        }))
    }

    fn multipart_started(&self, _key: &str, _upload_id: Option<&str>) {}
}

/// The mount's defaults.
const LIMITS: UploadLimits = UploadLimits {
    part_size: 8 * MIB,
    max_parts: MAX_PARTS,
    concurrency: 4,
    memory: 16 * MIB,
};

/// Checks the object `key` of `size` bytes part by part against the pattern.
fn check_object(store: &MemoryStore, key: &str, size: u64) -> Vec<Fingerprint> {
    assert_eq!(store.size(key), Some(size));
    let parts = store.fingerprints(key).expect("a sizes-only object");
    let mut offset = 0;
    for part in &parts {
        let expected = Fingerprint::of(part.len, |i| pattern(offset + i));
        assert_eq!(
            *part, expected,
            "the part at {offset} holds the wrong bytes"
        );
        offset += part.len;
    }
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_tib_file_streamed_front_to_back_sends_each_part_once_within_the_memory_bound() {
    let store = Arc::new(MemoryStore::sizes_only());
    let uploader = Uploader::new(store.clone(), LIMITS);
    let source = Arc::new(Synthetic::default());
    let (key, headers) = ("big.tar", ObjectHeaders::default());
    let size = MAX_OBJECT;
    let started = std::time::Instant::now();

    // The writer appends 1 MiB at a time; after each write the mount offers the new
    // size to the streaming upload, as fs/file.rs does.
    let mut slot = None;
    let mut written = 0;
    while written < size {
        written += MIB;
        uploader.stream_parts(&source, &mut slot, written, key, Some(&headers));
    }
    let streamed = slot.as_ref().map_or(0, |s| s.parts.len());
    uploader
        .upload(&source, (key, &headers), size, slot)
        .await
        .expect("the 5 TiB upload completes");

    let parts = check_object(&store, key, size);
    assert!(parts.len() <= MAX_PARTS as usize, "{} parts", parts.len());
    assert_eq!(
        streamed + 1,
        parts.len(),
        "all parts but the last went while writing"
    );
    let sends = store.part_sends();
    assert_eq!(sends.len(), parts.len());
    assert!(sends.values().all(|&n| n == 1), "a part was sent twice");
    assert_eq!(store.count(Op::UploadPart), parts.len() as u64);
    assert_eq!(store.count(Op::CreateMultipart), 1);
    assert_eq!(store.count(Op::Put), 0);
    assert_eq!(store.pending_uploads(), 0);
    assert_eq!(
        source.read.load(Ordering::Relaxed),
        size,
        "every byte read once"
    );

    // Parts grew far beyond the budget, yet the bodies never held more than it.
    let largest = parts.iter().map(|p| p.len).max().unwrap_or(0);
    assert!(largest >= 1 << 30, "the largest part has {largest} bytes");
    let peak = uploader.budget().peak();
    assert!(peak > 0 && peak <= LIMITS.memory, "budget peak {peak}");
    let seen = source.peak.load(Ordering::SeqCst);
    assert!(
        seen > 0 && seen <= LIMITS.memory,
        "chunks alive at once: {seen} bytes"
    );
    assert_eq!(
        source.live.load(Ordering::SeqCst),
        0,
        "no chunk outlived its request"
    );
    eprintln!(
        "5 TiB in {} parts (largest {} MiB), peak {} MiB of bodies, {:?}",
        parts.len(),
        largest / MIB,
        peak / MIB,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_known_at_close_is_cut_like_a_streamed_one() {
    let limits = UploadLimits {
        part_size: 5 * MIB,
        max_parts: 40,
        ..LIMITS
    };
    let size = 2 * (1 << 30) + 12345;
    let mut cuts = Vec::new();
    for stream in [true, false] {
        let store = Arc::new(MemoryStore::sizes_only());
        let uploader = Uploader::new(store.clone(), limits);
        let source = Arc::new(Synthetic::default());
        let headers = ObjectHeaders::default();
        let mut slot = None;
        if stream {
            // Uneven writes: 3 MiB + 1 byte at a time.
            let mut written = 0;
            while written < size {
                written = (written + 3 * MIB + 1).min(size);
                uploader.stream_parts(&source, &mut slot, written, "f", Some(&headers));
            }
            assert!(slot.is_some());
        }
        uploader
            .upload(&source, ("f", &headers), size, slot)
            .await
            .unwrap();
        let parts = check_object(&store, "f", size);
        assert!(store.part_sends().values().all(|&n| n == 1));
        assert!(parts.len() <= 40);
        cuts.push(parts);
    }
    assert_eq!(cuts[0], cuts[1]);
    let lens: Vec<u64> = cuts[0].iter().map(|p| p.len).collect();
    assert!(lens.windows(2).any(|w| w[1] > w[0]), "parts grew: {lens:?}");
}

#[tokio::test]
async fn a_file_larger_than_the_schedule_allows_is_refused_before_any_request() {
    let limits = UploadLimits {
        part_size: 5 * MIB,
        max_parts: 2,
        ..LIMITS
    };
    let store = Arc::new(MemoryStore::sizes_only());
    let uploader = Uploader::new(store.clone(), limits);
    assert_eq!(uploader.max_file_size(), 15 * MIB);
    let source = Arc::new(Synthetic::default());
    let headers = ObjectHeaders::default();
    let err = uploader
        .upload(&source, ("f", &headers), 15 * MIB + 1, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("largest object"), "{err}");
    assert_eq!(store.count(Op::CreateMultipart) + store.count(Op::Put), 0);
    uploader
        .upload(&source, ("f", &headers), 15 * MIB, None)
        .await
        .unwrap();
    assert_eq!(check_object(&store, "f", 15 * MIB).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_when_the_network_keeps_chunks() {
    // Chunks stay alive 2 ms after they are handed over (a slow network's buffers);
    // 8 parts of 8 MiB at once would hold far more than the 4 MiB budget.
    let limits = UploadLimits {
        concurrency: 8,
        memory: 4 * MIB,
        ..LIMITS
    };
    let store = Arc::new(MemoryStore::sizes_only());
    store.hold_chunks(std::time::Duration::from_millis(2));
    let uploader = Uploader::new(store.clone(), limits);
    let source = Arc::new(Synthetic::default());
    let headers = ObjectHeaders::default();
    let size = 512 * MIB;
    uploader
        .upload(&source, ("f", &headers), size, None)
        .await
        .unwrap();
    check_object(&store, "f", size);
    let peak = uploader.budget().peak();
    assert!(peak <= limits.memory, "budget peak {peak}");
    assert!(
        peak >= limits.memory / 2,
        "the budget never bound: peak {peak}"
    );
    let seen = source.peak.load(Ordering::SeqCst);
    assert!(seen <= limits.memory, "chunks alive at once: {seen} bytes");
}
