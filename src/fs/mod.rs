//! The file-system core: one method per POSIX operation over an [`ObjectStore`],
//! returning [`FsResult`]. It is the only place that knows POSIX rules (ENOTEMPTY,
//! rename over a file, O_TRUNC, read-your-writes). It never sees FUSE types, so it is
//! tested directly against the in-memory store.

pub mod dir;
pub mod error;
pub mod inodes;
mod meta;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;

use crate::journal;
use crate::layout::{self, Layout, check_name};
use crate::read::{BlockCache, Reader};
use crate::stage::{RecordAttrs, RemoteBase, Stage, StageDir};
use crate::store::{ObjectHeaders, ObjectStore, StoreError, UploadId};
use crate::upload::Uploader;
use dir::{DirStream, Listed};
pub use error::{FsError, FsResult};
pub use inodes::{Attr, Extras, Kind, ROOT};
use inodes::{InodeTable, Remote};

/// Files uploaded at once by the write-back queue.
const BACKGROUND_UPLOADS: usize = 8;
/// How often uploads that failed at close are tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// Longest wait between two tries of a background upload.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A lookup miss lists a directory of up to this many pages (of 1000 names) instead
/// of asking about the one name: it answers the lookups of all its siblings too.
const LOOKUP_LIST_PAGES: usize = 2;

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
    pub cache_dir: PathBuf,
    /// Bytes of the in-memory block cache.
    pub cache_size: usize,
    /// close() returns once the data is durable in the cache dir; uploads run in the
    /// background.
    pub write_back: bool,
    /// How long the URL of `user.s3.url` is valid.
    pub url_expiry: Duration,
    /// Directory listings show what LIST says (defaults for mode and owner) without a
    /// HEAD per entry; a file's stored metadata is read when it is looked up by name.
    pub fast_listing: bool,
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

struct FileHandle<S> {
    ino: u64,
    writable: bool,
    /// The version of the object at open, for handles that read from S3.
    reader: Option<Reader<S>>,
    /// The inode's content version at open: while it is unchanged, a reader whose object
    /// moved (a rename) or got a new ETag (a metadata copy) may follow it.
    content_version: u64,
}

enum Handle<S> {
    File(FileHandle<S>),
    Dir(Box<tokio::sync::Mutex<DirStream>>),
}

pub struct S3Fs<S: ObjectStore> {
    store: Arc<S>,
    layout: Layout,
    cfg: FsConfig,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Arc<Handle<S>>>>,
    next_fh: AtomicU64,
    stages: StageDir,
    cache: Arc<BlockCache>,
    uploader: Uploader<S>,
    /// Set when the mount is going away: no new writers.
    closing: AtomicBool,
    /// Files whose close returned in write-back mode, for the background uploader.
    pending_tx: tokio::sync::mpsc::UnboundedSender<u64>,
    pending_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
    /// Directories being listed for lookups.
    listing_gates: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

/// What recovery found in the cache dir.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovery {
    /// Committed files uploaded now.
    pub uploaded: usize,
    pub bytes: u64,
    /// Committed files that could not be uploaded (they stay).
    pub failed: usize,
    /// Files whose close never returned, moved aside to `orphaned/`.
    pub orphaned: usize,
    /// Multipart uploads of an earlier run that were aborted.
    pub aborted: usize,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl<S: ObjectStore> S3Fs<S> {
    pub fn new(store: Arc<S>, cfg: FsConfig) -> FsResult<S3Fs<S>> {
        let stages = StageDir::open(&cfg.cache_dir)?;
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
            uploader: Uploader::new(store.clone(), cfg.part_size, cfg.upload_concurrency),
            cache: Arc::new(BlockCache::new(cfg.cache_size)),
            store,
            inodes: Mutex::new(InodeTable::new(root)),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stages,
            cfg,
            closing: AtomicBool::new(false),
            pending_tx,
            pending_rx: Mutex::new(Some(pending_rx)),
            listing_gates: Mutex::new(HashMap::new()),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.cfg.metadata_ttl
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

    /// The current attributes of an inode; a staged file reports its stage's size.
    fn current_attr(table: &InodeTable, ino: u64) -> Option<Attr> {
        let inode = table.get(ino)?;
        let mut attr = inode.attr.clone();
        if let Some(stage) = table.stage(ino) {
            attr.size = stage.size();
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

    // ---- names ----------------------------------------------------------------------

    pub async fn lookup(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<Attr> {
        let name = check_name(name)?;
        let attr = self.resolve(parent, name).await?;
        self.inodes.lock().unwrap().add_lookup(attr.ino);
        Ok(attr)
    }

    /// Records one entry of a listing of `parent` in the table.
    fn upsert_listed(
        &self,
        table: &mut InodeTable,
        parent: u64,
        name: &str,
        listed: &Listed,
        until: Instant,
    ) -> u64 {
        match listed {
            Listed::File {
                size,
                remote,
                mtime,
            } => table.upsert(
                parent,
                name,
                self.file_attr(*size, *mtime),
                Some(remote.clone()),
                until,
                None,
            ),
            Listed::Dir => table.upsert(
                parent,
                name,
                self.default_dir_attr(now()),
                None,
                until,
                None,
            ),
        }
    }

    /// Finds `name` under `parent` with its whole attributes (see [`S3Fs::find`] and
    /// [`S3Fs::ensure_meta`]).
    async fn resolve(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let attr = self.find(parent, name).await?;
        self.complete_attr(attr.ino, true).await
    }

    /// Finds `name` under `parent`: from the table while its attributes are fresh (or
    /// it is staged here) or while the parent's listing is complete; otherwise by
    /// listing a small parent directory in one request (which answers the lookups of
    /// its siblings too), or for a large one by a HEAD of the file key and a one-key
    /// LIST of the directory prefix in parallel. A directory wins over a file.
    async fn find(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let (dir, large) = {
            let mut table = self.inodes.lock().unwrap();
            let dir = self.dir_path(&table, parent)?;
            if let Some(attr) = self.known_child(&mut table, parent, name)? {
                return Ok(attr);
            }
            (dir, table.get(parent).is_some_and(|p| p.large))
        };
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        self.layout.check_path(&path, false)?;
        if !large {
            // One listing per directory at a time: lookups racing into the same
            // directory wait for it and are answered from it.
            let gate = self.listing_gate(parent);
            let _listing = gate.lock().await;
            {
                let mut table = self.inodes.lock().unwrap();
                if let Some(attr) = self.known_child(&mut table, parent, name)? {
                    return Ok(attr);
                }
            }
            let prefix = self.layout.dir_prefix(&dir);
            let until = self.valid_until();
            let mut pages = Vec::new();
            let mut token = None;
            let complete = loop {
                let page = self.store.list_page(&prefix, true, token, None).await?;
                token = page.next_token.clone();
                pages.push(page);
                if token.is_none() {
                    break true;
                }
                if pages.len() == LOOKUP_LIST_PAGES {
                    break false;
                }
            };
            let mut table = self.inodes.lock().unwrap();
            for page in &pages {
                for (child, listed) in dir::page_entries(&self.layout, &prefix, page) {
                    self.upsert_listed(&mut table, parent, &child, &listed, until);
                }
            }
            if complete {
                table.mark_listed(parent, until, false);
                if let Some(attr) = self.known_child(&mut table, parent, name)? {
                    return Ok(attr);
                }
                return Err(FsError::NotFound);
            }
            table.mark_listed(parent, Instant::now(), true);
            if let Some(ino) = table.child(parent, name)
                && table
                    .get(ino)
                    .is_some_and(|i| i.valid_until > Instant::now())
            {
                return Ok(Self::current_attr(&table, ino).expect("indexed"));
            }
        }
        let file_key = self.layout.file_key(&path);
        let dir_prefix = self.layout.dir_prefix(&path);
        let (head, listing) = tokio::join!(
            self.store.head(&file_key),
            self.store.list_page(&dir_prefix, false, None, Some(1))
        );
        let listing = listing?;
        let mut table = self.inodes.lock().unwrap();
        if let Some(first) = listing
            .objects
            .first()
            .map(|o| o.last_modified)
            .or(listing.prefixes.first().map(|_| now()))
        {
            let ino = table.upsert(
                parent,
                name,
                self.default_dir_attr(first),
                None,
                self.valid_until(),
                None,
            );
            return Ok(Self::current_attr(&table, ino).expect("just inserted"));
        }
        match head {
            Ok(meta) => {
                let (attr, extras) = self.attr_from_head(&meta, false);
                let remote = Remote {
                    etag: meta.etag.clone(),
                    size: meta.size,
                    modified: Some(meta.last_modified),
                };
                let until = self.valid_until();
                let ino = table.upsert(parent, name, attr, Some(remote), until, Some(extras));
                Ok(Self::current_attr(&table, ino).expect("just inserted"))
            }
            Err(StoreError::NotFound) => {
                if let Some(ino) = table.child(parent, name)
                    && table.stage(ino).is_none()
                {
                    table.detach(ino);
                }
                Err(FsError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The lock under which directory `parent` is listed for lookups.
    fn listing_gate(&self, parent: u64) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.listing_gates.lock().unwrap();
        // Forget gates nobody holds, so the map stays as small as the lookups in flight.
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        gates.entry(parent).or_default().clone()
    }

    /// What the table alone can say about `name` under `parent`: its attributes if
    /// they are fresh or staged here, NotFound if the parent's listing is complete,
    /// None if S3 must be asked.
    fn known_child(
        &self,
        table: &mut InodeTable,
        parent: u64,
        name: &str,
    ) -> FsResult<Option<Attr>> {
        let child = table.child(parent, name);
        if let Some(ino) = child {
            let inode = table.get(ino).expect("indexed");
            if table.stage(ino).is_some() || inode.valid_until > Instant::now() {
                return Ok(Some(Self::current_attr(table, ino).expect("indexed")));
            }
        }
        if table.listing_fresh(parent) {
            // A complete listing refreshed every child; one it did not is gone.
            if let Some(ino) = child {
                table.detach(ino);
            }
            return Err(FsError::NotFound);
        }
        Ok(None)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.lock().unwrap().forget(ino, n);
    }

    pub fn add_lookups(&self, inos: &[u64]) {
        let mut table = self.inodes.lock().unwrap();
        for ino in inos {
            table.add_lookup(*ino);
        }
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        {
            let mut table = self.inodes.lock().unwrap();
            let inode = table.get(ino).ok_or(FsError::NotFound)?;
            let fresh = inode.valid_until > Instant::now();
            if inode.detached || table.stage(ino).is_some() || (fresh && inode.meta_known) {
                return Ok(Self::current_attr(&table, ino).expect("present"));
            }
            if ino == ROOT {
                return Ok(Self::current_attr(&table, ino).expect("present"));
            }
            table.get_mut(ino).expect("present").meta_known = false;
        }
        let attr = self.ensure_meta(ino).await?;
        if attr.ino != ino {
            // The name now holds another kind of object than this inode.
            return Err(FsError::NotFound);
        }
        Ok(attr)
    }

    // ---- files ----------------------------------------------------------------------

    /// The stage of `ino`, created if the file has none (empty when `truncate`,
    /// otherwise standing for the object in S3, fetched only when needed).
    fn stage_for_write(&self, ino: u64, truncate: bool) -> FsResult<Arc<Stage>> {
        let mut table = self.inodes.lock().unwrap();
        let inode = table.get(ino).ok_or(FsError::NotFound)?;
        if inode.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if let Some(stage) = table.stage(ino) {
            return Ok(stage);
        }
        let base = if truncate {
            None
        } else {
            let key = self
                .layout
                .file_key(&table.path(ino).ok_or(FsError::NotFound)?);
            inode.remote.as_ref().map(|r| RemoteBase {
                key,
                etag: r.etag.clone(),
                size: r.size,
            })
        };
        let stage = Arc::new(self.stages.create(base)?);
        if let Some(path) = table.path(ino) {
            stage.note_open(&self.layout.file_key(&path));
        }
        table.set_stage(ino, Some(stage.clone()));
        Ok(stage)
    }

    fn has_writer(&self, ino: u64) -> bool {
        self.handles
            .lock()
            .unwrap()
            .values()
            .any(|h| matches!(&**h, Handle::File(f) if f.ino == ino && f.writable))
    }

    fn add_handle(&self, handle: Handle<S>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, Arc::new(handle));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle<S>>> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Opens a file; returns the handle and whether the kernel may keep the pages it
    /// cached at an earlier open (the object is the same version, nothing was written).
    pub async fn open(&self, ino: u64, mode: OpenMode) -> FsResult<(u64, bool)> {
        if mode.write {
            self.check_writable()?;
            if self.closing.load(Ordering::Relaxed) {
                return Err(FsError::ReadOnly);
            }
            let stage = self.stage_for_write(ino, mode.truncate)?;
            if mode.truncate {
                if stage.size() > 0 {
                    stage.truncate(&*self.store, 0).await?;
                }
                let t = now();
                if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
                    inode.attr.size = 0;
                    inode.attr.mtime = t;
                    inode.attr.ctime = t;
                }
            }
        }
        let mut table = self.inodes.lock().unwrap();
        let inode = table.get(ino).ok_or(FsError::NotFound)?;
        if inode.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let reader = match (&inode.remote, mode.write, table.stage(ino)) {
            (Some(remote), false, None) => {
                let path = table.path(ino).ok_or(FsError::NotFound)?;
                Some(Reader::new(
                    self.store.clone(),
                    self.cache.clone(),
                    &self.layout.file_key(&path),
                    remote.etag.clone(),
                    remote.size,
                ))
            }
            _ => None,
        };
        let inode = table.get_mut(ino).expect("present");
        inode.open_handles += 1;
        let seen = reader.as_ref().map(|r| r.etag().clone());
        let keep_cache = seen.is_some() && inode.page_cache_etag == seen;
        inode.page_cache_etag = seen;
        let content_version = inode.content_version;
        drop(table);
        let fh = self.add_handle(Handle::File(FileHandle {
            ino,
            writable: mode.write,
            reader,
            content_version,
        }));
        Ok((fh, keep_cache))
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<(Attr, u64)> {
        self.check_writable()?;
        let name = check_name(name)?;
        let stage = Arc::new(self.stages.create(None)?);
        let mut table = self.inodes.lock().unwrap();
        let dir = self.dir_path(&table, parent)?;
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        if let Err(e) = self.layout.check_path(&path, false) {
            stage.discard();
            return Err(e);
        }
        let t = now();
        let mut attr = self.file_attr(0, t);
        attr.perm = (mode & 0o7777) as u16;
        attr.uid = caller.uid;
        attr.gid = caller.gid;
        stage.note_open(&self.layout.file_key(&path));
        let ino = table.upsert(
            parent,
            name,
            attr,
            None,
            self.valid_until(),
            Some(Extras::default()),
        );
        Self::touch_dir(&mut table, parent, t);
        if let Some(old) = table.stage(ino) {
            // The kernel believed the name free while it was staged here: replace it.
            old.mark_deleted();
            old.discard();
        }
        table.set_stage(ino, Some(stage));
        table.add_lookup(ino);
        table.get_mut(ino).expect("present").open_handles += 1;
        let attr = Self::current_attr(&table, ino).expect("present");
        drop(table);
        let fh = self.add_handle(Handle::File(FileHandle {
            ino,
            writable: true,
            reader: None,
            content_version: 0,
        }));
        Ok((attr, fh))
    }

    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let handle = self.handle(fh)?;
        let Handle::File(file) = &*handle else {
            return Err(FsError::IsDir);
        };
        let stage = self.inodes.lock().unwrap().stage(file.ino);
        if let Some(stage) = stage {
            return Ok(Bytes::from(stage.read(&*self.store, offset, len).await?));
        }
        let Some(reader) = &file.reader else {
            return Ok(Bytes::new());
        };
        match reader.read(offset, len).await {
            Err(FsError::Stale | FsError::Store(StoreError::NotFound)) => {
                match self.follow_object(fh, file) {
                    Some(moved) => match &*moved {
                        Handle::File(FileHandle {
                            reader: Some(reader),
                            ..
                        }) => reader.read(offset, len).await,
                        _ => Err(FsError::Stale),
                    },
                    None => Err(FsError::Stale),
                }
            }
            result => result,
        }
    }

    /// A reader's object is gone or has another ETag. If this mount moved it (rename) or
    /// rewrote only its metadata (a copy onto itself), the content is the same: the
    /// handle follows the object to its current key and ETag. Otherwise None (the
    /// content changed underneath: the read fails rather than mix versions).
    fn follow_object(&self, fh: u64, file: &FileHandle<S>) -> Option<Arc<Handle<S>>> {
        let old = file.reader.as_ref()?;
        let table = self.inodes.lock().unwrap();
        let inode = table.get(file.ino)?;
        if inode.content_version != file.content_version {
            return None;
        }
        let remote = inode.remote.as_ref()?;
        let key = self.layout.file_key(&table.path(file.ino)?);
        if remote.size != old.size() || (*key == *old.key() && remote.etag == *old.etag()) {
            return None;
        }
        let reader = Reader::new(
            self.store.clone(),
            self.cache.clone(),
            &key,
            remote.etag.clone(),
            remote.size,
        );
        drop(table);
        let handle = Arc::new(Handle::File(FileHandle {
            ino: file.ino,
            writable: file.writable,
            reader: Some(reader),
            content_version: file.content_version,
        }));
        // (Unless the handle was released meanwhile: then it must not come back.)
        if let Some(slot) = self.handles.lock().unwrap().get_mut(&fh) {
            *slot = handle.clone();
        }
        Some(handle)
    }

    /// The stage a write through `fh` goes to.
    fn write_target(&self, fh: u64) -> FsResult<(u64, Arc<Stage>)> {
        let handle = self.handle(fh)?;
        let Handle::File(file) = &*handle else {
            return Err(FsError::IsDir);
        };
        if !file.writable {
            return Err(FsError::BadHandle);
        }
        Ok((file.ino, self.stage_for_write(file.ino, false)?))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (ino, stage) = self.write_target(fh)?;
        let size = stage.write(&*self.store, offset, data).await?;
        self.after_write(ino, &stage, size);
        Ok(data.len() as u32)
    }

    /// A write that needs no wait (nothing to fetch from S3 first), done in the calling
    /// thread so the data is not copied once more; None means: call [`S3Fs::write`].
    /// Must run inside the runtime (it may start part uploads).
    pub fn try_write_now(&self, fh: u64, offset: u64, data: &[u8]) -> Option<FsResult<u32>> {
        let (ino, stage) = match self.write_target(fh) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let size = match stage.try_write_now(offset, data)? {
            Ok(size) => size,
            Err(e) => return Some(Err(e)),
        };
        self.after_write(ino, &stage, size);
        Some(Ok(data.len() as u32))
    }

    /// Updates size and times, and starts the parts a sequential writer has completed.
    fn after_write(&self, ino: u64, stage: &Arc<Stage>, size: u64) {
        let key = {
            let mut table = self.inodes.lock().unwrap();
            let t = now();
            if let Some(inode) = table.get_mut(ino) {
                inode.attr.size = size;
                inode.attr.mtime = t;
                inode.attr.ctime = t;
            }
            if size >= 2 * self.cfg.part_size && stage.may_stream() {
                // The upload completes at close: its Last-Modified is then the mtime.
                table.path(ino).and_then(|p| {
                    Some((
                        self.layout.file_key(&p),
                        Self::headers_for(&table, ino, false)?,
                    ))
                })
            } else {
                None
            }
        };
        if let Some((key, headers)) = key {
            self.uploader.stream_parts(stage, &key, &headers);
        }
    }

    /// close(): uploads what this handle's file has staged, if it changed; with
    /// write-back, makes it durable in the cache dir and leaves the upload to the
    /// background.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        match &*handle {
            Handle::File(file) if file.writable && self.cfg.write_back => {
                self.commit(file.ino)?;
                let _ = self.pending_tx.send(file.ino);
                Ok(())
            }
            Handle::File(file) if file.writable => self.sync(file.ino).await,
            _ => Ok(()),
        }
    }

    /// Makes the staged data of `ino` durable and journals it as committed.
    fn commit(&self, ino: u64) -> FsResult<()> {
        let (stage, key, headers) = {
            let table = self.inodes.lock().unwrap();
            let Some(stage) = table.stage(ino) else {
                return Ok(());
            };
            let Some(path) = table.path(ino) else {
                return Ok(()); // unlinked: nothing to keep
            };
            let headers = Self::headers_for(&table, ino, true).ok_or(FsError::NotFound)?;
            (stage, self.layout.file_key(&path), headers)
        };
        if !stage.is_dirty() {
            return Ok(());
        }
        if let Some(e) = stage.broken() {
            return Err(e);
        }
        stage.commit(&key, record_attrs(&headers))
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh).await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = self
            .handles
            .lock()
            .unwrap()
            .remove(&fh)
            .ok_or(FsError::BadHandle)?;
        let Handle::File(file) = &*handle else {
            return Ok(());
        };
        let ino = file.ino;
        let last = {
            let mut table = self.inodes.lock().unwrap();
            let Some(inode) = table.get_mut(ino) else {
                return Ok(());
            };
            inode.open_handles = inode.open_handles.saturating_sub(1);
            inode.open_handles == 0
        };
        let mut result = Ok(());
        if file.writable && last {
            // flush() normally did it already; this catches writes after it (mmap).
            if self.cfg.write_back {
                result = self.commit(ino);
                let _ = self.pending_tx.send(ino);
            } else {
                result = self.sync(ino).await;
            }
        }
        if last {
            self.drop_clean_stage(ino);
        }
        let mut table = self.inodes.lock().unwrap();
        table.remove_if_unused(ino);
        result
    }

    /// Removes the stage of `ino` once S3 has all of it (or the file is gone) and
    /// nobody has it open.
    fn drop_clean_stage(&self, ino: u64) {
        let mut table = self.inodes.lock().unwrap();
        let Some(stage) = table.stage(ino) else {
            return;
        };
        let open = table.get(ino).is_some_and(|i| i.open_handles > 0);
        if open {
            return;
        }
        if stage.is_dirty() && stage.broken().is_none() {
            if !self.cfg.write_back {
                log::warn!(
                    "{}: not in S3 yet; its data stays staged in {}",
                    table.path(ino).unwrap_or_default(),
                    stage.path().display()
                );
            }
            return;
        }
        if stage.broken().is_some() {
            // The failed write is forgotten: the file is what S3 has, if anything.
            match table.get_mut(ino) {
                Some(inode) if inode.remote.is_some() => {
                    inode.attr.size = inode.remote.as_ref().map_or(0, |r| r.size);
                    inode.valid_until = Instant::now();
                }
                _ => table.detach(ino),
            }
        }
        table.set_stage(ino, None);
        drop(table);
        stage.discard();
    }

    /// Uploads the stage of `ino` if S3 does not have its latest content. Returns only
    /// once S3 acknowledged it; on failure the stage stays and the error is EIO.
    pub async fn sync(&self, ino: u64) -> FsResult<()> {
        let Some(stage) = self.inodes.lock().unwrap().stage(ino) else {
            return Ok(());
        };
        if !stage.is_dirty() {
            return Ok(());
        }
        let _upload = stage.upload_lock.lock().await;
        if !stage.is_dirty() {
            return Ok(());
        }
        if let Some(e) = stage.broken() {
            // What the application wrote is not all there: upload nothing (S3 keeps
            // the previous version) and tell it again.
            return Err(e);
        }
        let (key, headers) = {
            let table = self.inodes.lock().unwrap();
            match table.path(ino) {
                Some(path) => (
                    self.layout.file_key(&path),
                    Self::headers_for(&table, ino, true).ok_or(FsError::NotFound)?,
                ),
                None => return Ok(()), // unlinked meanwhile: nothing to upload
            }
        };
        // (A success removes the record, a failure rewrites it as committed.)
        stage.note_uploading(true);
        match self.uploader.upload(&stage, &key, &headers).await {
            Ok((etag, size, version)) => {
                stage.mark_uploaded(version);
                stage.settle_record(version);
                self.cache.invalidate(&key);
                let until = self.valid_until();
                let mut table = self.inodes.lock().unwrap();
                if let Some(inode) = table.get_mut(ino) {
                    inode.remote = Some(Remote {
                        etag,
                        size,
                        modified: None,
                    });
                    inode.content_version += 1;
                    inode.attr.size = size;
                    inode.valid_until = until;
                }
                log::debug!("uploaded {key} ({size} bytes)");
                Ok(())
            }
            Err(e) => {
                log::error!(
                    "upload of {key} failed: {e}; the data stays staged in {} and is retried",
                    stage.path().display()
                );
                // Kept for good: journaled, so that a crash before the retry cannot lose it.
                if let Err(c) = stage.commit(&key, record_attrs(&headers)) {
                    log::error!("could not journal {key} in the cache dir: {c}");
                }
                Err(match e {
                    FsError::NoSpace => FsError::NoSpace,
                    _ => FsError::Io(e.to_string()),
                })
            }
        }
    }

    pub async fn unlink(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<()> {
        self.check_writable()?;
        let name = check_name(name)?;
        let attr = self.resolve(parent, name).await?;
        if attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let (key, stage) = {
            let table = self.inodes.lock().unwrap();
            let path = table.path(attr.ino).ok_or(FsError::NotFound)?;
            (self.layout.file_key(&path), table.stage(attr.ino))
        };
        match &stage {
            Some(stage) => {
                // Under the upload lock no upload can recreate the object after the
                // DELETE; the staged data is given up only once the DELETE succeeded, so a
                // failed unlink loses nothing.
                let _upload = stage.upload_lock.lock().await;
                self.store.delete(&key).await?;
                if let Some(st) = stage.mark_deleted() {
                    self.uploader.abort_streaming(st);
                }
            }
            None => self.store.delete(&key).await?,
        }
        self.cache.invalidate(&key);
        let mut table = self.inodes.lock().unwrap();
        table.detach(attr.ino);
        Self::touch_dir(&mut table, parent, now());
        drop(table);
        self.drop_clean_stage(attr.ino);
        Ok(())
    }

    // ---- directories ----------------------------------------------------------------

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let attr = self.new_attr(Kind::Dir, mode, caller);
        self.create_object(parent, name, attr, Extras::default(), Bytes::new())
            .await
    }

    /// mknod: a FIFO, socket or device node is an empty object whose mode says what it
    /// is (as s3fs stores them); a regular file an empty file.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let kind = Kind::from_mode(mode);
        if matches!(kind, Kind::Dir | Kind::Symlink) {
            return Err(FsError::Invalid(
                "mknod makes files, FIFOs, sockets and devices",
            ));
        }
        let mut attr = self.new_attr(kind, mode, caller);
        if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
            attr.rdev = rdev;
        }
        self.create_object(parent, name, attr, Extras::default(), Bytes::new())
            .await
    }

    /// A symbolic link is an object holding the target, with mode `S_IFLNK | 0777`
    /// (as s3fs stores them).
    pub async fn symlink(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        target: &std::path::Path,
        caller: Caller,
    ) -> FsResult<Attr> {
        let target = target.to_str().ok_or(FsError::Invalid(
            "symlink targets must be UTF-8 to be stored",
        ))?;
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() >= libc::PATH_MAX as usize {
            return Err(FsError::NameTooLong);
        }
        let mut attr = self.new_attr(Kind::Symlink, 0o777, caller);
        attr.size = target.len() as u64;
        let extras = Extras {
            link: Some(target.to_string()),
            ..Extras::default()
        };
        let body = Bytes::copy_from_slice(target.as_bytes());
        self.create_object(parent, name, attr, extras, body).await
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<String> {
        let attr = self.ensure_meta(ino).await?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symbolic link"));
        }
        let (key, remote) = {
            let table = self.inodes.lock().unwrap();
            let inode = table.get(attr.ino).ok_or(FsError::NotFound)?;
            if let Some(link) = &inode.extras.link {
                return Ok(link.clone());
            }
            let path = table.path(attr.ino).ok_or(FsError::NotFound)?;
            let remote = inode.remote.clone().ok_or(FsError::NotFound)?;
            (self.layout.file_key(&path), remote)
        };
        let body = crate::store::get_bytes(&*self.store, &key, 0..remote.size, Some(&remote.etag))
            .await
            .map_err(|e| match e {
                StoreError::PreconditionFailed => FsError::Stale,
                e => e.into(),
            })?;
        // s3fs trims the target it stores; so do readers.
        let link = String::from_utf8_lossy(&body).trim().to_string();
        let mut table = self.inodes.lock().unwrap();
        if let Some(inode) = table.get_mut(attr.ino) {
            inode.extras.link = Some(link.clone());
        }
        Ok(link)
    }

    /// The attributes of a new inode of `kind` made by `caller`.
    fn new_attr(&self, kind: Kind, mode: u32, caller: Caller) -> Attr {
        let t = now();
        let mut attr = match kind {
            Kind::Dir => self.default_dir_attr(t),
            _ => self.file_attr(0, t),
        };
        attr.kind = kind;
        attr.nlink = if kind == Kind::Dir { 2 } else { 1 };
        attr.perm = (mode & 0o7777) as u16;
        attr.uid = caller.uid;
        attr.gid = caller.gid;
        attr
    }

    /// Creates `name` under `parent` as one object written at once (a directory marker,
    /// a symlink, a special file); EEXIST if the name is taken.
    async fn create_object(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        attr: Attr,
        extras: Extras,
        body: Bytes,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        let name = check_name(name)?;
        match self.find(parent, name).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let path = {
            let table = self.inodes.lock().unwrap();
            table.child_path(parent, name).ok_or(FsError::NotFound)?
        };
        let dir = attr.kind == Kind::Dir;
        self.layout.check_path(&path, dir)?;
        let headers = Self::headers_of(&attr, &extras, true);
        let key = if dir {
            self.layout.dir_prefix(&path)
        } else {
            self.layout.file_key(&path)
        };
        let etag = self.store.put(&key, body.clone(), &headers).await?;
        let mut table = self.inodes.lock().unwrap();
        let until = self.valid_until();
        let remote = (!dir).then(|| Remote {
            etag,
            size: body.len() as u64,
            modified: None,
        });
        let t = attr.ctime;
        let ino = table.upsert(parent, name, attr, remote, until, Some(extras));
        Self::touch_dir(&mut table, parent, t);
        if dir {
            table.mark_listed(ino, until, false); // created empty: every child is known
        }
        table.add_lookup(ino);
        Ok(Self::current_attr(&table, ino).expect("present"))
    }

    /// Is there anything under directory `ino` (in S3 besides its marker, or staged here)?
    async fn dir_has_children(&self, ino: u64, path: &str) -> FsResult<bool> {
        if !self
            .inodes
            .lock()
            .unwrap()
            .local_only_children(ino)
            .is_empty()
        {
            return Ok(true);
        }
        let prefix = self.layout.dir_prefix(path);
        let page = self.store.list_page(&prefix, false, None, Some(2)).await?;
        Ok(page.objects.iter().any(|o| o.key != prefix) || !page.prefixes.is_empty())
    }

    pub async fn rmdir(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<()> {
        self.check_writable()?;
        let name = check_name(name)?;
        let attr = self.resolve(parent, name).await?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let path = {
            let table = self.inodes.lock().unwrap();
            table.path(attr.ino).ok_or(FsError::NotFound)?
        };
        if self.dir_has_children(attr.ino, &path).await? {
            return Err(FsError::NotEmpty);
        }
        self.store.delete(&self.layout.dir_prefix(&path)).await?;
        let mut table = self.inodes.lock().unwrap();
        table.detach(attr.ino);
        Self::touch_dir(&mut table, parent, now());
        Ok(())
    }

    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let (path, local) = {
            let table = self.inodes.lock().unwrap();
            let path = self.dir_path(&table, ino)?;
            (path, table.local_only_children(ino))
        };
        let parent = self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .map_or(ROOT, |i| i.parent);
        let stream = DirStream::new(ino, parent, self.layout.dir_prefix(&path), local);
        Ok(self.add_handle(Handle::Dir(Box::new(tokio::sync::Mutex::new(stream)))))
    }

    /// Entries of an open directory from cookie `offset` on (a batch; call again with
    /// the last entry's offset). Entries are known to the inode table afterwards, but
    /// their lookup counts are the caller's business ([`S3Fs::add_lookups`]).
    pub async fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let handle = self.handle(fh)?;
        let Handle::Dir(stream) = &*handle else {
            return Err(FsError::NotDir);
        };
        let mut stream = stream.lock().await;
        stream.entries_from(self, offset).await
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    // ---- rename ---------------------------------------------------------------------

    pub async fn rename(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        new_parent: u64,
        new_name: &std::ffi::OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        self.check_writable()?;
        let name = check_name(name)?;
        let new_name = check_name(new_name)?;
        let source = self.resolve(parent, name).await?;
        let target = match self.resolve(new_parent, new_name).await {
            Ok(t) => Some(t),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if target.as_ref().is_some_and(|t| t.ino == source.ino) {
            return Ok(());
        }
        if no_replace && target.is_some() {
            return Err(FsError::Exists);
        }
        let (old_path, new_path) = {
            let table = self.inodes.lock().unwrap();
            (
                table.path(source.ino).ok_or(FsError::NotFound)?,
                table
                    .child_path(new_parent, new_name)
                    .ok_or(FsError::NotFound)?,
            )
        };
        let mut upload_now = false;
        match source.kind {
            Kind::Dir => {
                if let Some(t) = &target {
                    if t.kind != Kind::Dir {
                        return Err(FsError::NotDir);
                    }
                    if self.dir_has_children(t.ino, &new_path).await? {
                        return Err(FsError::NotEmpty);
                    }
                }
                self.layout.check_path(&new_path, true)?;
                self.rename_dir(&old_path, &new_path, target.is_some())
                    .await?;
            }
            _ => {
                if let Some(t) = &target
                    && t.kind == Kind::Dir
                {
                    return Err(FsError::IsDir);
                }
                self.layout.check_path(&new_path, false)?;
                upload_now = self
                    .rename_file(source.ino, &old_path, &new_path, target.as_ref())
                    .await?;
            }
        }
        {
            let mut table = self.inodes.lock().unwrap();
            if let Some(t) = &target {
                table.detach(t.ino);
            }
            table.rename(source.ino, new_parent, new_name);
            if let Some(inode) = table.get_mut(source.ino) {
                inode.valid_until = Instant::now() + self.cfg.metadata_ttl;
                inode.attr.ctime = now();
            }
            Self::touch_dir(&mut table, parent, now());
            Self::touch_dir(&mut table, new_parent, now());
        }
        self.rekey_journal(&new_path)?;
        if upload_now {
            self.sync(source.ino).await?;
            self.drop_clean_stage(source.ino);
        }
        Ok(())
    }

    /// After a rename to `new_path`: journal records of staged files at or under it
    /// name their new keys, so a recovery uploads them where they now are.
    fn rekey_journal(&self, new_path: &str) -> FsResult<()> {
        let moved: Vec<(String, Arc<Stage>)> = {
            let table = self.inodes.lock().unwrap();
            table
                .staged()
                .into_iter()
                .filter_map(|(ino, stage)| {
                    let path = table.path(ino)?;
                    let under = path == new_path || path.starts_with(&format!("{new_path}/"));
                    under.then(|| (self.layout.file_key(&path), stage))
                })
                .collect()
        };
        for (key, stage) in moved {
            stage.rekey(&key)?;
        }
        Ok(())
    }

    async fn rename_file(
        &self,
        ino: u64,
        old_path: &str,
        new_path: &str,
        target: Option<&Attr>,
    ) -> FsResult<bool> {
        let old_key = self.layout.file_key(old_path);
        let new_key = self.layout.file_key(new_path);
        if let Some(t) = target {
            // A replaced file's pending upload must not overwrite what moves in.
            let replaced = self.inodes.lock().unwrap().stage(t.ino);
            if let Some(stage) = replaced {
                if let Some(st) = stage.mark_deleted() {
                    self.uploader.abort_streaming(st);
                }
                drop(stage.upload_lock.lock().await);
            }
        }
        let (stage, remote, headers) = {
            let mut table = self.inodes.lock().unwrap();
            let stage = table.stage(ino);
            let inode = table.get_mut(ino).ok_or(FsError::NotFound)?;
            // A rename changes the file's ctime; the copy carries it when the metadata
            // is known whole (otherwise the copy keeps what the object has).
            inode.attr.ctime = now();
            let headers = inode
                .meta_known
                .then(|| Self::headers_of(&inode.attr, &inode.extras, true));
            (stage, inode.remote.clone(), headers)
        };
        let _upload_guard = match &stage {
            Some(stage) => Some(stage.upload_lock.lock().await),
            None => None,
        };
        match (&stage, &remote) {
            (Some(stage), _) if stage.is_dirty() => {
                // The stage holds the newest content and goes to the new key at its next
                // upload; the old object must not outlive the rename.
                stage.fill(&*self.store).await?;
                if let Some(st) = stage.take_streaming() {
                    self.uploader.abort_streaming(st);
                }
                if remote.is_some() {
                    self.store.delete(&old_key).await?;
                }
            }
            (_, Some(remote)) => {
                self.store
                    .copy(
                        &old_key,
                        &new_key,
                        remote.size,
                        headers.as_ref(),
                        Some(&remote.etag),
                    )
                    .await
                    .map_err(|e| match e {
                        StoreError::PreconditionFailed => FsError::Stale,
                        e => e.into(),
                    })?;
                self.store.delete(&old_key).await?;
            }
            (_, None) => {
                let meta = self.store.head(&old_key).await?;
                self.store
                    .copy(&old_key, &new_key, meta.size, None, None)
                    .await?;
                self.store.delete(&old_key).await?;
            }
        }
        self.cache.invalidate(&old_key);
        self.cache.invalidate(&new_key);
        // Nobody will close a dirty stage that no writer holds: it must be uploaded
        // under the new name once the rename is recorded.
        let upload_now = stage.as_ref().is_some_and(|s| s.is_dirty()) && !self.has_writer(ino);
        drop(_upload_guard);
        Ok(upload_now)
    }

    /// Moves every key under the old directory prefix to the new one, each by copy then
    /// delete, so a failure part way leaves each file in its old or its new place.
    async fn rename_dir(&self, old_path: &str, new_path: &str, replace: bool) -> FsResult<()> {
        let old_prefix = self.layout.dir_prefix(old_path);
        let new_prefix = self.layout.dir_prefix(new_path);
        if replace {
            self.store.delete(&new_prefix).await?;
        }
        let (old_prefix, new_prefix) = (&old_prefix, &new_prefix);
        let mut token = None;
        let mut moved_marker = false;
        loop {
            let page = self
                .store
                .list_page(old_prefix, false, token.take(), None)
                .await?;
            let moves = futures::stream::iter(page.objects.into_iter().map(|o| {
                let to = format!("{new_prefix}{}", &o.key[old_prefix.len()..]);
                async move {
                    self.store.copy(&o.key, &to, o.size, None, None).await?;
                    self.store.delete(&o.key).await?;
                    self.cache.invalidate(&o.key);
                    Ok::<bool, FsError>(o.key == *old_prefix)
                }
            }))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
            for m in moves {
                moved_marker |= m?;
            }
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        if !moved_marker {
            // Keep the directory itself, even if it existed only as a prefix.
            let headers = Self::headers_of(&self.default_dir_attr(now()), &Extras::default(), true);
            self.store.put(new_prefix, Bytes::new(), &headers).await?;
        }
        Ok(())
    }

    // ---- whole file system ----------------------------------------------------------

    /// Stops new writers and uploads every stage that S3 does not have yet. Returns the
    /// number of files that could not be uploaded (they stay staged).
    pub async fn shutdown(&self) -> usize {
        self.closing.store(true, Ordering::Relaxed);
        let dirty = self.inodes.lock().unwrap().dirty_stages();
        let mut failed = 0;
        for (ino, _) in dirty {
            if self.sync(ino).await.is_err() {
                failed += 1;
            }
        }
        // Staged files S3 now has are of no further use (the mount is going away, so
        // handles still listed will not be used again).
        let staged = self.inodes.lock().unwrap().staged();
        for (ino, stage) in staged {
            if !stage.is_dirty() || stage.broken().is_some() {
                self.inodes.lock().unwrap().set_stage(ino, None);
                stage.discard();
            }
        }
        failed
    }

    pub fn dirty_count(&self) -> usize {
        self.inodes.lock().unwrap().dirty_stages().len()
    }

    /// Forgets listed entries the kernel never looked up, once stale.
    pub fn sweep_inodes(&self) {
        self.inodes.lock().unwrap().sweep();
    }

    /// Starts the background work: the write-back upload queue, retries of failed
    /// uploads and the sweep of stale inodes. Call once, inside the runtime.
    pub fn start_background(self: &Arc<Self>) {
        let mut rx = self
            .pending_rx
            .lock()
            .unwrap()
            .take()
            .expect("background work starts once");
        let fs = self.clone();
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(BACKGROUND_UPLOADS));
            while let Some(ino) = rx.recv().await {
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                let fs = fs.clone();
                tokio::spawn(async move {
                    fs.upload_in_background(ino).await;
                    drop(permit);
                });
            }
        });
        let fs = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_INTERVAL).await;
                fs.retry_failed_uploads().await;
                fs.sweep_inodes();
            }
        });
    }

    /// Uploads a committed file, retrying with backoff until S3 has it or it is gone.
    async fn upload_in_background(&self, ino: u64) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.sync(ino).await {
                Ok(()) => {
                    self.drop_clean_stage(ino);
                    return;
                }
                Err(e) => {
                    let pending = self
                        .inodes
                        .lock()
                        .unwrap()
                        .stage(ino)
                        .is_some_and(|s| s.is_dirty());
                    if !pending {
                        return;
                    }
                    log::warn!("background upload failed ({e}); next try in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Before serving: uploads every file an earlier run committed (its close or
    /// fsync returned), aborts the multipart uploads it left, and moves the data of
    /// files whose close never returned to `orphaned/` in the cache dir.
    pub async fn recover(&self) -> Recovery {
        let mut report = Recovery::default();
        for path in self.stages.leftovers() {
            let record = journal::read(&path);
            if let Ok(Some(id)) = record.as_ref().map(|r| r.upload_id.clone()) {
                let key = &record.as_ref().expect("checked").key;
                match self.store.abort_multipart(key, &UploadId(id)).await {
                    Ok(()) => report.aborted += 1,
                    Err(e) => log::debug!("abort of an earlier upload of {key}: {e}"),
                }
            }
            match record {
                Ok(r) if r.state == journal::State::Committed => {
                    match self.recover_committed(&path, &r).await {
                        Ok(size) => {
                            log::info!("recovered {} ({size} bytes) from the cache dir", r.key);
                            report.uploaded += 1;
                            report.bytes += size;
                        }
                        Err(e) => {
                            log::error!(
                                "could not upload {} from the cache dir ({e}); it stays in {}",
                                r.key,
                                path.display()
                            );
                            report.failed += 1;
                        }
                    }
                }
                _ => {
                    let aside = self.cfg.cache_dir.join("orphaned");
                    let moved = std::fs::create_dir_all(&aside).and_then(|()| {
                        std::fs::rename(&path, aside.join(path.file_name().unwrap_or_default()))
                    });
                    match moved {
                        Ok(()) => report.orphaned += 1,
                        Err(e) => log::warn!("could not move {} aside: {e}", path.display()),
                    }
                    let _ = journal::remove(&path);
                }
            }
        }
        report
    }

    async fn recover_committed(
        &self,
        path: &std::path::Path,
        r: &journal::Record,
    ) -> FsResult<u64> {
        let stage = Arc::new(self.stages.adopt(path)?);
        if stage.size() != r.size {
            log::warn!(
                "{}: the journal says {} bytes, the cache dir has {}; uploading what is there",
                r.key,
                r.size,
                stage.size()
            );
        }
        let headers = if r.meta.is_empty() {
            // A record of an earlier version, with the attributes in fields of their own.
            let mtime = std::time::UNIX_EPOCH + Duration::from_secs(r.mtime);
            layout::object_headers(
                &layout::PosixMeta {
                    mode: libc::S_IFREG | (r.mode & 0o7777),
                    uid: r.uid,
                    gid: r.gid,
                    atime: mtime,
                    mtime,
                    ctime: mtime,
                    rdev: 0,
                    xattrs: Default::default(),
                },
                true,
            )
        } else {
            ObjectHeaders {
                user_meta: r.meta.clone(),
                content_type: Some("application/octet-stream".into()),
            }
        };
        let (_, size, _) = self.uploader.upload(&stage, &r.key, &headers).await?;
        stage.discard();
        Ok(size)
    }

    /// Retries the uploads of stages nobody has open (their close already got EIO).
    pub async fn retry_failed_uploads(&self) {
        let dirty = self.inodes.lock().unwrap().dirty_stages();
        for (ino, _) in dirty {
            let idle = self
                .inodes
                .lock()
                .unwrap()
                .get(ino)
                .is_some_and(|i| i.open_handles == 0);
            if idle && self.sync(ino).await.is_ok() {
                log::info!("a staged file that had failed to upload is now in S3");
                self.drop_clean_stage(ino);
            }
        }
    }

    // ---- for the directory stream ---------------------------------------------------

    fn store(&self) -> &S {
        &self.store
    }

    fn store_arc(&self) -> Arc<S> {
        self.store.clone()
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }
}

fn record_attrs(headers: &ObjectHeaders) -> RecordAttrs {
    RecordAttrs {
        meta: headers.user_meta.clone(),
    }
}
