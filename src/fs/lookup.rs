//! Name resolution: finding a name under a directory from the inode table while it is
//! fresh, by listing again a directory that a listing showed to be small (one request
//! answers its siblings too), or otherwise by a window listing from the name on
//! (`window.rs`): never a page from the start of a large directory.

use std::sync::Arc;
use std::time::Instant;

use super::dir::{self, Listed};
use super::inodes::{Found, InodeTable};
use super::{Attr, FsError, FsResult, ROOT, S3Fs, now};
use crate::layout::check_name;
use crate::store::ObjectStore;

/// A lookup miss in a directory known to be small lists up to this many pages (of 1000
/// names) instead of asking about the one name: it answers the lookups of all its
/// siblings too. One: a directory that grew meanwhile costs one page once, then windows.
const LOOKUP_LIST_PAGES: usize = 1;

impl<S: ObjectStore> S3Fs<S> {
    pub async fn lookup(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<Attr> {
        let name = check_name(name)?;
        let attr = match self.resolve(parent, name).await {
            Err(FsError::Store(e)) if e.is_unavailable() => self
                .dir_with_pending(parent, name)
                .ok_or(FsError::Store(e))?,
            resolved => resolved?,
        };
        self.inodes.lock().unwrap().add_lookup(attr.ino);
        Ok(attr)
    }

    /// What [`S3Fs::lookup`] would answer from the inode table alone, without waiting:
    /// Some when the table knows `name` (fresh, with its whole metadata, or staged here)
    /// or knows that it is missing; None when S3 must be asked. A lookup answered here
    /// is counted like one answered by [`S3Fs::lookup`].
    pub fn lookup_known(&self, parent: u64, name: &std::ffi::OsStr) -> Option<FsResult<Attr>> {
        let name = match check_name(name) {
            Ok(name) => name,
            Err(e) => return Some(Err(e.into())),
        };
        let mut table = self.inodes.lock().unwrap();
        if let Err(e) = self.dir_path(&table, parent) {
            return Some(Err(e));
        }
        let attr = match self.known_child(&mut table, parent, name) {
            Ok(Some(attr)) => attr,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let whole = table.get(attr.ino).is_some_and(|i| i.meta_known);
        if !whole && table.stage(attr.ino).is_none() {
            return None; // known from a listing only: its metadata is asked for
        }
        table.add_lookup(attr.ino);
        Some(Ok(attr))
    }

    /// What [`S3Fs::getattr`] would answer from the inode table alone (see
    /// [`S3Fs::lookup_known`]).
    pub fn getattr_known(&self, ino: u64) -> Option<FsResult<Attr>> {
        Self::known_attr(&self.inodes.lock().unwrap(), ino)
    }

    fn known_attr(table: &InodeTable, ino: u64) -> Option<FsResult<Attr>> {
        let Some(inode) = table.get(ino) else {
            return Some(Err(FsError::NotFound));
        };
        let fresh = inode.valid_until > Instant::now();
        let known = inode.detached
            || table.stage(ino).is_some()
            || (fresh && inode.meta_known)
            || ino == ROOT;
        known.then(|| Ok(Self::current_attr(table, ino).expect("present")))
    }

    /// The attributes the table has of directory `name` under `parent` if files below
    /// it hold data S3 does not have yet (a failed or queued upload). Such a directory
    /// exists for this mount whatever S3 says (read-your-writes): while S3 cannot
    /// answer, a lookup of it is answered from the table, so the kept data stays
    /// readable through the mount.
    pub(super) fn dir_with_pending(&self, parent: u64, name: &str) -> Option<Attr> {
        let table = self.inodes.lock().unwrap();
        let ino = table.child(parent, name)?;
        let is_dir = table.get(ino)?.attr.kind == super::Kind::Dir;
        if !is_dir || !table.holds_pending(ino) {
            return None;
        }
        Self::current_attr(&table, ino)
    }

    /// Records one entry of a listing of `parent`, asked for at `asked_at`, in the
    /// table.
    pub(super) fn upsert_listed(
        &self,
        table: &mut InodeTable,
        (parent, name): (u64, &str),
        listed: &Listed,
        (valid_until, asked_at): (Instant, Instant),
    ) -> Option<u64> {
        let (attr, remote) = match listed {
            Listed::File {
                size,
                remote,
                mtime,
            } => (self.file_attr(*size, *mtime), Some(remote.clone())),
            Listed::Dir => (self.default_dir_attr(now()), None),
        };
        let found = Found {
            attr,
            remote,
            extras: None,
            valid_until,
            asked_at,
        };
        table.upsert(parent, name, found)
    }

    /// Finds `name` under `parent` with its whole attributes (see [`S3Fs::find`] and
    /// [`S3Fs::ensure_meta`]).
    pub(super) async fn resolve(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let attr = self.find(parent, name).await?;
        self.complete_attr(attr.ino, true).await
    }

    /// Finds `name` under `parent`: from the table while its attributes are fresh (or
    /// it is staged here) or while the parent's listing is complete; otherwise by
    /// listing again a parent a listing showed to be small, in one request (which
    /// answers the lookups of its siblings too), or else by a window listing from the
    /// name on (`window.rs`). A directory wins over a file.
    pub(super) async fn find(&self, parent: u64, name: &str) -> FsResult<Attr> {
        if super::hidden::is_reserved(parent, name) {
            return Err(FsError::NotFound);
        }
        let (dir, small) = {
            let mut table = self.inodes.lock().unwrap();
            let dir = self.dir_path(&table, parent)?;
            if let Some(attr) = self.known_child(&mut table, parent, name)? {
                return Ok(attr);
            }
            (dir, table.get(parent).is_some_and(|p| p.listed_small()))
        };
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        self.layout.check_path(&path, false)?;
        if small && let Some(found) = self.find_by_listing(parent, &dir, name).await? {
            return found;
        }
        self.find_by_window(parent, &dir, name).await
    }

    /// Lists the small directory `dir` (inode `parent`) to answer for `name`; None if
    /// the directory turned out large (more than [`LOOKUP_LIST_PAGES`] pages) and the
    /// listing says nothing fresh about `name`.
    async fn find_by_listing(
        &self,
        parent: u64,
        dir: &str,
        name: &str,
    ) -> FsResult<Option<FsResult<Attr>>> {
        // One listing per directory at a time: lookups racing into the same
        // directory wait for it and are answered from it.
        let gate = self.listing_gate(parent);
        let _listing = gate.lock().await;
        {
            let mut table = self.inodes.lock().unwrap();
            if let Some(attr) = self.known_child(&mut table, parent, name)? {
                return Ok(Some(Ok(attr)));
            }
        }
        let prefix = self.layout.dir_prefix(dir);
        let asked_at = Instant::now();
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
                self.upsert_listed(&mut table, (parent, &child), &listed, (until, asked_at));
            }
        }
        if complete {
            table.mark_listed(parent, until, false);
            let known = self.known_child(&mut table, parent, name)?;
            return Ok(Some(known.ok_or(FsError::NotFound)));
        }
        table.mark_listed(parent, Instant::now(), true);
        let fresh = table.child(parent, name).filter(|ino| {
            table
                .get(*ino)
                .is_some_and(|i| i.valid_until > Instant::now())
        });
        Ok(fresh
            .and_then(|ino| Self::current_attr(&table, ino))
            .map(Ok))
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
        if table.listing_fresh(parent) || table.window_covers(parent, name) {
            // A complete listing (or a window holding the name) refreshed every child
            // (in its range); one it did not is gone.
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
            if let Some(known) = Self::known_attr(&table, ino) {
                return known;
            }
            table.get_mut(ino).expect("present").meta_known = false; // stale: ask again
        }
        let attr = match self.ensure_meta(ino).await {
            Err(FsError::Store(e)) if e.is_unavailable() => {
                // (See dir_with_pending: a directory holding unsent data exists here.)
                let table = self.inodes.lock().unwrap();
                let inode = table.get(ino).ok_or(FsError::NotFound)?;
                let pending = inode.attr.kind == super::Kind::Dir && table.holds_pending(ino);
                if !pending {
                    return Err(FsError::Store(e));
                }
                Self::current_attr(&table, ino).ok_or(FsError::NotFound)?
            }
            attr => attr?,
        };
        if attr.ino != ino {
            // The name now holds another kind of object than this inode.
            return Err(FsError::NotFound);
        }
        Ok(attr)
    }
}
