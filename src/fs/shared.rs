//! The core's side of the shared metadata index (`--shared-metadata-index`, see
//! `shared_index.rs`): while a directory is listed, entries the local index misses are
//! answered from the directory's shared object (one GET per pass, only when needed);
//! after a whole pass that had to HEAD, the directory's object is rewritten in the
//! background. Nothing here delays or fails a listing beyond that one GET.

use std::time::SystemTime;

use super::dir::DirCursor;
use super::{DirEntry, S3Fs, now};
use crate::meta_index::{SETTLED, Version};
use crate::shared_index::{self, Entry, FORMAT, Pass, Prefetch};
use crate::store::{ObjectMeta, ObjectStore};

/// The shared index's answer for one listed version (it costs no HEAD).
pub(super) struct Known {
    pub version: Version,
    pub meta: ObjectMeta,
    /// When its writer knew it settled (for the settled rule).
    pub settled_at: SystemTime,
}

/// What a HEAD answered for an entry's listed version.
pub(super) struct Learned {
    pub version: Version,
    pub meta: ObjectMeta,
    /// When the HEAD was sent.
    pub checked_at: SystemTime,
}

impl Learned {
    /// Keeps the answer for the directory's object, if it may be indexed.
    pub fn add_to(self, pass: &mut Pass, name: &str) {
        if let Some(entry) = Entry::from_answer(name, &self.version, &self.meta, self.checked_at) {
            pass.learn(entry);
        }
    }
}

impl<S: ObjectStore> S3Fs<S> {
    /// The directory of key prefix `prefix`, relative to the mount ("" = the root).
    fn relative_dir<'p>(&self, prefix: &'p str) -> &'p str {
        let rest = prefix.strip_prefix(self.layout.prefix()).unwrap_or(prefix);
        rest.strip_suffix('/').unwrap_or(rest)
    }

    /// Answers without a HEAD for the entries `unknown` of `entries` (listed in key
    /// prefix `prefix`), which the local index did not answer: from the directory's
    /// shared object (fetched once per pass) if any of them is settled.
    pub(super) async fn shared_hints(
        &self,
        prefix: &str,
        entries: &[DirEntry],
        unknown: &[usize],
        pass: &mut Pass,
    ) -> Vec<Option<Known>> {
        let versions: Vec<Option<Version>> = {
            let table = self.inodes.lock().unwrap();
            unknown
                .iter()
                .map(|&i| Self::listed_version(&table, entries[i].attr.ino))
                .collect()
        };
        let t = now();
        let mut known: Vec<Option<Known>> = unknown.iter().map(|_| None).collect();
        let settled = versions
            .iter()
            .flatten()
            .any(|version| version.modified + SETTLED <= t);
        if !settled {
            return known;
        }
        if pass.needs_fetch() {
            let index = match pass.take_prefetch() {
                Some(prefetch) => prefetch.answer().await,
                None => {
                    let dir = self.relative_dir(prefix);
                    let key = self.layout.shared_index_key(dir, FORMAT);
                    shared_index::fetch(&*self.store, &key, dir).await
                }
            };
            pass.set_loaded(index);
        }
        for ((&i, version), known) in unknown.iter().zip(&versions).zip(&mut known) {
            if let (None, Some(version)) = (&known, version)
                && let Some((meta, settled_at)) = pass.lookup(&entries[i].name, version)
            {
                *known = Some(Known {
                    version: version.clone(),
                    meta,
                    settled_at,
                });
            }
        }
        known
    }

    /// At opendir: starts fetching the directory's shared object if its first listing
    /// will probably want it — the directory is not listed in this mount yet and the
    /// local index knows nothing under it (else the local index answers, and the
    /// object is fetched only if a listed entry turns out to need it).
    pub(super) fn prefetch_shared(&self, cursor: &mut DirCursor<S>, listed_here: bool) {
        if !self.cfg.shared_metadata_index
            || self.cfg.fast_listing
            || listed_here
            || self.index.knows_prefix(cursor.prefix())
        {
            return;
        }
        let dir = self.relative_dir(cursor.prefix()).to_string();
        let key = self.layout.shared_index_key(&dir, FORMAT);
        let prefetch = Prefetch::start(self.store.clone(), key, dir);
        cursor.shared.set_prefetch(prefetch);
    }

    /// A whole pass over the cursor's directory ends with the batch being completed: a
    /// directory too small for an object does not ask for one.
    pub(super) fn note_finished_pass(&self, cursor: &mut DirCursor<S>) {
        if self.cfg.shared_metadata_index {
            cursor.shared.note_finished();
        }
    }

    /// After a whole pass over the cursor's directory: writes the directory's shared
    /// object in the background if the pass had to HEAD what it could have answered
    /// (and this mount did not write it within `shared_index::WRITE_EVERY`). A
    /// read-only mount writes nothing.
    pub(super) fn publish_shared(&self, cursor: &mut DirCursor<S>) {
        let pass = std::mem::take(&mut cursor.shared);
        if !self.cfg.shared_metadata_index || self.cfg.read_only || !pass.worth_writing() {
            return;
        }
        let prefix = cursor.prefix().to_string();
        let dir = self.relative_dir(&prefix).to_string();
        let key = self.layout.shared_index_key(&dir, FORMAT);
        if !self.shared_writes.claim(&key) {
            return;
        }
        let (store, index) = (self.store.clone(), self.index.clone());
        let write = tokio::spawn(async move {
            // Entries this pass did not HEAD (known before it, or answered by the local
            // index) from the local index.
            let entries = tokio::task::spawn_blocking(move || {
                pass.into_entries(|name, version| {
                    let meta = index.get(&format!("{prefix}{name}"), version)?;
                    Entry::from_answer(name, version, &meta, version.modified + SETTLED)
                })
            })
            .await;
            if let Ok(Some(entries)) = entries {
                shared_index::publish(&*store, &key, &dir, entries).await;
            }
        });
        self.shared_writes.track(write);
    }
}
