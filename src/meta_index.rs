//! The persistent metadata index: what HEAD answered for an object, kept in the cache
//! dir (`meta-index.redb`) so that listing a directory again — after a remount, a
//! restart of the daemon or of the server — needs the LIST and no HEAD per entry.
//!
//! Invariants:
//! - An entry is valid for one exact version of its key: the ETag, size and
//!   Last-Modified a listing shows. A listing entry that differs in any of them (new
//!   content, a metadata-only copy onto itself, a delete and re-create) misses and is
//!   HEAD'd again, so another client's change is never masked.
//! - An object is indexed only once its Last-Modified lies [`SETTLED`] in the past when
//!   its HEAD returned: a later change of it then cannot share its Last-Modified second
//!   (listings of some servers have second precision), whatever clock skew up to that.
//! - Every value carries a checksum over key and value and starts with its encoding
//!   ([`ENCODING`]): a damaged entry, or one of another encoding, is a miss, never
//!   trusted. A file that cannot be opened as an index is deleted and rebuilt.
//! - Bounded: at most `max_entries` entries; the oldest are dropped first.
//! - It also keeps, per large directory, where its last whole listing can be cut into
//!   spans listed in parallel (`fs/pager.rs`): checksummed as entries are, and only
//!   ever a hint on where to start requests, never on what a listing holds.
//! - Nothing here fails a file system operation: an index that cannot be used is
//!   disabled with one warning and every lookup misses.
//! - Nothing here delays one either: entries are written in batches behind the
//!   listing that offered them; `close` (unmount) writes the rest durably and waits
//!   for the writes under way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::store::{ETag, ObjectMeta};

/// How long before its HEAD an object's Last-Modified must lie to be indexed.
pub const SETTLED: Duration = Duration::from_secs(5);

/// Default bound on entries (a few hundred bytes each on disk).
pub const DEFAULT_MAX_ENTRIES: u64 = 500_000;

/// Read cache of the database (its pages are in the OS page cache anyway).
const DB_CACHE_BYTES: usize = 1 << 20;

/// Entries buffered before they are written in one transaction.
const FLUSH_AT: usize = 512;

/// Non-durable commits between durable ones (a crash loses at most these; the file
/// reclaims space only at durable commits).
const DURABLE_EVERY: u32 = 16;

/// key → (sequence number, checksummed value)
const ENTRIES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("entries");
/// sequence number → key, oldest first (for the bound).
const ORDER: TableDefinition<u64, &str> = TableDefinition::new("order");
/// directory prefix → checksummed boundaries of its spans (`fs/pager.rs`).
const SPANS: TableDefinition<&str, &[u8]> = TableDefinition::new("spans");
/// Directories whose spans are kept; beyond, those first in key order are dropped.
const MAX_SPAN_DIRS: u64 = 10_000;

/// One version of an object as a listing shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    pub etag: ETag,
    pub size: u64,
    pub modified: SystemTime,
}

/// The first byte of every value's body: postcard's encoding of [`Stored`]. (Bodies of
/// earlier builds were JSON, starting with `{`: they miss and are written anew.)
const ENCODING: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    etag: String,
    size: u64,
    /// Last-Modified of the listing, nanoseconds since the epoch.
    modified: u128,
    /// The HEAD answer.
    head_modified: u128,
    user_meta: Vec<(String, String)>,
    content_type: Option<String>,
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn from_nanos(n: u128) -> SystemTime {
    let secs = (n / 1_000_000_000) as u64;
    UNIX_EPOCH + Duration::new(secs, (n % 1_000_000_000) as u32)
}

/// The value as stored: a CRC-32 of key and body, then the body.
fn seal(key: &str, body: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(key.as_bytes());
    crc.update(body);
    let mut out = crc.finalize().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn unseal<'a>(key: &str, value: &'a [u8]) -> Option<&'a [u8]> {
    let (sum, body) = value.split_at_checked(4)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(key.as_bytes());
    crc.update(body);
    (crc.finalize().to_le_bytes() == sum).then_some(body)
}

/// What `table` holds for `key` at exactly `version`.
fn lookup(
    table: &ReadOnlyTable<&str, (u64, &[u8])>,
    key: &str,
    version: &Version,
) -> Option<ObjectMeta> {
    let guard = table.get(key).ok()??;
    let (_, value) = guard.value();
    let body = unseal(key, value)?.strip_prefix(&[ENCODING])?;
    let stored: Stored = postcard::from_bytes(body).ok()?;
    let same = stored.etag == version.etag.0
        && stored.size == version.size
        && stored.modified == nanos(version.modified);
    same.then(|| ObjectMeta {
        size: stored.size,
        etag: ETag(stored.etag),
        last_modified: from_nanos(stored.head_modified),
        user_meta: stored.user_meta,
        content_type: stored.content_type,
    })
}

struct Inner {
    db: Database,
    max_entries: u64,
    pending: Mutex<Vec<(String, Vec<u8>)>>,
    /// Spans offered and not written yet: a directory prefix and its sealed boundaries
    /// (None: forget the directory's).
    pending_spans: Mutex<Vec<(String, Option<Vec<u8>>)>>,
    /// Commits since the last durable one; held by the write under way.
    loose_commits: Mutex<u32>,
    /// Writes started by [`MetaIndex::flush_behind`] and not finished.
    behind: Arc<AtomicUsize>,
    /// One of them has not taken the pending entries yet.
    queued: AtomicBool,
}

/// See the module docs. Cheap to clone.
#[derive(Clone, Default)]
pub struct MetaIndex {
    inner: Option<Arc<Inner>>,
}

impl MetaIndex {
    /// An index that remembers nothing.
    pub fn disabled() -> MetaIndex {
        MetaIndex { inner: None }
    }

    /// Opens (or creates) the index in `cache_dir`; a file that is not a usable index
    /// is replaced by an empty one. `max_entries == 0` disables it.
    pub fn open(cache_dir: &Path, max_entries: u64) -> MetaIndex {
        if max_entries == 0 {
            return MetaIndex::disabled();
        }
        let path = cache_dir.join("meta-index.redb");
        let db = match open_db(&path) {
            Ok(db) => Ok(db),
            // In use by another mount of the same cache dir: not ours to rebuild.
            Err(e @ (redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch)) => {
                Err(e)
            }
            Err(e) => {
                log::warn!(
                    "metadata index {} unusable ({e}): rebuilding it",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                open_db(&path)
            }
        };
        match db {
            Ok(db) => MetaIndex {
                inner: Some(Arc::new(Inner {
                    db,
                    max_entries,
                    pending: Mutex::new(Vec::new()),
                    pending_spans: Mutex::new(Vec::new()),
                    loose_commits: Mutex::new(0),
                    behind: Arc::new(AtomicUsize::new(0)),
                    queued: AtomicBool::new(false),
                })),
            },
            Err(e) => {
                log::warn!("metadata index disabled: {e}");
                MetaIndex::disabled()
            }
        }
    }

    /// The HEAD answer recorded for `key` at exactly `version`, if any.
    pub fn get(&self, key: &str, version: &Version) -> Option<ObjectMeta> {
        self.get_many([(key, version)]).pop().flatten()
    }

    /// [`MetaIndex::get`] of many keys in one read transaction (a listing's batch).
    pub fn get_many<'a>(
        &self,
        wanted: impl IntoIterator<Item = (&'a str, &'a Version)>,
    ) -> Vec<Option<ObjectMeta>> {
        let table = self
            .inner
            .as_ref()
            .and_then(|inner| inner.db.begin_read().ok())
            .and_then(|read| read.open_table(ENTRIES).ok());
        wanted
            .into_iter()
            .map(|(key, version)| lookup(table.as_ref()?, key, version))
            .collect()
    }

    /// Whether the index holds any key under `prefix` (one B-tree lookup): a directory
    /// this host listed before, whose listing the local index will answer.
    pub fn knows_prefix(&self, prefix: &str) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        let Ok(read) = inner.db.begin_read() else {
            return false;
        };
        let Ok(table) = read.open_table(ENTRIES) else {
            return false;
        };
        table
            .range(prefix..)
            .ok()
            .and_then(|mut range| range.next())
            .and_then(Result::ok)
            .is_some_and(|(key, _)| key.value().starts_with(prefix))
    }

    /// The boundaries recorded for the directory `prefix`, if any (and undamaged).
    pub fn spans(&self, prefix: &str) -> Option<Vec<String>> {
        let read = self.inner.as_ref()?.db.begin_read().ok()?;
        let table = read.open_table(SPANS).ok()?;
        let guard = table.get(prefix).ok()??;
        let body = unseal(prefix, guard.value())?.strip_prefix(&[ENCODING])?;
        postcard::from_bytes(body).ok()
    }

    /// Records the boundaries of a whole listing of `prefix` (empty: it has none), to
    /// be written with the next batch of entries.
    pub fn offer_spans(&self, prefix: &str, bounds: &[String]) {
        let Some(inner) = &self.inner else {
            return;
        };
        let sealed = match bounds.is_empty() {
            true => None,
            false => match postcard::to_extend(bounds, vec![ENCODING]) {
                Ok(body) => Some(seal(prefix, &body)),
                Err(_) => return,
            },
        };
        let mut pending = inner.pending_spans.lock().unwrap();
        pending.retain(|(p, _)| p != prefix);
        pending.push((prefix.to_string(), sealed));
    }

    /// Offers what HEAD (sent at `asked_at`) answered for `key`, which a listing showed
    /// at `listed`. Kept only if the HEAD saw that very version and it had settled;
    /// returns whether enough entries wait for a [`MetaIndex::flush`].
    pub fn offer(
        &self,
        key: &str,
        listed: &Version,
        head: &ObjectMeta,
        asked_at: SystemTime,
    ) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        if !indexable(listed, head, asked_at) {
            return false;
        }
        let stored = Stored {
            etag: listed.etag.0.clone(),
            size: listed.size,
            modified: nanos(listed.modified),
            head_modified: nanos(head.last_modified),
            user_meta: head.user_meta.clone(),
            content_type: head.content_type.clone(),
        };
        let Ok(body) = postcard::to_extend(&stored, vec![ENCODING]) else {
            return false;
        };
        let mut pending = inner.pending.lock().unwrap();
        pending.push((key.to_string(), seal(key, &body)));
        pending.len() >= FLUSH_AT
    }

    /// Writes the offered entries (off the async threads). The entries leave the
    /// pending list only inside the write, so a [`MetaIndex::close`] either writes
    /// them itself or waits for the write that took them.
    pub async fn flush(&self) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        if !inner.has_pending() {
            return;
        }
        let written = tokio::task::spawn_blocking(move || inner.write_pending(false)).await;
        if let Ok(Err(e)) = written {
            log::warn!("metadata index: could not record entries: {e}");
        }
    }

    /// Entries offered and not written yet.
    pub fn pending(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.pending.lock().unwrap().len())
    }

    /// [`MetaIndex::flush`] without waiting for it: the caller (a listing) goes on
    /// while its entries are written. The write holds the database only weakly until
    /// it runs, and [`MetaIndex::close`] waits for the writes under way.
    pub fn flush_behind(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        // One write waiting for its turn takes whatever is pending when it starts:
        // offers made meanwhile need no write of their own.
        if !inner.has_pending() || inner.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(inner);
        let behind = inner.behind.clone();
        behind.fetch_add(1, Ordering::AcqRel);
        tokio::task::spawn_blocking(move || {
            if let Some(inner) = weak.upgrade()
                && let Err(e) = inner.write_pending(false)
            {
                log::warn!("metadata index: could not record entries: {e}");
            }
            behind.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Writes what is pending durably (at unmount), after any write under way, and
    /// returns once no background write holds the database (bounded: 5 s).
    pub fn close(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        if let Err(e) = inner.write_pending(true) {
            log::warn!("metadata index: could not record entries: {e}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while inner.behind.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Entries in the index (for tests and status).
    pub fn len(&self) -> u64 {
        let Some(inner) = &self.inner else {
            return 0;
        };
        let count = || -> Result<u64, redb::Error> {
            let read = inner.db.begin_read()?;
            Ok(read.open_table(ENTRIES)?.len()?)
        };
        count().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a HEAD answer (sent at `asked_at`) may stand for the `listed` version in an
/// index: it saw that very version, and that version had settled (see [`SETTLED`]).
pub fn indexable(listed: &Version, head: &ObjectMeta, asked_at: SystemTime) -> bool {
    let same_version = head.etag == listed.etag
        && head.size == listed.size
        && whole_seconds(head.last_modified) == whole_seconds(listed.modified);
    same_version && listed.modified + SETTLED <= asked_at
}

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn open_db(path: &PathBuf) -> Result<Database, redb::Error> {
    let db = Database::builder()
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)?;
    // Both tables exist from here on (readers open them without a writer).
    let txn = db.begin_write()?;
    txn.open_table(ENTRIES)?;
    txn.open_table(ORDER)?;
    txn.open_table(SPANS)?;
    txn.commit()?;
    Ok(db)
}

impl Inner {
    fn has_pending(&self) -> bool {
        !self.pending.lock().unwrap().is_empty() || !self.pending_spans.lock().unwrap().is_empty()
    }

    /// Writes the pending entries (a durable write even if there are none). Writes
    /// take turns on `loose_commits`.
    fn write_pending(&self, durable: bool) -> Result<(), redb::Error> {
        let mut loose = self.loose_commits.lock().unwrap();
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        let spans = std::mem::take(&mut *self.pending_spans.lock().unwrap());
        self.queued.store(false, Ordering::Release);
        if batch.is_empty() && spans.is_empty() && !durable {
            return Ok(());
        }
        self.write(&mut loose, batch, spans, durable)
    }

    fn write(
        &self,
        loose: &mut u32,
        batch: Vec<(String, Vec<u8>)>,
        spans: Vec<(String, Option<Vec<u8>>)>,
        durable: bool,
    ) -> Result<(), redb::Error> {
        let durable = durable || *loose + 1 >= DURABLE_EVERY;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut order = txn.open_table(ORDER)?;
            let first = order.last()?.map_or(0, |(seq, _)| seq.value() + 1);
            for (seq, (key, value)) in (first..).zip(&batch) {
                if let Some(old) = entries.insert(key.as_str(), (seq, value.as_slice()))? {
                    let (old_seq, _) = old.value();
                    drop(old);
                    order.remove(old_seq)?;
                }
                order.insert(seq, key.as_str())?;
            }
            while entries.len()? > self.max_entries {
                let Some((_, key)) = order.pop_first()? else {
                    break;
                };
                let key = key.value().to_string();
                entries.remove(key.as_str())?;
            }
            let mut table = txn.open_table(SPANS)?;
            for (prefix, sealed) in &spans {
                match sealed {
                    Some(value) => table.insert(prefix.as_str(), value.as_slice())?,
                    None => table.remove(prefix.as_str())?,
                };
            }
            while table.len()? > MAX_SPAN_DIRS {
                table.pop_first()?;
            }
        }
        txn.commit()?;
        *loose = if durable { 0 } else { *loose + 1 };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(etag: &str, size: u64, modified: SystemTime, mode: &str) -> ObjectMeta {
        ObjectMeta {
            size,
            etag: ETag(etag.to_string()),
            last_modified: modified,
            user_meta: vec![("mode".to_string(), mode.to_string())],
            content_type: None,
        }
    }

    fn version(etag: &str, size: u64, modified: SystemTime) -> Version {
        Version {
            etag: ETag(etag.to_string()),
            size,
            modified,
        }
    }

    fn old() -> SystemTime {
        SystemTime::now() - Duration::from_secs(3600)
    }

    /// Offers a HEAD answer (mode `mode`) for `key` at the version the listing showed:
    /// ETag "1", `size` bytes, modified at `t`.
    fn offer_settled(index: &MetaIndex, key: &str, size: u64, t: SystemTime, mode: &str) {
        let listed = version("\"1\"", size, t);
        index.offer(
            key,
            &listed,
            &meta("\"1\"", size, t, mode),
            SystemTime::now(),
        );
    }

    #[tokio::test]
    async fn remembers_exact_versions_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let t = old();
        {
            let index = MetaIndex::open(dir.path(), 100);
            offer_settled(&index, "a", 3, t, "33188");
            index.flush().await;
            assert!(index.get("a", &version("\"1\"", 3, t)).is_some());
            index.close();
        }
        let index = MetaIndex::open(dir.path(), 100);
        let hit = index.get("a", &version("\"1\"", 3, t)).unwrap();
        assert_eq!(hit.meta("mode"), Some("33188"));
        // Any other version misses: content, size, Last-Modified.
        assert!(index.get("a", &version("\"2\"", 3, t)).is_none());
        assert!(index.get("a", &version("\"1\"", 4, t)).is_none());
        let later = t + Duration::from_millis(1);
        assert!(index.get("a", &version("\"1\"", 3, later)).is_none());
        assert!(index.get("b", &version("\"1\"", 3, t)).is_none());
    }

    #[tokio::test]
    async fn refuses_unsettled_or_mismatched_answers() {
        let dir = tempfile::tempdir().unwrap();
        let index = MetaIndex::open(dir.path(), 100);
        let fresh = SystemTime::now();
        let listed = version("\"1\"", 3, fresh);
        index.offer(
            "fresh",
            &listed,
            &meta("\"1\"", 3, fresh, "1"),
            SystemTime::now(),
        );
        let t = old();
        let listed = version("\"1\"", 3, t);
        // The HEAD saw another version than the listing.
        index.offer(
            "other",
            &listed,
            &meta("\"2\"", 3, t, "1"),
            SystemTime::now(),
        );
        let later = t + Duration::from_secs(2);
        index.offer(
            "copied",
            &listed,
            &meta("\"1\"", 3, later, "1"),
            SystemTime::now(),
        );
        index.flush().await;
        assert!(index.is_empty());
    }

    #[tokio::test]
    async fn bounded_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let index = MetaIndex::open(dir.path(), 3);
        let t = old();
        for i in 0..5 {
            let key = format!("k{i}");
            offer_settled(&index, &key, 1, t, "1");
            index.flush().await;
        }
        assert_eq!(index.len(), 3);
        assert!(index.get("k0", &version("\"1\"", 1, t)).is_none());
        assert!(index.get("k4", &version("\"1\"", 1, t)).is_some());
    }

    #[tokio::test]
    async fn damaged_file_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let t = old();
        {
            let index = MetaIndex::open(dir.path(), 100);
            offer_settled(&index, "a", 3, t, "1");
            index.close();
        }
        let path = dir.path().join("meta-index.redb");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::write(&path, vec![0x5a; len as usize / 2]).unwrap();
        let index = MetaIndex::open(dir.path(), 100);
        assert!(index.get("a", &version("\"1\"", 3, t)).is_none());
        offer_settled(&index, "b", 3, t, "1");
        index.flush().await;
        assert!(index.get("b", &version("\"1\"", 3, t)).is_some());
    }

    #[test]
    fn damaged_values_miss() {
        let sealed = seal("k", b"body");
        assert_eq!(unseal("k", &sealed), Some(&b"body"[..]));
        assert_eq!(unseal("j", &sealed), None);
        let mut bad = sealed.clone();
        bad[5] ^= 1;
        assert_eq!(unseal("k", &bad), None);
        assert_eq!(unseal("k", b"ab"), None);
    }

    /// A value an earlier build wrote (JSON, checksum intact) is a miss, not misread.
    #[tokio::test]
    async fn values_of_another_encoding_miss() {
        let dir = tempfile::tempdir().unwrap();
        let t = old();
        let index = MetaIndex::open(dir.path(), 100);
        offer_settled(&index, "a", 3, t, "33188");
        index.flush().await;
        assert!(index.get("a", &version("\"1\"", 3, t)).is_some());
        let json = serde_json::to_vec(&Stored {
            etag: "\"1\"".into(),
            size: 3,
            modified: nanos(t),
            head_modified: nanos(t),
            user_meta: vec![("mode".into(), "33188".into())],
            content_type: None,
        })
        .unwrap();
        let inner = index.inner.as_ref().unwrap();
        inner
            .pending
            .lock()
            .unwrap()
            .push(("a".into(), seal("a", &json)));
        index.flush().await;
        assert!(index.get("a", &version("\"1\"", 3, t)).is_none());
        index.close();
    }
}
