//! The shared metadata index (`--shared-metadata-index`): what HEAD answered for the
//! objects of one directory, kept as one object per directory under the mount's
//! reserved `.s3mount-index/` prefix (see `layout::shared_index_key`), so that another
//! host's first listing of the directory needs one GET instead of a HEAD per entry.
//!
//! Invariants:
//! - An entry stands for one exact version of its key, as the local index's do
//!   (`meta_index`): it is used only for a listing entry with the same ETag, size and
//!   Last-Modified, and only if the writer's HEAD came [`SETTLED`] after that
//!   Last-Modified. Anything else is HEAD'd, so a stale index costs HEADs, never shows
//!   another version's metadata.
//! - An object is used whole or not at all: a magic line with the format version, the
//!   length and a CRC-32 of the body (postcard), and the directory it describes. A
//!   truncated, corrupt, foreign-format or misplaced object is ignored.
//! - Nothing here fails a file system operation: reads and writes that fail are logged
//!   and count as "no index".
//! - Bounded: a directory's object is written only for [`MIN_ENTRIES`]..=[`MAX_ENTRIES`]
//!   listed files, at most once per [`WRITE_EVERY`] per directory by one mount.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::meta_index::{SETTLED, Version, indexable};
use crate::store::{ETag, ObjectHeaders, ObjectMeta, ObjectStore, StoreError};

/// The format written and the only one read (it is part of the object's key too, so
/// mounts of two formats never overwrite each other's objects). Format 1 had a JSON
/// body; 2 has postcard, about a third smaller and several times faster to read.
pub const FORMAT: u32 = 2;

const MAGIC: &str = "s3mount-shared-index";

/// Directories with fewer listed files are not worth an object.
pub const MIN_ENTRIES: usize = 16;

/// Directories with more listed files get no object (it would be large to hold while
/// listing, and to GET).
pub const MAX_ENTRIES: usize = 20_000;

/// A larger object is not read.
pub const MAX_OBJECT_BYTES: u64 = 32 << 20;

/// One mount rewrites one directory's object at most this often.
pub const WRITE_EVERY: Duration = Duration::from_secs(60);

/// Directories remembered as written (beyond, the oldest are forgotten).
const REMEMBERED_WRITES: usize = 4096;

/// One object version and what HEAD said about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "n")]
    name: String,
    #[serde(rename = "e")]
    etag: String,
    #[serde(rename = "s")]
    size: u64,
    /// Last-Modified of the listing, nanoseconds since the epoch.
    #[serde(rename = "m")]
    modified: u128,
    /// When the writer knew this version settled (its HEAD was sent then), nanoseconds.
    #[serde(rename = "a")]
    settled_at: u128,
    /// The HEAD answer.
    #[serde(rename = "h")]
    head_modified: u128,
    #[serde(rename = "u")]
    user_meta: Vec<(String, String)>,
    #[serde(rename = "c")]
    content_type: Option<String>,
}

impl Entry {
    /// The entry for `name` at version `listed`, from a HEAD answer known at `checked_at`
    /// (when the HEAD was sent); None unless the answer may be indexed.
    pub fn from_answer(
        name: &str,
        listed: &Version,
        head: &ObjectMeta,
        checked_at: SystemTime,
    ) -> Option<Entry> {
        indexable(listed, head, checked_at).then(|| Entry {
            name: name.to_string(),
            etag: listed.etag.0.clone(),
            size: listed.size,
            modified: nanos(listed.modified),
            settled_at: nanos(checked_at),
            head_modified: nanos(head.last_modified),
            user_meta: head.user_meta.clone(),
            content_type: head.content_type.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The HEAD answer of this entry and when it was known settled, if it stands for
    /// exactly `listed` and passes the settled rule.
    pub fn answer_for(&self, listed: &Version) -> Option<(ObjectMeta, SystemTime)> {
        let same = self.etag == listed.etag.0
            && self.size == listed.size
            && self.modified == nanos(listed.modified);
        let settled = self.modified + SETTLED.as_nanos() <= self.settled_at;
        (same && settled).then(|| {
            let meta = ObjectMeta {
                size: self.size,
                etag: ETag(self.etag.clone()),
                last_modified: from_nanos(self.head_modified),
                user_meta: self.user_meta.clone(),
                content_type: self.content_type.clone(),
            };
            (meta, from_nanos(self.settled_at))
        })
    }
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn from_nanos(n: u128) -> SystemTime {
    let secs = u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX / 2);
    UNIX_EPOCH
        .checked_add(Duration::new(secs, (n % 1_000_000_000) as u32))
        .unwrap_or(UNIX_EPOCH)
}

#[derive(Serialize, Deserialize)]
struct Body {
    /// The directory described, relative to the mount's prefix ("" = the root).
    dir: String,
    entries: Vec<Entry>,
}

/// A directory's index as read from its object.
#[derive(Debug, Default)]
pub struct DirIndex {
    entries: HashMap<String, Entry>,
}

impl DirIndex {
    /// The HEAD answer for `name` at exactly `listed` (see [`Entry::answer_for`]).
    pub fn get(&self, name: &str, listed: &Version) -> Option<(ObjectMeta, SystemTime)> {
        self.entries.get(name)?.answer_for(listed)
    }

    fn entry(&self, name: &str, listed: &Version) -> Option<&Entry> {
        let entry = self.entries.get(name)?;
        entry.answer_for(listed).map(|_| entry)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The keys (under `prefix`) of every `every`th file in key order: where a listing
    /// of the directory can be cut into spans listed in parallel.
    pub fn cuts(&self, prefix: &str, every: usize) -> Vec<String> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
            .iter()
            .skip(every.saturating_sub(1))
            .step_by(every.max(1))
            .map(|name| format!("{prefix}{name}"))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The object for directory `dir`: `MAGIC FORMAT LEN CRC\n` then the postcard body.
pub fn encode(dir: &str, entries: Vec<Entry>) -> Vec<u8> {
    let body = Body {
        dir: dir.to_string(),
        entries,
    };
    let body = postcard::to_allocvec(&body).expect("entries serialize");
    let mut out = format!(
        "{MAGIC} {FORMAT} {} {:08x}\n",
        body.len(),
        crc32fast::hash(&body)
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Reads the object of directory `dir`, or says why it cannot be used.
pub fn decode(dir: &str, object: &[u8]) -> Result<DirIndex, &'static str> {
    let newline = object
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&object[..newline]).map_err(|_| "a damaged header")?;
    let body = &object[newline + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, format, len, crc] = fields[..] else {
        return Err("a damaged header");
    };
    if magic != MAGIC {
        return Err("not a shared index object");
    }
    if format != FORMAT.to_string() {
        return Err("another format version");
    }
    if len.parse::<usize>().ok() != Some(body.len()) {
        return Err("truncated or extended");
    }
    if u32::from_str_radix(crc, 16).ok() != Some(crc32fast::hash(body)) {
        return Err("a checksum mismatch");
    }
    let body: Body = postcard::from_bytes(body).map_err(|_| "an unreadable body")?;
    if body.dir != dir {
        return Err("it describes another directory");
    }
    Ok(DirIndex {
        entries: body
            .entries
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect(),
    })
}

/// The index object `key` of directory `dir`, if there is a usable one (one GET).
pub async fn fetch<S: ObjectStore>(store: &S, key: &str, dir: &str) -> Option<DirIndex> {
    let started = Instant::now();
    let object = match store.head_and_start(key, MAX_OBJECT_BYTES).await {
        Ok((meta, bytes)) if meta.size == bytes.len() as u64 => bytes,
        Ok((meta, _)) => {
            log::info!(
                "shared metadata index {key:?} ignored: {} bytes, over the limit",
                meta.size
            );
            return None;
        }
        Err(StoreError::NotFound) => return None,
        Err(e) => {
            log::info!("shared metadata index {key:?} could not be read (HEADs instead): {e}");
            return None;
        }
    };
    match decode(dir, &object) {
        Ok(index) => {
            log::debug!(
                "shared metadata index {key:?}: {} entries, {} bytes, read in {:?}",
                index.len(),
                object.len(),
                started.elapsed()
            );
            Some(index)
        }
        Err(why) => {
            log::warn!("shared metadata index {key:?} ignored ({why}); it will be rewritten");
            None
        }
    }
}

/// A [`fetch`] started before a listing needs its answer (when the directory is
/// opened), so that the GET overlaps the listing's first LIST. Dropped unused, it is
/// cancelled.
pub struct Prefetch(tokio::task::JoinHandle<Option<DirIndex>>);

impl Prefetch {
    pub fn start<S: ObjectStore>(store: Arc<S>, key: String, dir: String) -> Prefetch {
        Prefetch(tokio::spawn(
            async move { fetch(&*store, &key, &dir).await },
        ))
    }

    /// The fetch's answer (None also if the task failed).
    pub async fn answer(mut self) -> Option<DirIndex> {
        (&mut self.0).await.ok().flatten()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes the index object `key` of directory `dir`; a failure is logged only.
pub async fn publish<S: ObjectStore>(store: &S, key: &str, dir: &str, entries: Vec<Entry>) {
    let count = entries.len();
    let object = Bytes::from(encode(dir, entries));
    let headers = ObjectHeaders {
        user_meta: Vec::new(),
        content_type: Some("application/octet-stream".into()),
    };
    match store.put(key, object, &headers).await {
        Ok(_) => log::debug!("shared metadata index {key:?}: {count} entries written"),
        Err(e) => log::warn!("shared metadata index {key:?} could not be written: {e}"),
    }
}

/// What one whole pass over a directory listed and learned, for its index object.
#[derive(Default)]
pub struct Pass {
    /// The directory's object, once asked for (`Some(None)`: none usable).
    loaded: Option<Option<DirIndex>>,
    /// Files of the listing with their versions (empty once over [`MAX_ENTRIES`]).
    listed: Vec<(String, Version)>,
    overflow: bool,
    /// Indexable HEAD answers of this pass, by name.
    learned: HashMap<String, Entry>,
    /// The directory's object, asked for ahead (see [`Prefetch`]).
    prefetch: Option<Prefetch>,
}

impl Pass {
    /// A file of the listing.
    pub fn note_listed(&mut self, name: &str, version: Version) {
        if self.overflow {
            return;
        }
        if self.listed.len() >= MAX_ENTRIES {
            self.overflow = true;
            self.listed = Vec::new();
            self.learned = HashMap::new();
            return;
        }
        self.listed.push((name.to_string(), version));
    }

    /// Whether the directory's object was not asked for yet in this pass.
    pub fn needs_fetch(&self) -> bool {
        self.loaded.is_none()
    }

    pub fn set_loaded(&mut self, index: Option<DirIndex>) {
        self.loaded = Some(index);
        self.prefetch = None;
    }

    /// The directory's object is being fetched ahead of the listing.
    pub fn set_prefetch(&mut self, prefetch: Prefetch) {
        if self.loaded.is_none() {
            self.prefetch = Some(prefetch);
        }
    }

    /// The fetch started ahead, if any (its answer is then the pass's object).
    pub fn take_prefetch(&mut self) -> Option<Prefetch> {
        self.prefetch.take()
    }

    /// The answer of the directory's object for `name` at exactly `listed`.
    pub fn lookup(&self, name: &str, listed: &Version) -> Option<(ObjectMeta, SystemTime)> {
        self.loaded.as_ref()?.as_ref()?.get(name, listed)
    }

    /// Every file of the directory is listed: one too small for an object asks for
    /// none.
    pub fn note_finished(&mut self) {
        if self.loaded.is_none() && self.listed.len() < MIN_ENTRIES {
            self.set_loaded(None);
        }
    }

    /// An indexable HEAD answer of this pass.
    pub fn learn(&mut self, entry: Entry) {
        if self.overflow {
            return;
        }
        self.learned.insert(entry.name.clone(), entry);
    }

    /// Whether the pass is worth an object: it HEAD'd what the object could have
    /// answered, and the directory's size is within bounds.
    pub fn worth_writing(&self) -> bool {
        !self.learned.is_empty() && !self.overflow && self.listed.len() >= MIN_ENTRIES
    }

    /// The entries of the object after a whole pass: for each listed file, its answer
    /// from this pass, else from the object read, else from `elsewhere` (the local
    /// index); None if too few remain.
    pub fn into_entries(
        self,
        elsewhere: impl Fn(&str, &Version) -> Option<Entry>,
    ) -> Option<Vec<Entry>> {
        let Pass {
            loaded,
            listed,
            mut learned,
            ..
        } = self;
        let loaded = loaded.flatten();
        let entries: Vec<Entry> = listed
            .into_iter()
            .filter_map(|(name, version)| {
                if let Some(entry) = learned.remove(&name)
                    && entry.answer_for(&version).is_some()
                {
                    return Some(entry);
                }
                if let Some(entry) = loaded.as_ref().and_then(|l| l.entry(&name, &version)) {
                    return Some(entry.clone());
                }
                elsewhere(&name, &version)
            })
            .collect();
        (entries.len() >= MIN_ENTRIES).then_some(entries)
    }
}

/// When this mount last wrote each directory's object, to write each at most once per
/// [`WRITE_EVERY`]; and the writes under way, which an unmount lets finish.
#[derive(Default)]
pub struct WriteLimiter {
    written: Mutex<HashMap<String, Instant>>,
    under_way: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl WriteLimiter {
    /// A write started (a task that ends once the object is written or given up).
    pub fn track(&self, write: tokio::task::JoinHandle<()>) {
        let mut under_way = self.under_way.lock().unwrap();
        under_way.retain(|w| !w.is_finished());
        under_way.push(write);
    }

    /// Waits for the writes under way, at most `bound` in all (then they are left to
    /// the runtime's end: an object not written only costs another host HEADs).
    pub async fn finish(&self, bound: Duration) {
        let writes = std::mem::take(&mut *self.under_way.lock().unwrap());
        let all = futures::future::join_all(writes);
        if tokio::time::timeout(bound, all).await.is_err() {
            log::info!("shared metadata index writes still under way at unmount; left unfinished");
        }
    }

    /// Whether `key` may be written now; if so, it is recorded as written.
    pub fn claim(&self, key: &str) -> bool {
        let mut written = self.written.lock().unwrap();
        let now = Instant::now();
        if written.get(key).is_some_and(|at| now - *at < WRITE_EVERY) {
            return false;
        }
        if written.len() >= REMEMBERED_WRITES {
            written.retain(|_, at| now - *at < WRITE_EVERY);
            if written.len() >= REMEMBERED_WRITES {
                return false; // that many directories written within the window
            }
        }
        written.insert(key.to_string(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn version(etag: &str, size: u64, modified: SystemTime) -> Version {
        Version {
            etag: ETag(etag.to_string()),
            size,
            modified,
        }
    }

    fn head(v: &Version, mode: &str) -> ObjectMeta {
        ObjectMeta {
            size: v.size,
            etag: v.etag.clone(),
            last_modified: v.modified,
            user_meta: vec![("mode".into(), mode.into())],
            content_type: None,
        }
    }

    fn entries(n: usize) -> (Vec<Entry>, Vec<Version>) {
        let versions: Vec<Version> = (0..n)
            .map(|i| version(&format!("\"{i}\""), i as u64, at(i as u64)))
            .collect();
        let entries = versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Entry::from_answer(&format!("f{i}"), v, &head(v, "33188"), at(3600)).unwrap()
            })
            .collect();
        (entries, versions)
    }

    #[test]
    fn round_trips_and_answers_only_the_exact_version() {
        let (list, versions) = entries(20);
        let object = encode("a/b", list);
        let index = decode("a/b", &object).unwrap();
        assert_eq!(index.len(), 20);
        let (meta, settled) = index.get("f3", &versions[3]).unwrap();
        assert_eq!(meta.meta("mode"), Some("33188"));
        assert_eq!(settled, at(3600));
        assert!(index.get("f3", &versions[4]).is_none());
        let v = &versions[3];
        let other_etag = version("\"x\"", v.size, v.modified);
        let other_size = version(&v.etag.0, v.size + 1, v.modified);
        let later = version(&v.etag.0, v.size, v.modified + Duration::from_millis(1));
        for other in [other_etag, other_size, later] {
            assert!(index.get("f3", &other).is_none());
        }
        assert!(index.get("g", &versions[3]).is_none());
    }

    #[test]
    fn unsettled_answers_are_neither_written_nor_used() {
        let v = version("\"1\"", 1, at(100));
        assert!(Entry::from_answer("f", &v, &head(&v, "1"), at(102)).is_none());
        // An entry claiming to be unsettled (another writer's bug) is not used.
        let mut entry = Entry::from_answer("f", &v, &head(&v, "1"), at(200)).unwrap();
        entry.settled_at = nanos(at(101));
        assert!(entry.answer_for(&v).is_none());
    }

    #[test]
    fn damaged_objects_are_refused() {
        let (list, _) = entries(20);
        let object = encode("d", list);
        assert!(decode("d", &object).is_ok());
        assert!(decode("other", &object).is_err(), "another directory's");
        assert!(
            decode("d", &object[..object.len() - 1]).is_err(),
            "truncated"
        );
        assert!(
            decode("d", &object[..10]).is_err(),
            "truncated in the header"
        );
        assert!(decode("d", b"").is_err());
        let mut flipped = object.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 0x20;
        assert!(decode("d", &flipped).is_err(), "a flipped bit");
        let header = format!("{MAGIC} {FORMAT} ");
        assert!(object.starts_with(header.as_bytes()));
        for other in [FORMAT - 1, FORMAT + 1] {
            let mut renumbered = format!("{MAGIC} {other} ").into_bytes();
            renumbered.extend_from_slice(&object[header.len()..]);
            assert_eq!(
                decode("d", &renumbered).unwrap_err(),
                "another format version"
            );
        }
        assert!(decode("d", b"{\"dir\":\"d\",\"entries\":[]}").is_err());
    }

    #[test]
    fn a_pass_writes_what_it_learned_and_what_still_holds() {
        let (list, versions) = entries(20);
        let previous = decode("d", &encode("d", list.clone())).unwrap();
        let mut pass = Pass::default();
        pass.set_loaded(Some(previous));
        for (i, v) in versions.iter().enumerate() {
            pass.note_listed(&format!("f{i}"), v.clone());
        }
        assert!(
            !pass.worth_writing(),
            "nothing HEAD'd: the object is current"
        );
        // f0 changed since the object was written: HEAD'd again.
        let changed = version("\"new\"", 5, at(50));
        pass.listed[0].1 = changed.clone();
        let fresh = Entry::from_answer("f0", &changed, &head(&changed, "1"), at(3600)).unwrap();
        pass.learn(fresh.clone());
        assert!(pass.worth_writing());
        let written = pass.into_entries(|_, _| None).unwrap();
        assert_eq!(written.len(), 20);
        assert_eq!(written[0], fresh);
        assert_eq!(written[1..], list[1..]);
    }

    #[test]
    fn small_and_huge_directories_get_no_object() {
        let (list, versions) = entries(MIN_ENTRIES - 1);
        let mut pass = Pass::default();
        for (e, v) in list.into_iter().zip(versions) {
            pass.note_listed(&e.name.clone(), v);
            pass.learn(e);
        }
        assert!(!pass.worth_writing());
        let mut pass = Pass::default();
        let v = version("\"1\"", 1, at(0));
        for i in 0..=MAX_ENTRIES {
            pass.note_listed(&format!("f{i}"), v.clone());
        }
        let e = Entry::from_answer("f0", &v, &head(&v, "1"), at(3600)).unwrap();
        pass.learn(e);
        assert!(!pass.worth_writing());
    }

    #[test]
    fn one_write_per_directory_per_window() {
        let limiter = WriteLimiter::default();
        assert!(limiter.claim("a"));
        assert!(!limiter.claim("a"));
        assert!(limiter.claim("b"));
    }

    #[tokio::test]
    async fn fetch_ignores_what_it_cannot_trust() {
        let store = MemoryStore::new();
        assert!(fetch(&store, "k", "d").await.is_none(), "no object");
        let (list, versions) = entries(20);
        publish(&store, "k", "d", list).await;
        let index = fetch(&store, "k", "d").await.unwrap();
        assert!(index.get("f1", &versions[1]).is_some());
        let object = store.object("k").unwrap();
        store.insert("k", &object[..object.len() / 2]);
        assert!(fetch(&store, "k", "d").await.is_none(), "truncated");
        store.insert("k", b"garbage");
        assert!(fetch(&store, "k", "d").await.is_none(), "garbage");
    }
}
