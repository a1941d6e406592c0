//! Spare block buffers, reused from one downloaded block to the next. A fresh 1 MiB
//! allocation is not reused memory: the allocator hands blocks of that size back to the
//! kernel when they are freed, so every block read from S3 was faulted in page by page,
//! zeroed and unmapped again (about a fifth of the daemon's CPU on a sequential read).
//! A block is given out as [`Bytes`] whose owner returns its buffer here once the last
//! user of the block (cache, read-ahead waiter, FUSE reply) has dropped it.
//! Invariant: the spare buffers fit in the room the cache leaves free (`set_room`), so
//! cached blocks and spares together stay within the cache's capacity and the pool adds
//! nothing to the read path's memory bound; the last reader to close frees them all.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub(super) struct BlockPool {
    /// Length every pooled buffer has room for.
    buffer_len: usize,
    /// Buffers no block uses any more; never more than `room_buffers`.
    spare: Mutex<Vec<Vec<u8>>>,
    /// How many spare buffers fit in the cache's free room.
    room_buffers: AtomicUsize,
    /// Buffers allocated because no spare was there.
    allocated: AtomicU64,
}

impl BlockPool {
    pub(super) fn new(buffer_len: usize) -> BlockPool {
        BlockPool {
            buffer_len,
            spare: Mutex::new(Vec::new()),
            room_buffers: AtomicUsize::new(0),
            allocated: AtomicU64::new(0),
        }
    }

    /// An empty buffer with room for one block: a spare one if there is any.
    pub(super) fn take(&self) -> Vec<u8> {
        if let Some(buffer) = self.spare.lock().unwrap().pop() {
            return buffer;
        }
        self.allocated.fetch_add(1, Ordering::Relaxed);
        Vec::with_capacity(self.buffer_len)
    }

    /// The filled `buffer` as shared bytes; the buffer comes back to the pool when the
    /// last clone or slice of them is dropped.
    pub(super) fn freeze(self: &Arc<Self>, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buffer,
            pool: self.clone(),
        })
    }

    /// The cache has `bytes` of its capacity free: that many bytes of spares may be kept.
    /// Spares beyond it are freed at once.
    pub(super) fn set_room(&self, bytes: usize) {
        let buffers = bytes / self.buffer_len;
        self.room_buffers.store(buffers, Ordering::Relaxed);
        let mut spare = self.spare.lock().unwrap();
        if spare.len() > buffers {
            spare.truncate(buffers);
        }
    }

    /// Frees every spare buffer (no reader is left to use them).
    pub(super) fn free_spares(&self) {
        self.spare.lock().unwrap().clear();
    }

    fn give_back(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() != self.buffer_len {
            return;
        }
        let mut spare = self.spare.lock().unwrap();
        if spare.len() < self.room_buffers.load(Ordering::Relaxed) {
            buffer.clear();
            spare.push(buffer);
        }
    }

    /// Spare buffers waiting for a block, and buffers allocated so far.
    #[cfg(test)]
    pub(super) fn spare_and_allocated(&self) -> (usize, u64) {
        (
            self.spare.lock().unwrap().len(),
            self.allocated.load(Ordering::Relaxed),
        )
    }
}

/// A pooled buffer owned by [`Bytes`]; dropping it returns the buffer.
struct Pooled {
    buffer: Vec<u8>,
    pool: Arc<BlockPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_block_lends_its_buffer_to_the_next_one() {
        let pool = Arc::new(BlockPool::new(16));
        pool.set_room(64);
        let mut buffer = pool.take();
        buffer.extend_from_slice(b"0123456789");
        let block = pool.freeze(buffer);
        let piece = block.slice(2..4);
        drop(block);
        assert_eq!(&piece[..], b"23", "a slice keeps the buffer alive");
        assert_eq!(pool.spare_and_allocated(), (0, 1));
        drop(piece);
        assert_eq!(pool.spare_and_allocated(), (1, 1));
        let again = pool.take();
        assert!(again.is_empty(), "a reused buffer starts empty");
        assert_eq!(pool.spare_and_allocated(), (0, 1), "no new allocation");
    }

    #[test]
    fn spares_never_exceed_the_room_the_cache_leaves() {
        let pool = Arc::new(BlockPool::new(16));
        pool.set_room(2 * 16 + 5);
        let blocks: Vec<Bytes> = (0..4).map(|_| pool.freeze(pool.take())).collect();
        drop(blocks);
        assert_eq!(pool.spare_and_allocated(), (2, 4));
        pool.set_room(16);
        assert_eq!(
            pool.spare_and_allocated().0,
            1,
            "shrinking room frees spares"
        );
        pool.set_room(0);
        assert_eq!(pool.spare_and_allocated().0, 0);
        // A buffer of another size (grown past a block) is not kept.
        pool.set_room(64);
        let mut odd = pool.take();
        odd.extend_from_slice(&[0; 40]);
        drop(pool.freeze(odd));
        assert_eq!(pool.spare_and_allocated().0, 0);
    }
}
