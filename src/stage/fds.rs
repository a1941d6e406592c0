//! The bounded set of open stage files. A stage owns no descriptor: it borrows one from
//! this table ([`OpenFiles::get`]), which opens the stage file by its path when it is not
//! open and, once more than its cap are open, closes the least recently used. So neither
//! many staged files nor a long write-back backlog (uploads failing or held during an S3
//! outage) keeps more than the cap of stage file descriptors open. A file that leaves
//! the table while an operation uses it stays open until that operation ends, and an
//! O_DIRECT descriptor (`tail.rs`) lives for one operation: the bound is the cap plus
//! the operations running at that moment (at most two each).
//!
//! Closing a stage file loses nothing: written bytes are in the file (the page cache),
//! an fdatasync through a later descriptor of the same file puts them on disk, and a
//! writeback error nobody has seen yet is reported to that later descriptor too. A stage
//! file is removed only once nothing uses its stage any more, so a reopen finds it; a
//! reopen that fails is an I/O error of the operation that needed it (for an upload: a
//! failed upload, which keeps the stage and is retried), never a change of the data.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Stage files open at most at once (outside running operations) by default.
pub const OPEN_STAGE_FILES: usize = 256;

/// The descriptor of one open stage file (buffered reads and writes).
pub struct Fds {
    pub file: File,
}

impl Fds {
    fn new(file: File) -> Fds {
        Fds { file }
    }
}

/// The stage files open now, least recently used first out.
pub struct OpenFiles {
    cap: usize,
    table: Mutex<Table>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Table {
    clock: u64,
    /// Stage id → its descriptors and when they were last used.
    open: HashMap<u64, (Arc<Fds>, u64)>,
    /// Last use → stage id, oldest first.
    by_use: BTreeMap<u64, u64>,
}

impl Table {
    /// The descriptors of `id` if open, now the most recently used.
    fn touch(&mut self, id: u64) -> Option<Arc<Fds>> {
        self.clock += 1;
        let clock = self.clock;
        let (fds, used) = self.open.get_mut(&id)?;
        self.by_use.remove(used);
        *used = clock;
        self.by_use.insert(clock, id);
        Some(fds.clone())
    }

    fn insert(&mut self, id: u64, fds: Arc<Fds>) {
        self.clock += 1;
        if let Some((_, used)) = self.open.insert(id, (fds, self.clock)) {
            self.by_use.remove(&used);
        }
        self.by_use.insert(self.clock, id);
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Fds>> {
        let (fds, used) = self.open.remove(&id)?;
        self.by_use.remove(&used);
        Some(fds)
    }

    /// Takes out the least recently used until at most `cap` are left.
    fn evict_over(&mut self, cap: usize) -> Vec<Arc<Fds>> {
        let mut out = Vec::new();
        while self.open.len() > cap {
            let Some((_, id)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((fds, _)) = self.open.remove(&id) {
                out.push(fds);
            }
        }
        out
    }
}

impl OpenFiles {
    pub fn new(cap: usize) -> OpenFiles {
        OpenFiles {
            cap: cap.max(1),
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new stage's id, its file `file` (just opened) counted as open.
    pub fn register(&self, file: File) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = {
            let mut table = self.lock();
            table.insert(id, Arc::new(Fds::new(file)));
            table.evict_over(self.cap)
        };
        drop(evicted); // closed outside the lock
        id
    }

    /// The descriptors of stage `id`, whose file is `path`: reopened if they were closed.
    pub fn get(&self, id: u64, path: &Path) -> io::Result<Arc<Fds>> {
        if let Some(fds) = self.lock().touch(id) {
            return Ok(fds);
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let fds = Arc::new(Fds::new(file));
        let evicted = {
            let mut table = self.lock();
            if let Some(theirs) = table.touch(id) {
                return Ok(theirs); // another thread reopened it meanwhile; ours closes
            }
            table.insert(id, fds.clone());
            table.evict_over(self.cap)
        };
        drop(evicted);
        Ok(fds)
    }

    /// Stage `id` is gone: its file is closed (once no operation uses it).
    pub fn close(&self, id: u64) {
        let fds = self.lock().remove(id);
        drop(fds);
    }

    /// Stage files in the table now.
    #[cfg(test)]
    fn open_now(&self) -> usize {
        self.lock().open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, n: usize) -> Vec<std::path::PathBuf> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("s{i}"));
                std::fs::write(&p, format!("stage {i}")).unwrap();
                p
            })
            .collect()
    }

    /// Descriptors of this process open on `path` (or on anything under it).
    fn open_on(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(path)))
            .count()
    }

    #[test]
    fn keeps_at_most_cap_open_and_reopens_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 20);
        let open = OpenFiles::new(4);
        let ids: Vec<u64> = paths
            .iter()
            .map(|p| open.register(File::open(p).unwrap()))
            .collect();
        assert_eq!(open.open_now(), 4);
        assert_eq!(open_on(dir.path()), 4, "closed files are really closed");
        assert_eq!(open_on(&paths[0]), 0, "the oldest went first");
        assert_eq!(open_on(&paths[19]), 1);
        for (id, path) in ids.iter().zip(&paths) {
            let fds = open.get(*id, path).unwrap();
            let mut buf = vec![0u8; 16];
            let n = std::os::unix::fs::FileExt::read_at(&fds.file, &mut buf, 0).unwrap();
            assert_eq!(&buf[..n], std::fs::read(path).unwrap().as_slice());
            drop(fds);
            assert!(open_on(dir.path()) <= 4);
        }
        assert_eq!(open.open_now(), 4);
        for id in &ids {
            open.close(*id);
        }
        assert_eq!(open.open_now(), 0);
        assert_eq!(open_on(dir.path()), 0);
    }

    #[test]
    fn the_most_recently_used_stay_open() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 3);
        let open = OpenFiles::new(2);
        let a = open.register(File::open(&paths[0]).unwrap());
        open.register(File::open(&paths[1]).unwrap());
        open.get(a, &paths[0]).unwrap(); // a is now newer than b
        open.register(File::open(&paths[2]).unwrap());
        let still_open: Vec<usize> = paths.iter().map(|p| open_on(p)).collect();
        assert_eq!(
            still_open,
            [1, 0, 1],
            "b, the least recently used, was closed"
        );
    }

    #[test]
    fn a_file_in_use_stays_open_until_the_use_ends_and_a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 2);
        let open = OpenFiles::new(1);
        let a = open.register(File::open(&paths[0]).unwrap());
        let in_use = open.get(a, &paths[0]).unwrap();
        let b = open.register(File::open(&paths[1]).unwrap());
        assert_eq!(open.open_now(), 1);
        assert_eq!(open_on(dir.path()), 2, "a is still used");
        drop(in_use);
        assert_eq!(open_on(dir.path()), 1);
        std::fs::remove_file(&paths[0]).unwrap();
        let err = open
            .get(a, &paths[0])
            .err()
            .expect("a reopen of a missing file fails");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(open.get(b, &paths[1]).is_ok(), "b is untouched");
    }
}
