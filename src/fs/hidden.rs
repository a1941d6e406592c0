//! Keys the mount cannot show (a path segment that is empty, `.`, `..`, over 255 bytes
//! or holding a NUL; a file hidden by a directory of the same name): they are left out of
//! listings and never renamed, rewritten or deleted. Each is logged once per process, at
//! most [`PER_MINUTE`] new ones a minute; the rest are counted and summed up.
//!
//! The reserved name `.s3mount-index` at the mount's root (the shared metadata index,
//! `layout::SHARED_INDEX_NAME`) is hidden silently: it is not found, not listed, and
//! cannot be created, whether or not the mount uses the shared index.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::{FsError, FsResult, ROOT};
use crate::layout::SHARED_INDEX_NAME;

/// New keys warned about per minute; more are only counted.
const PER_MINUTE: u32 = 20;
/// Keys remembered as warned about (beyond, a key may be warned about again).
const REMEMBERED: usize = 10_000;

struct Warned {
    keys: HashSet<String>,
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

static WARNED: LazyLock<Mutex<Warned>> = LazyLock::new(|| {
    Mutex::new(Warned {
        keys: HashSet::new(),
        window: None,
        in_window: 0,
        suppressed: 0,
    })
});

/// Whether `name` in directory `parent` is the reserved shared index name.
pub(crate) fn is_reserved(parent: u64, name: &str) -> bool {
    parent == ROOT && name == SHARED_INDEX_NAME
}

/// Refuses to create `name` in `parent` if it is the reserved name.
pub(crate) fn check_creatable(parent: u64, name: &str) -> FsResult<()> {
    if is_reserved(parent, name) {
        return Err(FsError::NotPermitted(
            "the name .s3mount-index at the mount's root is reserved (shared metadata index)",
        ));
    }
    Ok(())
}

/// Logs that `key` is left out of the mount because of `why`, once per key.
pub(crate) fn warn_hidden(key: &str, why: &str) {
    let mut w = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if w.keys.contains(key) {
        return;
    }
    if w.keys.len() >= REMEMBERED {
        w.keys.clear();
    }
    w.keys.insert(key.to_string());
    let now = Instant::now();
    if w.window
        .is_none_or(|start| now - start > Duration::from_secs(60))
    {
        if w.suppressed > 0 {
            log::warn!(
                "{} more keys that cannot be shown were left out without a warning",
                w.suppressed
            );
        }
        w.window = Some(now);
        w.in_window = 0;
        w.suppressed = 0;
    }
    if w.in_window < PER_MINUTE {
        w.in_window += 1;
        let what = if key.ends_with('/') { "prefix" } else { "key" };
        log::warn!("{what} {key:?} cannot be shown in the mount ({why}); left out, left untouched");
    } else {
        w.suppressed += 1;
    }
}
