//! Listing one open directory: `.`, `..`, files staged here but not uploaded yet, then
//! the keys and common prefixes of ListObjectsV2 pages, fetched one page at a time so
//! a directory of any size streams through bounded memory. Entry `i` carries cookie
//! `i + 1`; the last batch is kept so the kernel can resume inside it.

use std::collections::{HashSet, VecDeque};
use std::time::SystemTime;

use super::inodes::Remote;
use super::{DirEntry, FsResult, S3Fs};
use crate::store::{ListPage, ObjectStore};

/// Entries handed out per call; the kernel takes what fits in its buffer.
const BATCH: usize = 256;

enum Listed {
    File {
        size: u64,
        remote: Remote,
        mtime: SystemTime,
    },
    Dir,
}

pub struct DirStream {
    ino: u64,
    parent: u64,
    prefix: String,
    local: Vec<(String, u64)>,
    local_names: HashSet<String>,
    token: Option<String>,
    exhausted: bool,
    pending: VecDeque<(String, Listed)>,
    /// File names of the previous and current page: a `name/` prefix that sorts after
    /// them on the same or the next page must not list `name` twice.
    recent_files: [HashSet<String>; 2],
    next_index: u64,
    last_batch: Vec<DirEntry>,
    last_batch_start: u64,
}

impl DirStream {
    pub fn new(ino: u64, parent: u64, prefix: String, local: Vec<(String, u64)>) -> DirStream {
        let local_names = local.iter().map(|(n, _)| n.clone()).collect();
        DirStream {
            ino,
            parent,
            prefix,
            local,
            local_names,
            token: None,
            exhausted: false,
            pending: VecDeque::new(),
            recent_files: [HashSet::new(), HashSet::new()],
            next_index: 0,
            last_batch: Vec::new(),
            last_batch_start: 0,
        }
    }

    fn restart(&mut self) {
        self.token = None;
        self.exhausted = false;
        self.pending.clear();
        self.recent_files = [HashSet::new(), HashSet::new()];
        self.next_index = 0;
        self.last_batch.clear();
        self.last_batch_start = 0;
    }

    pub async fn entries_from<S: ObjectStore>(
        &mut self,
        fs: &S3Fs<S>,
        offset: u64,
    ) -> FsResult<Vec<DirEntry>> {
        if offset < self.last_batch_start || (offset == 0 && self.next_index > 0) {
            self.restart();
        }
        if offset >= self.last_batch_start && offset < self.next_index {
            let skip = (offset - self.last_batch_start) as usize;
            return Ok(self.last_batch[skip..].to_vec());
        }
        // Skip forward (seekdir to a cookie we have not produced yet).
        while self.next_index < offset {
            let batch = self
                .next_batch(fs, (offset - self.next_index) as usize)
                .await?;
            if batch.is_empty() {
                return Ok(Vec::new());
            }
        }
        let batch = self.next_batch(fs, BATCH).await?;
        Ok(batch)
    }

    async fn next_batch<S: ObjectStore>(
        &mut self,
        fs: &S3Fs<S>,
        max: usize,
    ) -> FsResult<Vec<DirEntry>> {
        let start = self.next_index;
        let mut batch = Vec::new();
        while batch.len() < max {
            let index = self.next_index;
            let entry = match index {
                0 => Some((".".to_string(), self.ino)),
                1 => Some(("..".to_string(), self.parent)),
                i if ((i - 2) as usize) < self.local.len() => {
                    Some(self.local[(i - 2) as usize].clone())
                }
                _ => None,
            };
            let (name, attr) = if let Some((name, ino)) = entry {
                let table = fs.inodes.lock().unwrap();
                match S3Fs::<S>::current_attr(&table, ino) {
                    Some(attr) => (name, attr),
                    None => {
                        self.next_index += 1; // gone meanwhile
                        continue;
                    }
                }
            } else {
                if self.pending.is_empty() {
                    if self.exhausted {
                        break;
                    }
                    let page = fs
                        .store()
                        .list_page(&self.prefix, true, self.token.take(), None)
                        .await?;
                    self.token = page.next_token.clone();
                    self.exhausted = self.token.is_none();
                    self.take_page(fs, page);
                    continue;
                }
                let (name, listed) = self.pending.pop_front().expect("not empty");
                let attr = {
                    let mut table = fs.inodes.lock().unwrap();
                    let until = fs.valid_until();
                    let ino = match listed {
                        Listed::File {
                            size,
                            remote,
                            mtime,
                        } => table.upsert(
                            self.ino,
                            &name,
                            fs.file_attr(size, mtime),
                            Some(remote),
                            until,
                            false,
                        ),
                        Listed::Dir => table.upsert(
                            self.ino,
                            &name,
                            fs.default_dir_attr(SystemTime::now()),
                            None,
                            until,
                            false,
                        ),
                    };
                    S3Fs::<S>::current_attr(&table, ino).expect("just upserted")
                };
                (name, attr)
            };
            self.next_index += 1;
            batch.push(DirEntry {
                name,
                attr,
                offset: self.next_index,
            });
        }
        self.last_batch = batch.clone();
        self.last_batch_start = start;
        Ok(batch)
    }

    /// Queues a page's entries in name order, skipping the directory's own marker,
    /// unusable names, names staged locally, and files shadowed by a directory.
    fn take_page<S: ObjectStore>(&mut self, fs: &S3Fs<S>, page: ListPage) {
        self.recent_files.swap(0, 1);
        self.recent_files[1].clear();
        let layout = fs.layout();
        let dirs: HashSet<&str> = page
            .prefixes
            .iter()
            .filter_map(|p| layout.child_name(&self.prefix, p))
            .collect();
        let mut entries: Vec<(String, Listed)> = Vec::new();
        for o in &page.objects {
            let Some(name) = layout.child_name(&self.prefix, &o.key) else {
                continue;
            };
            if o.key.ends_with('/') || dirs.contains(name) || self.local_names.contains(name) {
                continue;
            }
            self.recent_files[1].insert(name.to_string());
            entries.push((
                name.to_string(),
                Listed::File {
                    size: o.size,
                    remote: Remote {
                        etag: o.etag.clone(),
                        size: o.size,
                    },
                    mtime: o.last_modified,
                },
            ));
        }
        for name in dirs {
            if self.local_names.contains(name) || self.recent_files[0].contains(name) {
                continue;
            }
            entries.push((name.to_string(), Listed::Dir));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.pending.extend(entries);
    }
}
