//! Lookups in a directory that is large or was never listed: one ListObjectsV2 of the
//! directory from the looked-up name on (`StartAfter`, grouped by `/`) says whether the
//! name is a file, a directory or missing, and records the siblings that follow it. A
//! walk in name order (`rm -rf`, or `ls -l` and `find` again after the metadata TTL)
//! then costs one request per window instead of one or two per name, and a lone lookup
//! costs a listing of a few keys, never a page from the start of the directory.
//! Windows grow (up to a page) while the lookups of a directory go forward and fall back
//! to the smallest size when they jump back.
//!
//! The range a window held is recorded with the directory: while it is fresh, a name in
//! it that the window did not show is missing without asking again (as a complete
//! listing answers for every name).
//!
//! Invariant: a name is answered only from a window whose range holds both its file key
//! and its directory prefix (`name` < `name.x` < `name/` in key order); otherwise a
//! one-key LIST of the prefix decides, as a directory wins over a file of the same name
//! (as in listings).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::dir::{self, Listed};
use super::inodes::{Found, Remote, Window};
use super::{Attr, FsError, FsResult, S3Fs};
use crate::store::{ListPage, ObjectMeta, ObjectStore, StoreError};

/// Entries a window asks for at first and at most (a LIST page holds 1000).
const MIN_WINDOW: i32 = 16;
const MAX_WINDOW: i32 = 1000;
/// A walk continues only if its next window follows this soon.
const WALK_PAUSE: Duration = Duration::from_secs(5);
/// Directories whose walk is remembered; the least recent is forgotten beyond.
const WALKS: usize = 256;

/// Where the last window of each directory started, for the size of the next one.
#[derive(Default)]
pub(super) struct Walks(Mutex<HashMap<u64, Walk>>);

struct Walk {
    from: String,
    size: i32,
    at: Instant,
}

impl Walks {
    /// The size of the window for `name` in directory `dir`: twice the last one if the
    /// directory's lookups go forward, else the smallest.
    fn next_size(&self, dir: u64, name: &str) -> i32 {
        let mut walks = self.0.lock().unwrap();
        let at = Instant::now();
        let size = match walks.get(&dir) {
            Some(w) if w.from.as_str() < name && at.duration_since(w.at) < WALK_PAUSE => {
                w.size.saturating_mul(2).min(MAX_WINDOW)
            }
            _ => MIN_WINDOW,
        };
        if walks.len() >= WALKS
            && !walks.contains_key(&dir)
            && let Some(oldest) = walks.iter().min_by_key(|(_, w)| w.at).map(|(d, _)| *d)
        {
            walks.remove(&oldest);
        }
        let from = name.to_string();
        walks.insert(dir, Walk { from, size, at });
        size
    }
}

/// The key after which a window for `file_key` starts: just before the key, so that the
/// window begins with the key itself. The last character is stepped back by one and
/// followed by the highest character (`name` → `namd\u{10FFFF}`), which no key between
/// that and the name itself can exceed in practice; where it cannot be stepped back (a
/// control character, or a surrogate below it) the key without its last character.
fn start_after(file_key: &str) -> String {
    let Some((cut, last)) = file_key.char_indices().last() else {
        return String::new();
    };
    let before = (last > ' ')
        .then(|| char::from_u32(last as u32 - 1))
        .flatten();
    match before {
        Some(c) => format!("{}{c}\u{10FFFF}", &file_key[..cut]),
        None => file_key[..cut].to_string(),
    }
}

/// What S3 says of the looked-up name.
enum Answer {
    Dir,
    /// A file, as the window lists it.
    Listed,
    /// A file the window did not reach, as HEAD describes it.
    Head(ObjectMeta),
    Missing,
}

/// Does `page` hold every entry up to `key` (in key order)? A page that is not cut
/// short holds every entry to the end of the directory.
fn reaches(page: &ListPage, key: &str) -> bool {
    if page.next_token.is_none() {
        return true;
    }
    let last_object = page.objects.last().map(|o| o.key.as_str());
    let last_prefix = page.prefixes.last().map(String::as_str);
    last_object.max(last_prefix).is_some_and(|last| last >= key)
}

impl<S: ObjectStore> S3Fs<S> {
    /// Finds `name` under directory `dir` (inode `parent`) with a window listing from
    /// the name on (see the module's text), recording every entry it shows.
    pub(super) async fn find_by_window(
        &self,
        parent: u64,
        dir: &str,
        name: &str,
    ) -> FsResult<Attr> {
        let path = match dir.is_empty() {
            true => name.to_string(),
            false => format!("{dir}/{name}"),
        };
        let prefix = self.layout.dir_prefix(dir);
        let file_key = self.layout.file_key(&path);
        let dir_key = self.layout.dir_prefix(&path);
        let size = self.walks.next_size(parent, name);
        let asked_at = Instant::now();
        let until = self.valid_until();
        let after = start_after(&file_key);
        let page = self.store.list_page_after(&prefix, &after, size).await?;
        let entries = dir::page_entries(&self.layout, &prefix, &page);
        let shown = entries
            .iter()
            .find(|(child, _)| child == name)
            .map(|(_, listed)| matches!(listed, Listed::Dir));
        let answer = match shown {
            Some(true) => Answer::Dir,
            // (The directory prefix sorts after the file key: the window held both.)
            _ if reaches(&page, &dir_key) => match shown {
                Some(_) => Answer::Listed,
                None => Answer::Missing,
            },
            _ => {
                // Ask about what the window did not reach: the directory (which wins),
                // and the file if the window ended before it too.
                let file_seen = reaches(&page, &file_key);
                let (below, head) = tokio::join!(
                    self.store.list_page(&dir_key, false, None, Some(1)),
                    async {
                        match file_seen {
                            true => None,
                            false => Some(self.store.head(&file_key).await),
                        }
                    }
                );
                let below = below?;
                match (below.objects.is_empty() && below.prefixes.is_empty(), head) {
                    (false, _) => Answer::Dir,
                    (true, None) if shown.is_some() => Answer::Listed,
                    (true, None) | (true, Some(Err(StoreError::NotFound))) => Answer::Missing,
                    (true, Some(Ok(meta))) => Answer::Head(meta),
                    (true, Some(Err(e))) => return Err(e.into()),
                }
            }
        };
        let mut table = self.inodes.lock().unwrap();
        // Names in the window's range that it did not show do not exist (for the TTL).
        let relative = |key: &str| key.strip_prefix(prefix.as_str()).map(str::to_string);
        let through = match page.next_token {
            None => Some(None),
            Some(_) => {
                let last_object = page.objects.last().map(|o| o.key.as_str());
                let last_prefix = page.prefixes.last().map(String::as_str);
                last_object.max(last_prefix).and_then(relative).map(Some)
            }
        };
        if let Some(through) = through {
            let after = relative(&after).unwrap_or_default();
            table.mark_window(
                parent,
                Window {
                    after,
                    through,
                    until,
                },
            );
        }
        for (child, listed) in &entries {
            if child != name {
                self.upsert_listed(&mut table, (parent, child), listed, (until, asked_at));
            }
        }
        let ino = match answer {
            Answer::Dir => {
                self.upsert_listed(&mut table, (parent, name), &Listed::Dir, (until, asked_at))
            }
            Answer::Listed => {
                let listed = entries
                    .iter()
                    .find_map(|(child, listed)| (child == name).then_some(listed));
                let Some(listed) = listed else {
                    return Err(FsError::NotFound); // (never: Listed means it was shown)
                };
                self.upsert_listed(&mut table, (parent, name), listed, (until, asked_at))
            }
            Answer::Head(meta) => {
                let (attr, extras) = self.attr_from_head(&meta, false);
                let found = Found {
                    attr,
                    remote: Some(Remote::of(&meta)),
                    extras: Some(extras),
                    valid_until: until,
                    asked_at,
                };
                table.upsert(parent, name, found)
            }
            Answer::Missing => {
                if let Some(ino) = table.child(parent, name)
                    && table.stage(ino).is_none()
                {
                    match table.get(ino).is_some_and(|i| i.changed_after(asked_at)) {
                        // Made here after the listing was sent: it exists.
                        true => return Self::current_attr(&table, ino).ok_or(FsError::NotFound),
                        false => table.detach(ino),
                    }
                }
                return Err(FsError::NotFound);
            }
        };
        // (None: removed here after the listing or HEAD was sent.)
        let ino = ino.ok_or(FsError::NotFound)?;
        Self::current_attr(&table, ino).ok_or(FsError::NotFound)
    }
}
