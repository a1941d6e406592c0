//! The file-system core: one method per POSIX operation over an [`ObjectStore`],
//! returning [`FsResult`]. It is the only place that knows POSIX rules (ENOTEMPTY,
//! rename over a file, O_TRUNC, read-your-writes). It never sees FUSE types, so it is
//! tested directly against the in-memory store.

mod copy;
mod dir;
mod file;
mod handles;
mod hidden;
pub mod inodes;
mod lookup;
mod meta;
mod namespace;
mod page_cache;
mod pager;
mod readdir;
mod removed;
mod rename;
mod save;
mod shared;
mod space;
mod status;
mod trash;
mod window;
mod writeback;
mod xattr;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub use crate::error::{FsError, FsResult};
use crate::layout::Layout;
use crate::meta_index::MetaIndex;
use crate::read::BlockCache;
use crate::shared_index::WriteLimiter;
use crate::stage::StageDir;
use crate::store::ObjectStore;
use crate::upload::{UploadLimits, Uploader};
use handles::HandleTable;
use inodes::InodeTable;
pub use inodes::{Attr, Extras, Kind, ROOT};
pub use status::{
    CounterReport, PendingTotals, PendingUpload, StatusReport, UploadState, XATTR_STATUS,
};
pub use trash::Trash;
pub use writeback::Recovery;
pub use xattr::{XattrAnswer, xattr_answer, xattr_list, xattr_name_to_read, xattr_name_to_write};

/// What statfs reports. Every write is staged in the cache dir before it is uploaded,
/// so the blocks are those of the cache dir's file system: its size, and its free space
/// as what an application can write before its files are uploaded (the bucket itself
/// has no limit). S3 has no inode limit: a large number of files, all free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Size, free and available (to unprivileged users) space, in `fragment_size` units.
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    /// Preferred I/O size.
    pub block_size: u32,
    pub fragment_size: u32,
    pub max_name: u32,
}

/// The mode a new file, directory or node gets: the caller's mode without the bits of
/// its umask (the type bits stay).
pub fn creation_mode(mode: u32, umask: u32) -> u32 {
    (mode & libc::S_IFMT) | (mode & 0o7777 & !umask)
}

/// Settings of the core, validated by the command line.
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub metadata_ttl: Duration,
    pub read_only: bool,
    pub part_size: u64,
    pub upload_concurrency: usize,
    /// Parts per multipart upload the service takes (S3: 10,000); part sizes grow so
    /// that the largest object fits.
    pub max_parts: u32,
    /// Bytes of upload request bodies held in memory at once, for all uploads.
    pub upload_memory: u64,
    pub cache_dir: PathBuf,
    /// Bytes of the in-memory block cache.
    pub cache_size: usize,
    /// close() returns once the data is durable in the cache dir; uploads run in the
    /// background.
    pub write_back: bool,
    /// With write-back, how long a committed file waits in the upload queue before its
    /// upload starts, so that a quick rename, rewrite or delete costs no upload of its
    /// own (an unmount uploads at once).
    pub write_back_delay: Duration,
    /// How long the URL of `user.s3.url` is valid.
    pub url_expiry: Duration,
    /// Directory listings show what LIST says (defaults for mode and owner) without a
    /// HEAD per entry; a file's stored metadata is read when it is looked up by name.
    pub fast_listing: bool,
    /// Bound on the persistent metadata index in the cache dir (0: no index).
    pub metadata_index_entries: u64,
    /// `--shared-metadata-index`: listings read (and, unless read-only, write) the
    /// directory's object of the shared index (`shared_index.rs`).
    pub shared_metadata_index: bool,
}

impl FsConfig {
    /// How uploads are cut into parts and how many run at once.
    pub fn upload_limits(&self) -> UploadLimits {
        UploadLimits {
            part_size: self.part_size,
            max_parts: self.max_parts,
            concurrency: self.upload_concurrency,
            memory: self.upload_memory,
        }
    }
}

/// Who asks: the caller's ids, for ownership of new files.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenMode {
    pub write: bool,
    pub truncate: bool,
    /// The kernel opens the file to execute it (`execve` of a program or of its ELF
    /// interpreter): held until the program exits.
    pub exec: bool,
}

/// Attribute changes of setattr.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// One entry of a directory listing; `offset` is the cookie of the entry after it.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
    pub offset: u64,
}

pub struct S3Fs<S: ObjectStore> {
    store: Arc<S>,
    layout: Layout,
    cfg: FsConfig,
    inodes: Mutex<InodeTable>,
    handles: HandleTable<S>,
    stages: StageDir,
    cache: Arc<BlockCache>,
    uploader: Uploader<S>,
    /// Set when the mount is going away: no new writers.
    closing: AtomicBool,
    /// Write-back commits running in a FUSE thread (at most one, so that one FUSE
    /// thread is always free while closers wait for their syncs).
    commits_here: std::sync::atomic::AtomicUsize,
    /// Files whose close returned in write-back mode, with when it did, for the
    /// background uploader.
    pending_tx: tokio::sync::mpsc::UnboundedSender<(u64, tokio::time::Instant)>,
    pending_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(u64, tokio::time::Instant)>>>,
    /// Directories being listed for lookups.
    listing_gates: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Where lookups last listed a window of each directory.
    walks: window::Walks,
    /// Where the last whole listing of each large directory can be cut, to list it in
    /// parallel spans next time.
    spans: Arc<pager::Spans>,
    /// Counters from outside the core, for the status document.
    counter_report: OnceLock<status::CounterReport>,
    /// HEAD answers of earlier listings, by exact object version.
    index: MetaIndex,
    /// When this mount last wrote each directory's shared index object.
    shared_writes: WriteLimiter,
    /// `--trash`: where unlink keeps a copy of each file before deleting it.
    trash: Option<Trash<S>>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl<S: ObjectStore> S3Fs<S> {
    pub fn new(store: Arc<S>, cfg: FsConfig) -> FsResult<S3Fs<S>> {
        let stages = StageDir::open(&cfg.cache_dir)?;
        let index = MetaIndex::open(&cfg.cache_dir, cfg.metadata_index_entries);
        let (pending_tx, pending_rx) = tokio::sync::mpsc::unbounded_channel();
        let started = now();
        let root = Attr {
            ino: ROOT,
            kind: Kind::Dir,
            size: 0,
            mtime: started,
            ctime: started,
            atime: started,
            perm: cfg.dir_mode,
            uid: cfg.uid,
            gid: cfg.gid,
            rdev: 0,
            nlink: 2,
        };
        Ok(S3Fs {
            layout: Layout::new(&cfg.prefix),
            uploader: Uploader::new(store.clone(), cfg.upload_limits()),
            cache: Arc::new(BlockCache::new(cfg.cache_size)),
            store,
            inodes: Mutex::new(InodeTable::new(root, cfg.metadata_ttl)),
            handles: HandleTable::new(),
            stages,
            cfg,
            closing: AtomicBool::new(false),
            commits_here: std::sync::atomic::AtomicUsize::new(0),
            pending_tx,
            pending_rx: Mutex::new(Some(pending_rx)),
            listing_gates: Mutex::new(HashMap::new()),
            walks: window::Walks::default(),
            spans: Arc::new(pager::Spans::new(index.clone())),
            counter_report: OnceLock::new(),
            index,
            shared_writes: WriteLimiter::default(),
            trash: None,
        })
    }

    /// The space of the cache dir's file system (see [`StatFs`]); if the cache dir
    /// cannot be asked, a large free volume as S3 itself would be.
    pub fn statfs(&self) -> StatFs {
        let files = 1 << 32;
        let max_name = crate::layout::MAX_NAME as u32;
        match nix::sys::statvfs::statvfs(self.stages.dir()) {
            Ok(st) => StatFs {
                blocks: st.blocks(),
                blocks_free: st.blocks_free(),
                blocks_avail: st.blocks_available(),
                files,
                files_free: files,
                block_size: st.block_size() as u32,
                fragment_size: st.fragment_size() as u32,
                max_name,
            },
            Err(e) => {
                log::warn!(
                    "statfs of the cache dir {}: {e}",
                    self.stages.dir().display()
                );
                StatFs {
                    blocks: 1 << 40,
                    blocks_free: 1 << 40,
                    blocks_avail: 1 << 40,
                    files,
                    files_free: files,
                    block_size: 4096,
                    fragment_size: 4096,
                    max_name,
                }
            }
        }
    }

    /// The store this file system works on.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn ttl(&self) -> Duration {
        self.cfg.metadata_ttl
    }

    /// How long the kernel may keep what it is told of `ino` now (its entry and
    /// attributes): the metadata TTL, but never past the moment the table stops trusting
    /// them. Told a whole TTL by an answer given just before the table's entry expired, the
    /// kernel would show another host's change only after up to twice the TTL. What this
    /// mount holds itself (a staged or unlinked file, the root) keeps the whole TTL.
    pub fn ttl_of(&self, ino: u64) -> Duration {
        let ttl = self.cfg.metadata_ttl;
        let table = self.inodes.lock().unwrap();
        match table.get(ino) {
            Some(inode) if ino != ROOT && !inode.detached && table.stage(ino).is_none() => ttl.min(
                inode
                    .valid_until
                    .saturating_duration_since(std::time::Instant::now()),
            ),
            _ => ttl,
        }
    }

    /// The upload journal's live records (what a crash now would leave to recover).
    pub fn journal_records(&self) -> Vec<crate::stage::Record> {
        self.stages.journaled().into_values().collect()
    }

    /// Fault injection: the next `n` journal writes a close waits for fail, as on a
    /// failing cache disk.
    pub fn fail_next_journal_writes(&self, n: u32) {
        self.stages.fail_next_journal_writes(n);
    }

    fn valid_until(&self) -> Instant {
        Instant::now() + self.cfg.metadata_ttl
    }

    fn default_dir_attr(&self, mtime: SystemTime) -> Attr {
        Attr {
            ino: 0,
            kind: Kind::Dir,
            size: 0,
            mtime,
            ctime: mtime,
            atime: mtime,
            perm: self.cfg.dir_mode,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            rdev: 0,
            nlink: 2,
        }
    }

    fn file_attr(&self, size: u64, mtime: SystemTime) -> Attr {
        Attr {
            ino: 0,
            kind: Kind::File,
            size,
            mtime,
            ctime: mtime,
            atime: mtime,
            perm: self.cfg.file_mode,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            rdev: 0,
            nlink: 1,
        }
    }

    /// The current attributes of an inode; a staged file reports its stage's size, a
    /// directory 2 + the subdirectories the table knows of as its link count (as a
    /// disk does; no request is made for it).
    fn current_attr(table: &InodeTable, ino: u64) -> Option<Attr> {
        let inode = table.get(ino)?;
        let mut attr = inode.attr.clone();
        if let Some(stage) = table.stage(ino) {
            attr.size = stage.size();
        }
        if attr.kind == Kind::Dir {
            attr.nlink = 2u32.saturating_add(table.subdir_count(ino));
        }
        if inode.detached {
            attr.nlink = 0; // unlinked while open
        }
        Some(attr)
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    fn dir_path(&self, table: &InodeTable, ino: u64) -> FsResult<String> {
        let inode = table.get(ino).ok_or(FsError::NotFound)?;
        if inode.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        table.path(ino).ok_or(FsError::NotFound)
    }
}
