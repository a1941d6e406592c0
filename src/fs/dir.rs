//! Listing one open directory: `.`, `..`, files staged here but not uploaded yet, then
//! the keys and common prefixes of ListObjectsV2 pages, fetched one page at a time so
//! a directory of any size streams through bounded memory. Entry `i` carries cookie
//! `i + 1`; the last batch is kept so the kernel can resume inside it.

use std::collections::{HashSet, VecDeque};
use std::time::SystemTime;

use std::time::Instant;

use super::inodes::Remote;
use tokio::task::JoinHandle;

use super::{DirEntry, FsError, FsResult, S3Fs};
use crate::layout::Layout;
use crate::store::{ListPage, ObjectStore, StoreResult};

/// Entries handed out per call; the kernel takes what fits in its buffer.
const BATCH: usize = 256;

/// What a listing says about one name.
pub(super) enum Listed {
    File {
        size: u64,
        remote: Remote,
        mtime: SystemTime,
    },
    Dir,
}

/// A page's entries under `prefix` in name order, skipping the directory's own marker
/// and unusable names; a directory wins over a file of the same name (as in lookup).
pub(super) fn page_entries(
    layout: &Layout,
    prefix: &str,
    page: &ListPage,
) -> Vec<(String, Listed)> {
    let dirs: HashSet<&str> = page
        .prefixes
        .iter()
        .filter_map(|p| layout.child_name(prefix, p))
        .collect();
    let mut entries: Vec<(String, Listed)> = page
        .objects
        .iter()
        .filter(|o| !o.key.ends_with('/'))
        .filter_map(|o| {
            let name = layout.child_name(prefix, &o.key)?;
            (!dirs.contains(name)).then(|| {
                (
                    name.to_string(),
                    Listed::File {
                        size: o.size,
                        remote: Remote {
                            etag: o.etag.clone(),
                            size: o.size,
                            modified: Some(o.last_modified),
                        },
                        mtime: o.last_modified,
                    },
                )
            })
        })
        .collect();
    entries.extend(dirs.into_iter().map(|d| (d.to_string(), Listed::Dir)));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
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
    /// Attributes from this pass are valid until then (first page time + TTL).
    until: Instant,
    pages: u32,
    /// The next page, already requested.
    next_page: Option<JoinHandle<StoreResult<ListPage>>>,
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
            until: Instant::now(),
            pages: 0,
            next_page: None,
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
        self.pages = 0;
        if let Some(prefetch) = self.next_page.take() {
            prefetch.abort();
        }
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
                        if self.pages > 0 {
                            // A whole pass: every child is in the table until `until`.
                            let mut table = fs.inodes.lock().unwrap();
                            table.mark_listed(self.ino, self.until, self.pages > 1);
                        }
                        break;
                    }
                    if self.pages == 0 {
                        self.until = fs.valid_until();
                    }
                    let page = match self.next_page.take() {
                        Some(prefetch) => prefetch
                            .await
                            .map_err(|e| FsError::Io(format!("listing task: {e}")))??,
                        None => {
                            fs.store()
                                .list_page(&self.prefix, true, self.token.take(), None)
                                .await?
                        }
                    };
                    self.pages += 1;
                    self.token = page.next_token.clone();
                    self.exhausted = self.token.is_none();
                    if let Some(token) = self.token.take() {
                        // Fetch the next page while the kernel takes this one.
                        let (store, prefix) = (fs.store_arc(), self.prefix.clone());
                        self.next_page = Some(tokio::spawn(async move {
                            store.list_page(&prefix, true, Some(token), None).await
                        }));
                    }
                    self.take_page(fs, page);
                    continue;
                }
                let (name, listed) = self.pending.pop_front().expect("not empty");
                let attr = {
                    let mut table = fs.inodes.lock().unwrap();
                    let ino = fs.upsert_listed(&mut table, self.ino, &name, &listed, self.until);
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
        fs.complete_meta(&mut batch).await?;
        self.last_batch = batch.clone();
        self.last_batch_start = start;
        Ok(batch)
    }

    /// Queues a page's entries, skipping names staged locally, and directories whose
    /// name the previous page listed as a file.
    fn take_page<S: ObjectStore>(&mut self, fs: &S3Fs<S>, page: ListPage) {
        self.recent_files.swap(0, 1);
        self.recent_files[1].clear();
        for (name, listed) in page_entries(fs.layout(), &self.prefix, &page) {
            if self.local_names.contains(&name) {
                continue;
            }
            match listed {
                Listed::Dir if self.recent_files[0].contains(&name) => continue,
                Listed::File { .. } => {
                    self.recent_files[1].insert(name.clone());
                }
                Listed::Dir => {}
            }
            self.pending.push_back((name, listed));
        }
    }
}
