//! Reading directories: opendir makes a [`DirCursor`], readdir turns the names it yields
//! into entries with attributes (recorded in the inode table, completed by HEADs unless
//! `--fast-listing`), and a whole pass marks the directory's listing complete.

use super::dir::{DirCursor, Listed, Raw};
use super::handles::Handle;
use super::{DirEntry, FsError, FsResult, ROOT, S3Fs};
use crate::meta_index::Version;
use crate::store::ObjectStore;

/// Entries handed out per call; the kernel takes what fits in its buffer.
const BATCH: usize = 256;

impl<S: ObjectStore> S3Fs<S> {
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let (path, parent, local, listed_here) = {
            let table = self.inodes.lock().unwrap();
            let path = self.dir_path(&table, ino)?;
            let parent = table.get(ino).map_or(ROOT, |i| i.parent);
            let listed_here = table.get(ino).is_some_and(|i| i.listed_before());
            (path, parent, table.local_only_children(ino), listed_here)
        };
        let mut cursor = DirCursor::new(
            self.store.clone(),
            self.layout.clone(),
            (ino, parent),
            self.layout.dir_prefix(&path),
            local,
            self.spans.clone(),
        );
        self.prefetch_shared(&mut cursor, listed_here);
        Ok(self
            .handles
            .add(Handle::Dir(Box::new(tokio::sync::Mutex::new(cursor)))))
    }

    /// Entries of an open directory from cookie `offset` on (a batch; call again with
    /// the last entry's offset). Entries are known to the inode table afterwards, but
    /// their lookup counts are the caller's business ([`S3Fs::add_lookups`]).
    pub async fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let handle = self.handles.get(fh)?;
        let Handle::Dir(cursor) = &*handle else {
            return Err(FsError::NotDir);
        };
        let mut cursor = cursor.lock().await;
        if let Some(batch) = cursor.replay(offset) {
            return Ok(batch);
        }
        // Skip forward (seekdir to a cookie not produced yet): the names skipped are
        // recorded, since a whole pass vouches for every child.
        while cursor.next_index() < offset {
            let skip = usize::try_from(offset - cursor.next_index()).unwrap_or(usize::MAX);
            let names = match cursor.next_names(skip.min(BATCH)).await {
                Ok(names) => names,
                Err(e) => {
                    cursor.rewind();
                    return Err(e);
                }
            };
            if names.is_empty() {
                // Past the end. What was skipped is no batch to replay: a read from
                // inside it lists again.
                let next = cursor.next_index();
                let pinned = cursor.remember(next, &[], Vec::new());
                let mut table = self.inodes.lock().unwrap();
                pinned.into_iter().for_each(|ino| table.unpin(ino));
                return Ok(Vec::new());
            }
            self.entries_of(&mut cursor, names, false);
        }
        let start = cursor.next_index();
        let names = match cursor.next_names(BATCH).await {
            Ok(names) => names,
            Err(e) => {
                cursor.rewind();
                return Err(e);
            }
        };
        // Pinned from here on: the sweep must not drop an entry between this listing and
        // the kernel counting its lookup (it would find an inode number that is gone).
        let mut batch = self.entries_of(&mut cursor, names, true);
        let listed: Vec<u64> = batch.iter().map(|e| e.attr.ino).collect();
        let finished = cursor.finished_pass().is_some();
        if let Some(paged) = cursor.finished_pass() {
            let until = cursor.started() + self.cfg.metadata_ttl;
            self.inodes
                .lock()
                .unwrap()
                .mark_listed(cursor.ino(), until, paged);
        }
        if finished {
            self.note_finished_pass(&mut cursor);
        }
        let prefix = cursor.prefix().to_string();
        let completed = self
            .complete_meta(&mut batch, Some((&prefix, &mut cursor.shared)))
            .await;
        if finished {
            // What the pass offered to the local index and did not write yet.
            self.index.flush_behind();
        }
        if completed.is_ok() && finished {
            self.publish_shared(&mut cursor);
        }
        let mut table = self.inodes.lock().unwrap();
        let pinned = match completed {
            Ok(()) => {
                let pinned: Vec<u64> = batch.iter().map(|e| e.attr.ino).collect();
                pinned.iter().for_each(|ino| table.pin(*ino));
                cursor.remember(start, &batch, pinned)
            }
            Err(_) => {
                // The batch was not handed out: a read from the same cookie lists again.
                cursor.rewind();
                Vec::new()
            }
        };
        for ino in listed.into_iter().chain(pinned) {
            table.unpin(ino);
        }
        completed.map(|()| batch)
    }

    /// The entries of names a cursor yielded, recorded in the inode table (and pinned
    /// there if `pin`). A listed entry's attributes are fresh for the TTL from when its
    /// page was asked for. Listed files are noted in the cursor's pass for the shared
    /// metadata index.
    fn entries_of(
        &self,
        cursor: &mut DirCursor<S>,
        names: Vec<(u64, Raw)>,
        pin: bool,
    ) -> Vec<DirEntry> {
        let ttl = self.cfg.metadata_ttl;
        if self.cfg.shared_metadata_index {
            for (_, raw) in &names {
                if let Raw::Listed(name, Listed::File { remote, .. }, _) = raw
                    && let Some(modified) = remote.modified
                {
                    let version = Version {
                        etag: remote.etag.clone(),
                        size: remote.size,
                        modified,
                    };
                    cursor.shared.note_listed(name, version);
                }
            }
        }
        let mut table = self.inodes.lock().unwrap();
        names
            .into_iter()
            .filter_map(|(offset, raw)| {
                let (name, ino) = match raw {
                    Raw::Known(name, ino) => (name, ino),
                    Raw::Listed(name, listed, asked_at) => {
                        let at = (cursor.ino(), name.as_str());
                        let until = asked_at + ttl;
                        // (None: removed here after the page was asked for.)
                        let ino = self.upsert_listed(&mut table, at, &listed, (until, asked_at))?;
                        (name, ino)
                    }
                };
                // (A staged file may be gone meanwhile.)
                let attr = Self::current_attr(&table, ino)?;
                if pin {
                    table.pin(ino);
                }
                Some(DirEntry { name, attr, offset })
            })
            .collect()
    }

    pub fn releasedir(&self, fh: u64) {
        let Ok(handle) = self.handles.remove(fh) else {
            return;
        };
        if let Handle::Dir(cursor) = &*handle {
            // The kernel never releases a directory while reading it; if it did, the
            // pins of the last batch stay (a few entries kept, nothing wrong served).
            if let Ok(mut cursor) = cursor.try_lock() {
                let mut table = self.inodes.lock().unwrap();
                for ino in cursor.take_pinned() {
                    table.unpin(ino);
                }
            }
        }
    }
}
