//! Reading directories: opendir makes a [`DirCursor`], readdir turns the names it yields
//! into entries with attributes (recorded in the inode table, completed by HEADs unless
//! `--fast-listing`), and a whole pass marks the directory's listing complete.

use super::dir::{DirCursor, Raw};
use super::handles::Handle;
use super::{DirEntry, FsError, FsResult, ROOT, S3Fs};
use crate::store::ObjectStore;

/// Entries handed out per call; the kernel takes what fits in its buffer.
const BATCH: usize = 256;

impl<S: ObjectStore> S3Fs<S> {
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let (path, parent, local) = {
            let table = self.inodes.lock().unwrap();
            let path = self.dir_path(&table, ino)?;
            let parent = table.get(ino).map_or(ROOT, |i| i.parent);
            (path, parent, table.local_only_children(ino))
        };
        let cursor = DirCursor::new(
            self.store.clone(),
            self.layout.clone(),
            (ino, parent),
            self.layout.dir_prefix(&path),
            local,
        );
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
            let skip = (offset - cursor.next_index()) as usize;
            let names = cursor.next_names(skip).await?;
            if names.is_empty() {
                return Ok(Vec::new());
            }
            self.entries_of(&cursor, names);
        }
        let start = cursor.next_index();
        let names = cursor.next_names(BATCH).await?;
        let mut batch = self.entries_of(&cursor, names);
        if let Some(paged) = cursor.finished_pass() {
            let until = cursor.started() + self.cfg.metadata_ttl;
            self.inodes
                .lock()
                .unwrap()
                .mark_listed(cursor.ino(), until, paged);
        }
        self.complete_meta(&mut batch).await?;
        cursor.remember(start, &batch);
        Ok(batch)
    }

    /// The entries of names a cursor yielded, recorded in the inode table.
    fn entries_of(&self, cursor: &DirCursor<S>, names: Vec<(u64, Raw)>) -> Vec<DirEntry> {
        let until = cursor.started() + self.cfg.metadata_ttl;
        let mut table = self.inodes.lock().unwrap();
        names
            .into_iter()
            .filter_map(|(offset, raw)| {
                let (name, ino) = match raw {
                    Raw::Known(name, ino) => (name, ino),
                    Raw::Listed(name, listed, asked_at) => {
                        let at = (cursor.ino(), name.as_str());
                        let ino = self.upsert_listed(&mut table, at, &listed, (until, asked_at));
                        (name, ino)
                    }
                };
                // (A staged file may be gone meanwhile.)
                let attr = Self::current_attr(&table, ino)?;
                Some(DirEntry { name, attr, offset })
            })
            .collect()
    }

    pub fn releasedir(&self, fh: u64) {
        let _ = self.handles.remove(fh);
    }
}
