//! Appending to a staged file around the page cache. A large file written front to
//! back collects its newest bytes in an aligned in-memory tail and writes each full
//! chunk with O_DIRECT, and its parts are read back the same way: on a disk file
//! system the buffered copy through the page cache costs more CPU than the upload
//! itself. Where O_DIRECT is unsupported, everything falls back to buffered I/O.
//! Uploads read parts into buffers reused while uploads run ([`ReadBuffers`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;

use super::fds::Fds;

/// Alignment O_DIRECT needs for offsets, lengths and memory.
pub const ALIGN: usize = 4096;
/// Bytes written per direct write.
pub const CHUNK: usize = 1024 * 1024;
/// Appends switch to the direct path once the file is this large (small files stay
/// buffered: a tail buffer per file would cost more memory than it saves CPU).
pub const DIRECT_FROM: u64 = 2 * CHUNK as u64;

/// A buffer whose usable part starts at an ALIGN boundary in memory.
pub struct AlignedBuf {
    storage: Vec<u8>,
    at: usize,
    len: usize,
    cap: usize,
    /// From [`READ_BUFFERS`] (and going back there).
    pooled: bool,
}

impl AlignedBuf {
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = cap.div_ceil(ALIGN) * ALIGN;
        AlignedBuf::over(vec![0u8; cap + ALIGN], cap, false)
    }

    fn over(storage: Vec<u8>, cap: usize, pooled: bool) -> AlignedBuf {
        let at = storage.as_ptr().align_offset(ALIGN);
        AlignedBuf {
            storage,
            at,
            len: 0,
            cap,
            pooled,
        }
    }

    /// Room for reading `len` bytes of a part: a reused buffer if `len` fills more than
    /// half of one (reads of large files ask for [`CHUNK`] at a time), so a buffer never
    /// holds more than twice the bytes the upload memory budget counts for it. A reused
    /// buffer's bytes are not zeroed.
    fn for_read(len: usize) -> AlignedBuf {
        if len <= CHUNK / 2 || len > CHUNK {
            return AlignedBuf::new(len);
        }
        AlignedBuf::over(READ_BUFFERS.take(), CHUNK, true)
    }

    pub fn data(&self) -> &[u8] {
        &self.storage[self.at..self.at + self.len]
    }

    fn room(&mut self) -> &mut [u8] {
        &mut self.storage[self.at + self.len..self.at + self.cap]
    }

    /// The whole capacity, for reads into it.
    fn all_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.at..self.at + self.cap]
    }

    /// The first `len` bytes as shared bytes, without copying.
    pub fn into_bytes(mut self, len: usize) -> Bytes {
        let (storage, at) = (std::mem::take(&mut self.storage), self.at);
        if std::mem::take(&mut self.pooled) {
            return Bytes::from_owner(PooledRead { storage, at, len });
        }
        Bytes::from(storage).slice(at..at + len)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.pooled {
            READ_BUFFERS.give_back(std::mem::take(&mut self.storage));
        }
    }
}

/// Bytes of a part read into a pooled buffer; the buffer goes back when they are sent.
struct PooledRead {
    storage: Vec<u8>,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for PooledRead {
    fn as_ref(&self) -> &[u8] {
        &self.storage[self.at..self.at + self.len]
    }
}

impl Drop for PooledRead {
    fn drop(&mut self) {
        READ_BUFFERS.give_back(std::mem::take(&mut self.storage));
    }
}

/// Buffers for the chunks uploads read from stage files, reused from one chunk to the
/// next: a fresh 1 MiB allocation comes from the kernel and goes back on free, so each
/// chunk was faulted in and zeroed page by page (a sixth of the daemon's CPU while a
/// large file uploads). Invariant: at most [`SPARES_BEYOND_USE`] more spares than
/// buffers in use (a part's chunks are read one after the other, so its stream often
/// has none in use between two), so at most that many MiB stay at rest after the last
/// upload; the buffers in use hold at most twice what the upload memory budget allows.
struct ReadBuffers {
    spare: Mutex<Vec<Vec<u8>>>,
    in_use: AtomicUsize,
}

const SPARES_BEYOND_USE: usize = 2;

static READ_BUFFERS: ReadBuffers = ReadBuffers {
    spare: Mutex::new(Vec::new()),
    in_use: AtomicUsize::new(0),
};

impl ReadBuffers {
    fn take(&self) -> Vec<u8> {
        self.in_use.fetch_add(1, Ordering::Relaxed);
        let spare = self.spare.lock().unwrap().pop();
        spare.unwrap_or_else(|| vec![0u8; CHUNK + ALIGN])
    }

    fn give_back(&self, buffer: Vec<u8>) {
        let keep = self.in_use.fetch_sub(1, Ordering::Relaxed) - 1 + SPARES_BEYOND_USE;
        let mut spare = self.spare.lock().unwrap();
        if spare.len() < keep && buffer.len() == CHUNK + ALIGN {
            spare.push(buffer);
        }
        spare.truncate(keep);
    }
}

/// The newest bytes of an append-only stage, not yet on disk: `[start, start + len)`.
pub struct Tail {
    start: u64,
    buf: AlignedBuf,
}

impl Tail {
    pub fn end(&self) -> u64 {
        self.start + self.buf.len as u64
    }

    /// A copy of the bytes it holds within `[offset, offset + len)`.
    pub fn overlap(&self, offset: u64, len: usize) -> Option<Overlay> {
        let (from, to) = (
            offset.max(self.start),
            (offset + len as u64).min(self.end()),
        );
        (from < to).then(|| Overlay {
            offset: from,
            data: self.buf.data()[(from - self.start) as usize..(to - self.start) as usize]
                .to_vec(),
        })
    }
}

/// Tail bytes to lay over what is read from disk.
pub struct Overlay {
    offset: u64,
    data: Vec<u8>,
}

/// The O_DIRECT side of a staged file. Its descriptor is opened for each direct write of
/// a chunk or read of a part and closed right after (an open costs microseconds, a chunk
/// or a part milliseconds), so a staged file keeps no second descriptor and the bound of
/// open stage files (`fds.rs`) counts descriptors.
pub struct Direct {
    path: PathBuf,
    working: AtomicBool,
}

impl Direct {
    pub fn open(path: &Path) -> Direct {
        Direct {
            path: path.to_path_buf(),
            working: AtomicBool::new(true),
        }
    }

    /// A new O_DIRECT descriptor of the file; None (from now on) where there is none.
    fn file(&self) -> Option<File> {
        if !self.working.load(Ordering::Relaxed) {
            return None;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path);
        if let Err(e) = &file {
            log::debug!("no O_DIRECT for {}: {e}", self.path.display());
            self.working.store(false, Ordering::Relaxed);
        }
        file.ok()
    }

    /// Can an append at `size` start a tail?
    pub fn can_start(&self, size: u64) -> bool {
        size >= DIRECT_FROM && size.is_multiple_of(ALIGN as u64) && self.file().is_some()
    }

    /// Writes aligned data directly, or through the buffered descriptor if direct I/O fails.
    fn write(&self, fds: &Fds, data: &[u8], offset: u64) -> io::Result<()> {
        if let Some(file) = self.file() {
            match file.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    log::info!("the cache directory does not take O_DIRECT; using buffered writes");
                    self.working.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        fds.file.write_all_at(data, offset)
    }

    /// Appends `data` at the end of `tail`, writing out every full chunk.
    pub fn append(&self, fds: &Fds, tail: &mut Tail, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = tail.buf.room();
            let n = room.len().min(data.len());
            room[..n].copy_from_slice(&data[..n]);
            tail.buf.len += n;
            data = &data[n..];
            if tail.buf.len == tail.buf.cap {
                self.write(fds, tail.buf.data(), tail.start)?;
                tail.start += tail.buf.len as u64;
                tail.buf.len = 0;
            }
        }
        Ok(())
    }

    pub fn start_tail(size: u64) -> Tail {
        Tail {
            start: size,
            buf: AlignedBuf::new(CHUNK),
        }
    }

    /// Puts what the tail holds on disk (directly if its length allows).
    pub fn flush(&self, fds: &Fds, tail: &Tail) -> io::Result<()> {
        let data = tail.buf.data();
        if data.is_empty() {
            return Ok(());
        }
        if data.len().is_multiple_of(ALIGN) {
            self.write(fds, data, tail.start)
        } else {
            fds.file.write_all_at(data, tail.start)
        }
    }

    /// Reads `len` bytes at `offset` of a file of `size` bytes for an upload: directly
    /// where aligned in a file large enough to have taken the direct path (a smaller one
    /// is in the page cache, and a direct read would first write it to disk), with the
    /// bytes still in `tail` laid over what the disk has.
    pub fn read(
        &self,
        fds: &Fds,
        (offset, len): (u64, usize),
        size: u64,
        overlay: Option<&Overlay>,
    ) -> io::Result<Bytes> {
        let mut buf = AlignedBuf::for_read(len.max(1));
        let mut done = 0;
        let direct = match offset % ALIGN as u64 {
            0 if size >= DIRECT_FROM => self.file(),
            _ => None,
        };
        if let Some(file) = direct {
            // (Whole aligned blocks, but no more of the file than the part wants.)
            let target = &mut buf.all_mut()[..len.div_ceil(ALIGN) * ALIGN];
            while done < len {
                match file.read_at(&mut target[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => break,
                    Err(e) => return Err(e),
                }
                if done % ALIGN != 0 {
                    break; // a short read ends at end of file
                }
            }
            done = done.min(len);
        }
        let target = buf.all_mut();
        while done < len {
            let n = fds
                .file
                .read_at(&mut target[done..len], offset + done as u64)?;
            if n == 0 {
                // Beyond the end of a sparse file: zeros (the buffer may be reused).
                target[done..len].fill(0);
                break;
            }
            done += n;
        }
        if let Some(o) = overlay {
            let at = (o.offset - offset) as usize;
            target[at..at + o.data.len()].copy_from_slice(&o.data);
        }
        Ok(buf.into_bytes(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds_of(path: &Path) -> Fds {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        Fds { file }
    }

    /// Parts read into reused buffers hold the file's bytes only: a read past the end
    /// of a sparse file is zeros even in a buffer that held other data before.
    #[test]
    fn reused_read_buffers_hold_only_the_parts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stage");
        let size = DIRECT_FROM + CHUNK as u64;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&path, &data).unwrap();
        let (direct, fds) = (Direct::open(&path), fds_of(&path));
        let mut held = Vec::new();
        for round in 0..3 {
            for (offset, len) in [(0, CHUNK), (CHUNK as u64, 1000), (12295, CHUNK / 2 + 5000)] {
                let part = direct.read(&fds, (offset, len), size, None).unwrap();
                let at = offset as usize;
                assert_eq!(&part[..], &data[at..at + len], "round {round}");
                held.push(part);
            }
            held.clear(); // back to the spares
        }
        // The file ends early (a truncate up leaves a hole the read sees as zeros).
        let short = &data[..CHUNK / 2];
        std::fs::write(&path, short).unwrap();
        let fds = fds_of(&path);
        let part = direct.read(&fds, (0, CHUNK), size, None).unwrap();
        assert_eq!(&part[..CHUNK / 2], short);
        assert!(part[CHUNK / 2..].iter().all(|&b| b == 0));
    }

    #[test]
    fn spares_are_bounded_by_the_buffers_in_use() {
        let pool = ReadBuffers {
            spare: Mutex::new(Vec::new()),
            in_use: AtomicUsize::new(0),
        };
        let taken: Vec<Vec<u8>> = (0..4).map(|_| pool.take()).collect();
        let first = taken[0].as_ptr();
        let mut taken = taken.into_iter();
        pool.give_back(taken.next().unwrap());
        assert_eq!(pool.spare.lock().unwrap().len(), 1, "3 in use: kept");
        let again = pool.take();
        assert_eq!(again.as_ptr(), first, "reused, not allocated");
        pool.give_back(again);
        for buffer in taken {
            pool.give_back(buffer);
        }
        assert_eq!(pool.in_use.load(Ordering::Relaxed), 0);
        let at_rest = pool.spare.lock().unwrap().len();
        assert_eq!(at_rest, SPARES_BEYOND_USE, "only a few spares kept at rest");
        // A read of one chunk at a time (none in use between two) reuses them.
        let one = pool.take();
        assert!(
            pool.spare.lock().unwrap().len() < at_rest,
            "taken from the spares"
        );
        pool.give_back(one);
        assert_eq!(pool.spare.lock().unwrap().len(), at_rest);
    }
}
