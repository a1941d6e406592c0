//! The pages of one directory listing (ListObjectsV2 grouped by `/`), requested ahead of
//! the cursor that yields them.
//!
//! A directory listed for the first time is listed page after page, each request sent
//! as soon as the page before names its continuation. A whole pass records a boundary
//! every [`SPAN`] entries ([`Spans`], kept in memory and in the metadata index), and the
//! next pass over the directory — after the metadata TTL, a remount or a restart — lists
//! its spans in parallel, up to [`SPANS_AHEAD`] at once: span `i` starts after boundary
//! `i` (`StartAfter`) and goes on by continuation until it reaches boundary `i + 1`.
//! Ten pages then cost about one round trip instead of ten.
//!
//! Invariants:
//! - Pages reach the cursor in key order, the last one flagged, whatever the boundaries
//!   are: they decide where requests start, never what is listed. A span lists until it
//!   reaches its end (or the directory's), and entries past its end are left to the next
//!   span, so entries created or deleted since the boundaries were recorded only cost
//!   requests. A directory whose keys straddle a boundary may come from two adjacent
//!   spans; the cursor drops the second.
//! - Memory is bounded: at most [`SPANS_AHEAD`] spans run, each holding one page ready.
//! - A boundary is the position of an entry in key order: a file's key, or a directory's
//!   prefix followed by the highest character (past every key under it).

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lru::LruCache;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::meta_index::MetaIndex;
use crate::store::{ListPage, ObjectStore, StoreError, StoreResult};

/// Entries between two boundaries. A page holds up to 1000, so a span still fits one
/// page after 100 entries were added to it.
pub const SPAN: usize = 900;
/// Entries a page holds at most (S3's limit).
const PAGE: i32 = 1000;
/// Spans listed at once.
const SPANS_AHEAD: usize = 8;
/// Directories whose boundaries are kept in memory (the metadata index keeps more).
const BOOK: usize = 1024;
/// Boundaries kept for one directory at most (its first 9 million entries).
const MAX_BOUNDS: usize = 10_000;

/// One page for the cursor.
pub struct Paged {
    pub page: ListPage,
    /// When the page was asked for (what it says dates from then).
    pub asked_at: Instant,
    /// The last page of the pass.
    pub last: bool,
}

/// The boundaries of directories listed before, by key prefix. Cheap to share.
pub struct Spans {
    book: Mutex<LruCache<String, Arc<[String]>>>,
    index: MetaIndex,
}

impl Spans {
    pub fn new(index: MetaIndex) -> Spans {
        Spans {
            book: Mutex::new(LruCache::new(NonZeroUsize::new(BOOK).unwrap())),
            index,
        }
    }

    /// The boundaries recorded for `prefix` (none for a small or unknown directory).
    pub fn get(&self, prefix: &str) -> Arc<[String]> {
        if let Some(bounds) = self.book.lock().unwrap().get(prefix) {
            return bounds.clone();
        }
        let bounds: Arc<[String]> = self.index.spans(prefix).unwrap_or_default().into();
        if !bounds.is_empty() {
            self.book
                .lock()
                .unwrap()
                .put(prefix.to_string(), bounds.clone());
        }
        bounds
    }

    /// Records the boundaries a whole pass over `prefix` found, unless they are those
    /// known already.
    fn record(&self, prefix: &str, bounds: Vec<String>) {
        let mut book = self.book.lock().unwrap();
        if book
            .peek(prefix)
            .map_or(bounds.is_empty(), |b| **b == *bounds)
        {
            return;
        }
        self.index.offer_spans(prefix, &bounds);
        match bounds.is_empty() {
            true => book.pop(prefix),
            false => book.put(prefix.to_string(), bounds.into()),
        };
    }
}

/// A task listing one directory (see the module's text); it stops at the end, at the
/// first error (handed on), or when the cursor drops it.
pub struct Pager {
    pub pages: mpsc::Receiver<StoreResult<Paged>>,
    task: JoinHandle<()>,
}

impl Pager {
    /// Lists `prefix`, cut at `bounds` (sorted; empty: page after page), and records the
    /// boundaries of the pass in `spans` once its last page is listed.
    pub fn start<S: ObjectStore>(
        store: Arc<S>,
        prefix: String,
        bounds: Arc<[String]>,
        spans: Arc<Spans>,
    ) -> Pager {
        let (tx, pages) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let count = bounds.len() + 1;
            let mut running = VecDeque::new();
            let mut started = 0;
            let mut marks = Marks::default();
            loop {
                while running.len() < SPANS_AHEAD && started < count {
                    let after = started.checked_sub(1).map(|i| bounds[i].clone());
                    let to = bounds.get(started).cloned();
                    running.push_back(Span::start(store.clone(), prefix.clone(), after, to));
                    started += 1;
                }
                let Some(mut span) = running.pop_front() else {
                    return;
                };
                let final_span = running.is_empty() && started == count;
                loop {
                    let (page, asked_at, done) = match span.pages.recv().await {
                        Some(Ok(paged)) => paged,
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        None => {
                            let ended = StoreError::Other("a listing task ended early".into());
                            let _ = tx.send(Err(ended)).await;
                            return;
                        }
                    };
                    let last = final_span && done;
                    if page.objects.is_empty() && page.prefixes.is_empty() && !last {
                        // (A span emptied since its cuts were recorded ends here.)
                        match done {
                            true => break,
                            false => continue,
                        }
                    }
                    marks.note(&page);
                    if last {
                        // Before the cursor can see the end: the pass's flush of the
                        // metadata index then writes the cuts too.
                        spans.record(&prefix, std::mem::take(&mut marks).finish());
                    }
                    let paged = Paged {
                        page,
                        asked_at,
                        last,
                    };
                    if tx.send(Ok(paged)).await.is_err() || last {
                        return;
                    }
                    if done {
                        break;
                    }
                }
            }
        });
        Pager { pages, task }
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One span's listing: pages, each with when it was asked for and whether it ends the
/// span.
struct Span {
    pages: mpsc::Receiver<StoreResult<(ListPage, Instant, bool)>>,
    task: JoinHandle<()>,
}

impl Span {
    /// Lists from after `after` (the directory's start if None) to `to` (its end).
    fn start<S: ObjectStore>(
        store: Arc<S>,
        prefix: String,
        after: Option<String>,
        to: Option<String>,
    ) -> Span {
        let (tx, pages) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let mut token = None;
            loop {
                let asked_at = Instant::now();
                let listed = match (&token, &after) {
                    (None, Some(after)) => store.list_page_after(&prefix, after, PAGE).await,
                    _ => store.list_page(&prefix, true, token.take(), None).await,
                };
                let mut page = match listed {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                token = page.next_token.take();
                if let Some(after) = &after {
                    cut_before(&mut page, after);
                }
                let done = match &to {
                    None => token.is_none(),
                    Some(to) => {
                        let reached = token.is_none() || reaches(&page, to);
                        cut_after(&mut page, to);
                        reached
                    }
                };
                if tx.send(Ok((page, asked_at, done))).await.is_err() || done {
                    return;
                }
            }
        });
        Span { pages, task }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `page` lists up to position `to` or past it.
fn reaches(page: &ListPage, to: &str) -> bool {
    let object = page.objects.last().is_some_and(|o| o.key.as_str() >= to);
    // A directory's position lies past every key under it.
    let dir = page
        .prefixes
        .last()
        .is_some_and(|p| p.as_str() >= to || to.starts_with(p.as_str()));
    object || dir
}

/// Leaves out the entries after position `to` (the next span's). A directory that
/// starts before `to` stays, even if `to` lies among its keys.
fn cut_after(page: &mut ListPage, to: &str) {
    page.objects.retain(|o| o.key.as_str() <= to);
    page.prefixes.retain(|p| p.as_str() <= to);
}

/// Leaves out the entries at or before position `after` (the span before's), should a
/// server answer with any. A directory whose keys reach past `after` stays.
fn cut_before(page: &mut ListPage, after: &str) {
    page.objects.retain(|o| o.key.as_str() > after);
    page.prefixes
        .retain(|p| p.as_str() > after || after.starts_with(p.as_str()));
}

/// The boundaries of a pass: every [`SPAN`]th entry's position.
#[derive(Default)]
struct Marks {
    seen: usize,
    bounds: Vec<String>,
    /// Whether the last entry seen is the last boundary.
    at_bound: bool,
}

impl Marks {
    fn note(&mut self, page: &ListPage) {
        let objects = page.objects.iter().map(|o| (o.key.as_str(), false));
        let dirs = page.prefixes.iter().map(|p| (p.as_str(), true));
        let mut entries: Vec<(&str, bool)> = objects.chain(dirs).collect();
        entries.sort_unstable();
        for (name, dir) in entries {
            self.seen += 1;
            self.at_bound = self.seen.is_multiple_of(SPAN) && self.bounds.len() < MAX_BOUNDS;
            if self.at_bound {
                self.bounds.push(match dir {
                    true => format!("{name}\u{10FFFF}"),
                    false => name.to_string(),
                });
            }
        }
    }

    /// The boundaries, without one at the very end (its span would be empty).
    fn finish(mut self) -> Vec<String> {
        if self.at_bound {
            self.bounds.pop();
        }
        self.bounds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ListedObject;
    use std::time::SystemTime;

    fn page(objects: &[&str], prefixes: &[&str]) -> ListPage {
        ListPage {
            objects: objects
                .iter()
                .map(|k| ListedObject {
                    key: k.to_string(),
                    size: 0,
                    etag: crate::store::ETag(String::new()),
                    last_modified: SystemTime::UNIX_EPOCH,
                })
                .collect(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            next_token: None,
        }
    }

    #[test]
    fn a_directory_reaches_every_position_among_its_keys() {
        let p = page(&["d/a"], &["d/b/"]);
        assert!(reaches(&p, "d/b/x"));
        assert!(reaches(&p, "d/b/"));
        assert!(reaches(&p, "d/a0"));
        assert!(!reaches(&p, "d/c"));
        let mut p = page(&["d/a", "d/c"], &["d/b/", "d/c/"]);
        cut_after(&mut p, "d/b/\u{10FFFF}");
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.prefixes, vec!["d/b/"]);
        // A server that ignored StartAfter: what the span before holds is left out.
        let mut p = page(&["d/a", "d/c"], &["d/b/", "d/c/"]);
        cut_before(&mut p, "d/b/\u{10FFFF}");
        assert_eq!(p.objects[0].key, "d/c");
        assert_eq!(
            p.prefixes,
            vec!["d/b/", "d/c/"],
            "d/b/ may hold keys past it"
        );
        let mut p = page(&["d/a"], &["d/b/"]);
        cut_before(&mut p, "d/c");
        assert!(p.objects.is_empty() && p.prefixes.is_empty());
    }

    #[test]
    fn marks_cut_every_span_and_not_at_the_end() {
        let names: Vec<String> = (0..SPAN * 2).map(|i| format!("d/f{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut marks = Marks::default();
        marks.note(&page(&refs[..SPAN + 10], &[]));
        marks.note(&page(&refs[SPAN + 10..], &[]));
        // The second boundary would be the last entry: its span would be empty.
        assert_eq!(marks.finish(), vec![names[SPAN - 1].clone()]);
        let mut marks = Marks::default();
        marks.note(&page(&refs[..SPAN - 1], &["d/g/"]));
        marks.note(&page(&["d/h"], &[]));
        assert_eq!(marks.finish(), vec!["d/g/\u{10FFFF}".to_string()]);
    }
}
