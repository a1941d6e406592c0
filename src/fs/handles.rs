//! The open-handle table: file handle number → what it reads from or writes to. A file
//! handle knows its inode, whether it may write, and (for a reader of an object in S3)
//! the object version it reads; a directory handle holds its listing cursor. Numbers
//! are never reused while the mount lives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::dir::DirCursor;
use crate::error::{FsError, FsResult};
use crate::read::Reader;

pub(super) struct FileHandle<S> {
    pub ino: u64,
    pub writable: bool,
    /// The version of the object at open, for handles that read from S3.
    pub reader: Option<Reader<S>>,
    /// The inode's content version at open: while it is unchanged, a reader whose object
    /// moved (a rename) or got a new ETag (a metadata copy) may follow it.
    pub content_version: u32,
    /// Opened by the kernel to execute the file.
    pub exec: bool,
}

pub(super) enum Handle<S> {
    File(FileHandle<S>),
    Dir(Box<tokio::sync::Mutex<DirCursor<S>>>),
}

pub(super) struct HandleTable<S> {
    handles: Mutex<HashMap<u64, Arc<Handle<S>>>>,
    next_fh: AtomicU64,
}

impl<S> HandleTable<S> {
    pub fn new() -> HandleTable<S> {
        HandleTable {
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn add(&self, handle: Handle<S>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, Arc::new(handle));
        fh
    }

    pub fn get(&self, fh: u64) -> FsResult<Arc<Handle<S>>> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub fn remove(&self, fh: u64) -> FsResult<Arc<Handle<S>>> {
        self.handles
            .lock()
            .unwrap()
            .remove(&fh)
            .ok_or(FsError::BadHandle)
    }

    /// Puts `handle` in place of what `fh` holds, unless `fh` was released meanwhile
    /// (then it must not come back).
    pub fn replace(&self, fh: u64, handle: Arc<Handle<S>>) {
        if let Some(slot) = self.handles.lock().unwrap().get_mut(&fh) {
            *slot = handle;
        }
    }

    /// Is `ino` open to be executed?
    pub fn has_exec(&self, ino: u64) -> bool {
        self.handles
            .lock()
            .unwrap()
            .values()
            .any(|h| matches!(&**h, Handle::File(f) if f.ino == ino && f.exec))
    }

    /// Does any handle open on `ino` write?
    pub fn has_writer(&self, ino: u64) -> bool {
        self.handles
            .lock()
            .unwrap()
            .values()
            .any(|h| matches!(&**h, Handle::File(f) if f.ino == ino && f.writable))
    }
}
