//! A cursor over one open directory: `.`, `..`, files staged here but not uploaded yet,
//! then the keys and common prefixes of ListObjectsV2 pages, requested ahead by a
//! [`Pager`] while the kernel takes them, so a directory of any size streams through
//! bounded memory as fast as S3 lists. Entry `i` carries cookie `i + 1`. The cursor
//! knows names, not attributes: the core turns what it yields into entries and hands the
//! batch back with [`DirCursor::remember`], so the kernel can resume inside the last
//! batch.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::DirEntry;
use super::hidden::warn_hidden;
use super::inodes::Remote;
use super::pager::{Paged, Pager, SPAN, Spans};
use crate::error::{FsError, FsResult};
use crate::layout::Layout;
use crate::shared_index::Pass;
use crate::store::{ListPage, ObjectStore};

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
/// and leaving out (with a warning) keys whose names cannot be paths; a directory wins
/// over a file of the same name (as in lookup), and the file is left out.
pub(super) fn page_entries(
    layout: &Layout,
    prefix: &str,
    page: &ListPage,
) -> Vec<(String, Listed)> {
    let shown = |key| shown_name(layout, prefix, key);
    let dirs: HashSet<&str> = page.prefixes.iter().filter_map(|p| shown(p)).collect();
    let mut entries: Vec<(String, Listed)> = page
        .objects
        .iter()
        .filter(|o| !o.key.ends_with('/'))
        .filter_map(|o| {
            let name = shown(&o.key)?;
            if dirs.contains(name) {
                warn_hidden(&o.key, "a directory of the same name hides it");
                return None;
            }
            Some((
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
            ))
        })
        .collect();
    entries.extend(dirs.into_iter().map(|d| (d.to_string(), Listed::Dir)));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// The name under which `key` is shown in the directory `prefix`, if it is a child
/// that can be shown; a child that cannot is warned about (the reserved shared index
/// name is left out silently).
fn shown_name<'k>(layout: &Layout, prefix: &str, key: &'k str) -> Option<&'k str> {
    match layout.child_name(prefix, key)? {
        Ok(name) if layout.is_reserved(prefix, name) => None,
        Ok(name) => Some(name),
        Err(why) => {
            warn_hidden(key, why);
            None
        }
    }
}

/// One name a cursor yields.
pub(super) enum Raw {
    /// `.`, `..` or a file staged here: the inode is known.
    Known(String, u64),
    /// A name from a listing page, and when that page was asked for.
    Listed(String, Listed, Instant),
}

pub(super) struct DirCursor<S> {
    store: Arc<S>,
    layout: Layout,
    ino: u64,
    parent: u64,
    prefix: String,
    local: Vec<(String, u64)>,
    local_names: HashSet<String>,
    exhausted: bool,
    /// Names of the pages fetched, not yet yielded, with when their page was asked for.
    pending: VecDeque<(String, Listed, Instant)>,
    /// Names of the previous and current page: a `name/` prefix that sorts after them on
    /// the same or the next page must not list `name` twice.
    recent_names: [HashSet<String>; 2],
    next_index: u64,
    last_batch: Vec<DirEntry>,
    last_batch_start: u64,
    /// Inodes the core pinned in its table for `last_batch` (released by the core).
    pinned: Vec<u64>,
    /// When the first page of this pass was asked for.
    started: Instant,
    pages: u32,
    /// The pages of this pass, requested ahead (None before the first page and after
    /// the last).
    pager: Option<Pager>,
    /// Where the directory's last whole listing was cut into spans, and the book that
    /// keeps what this pass finds.
    bounds: Arc<[String]>,
    spans: Arc<Spans>,
    /// What this pass learned for the shared metadata index (kept by the core).
    pub(super) shared: Pass,
}

impl<S: ObjectStore> DirCursor<S> {
    pub fn new(
        store: Arc<S>,
        layout: Layout,
        (ino, parent): (u64, u64),
        prefix: String,
        local: Vec<(String, u64)>,
        spans: Arc<Spans>,
    ) -> DirCursor<S> {
        let bounds = spans.get(&prefix);
        let local_names = local.iter().map(|(n, _)| n.clone()).collect();
        DirCursor {
            store,
            layout,
            ino,
            parent,
            prefix,
            local,
            local_names,
            exhausted: false,
            pending: VecDeque::new(),
            recent_names: [HashSet::new(), HashSet::new()],
            next_index: 0,
            last_batch: Vec::new(),
            last_batch_start: 0,
            pinned: Vec::new(),
            started: Instant::now(),
            pages: 0,
            pager: None,
            bounds,
            spans,
            shared: Pass::default(),
        }
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The key prefix listed (the directory's children's).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cookie of the next entry the cursor yields.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// When this pass asked for its first page (attributes it yields date from then).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// A whole pass is done: every child was yielded. `Some(more than one page)`.
    pub fn finished_pass(&self) -> Option<bool> {
        (self.exhausted && self.pending.is_empty() && self.pages > 0).then_some(self.pages > 1)
    }

    /// Forgets the position (after a batch that could not be handed out): the next read
    /// lists from the start and skips to the cookie it is asked for.
    pub fn rewind(&mut self) {
        self.restart();
    }

    fn restart(&mut self) {
        self.exhausted = false;
        self.pending.clear();
        self.recent_names = [HashSet::new(), HashSet::new()];
        self.next_index = 0;
        self.last_batch.clear();
        self.last_batch_start = 0;
        self.pages = 0;
        self.shared = Pass::default();
        self.pager = None;
    }

    /// Positions the cursor for a read from cookie `offset`: the entries of the last
    /// batch after `offset` if the kernel resumes inside it (Some), else None. The
    /// cursor restarts if `offset` lies before that batch (or is 0: rewinddir); the
    /// caller skips forward if it lies beyond what was yielded.
    pub fn replay(&mut self, offset: u64) -> Option<Vec<DirEntry>> {
        if offset < self.last_batch_start || (offset == 0 && self.next_index > 0) {
            self.restart();
            return None;
        }
        if offset >= self.next_index {
            return None;
        }
        // Entries found gone while the batch was completed were left out, so the
        // cookies of a batch need not be contiguous; when those after `offset` all went,
        // the listing goes on after the batch (an empty answer would end it).
        let rest: Vec<DirEntry> = self
            .last_batch
            .iter()
            .filter(|e| e.offset > offset)
            .cloned()
            .collect();
        (!rest.is_empty()).then_some(rest)
    }

    /// Keeps `batch` (which started at cookie `start`) for [`DirCursor::replay`], with
    /// the inodes pinned for it; returns the pins of the batch it replaces.
    pub fn remember(&mut self, start: u64, batch: &[DirEntry], pinned: Vec<u64>) -> Vec<u64> {
        self.last_batch = batch.to_vec();
        self.last_batch_start = start;
        std::mem::replace(&mut self.pinned, pinned)
    }

    /// The pins of the last batch, which the cursor no longer holds (it is closed).
    pub fn take_pinned(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.pinned)
    }

    /// Up to `max` more names, in cookie order; empty at the end of the directory.
    pub async fn next_names(&mut self, max: usize) -> FsResult<Vec<(u64, Raw)>> {
        let mut names = Vec::new();
        while names.len() < max {
            let index = self.next_index;
            let known = match index {
                0 => Some((".".to_string(), self.ino)),
                1 => Some(("..".to_string(), self.parent)),
                i => self.local.get((i - 2) as usize).cloned(),
            };
            let raw = match known {
                Some((name, ino)) => Raw::Known(name, ino),
                None => match self.pending.pop_front() {
                    Some((name, listed, asked_at)) => Raw::Listed(name, listed, asked_at),
                    None if self.exhausted => break,
                    None => {
                        self.fetch_page().await?;
                        continue;
                    }
                },
            };
            self.next_index += 1;
            names.push((self.next_index, raw));
        }
        Ok(names)
    }

    async fn fetch_page(&mut self) -> FsResult<()> {
        let pager = match &mut self.pager {
            Some(pager) => pager,
            None => {
                if self.bounds.is_empty()
                    && let Some(prefetch) = self.shared.take_prefetch()
                {
                    // Another host's listing of the directory: its files say where to
                    // cut this one (worth waiting for, the listing needs it anyway).
                    let index = prefetch.answer().await;
                    if let Some(index) = &index {
                        self.bounds = index.cuts(&self.prefix, SPAN).into();
                    }
                    self.shared.set_loaded(index);
                }
                self.started = Instant::now();
                let (store, prefix) = (self.store.clone(), self.prefix.clone());
                let pager = Pager::start(store, prefix, self.bounds.clone(), self.spans.clone());
                self.pager.insert(pager)
            }
        };
        let received = pager.pages.recv().await;
        let Paged {
            page,
            asked_at,
            last,
        } = match received {
            Some(Ok(paged)) => paged,
            Some(Err(e)) => {
                self.pager = None;
                return Err(e.into());
            }
            None => {
                self.pager = None;
                return Err(FsError::Io("the listing task ended early".into()));
            }
        };
        self.pages += 1;
        self.exhausted = last;
        if self.exhausted {
            self.pager = None;
        }
        self.take_page(page, asked_at);
        Ok(())
    }

    /// Queues a page's entries, skipping names staged locally, and directories whose
    /// name the previous page listed (as a file, or as a directory: a span of a parallel
    /// listing may repeat the last directory of the span before).
    fn take_page(&mut self, page: ListPage, asked_at: Instant) {
        self.recent_names.swap(0, 1);
        self.recent_names[1].clear();
        for (name, listed) in page_entries(&self.layout, &self.prefix, &page) {
            if self.local_names.contains(&name) {
                continue;
            }
            match listed {
                Listed::Dir if self.recent_names[0].contains(&name) => continue,
                _ => {
                    self.recent_names[1].insert(name.clone());
                }
            }
            self.pending.push_back((name, listed, asked_at));
        }
    }
}
