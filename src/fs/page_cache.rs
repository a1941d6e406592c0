//! What the kernel may hold in its page cache of a file, so that an open lets it keep
//! those pages (FOPEN_KEEP_CACHE) exactly when they are still the file's content.
//!
//! Invariant: the kernel drops a file's pages at every open that does not keep them;
//! from then on the pages it caches are of one content, the one recorded here: an
//! object version read from S3, or a stage (what it served, and what was written
//! through the kernel, which updates its own pages). The record follows a content
//! across the two changes that keep it: a stage that starts from the cached version,
//! and an uploaded stage let go for the object it became. Any other change (another
//! client's version, a copy into the file, a failed stage) leaves a record that no
//! longer matches, so the next open drops the pages. A handle still open on an older
//! version adds none of it afterwards: its reads fail once this mount knows the object
//! changed (`S3Fs::read`), even where blocks of it are still cached.
//!
//! Keeping pages is also what makes concurrent appends safe to read: dropping them at a
//! reader's open while another process's write is still on its way to the daemon lets
//! the reader cache the old last page, zero-filled past the old end, and read those
//! zeros once the size grows.

use std::sync::{Arc, Weak};

use crate::stage::Stage;
use crate::store::ETag;

/// The content of the kernel's pages of one file.
#[derive(Clone, Debug)]
pub enum PageCache {
    /// The object version with this ETag, read from S3.
    Remote(ETag),
    /// This stage's content, and the object version that has the same content, if any
    /// (the version it started from or was last uploaded as). A `Weak` keeps the
    /// stage's allocation, so no other stage can be mistaken for it.
    Staged {
        stage: Weak<Stage>,
        version: Option<ETag>,
    },
}

impl PageCache {
    /// What an open of a file with `stage` (else read from S3 at `etag`) may cache.
    pub fn current(stage: Option<&Arc<Stage>>, etag: Option<&ETag>) -> Option<PageCache> {
        match (stage, etag) {
            (Some(stage), _) => Some(PageCache::Staged {
                stage: Arc::downgrade(stage),
                version: None,
            }),
            (None, Some(etag)) => Some(PageCache::Remote(etag.clone())),
            (None, None) => None,
        }
    }

    /// Whether pages of `self` are pages of `other`'s content.
    pub fn same_content(&self, other: &PageCache) -> bool {
        match (self, other) {
            (PageCache::Remote(a), PageCache::Remote(b)) => a == b,
            (PageCache::Staged { stage: a, .. }, PageCache::Staged { stage: b, .. }) => a.ptr_eq(b),
            _ => false,
        }
    }

    fn is_stage(&self, of: &Arc<Stage>) -> bool {
        matches!(self, PageCache::Staged { stage, .. } if std::ptr::eq(stage.as_ptr(), Arc::as_ptr(of)))
    }
}

/// An open that may cache `current`: true if the kernel may keep what it holds.
pub fn note_open(slot: &mut Option<PageCache>, current: Option<PageCache>) -> bool {
    let keep = match (slot.as_ref(), current.as_ref()) {
        (Some(held), Some(now)) => held.same_content(now),
        _ => false,
    };
    if !keep {
        *slot = current;
    }
    keep
}

/// `stage` now stands for the file, starting from the object version `base` (None: from
/// nothing, as after a truncate): pages of that version are pages of the stage.
pub fn stage_started(slot: &mut Option<PageCache>, stage: &Arc<Stage>, base: Option<&ETag>) {
    if let (Some(PageCache::Remote(held)), Some(base)) = (slot.as_ref(), base)
        && held == base
    {
        *slot = Some(PageCache::Staged {
            stage: Arc::downgrade(stage),
            version: Some(base.clone()),
        });
    }
}

/// A file created here with `stage`: the kernel caches only what goes through it.
pub fn created(slot: &mut Option<PageCache>, stage: &Arc<Stage>) {
    *slot = Some(PageCache::Staged {
        stage: Arc::downgrade(stage),
        version: None,
    });
}

/// `stage` was uploaded as the object version `etag` (its content as of then).
pub fn uploaded(slot: &mut Option<PageCache>, stage: &Arc<Stage>, etag: &ETag) {
    if let Some(PageCache::Staged { version, .. }) = slot.as_mut().filter(|h| h.is_stage(stage)) {
        *version = Some(etag.clone());
    }
}

/// `stage`, unchanged since S3 has it as `remote`, is let go: the file is that object
/// version again, whose content the pages still are.
pub fn stage_released(slot: &mut Option<PageCache>, stage: &Arc<Stage>, remote: Option<&ETag>) {
    let version = match slot.as_ref().filter(|h| h.is_stage(stage)) {
        Some(PageCache::Staged { version, .. }) => version.clone(),
        _ => return,
    };
    if let (Some(version), Some(remote)) = (version, remote)
        && &version == remote
    {
        *slot = Some(PageCache::Remote(version));
    }
}
