//! Reading objects: a byte-bounded LRU of fixed-size blocks shared by all open files,
//! and per open file a sequential-access detector that reads ahead in growing windows
//! of parallel ranged GETs. Random reads fetch only the blocks they touch. Every GET
//! carries `If-Match` on the ETag seen at open, so a read never mixes two versions.
//! Memory stays within the cache bound plus the GETs in flight, whatever the file sizes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use lru::LruCache;
use tokio::sync::{Semaphore, watch};

use crate::store::{ETag, ObjectStore, StoreError, StoreResult, get_bytes};

mod pool;
use pool::BlockPool;

/// Granularity of caching and read-ahead; the kernel's sequential reads are this large,
/// so each is answered from one block without copying.
pub const BLOCK: u64 = 1024 * 1024;
/// Largest single ranged GET of a read-ahead.
const MAX_REQUEST_BLOCKS: u64 = 8;
/// Random reads fetch their own range, aligned to this.
const RANDOM_ALIGN: u64 = 64 * 1024;
/// How far out of order the reads of one sequential run may arrive.
const SEQUENTIAL_SLACK: u64 = 2 * 1024 * 1024;
/// First read-ahead window of a sequential reader; it doubles up to the maximum.
const INITIAL_WINDOW: u64 = 1024 * 1024;

#[derive(Clone, PartialEq, Eq, Hash)]
struct BlockKey {
    key: Arc<str>,
    etag: ETag,
    index: u64,
}

type BlockResult = Option<Result<Bytes, StoreError>>;

struct CacheInner {
    blocks: LruCache<BlockKey, Bytes>,
    bytes: usize,
    in_flight: HashMap<BlockKey, watch::Receiver<BlockResult>>,
}

/// Blocks of objects, shared by all readers, bounded in bytes.
pub struct BlockCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
    max_window: u64,
    /// Blocks being downloaded, across all readers: at most a cache's worth, so the
    /// read path holds at most twice the cache size however many files are read.
    downloads: Arc<Semaphore>,
    /// Reads answered without a GET of their own (blocks cached or already coming from
    /// read-ahead), and reads that needed one.
    hits: AtomicU64,
    misses: AtomicU64,
    /// Buffers of blocks no longer used, for the next blocks downloaded; they fit in the
    /// room the cached blocks leave, and are freed when no file is open for reading.
    pool: Arc<BlockPool>,
    /// Readers alive (open files reading from S3).
    readers: AtomicUsize,
}

impl BlockCache {
    /// `capacity` bounds the cached bytes; read-ahead windows stay well below it so that
    /// blocks fetched ahead are not evicted before they are read.
    pub fn new(capacity: usize) -> BlockCache {
        let capacity = capacity.max(4 * BLOCK as usize);
        let pool = Arc::new(BlockPool::new(BLOCK as usize));
        pool.set_room(capacity);
        BlockCache {
            inner: Mutex::new(CacheInner {
                blocks: LruCache::unbounded(),
                bytes: 0,
                in_flight: HashMap::new(),
            }),
            capacity,
            // Blocks a sequential reader has consumed leave the cache at once, so the
            // cache mostly holds read-ahead: the window may use most of it.
            max_window: ((capacity as u64 * 3 / 4) / BLOCK * BLOCK).clamp(BLOCK, 64 * 1024 * 1024),
            downloads: Arc::new(Semaphore::new(capacity / BLOCK as usize)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            pool,
            readers: AtomicUsize::new(0),
        }
    }

    /// Reads answered from the cache (or read-ahead already under way), and reads that
    /// had to start a GET.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn note_read(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn insert(&self, key: BlockKey, data: Bytes) {
        let mut inner = self.inner.lock().unwrap();
        inner.bytes += data.len();
        if let Some(old) = inner.blocks.put(key, data) {
            inner.bytes -= old.len();
        }
        while inner.bytes > self.capacity {
            match inner.blocks.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len(),
                None => break,
            }
        }
        self.room_changed(&inner);
    }

    /// Tells the pool how much of the capacity the cached blocks leave for spares.
    fn room_changed(&self, inner: &CacheInner) {
        self.pool
            .set_room(self.capacity.saturating_sub(inner.bytes));
    }

    fn remove(&self, key: &BlockKey) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(b) = inner.blocks.pop(key) {
            inner.bytes -= b.len();
            self.room_changed(&inner);
        }
    }

    /// Keeps the whole content of a small object (at most one block), fetched with its
    /// metadata, for the reads that follow a lookup.
    pub fn insert_small(&self, key: &str, etag: &ETag, data: Bytes) {
        if data.len() as u64 <= BLOCK {
            let key = BlockKey {
                key: Arc::from(key),
                etag: etag.clone(),
                index: 0,
            };
            self.insert(key, data);
        }
    }

    /// Forgets every block of `key` (it was overwritten or deleted through the mount).
    pub fn invalidate(&self, key: &str) {
        let mut inner = self.inner.lock().unwrap();
        let stale: Vec<BlockKey> = inner
            .blocks
            .iter()
            .filter(|(k, _)| &*k.key == key)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(b) = inner.blocks.pop(&k) {
                inner.bytes -= b.len();
            }
        }
        self.room_changed(&inner);
    }
}

/// Where a block comes from when a read needs it.
enum Source {
    Ready(Bytes),
    Pending(watch::Receiver<BlockResult>),
}

/// Sequential-access state of one open file.
struct Pattern {
    /// Where the next read of a sequential reader is expected.
    next_offset: u64,
    /// Current read-ahead window in bytes (0: random access, no read-ahead).
    window: u64,
    /// Blocks below this index have been requested already by read-ahead.
    requested_to: u64,
}

/// What a read means for read-ahead.
#[derive(Debug, PartialEq)]
struct Plan {
    /// The read continues a sequential run.
    sequential: bool,
    /// Blocks `[from, to)` to request ahead, if any.
    fetch: Option<(u64, u64)>,
}

impl Pattern {
    /// Takes the read of `[offset, end)` of an object of `size` bytes into account: a
    /// sequential run doubles its window (up to `max_window`), anything else resets it.
    /// Blocks ahead are requested once a whole request's worth (half the window, at most
    /// [`MAX_REQUEST_BLOCKS`]) is missing from it, so GETs stay large while the bytes in
    /// flight stay close to the window (waiting for half of a large window left a
    /// quarter of it idle on average: behind a 20 ms round trip reads were ~15 % slower),
    /// and never past the end of the object.
    fn plan(&mut self, offset: u64, end: u64, size: u64, max_window: u64) -> Plan {
        // Reads of one sequential run may arrive slightly out of order.
        let sequential = offset == self.next_offset
            || (self.window > 0
                && offset + SEQUENTIAL_SLACK >= self.next_offset
                && offset <= self.next_offset + SEQUENTIAL_SLACK);
        let no_fetch = Plan {
            sequential,
            fetch: None,
        };
        if !sequential {
            self.window = 0;
            self.requested_to = 0;
            self.next_offset = end;
            return no_fetch;
        }
        self.window = match self.window {
            0 => INITIAL_WINDOW,
            w => (w * 2).min(max_window),
        };
        self.next_offset = self.next_offset.max(end);
        let first = end.div_ceil(BLOCK).max(self.requested_to);
        let last = (end + self.window).min(size).div_ceil(BLOCK);
        if first >= last {
            return no_fetch;
        }
        let request = (self.window / BLOCK / 2).clamp(1, MAX_REQUEST_BLOCKS);
        if last - first < request && last * BLOCK < size {
            return no_fetch;
        }
        self.requested_to = last;
        Plan {
            sequential,
            fetch: Some((first, last)),
        }
    }
}

/// An open file's view of one version of an object.
pub struct Reader<S> {
    store: Arc<S>,
    cache: Arc<BlockCache>,
    key: Arc<str>,
    etag: ETag,
    size: u64,
    pattern: Mutex<Pattern>,
}

impl<S: ObjectStore> Reader<S> {
    pub fn new(store: Arc<S>, cache: Arc<BlockCache>, key: &str, etag: ETag, size: u64) -> Self {
        cache.readers.fetch_add(1, Ordering::Relaxed);
        Reader {
            store,
            cache,
            key: Arc::from(key),
            etag,
            size,
            pattern: Mutex::new(Pattern {
                next_offset: 0,
                window: 0,
                requested_to: 0,
            }),
        }
    }

    pub fn etag(&self) -> &ETag {
        &self.etag
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn read(&self, offset: u64, len: u32) -> StoreResult<Bytes> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + len as u64).min(self.size);
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        let sequential = self.plan_read_ahead(offset, end);
        if !sequential && !(first..=last).all(|i| self.is_cached(i)) {
            self.cache.note_read(false);
            return self.read_range(offset, end).await;
        }
        let mut sources = Vec::with_capacity((last - first + 1) as usize);
        let mut fetched = false;
        for index in first..=last {
            let (source, started_get) = self.block(index, last);
            fetched |= started_get;
            sources.push(source);
        }
        self.cache.note_read(!fetched);
        let mut out: Option<Vec<u8>> = None;
        let mut single: Option<Bytes> = None;
        for (i, source) in sources.into_iter().enumerate() {
            let block = match source {
                Source::Ready(b) => b,
                Source::Pending(mut rx) => wait_block(&mut rx).await?,
            };
            let index = first + i as u64;
            let block_start = index * BLOCK;
            let from = (offset.max(block_start) - block_start) as usize;
            let to = ((end.min(block_start + BLOCK) - block_start) as usize).min(block.len());
            if from > to {
                return Err(StoreError::Other(format!(
                    "{}: short block from S3",
                    self.key
                )));
            }
            let piece = block.slice(from..to);
            if first == last {
                single = Some(piece);
            } else {
                out.get_or_insert_with(|| self.output_buffer(end - offset))
                    .extend_from_slice(&piece);
            }
        }
        // Drop-behind: a sequential reader will not come back to the blocks it has
        // consumed, and the kernel's page cache keeps them for repeated reads.
        for index in first..=last {
            if (index + 1) * BLOCK <= end || end == self.size {
                self.cache.remove(&self.block_key(index));
            }
        }
        Ok(single.unwrap_or_else(|| out.map(|o| self.cache.pool.freeze(o)).unwrap_or_default()))
    }

    /// Room for a read of `len` bytes that spans blocks: a pooled buffer when it fits
    /// in one (the kernel's reads do), as the FUSE reply drops it at once.
    fn output_buffer(&self, len: u64) -> Vec<u8> {
        if len <= BLOCK {
            self.cache.pool.take()
        } else {
            Vec::with_capacity(len as usize)
        }
    }

    /// A random read: just its own range (64 KiB aligned), not cached.
    async fn read_range(&self, offset: u64, end: u64) -> StoreResult<Bytes> {
        let start = offset / RANDOM_ALIGN * RANDOM_ALIGN;
        let stop = end
            .div_ceil(RANDOM_ALIGN)
            .saturating_mul(RANDOM_ALIGN)
            .min(self.size);
        let data = get_bytes(&*self.store, &self.key, start..stop, Some(&self.etag)).await?;
        let (from, to) = ((offset - start) as usize, (end - start) as usize);
        if data.len() < to {
            return Err(StoreError::Other(format!(
                "{}: short read from S3",
                self.key
            )));
        }
        Ok(data.slice(from..to))
    }

    fn is_cached(&self, index: u64) -> bool {
        self.cache
            .inner
            .lock()
            .unwrap()
            .blocks
            .contains(&self.block_key(index))
    }

    /// Decides whether this read continues a sequential run (true) and, if so,
    /// requests the blocks of the read-ahead window that are not cached or coming yet.
    fn plan_read_ahead(&self, offset: u64, end: u64) -> bool {
        let plan = self
            .pattern
            .lock()
            .unwrap()
            .plan(offset, end, self.size, self.cache.max_window);
        let Some((from, to)) = plan.fetch else {
            return plan.sequential;
        };
        let mut index = from;
        while index < to {
            let n = (to - index).min(MAX_REQUEST_BLOCKS);
            let _coming = self.fetch_missing(index, index + n);
            index += n;
        }
        true
    }

    /// The block `index`, from the cache, from a GET in flight, or from a new GET that
    /// also covers the missing blocks up to `last` (the rest of this read); true when
    /// that GET was started here.
    fn block(&self, index: u64, last: u64) -> (Source, bool) {
        if let Some(source) = self.lookup(index) {
            return (source, false);
        }
        (self.fetch_missing(index, last + 1), true)
    }

    fn block_key(&self, index: u64) -> BlockKey {
        BlockKey {
            key: self.key.clone(),
            etag: self.etag.clone(),
            index,
        }
    }

    fn lookup(&self, index: u64) -> Option<Source> {
        present(
            &mut self.cache.inner.lock().unwrap(),
            &self.block_key(index),
        )
    }

    /// Starts one ranged GET for the blocks in `[from, to)` (not empty) that are neither
    /// cached nor in flight (the run from the first missing block to the last one).
    /// Returns where block `from` comes from, decided under the same lock as the GET's
    /// start: a GET that fails at once may already be gone from the in-flight table
    /// when the caller looks again.
    fn fetch_missing(&self, from: u64, to: u64) -> Source {
        let mut senders = Vec::new();
        let mut run_start = None;
        let mut first = None;
        {
            let mut inner = self.cache.inner.lock().unwrap();
            for index in from..to {
                let key = self.block_key(index);
                if index == from {
                    first = present(&mut inner, &key);
                    if first.is_some() {
                        continue;
                    }
                } else if inner.blocks.contains(&key) || inner.in_flight.contains_key(&key) {
                    if run_start.is_some() {
                        break; // keep one GET contiguous
                    }
                    continue;
                }
                run_start.get_or_insert(index);
                let (tx, rx) = watch::channel(None);
                if index == from {
                    first = Some(Source::Pending(rx.clone()));
                }
                inner.in_flight.insert(key, rx);
                senders.push(tx);
            }
        }
        let first = first.expect("the range holds block `from`");
        let Some(start) = run_start else {
            return first;
        };
        let end_block = start + senders.len() as u64;
        let range = start * BLOCK..(end_block * BLOCK).min(self.size);
        let (store, cache, key, etag) = (
            self.store.clone(),
            self.cache.clone(),
            self.key.clone(),
            self.etag.clone(),
        );
        tokio::spawn(async move {
            let permits = cache
                .downloads
                .clone()
                .acquire_many_owned(senders.len() as u32)
                .await
                .expect("never closed");
            let result = fetch_blocks(&*store, &cache, &key, &etag, range, start, &senders).await;
            drop(permits);
            let mut inner = cache.inner.lock().unwrap();
            for (i, tx) in senders.iter().enumerate() {
                let bk = BlockKey {
                    key: key.clone(),
                    etag: etag.clone(),
                    index: start + i as u64,
                };
                inner.in_flight.remove(&bk);
                if tx.borrow().is_none() {
                    let err = match &result {
                        Err(e) => e.clone(),
                        Ok(()) => StoreError::Other("the GET ended early".into()),
                    };
                    let _ = tx.send(Some(Err(err)));
                }
            }
        });
        first
    }
}

impl<S> Drop for Reader<S> {
    /// Spare buffers serve the next blocks of a reader; with no reader left they would
    /// only hold memory, so the last one to go frees them.
    fn drop(&mut self) {
        if self.cache.readers.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.cache.pool.free_spares();
        }
    }
}

/// Where block `key` comes from if it is cached or being downloaded.
fn present(inner: &mut CacheInner, key: &BlockKey) -> Option<Source> {
    if let Some(b) = inner.blocks.get(key) {
        return Some(Source::Ready(b.clone()));
    }
    inner
        .in_flight
        .get(key)
        .map(|rx| Source::Pending(rx.clone()))
}

/// Streams one GET into blocks, publishing each block as soon as it is complete.
async fn fetch_blocks<S: ObjectStore>(
    store: &S,
    cache: &BlockCache,
    key: &Arc<str>,
    etag: &ETag,
    range: std::ops::Range<u64>,
    first: u64,
    senders: &[watch::Sender<BlockResult>],
) -> Result<(), StoreError> {
    let total = range.end - range.start;
    let mut chunks = store.get_range(key, range.clone(), Some(etag)).await?;
    let mut done = 0usize;
    let mut filled = 0u64;
    // The block being filled; its buffer comes from the pool (no page faults) and goes
    // back there when the block's last user drops it.
    let mut buf: Option<Vec<u8>> = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let block_len = BLOCK.min(total - done as u64 * BLOCK) as usize;
            let filling = buf.get_or_insert_with(|| cache.pool.take());
            let take = (block_len - filling.len()).min(rest.len());
            filling.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            filled += take as u64;
            if filling.len() == block_len {
                let block = cache
                    .pool
                    .freeze(buf.take().expect("a block is being filled"));
                cache.insert(
                    BlockKey {
                        key: key.clone(),
                        etag: etag.clone(),
                        index: first + done as u64,
                    },
                    block.clone(),
                );
                let _ = senders[done].send(Some(Ok(block)));
                done += 1;
                if done == senders.len() {
                    return Ok(());
                }
            }
        }
    }
    Err(StoreError::Transient(format!(
        "{key}: the GET ended after {filled} of {total} bytes"
    )))
}

async fn wait_block(rx: &mut watch::Receiver<BlockResult>) -> StoreResult<Bytes> {
    let value = rx
        .wait_for(|v| v.is_some())
        .await
        .map_err(|_| StoreError::Other("a block fetch was abandoned".into()))?;
    match value.as_ref() {
        Some(result) => result.clone(),
        None => Err(StoreError::Other(
            "a block fetch ended without a result".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{MemoryStore, Op};

    const MIB: u64 = 1024 * 1024;
    const READ: u64 = 128 * 1024;

    fn fresh() -> Pattern {
        Pattern {
            next_offset: 0,
            window: 0,
            requested_to: 0,
        }
    }

    #[test]
    fn a_sequential_reader_gets_growing_windows_in_whole_requests() {
        let (size, max) = (1024 * MIB, 64 * MIB);
        let mut p = fresh();
        let first = p.plan(0, READ, size, max);
        assert_eq!(
            first,
            Plan {
                sequential: true,
                fetch: Some((1, 2))
            }
        );
        let mut windows = vec![p.window];
        let mut requested = 2;
        let mut offset = READ;
        while offset < 256 * MIB {
            let plan = p.plan(offset, offset + READ, size, max);
            assert!(plan.sequential);
            if let Some((from, to)) = plan.fetch {
                assert_eq!(from, requested, "requests continue where the last ended");
                assert!(
                    to - from >= (p.window / BLOCK / 2).clamp(1, MAX_REQUEST_BLOCKS),
                    "whole requests only"
                );
                requested = to;
            }
            let window_end = (offset + READ + p.window).div_ceil(BLOCK);
            assert!(
                window_end - requested < (p.window / BLOCK / 2).clamp(1, MAX_REQUEST_BLOCKS),
                "less than a request's worth of the window is left unrequested"
            );
            windows.push(p.window);
            offset += READ;
        }
        assert!(windows.windows(2).all(|w| w[1] == (w[0] * 2).min(max)));
        assert_eq!(*windows.last().unwrap(), max);
        assert!(
            requested * BLOCK <= offset + max + BLOCK,
            "never more than a window ahead"
        );
    }

    #[test]
    fn slightly_out_of_order_reads_stay_sequential_and_a_jump_resets() {
        let (size, max) = (64 * MIB, 16 * MIB);
        let mut p = fresh();
        p.plan(0, READ, size, max);
        p.plan(2 * READ, 3 * READ, size, max);
        assert!(
            p.plan(READ, 2 * READ, size, max).sequential,
            "within the slack"
        );
        let jump = p.plan(40 * MIB, 40 * MIB + READ, size, max);
        assert_eq!(
            jump,
            Plan {
                sequential: false,
                fetch: None
            }
        );
        assert_eq!((p.window, p.requested_to), (0, 0));
        // The jump starts a new run where it ended.
        assert!(
            p.plan(40 * MIB + READ, 40 * MIB + 2 * READ, size, max)
                .sequential
        );
    }

    #[test]
    fn read_ahead_stops_at_the_end_of_the_object() {
        let size = 3 * MIB + 5;
        let mut p = fresh();
        let mut offset = 0;
        let mut last_block = 0;
        while offset < size {
            let end = (offset + READ).min(size);
            if let Some((_, to)) = p.plan(offset, end, size, 64 * MIB).fetch {
                last_block = to;
            }
            offset = end;
        }
        assert_eq!(last_block, size.div_ceil(BLOCK));
    }

    fn pattern(len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
            .collect()
    }

    async fn reader_of(
        store: &Arc<MemoryStore>,
        cache: &Arc<BlockCache>,
        key: &str,
    ) -> Reader<MemoryStore> {
        let meta = store.head(key).await.unwrap();
        Reader::new(store.clone(), cache.clone(), key, meta.etag, meta.size)
    }

    fn cached_and_spare_bytes(cache: &BlockCache) -> usize {
        let cached = cache.inner.lock().unwrap().bytes;
        cached + cache.pool.spare_and_allocated().0 * BLOCK as usize
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_read_returns_the_object_and_reuses_block_buffers() {
        let size = 64 * MIB + 12_345;
        let data = pattern(size);
        let store = Arc::new(MemoryStore::new());
        store.insert("big", &data);
        let cache = Arc::new(BlockCache::new(8 * MIB as usize));
        let reader = reader_of(&store, &cache, "big").await;
        let mut offset = 0;
        while offset < size {
            let got = reader.read(offset, MIB as u32).await.unwrap();
            let end = (offset + MIB).min(size);
            assert!(
                got[..] == data[offset as usize..end as usize],
                "bytes at {offset}"
            );
            offset = end;
            assert!(
                cached_and_spare_bytes(&cache) <= cache.capacity,
                "cached blocks and spare buffers stay within the cache's capacity"
            );
        }
        let blocks = size.div_ceil(BLOCK);
        let (_, allocated) = cache.pool.spare_and_allocated();
        // At most a cache's worth cached and a cache's worth downloading at once, so
        // reused buffers keep the allocations to about that, whatever the file size.
        let bound = 2 * (cache.capacity as u64 / BLOCK) + 2;
        assert!(
            allocated <= bound,
            "{allocated} buffers allocated for {blocks} blocks (bound {bound})"
        );
        assert!(store.count(Op::Get) >= blocks / MAX_REQUEST_BLOCKS);
        assert!(
            cache.pool.spare_and_allocated().0 > 0,
            "spares wait for the next block"
        );
        drop(reader);
        assert_eq!(
            cache.pool.spare_and_allocated().0,
            0,
            "the last reader to close frees the spares"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_spanning_blocks_and_the_last_short_block_are_exact() {
        let size = 5 * MIB + 777;
        let data = pattern(size);
        let store = Arc::new(MemoryStore::new());
        store.insert("obj", &data);
        let cache = Arc::new(BlockCache::new(8 * MIB as usize));
        let reader = reader_of(&store, &cache, "obj").await;
        // Unaligned sequential reads, each crossing a block boundary now and then.
        let step = 300_000;
        let mut offset = 0;
        while offset < size {
            let got = reader.read(offset, step as u32).await.unwrap();
            let end = (offset + step).min(size);
            assert!(
                got[..] == data[offset as usize..end as usize],
                "bytes at {offset}"
            );
            offset = end;
        }
        assert!(reader.read(size, 10).await.unwrap().is_empty());
        // A fresh reader reading across a block boundary at a random place.
        let other = reader_of(&store, &cache, "obj").await;
        let at = 3 * MIB - 100;
        let got = other.read(at, 200).await.unwrap();
        assert!(got[..] == data[at as usize..at as usize + 200]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_object_fails_the_read_rather_than_mix_versions() {
        let size = 16 * MIB;
        let store = Arc::new(MemoryStore::new());
        store.insert("obj", &pattern(size));
        let cache = Arc::new(BlockCache::new(4 * MIB as usize));
        let reader = reader_of(&store, &cache, "obj").await;
        store.insert("obj", &vec![7u8; size as usize]);
        // Every GET carries If-Match on the ETag seen at open: the sequential block
        // path and the random range path.
        let first = reader.read(0, MIB as u32).await;
        assert!(
            matches!(first, Err(StoreError::PreconditionFailed)),
            "got {first:?}"
        );
        let far = reader.read(12 * MIB, 4096).await;
        assert!(
            matches!(far, Err(StoreError::PreconditionFailed)),
            "got {far:?}"
        );
    }
}
