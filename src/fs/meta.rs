//! Object metadata as the core sees it: attributes and xattrs read from HEAD (s3fs-fuse
//! conventions, see `layout`), entries known from a listing completed by HEADs, and
//! attribute and xattr changes stored back: with the pending upload of a staged file, or
//! by copying the object onto itself (a directory: by rewriting its marker).

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;

use super::inodes::{Found, InodeTable, Remote};
use super::shared::{Known, Learned};
use super::{Attr, DirEntry, Extras, FsError, FsResult, Kind, ROOT, S3Fs, SetAttr, now};
use crate::layout;
use crate::meta_index::Version;
use crate::shared_index::Pass;
use crate::store::{ObjectHeaders, ObjectMeta, ObjectStore, StoreError};

/// A lookup of a file up to this size fetches its content with its metadata (one GET
/// instead of a HEAD now and a GET at the first read).
const SMALL_FILE: u64 = 64 * 1024;

/// HEADs in flight to complete the attributes of one batch of directory entries.
const META_FETCHES: usize = 64;
/// Answers of the shared index offered to the local index wait (up to this many) for
/// the end of the listing pass, or for a batch that HEADs, to be written: the database
/// writes then do not compete with the listing for the CPU.
const DEFERRED_OFFERS: usize = 10_000;

impl<S: ObjectStore> S3Fs<S> {
    /// Attributes of an object from HEAD: s3fs metadata where present, defaults
    /// otherwise. `dir` for a directory marker (whatever its mode says).
    pub(super) fn attr_from_head(&self, meta: &ObjectMeta, dir: bool) -> (Attr, Extras) {
        let stored = layout::parse_attrs(meta);
        let mtime = stored.mtime.unwrap_or(meta.last_modified);
        let mut attr = if dir {
            self.default_dir_attr(mtime)
        } else {
            self.file_attr(meta.size, mtime)
        };
        if let Some(mode) = stored.mode {
            attr.perm = (mode & 0o7777) as u16;
            if !dir {
                attr.kind = match Kind::from_mode(mode) {
                    Kind::Dir => Kind::File, // a key without `/` holds bytes: a file
                    kind => kind,
                };
            }
        }
        attr.uid = stored.uid.unwrap_or(attr.uid);
        attr.gid = stored.gid.unwrap_or(attr.gid);
        attr.ctime = stored.ctime.unwrap_or(mtime);
        attr.atime = stored.atime.unwrap_or(mtime);
        attr.rdev = stored.rdev.unwrap_or(0);
        (
            attr,
            Extras {
                xattrs: stored.xattrs,
                link: None,
            },
        )
    }

    /// A directory's entries changed at `t`: its mtime and ctime say so (in memory; the
    /// marker is not rewritten for every entry, as s3fs would).
    pub(super) fn touch_dir(table: &mut InodeTable, dir: u64, t: SystemTime) {
        if let Some(inode) = table.get_mut(dir) {
            inode.attr.mtime = t;
            inode.attr.ctime = t;
            inode.set_touched();
        }
    }

    /// The metadata headers of the object of `ino` as the table knows it now.
    pub(super) fn headers_for(table: &InodeTable, ino: u64, times: bool) -> Option<ObjectHeaders> {
        let attr = Self::current_attr(table, ino)?;
        Some(Self::headers_of(&attr, table.get(ino)?.extras(), times))
    }

    /// The metadata headers of an object with these attributes.
    pub(super) fn headers_of(attr: &Attr, extras: &Extras, times: bool) -> ObjectHeaders {
        layout::object_headers(
            &layout::PosixMeta {
                mode: attr.mode(),
                uid: attr.uid,
                gid: attr.gid,
                atime: attr.atime,
                mtime: attr.mtime,
                ctime: attr.ctime,
                rdev: attr.rdev,
                xattrs: extras.xattrs.clone(),
            },
            times,
        )
    }

    /// The attributes of `ino` once its object's metadata is known: an entry known from
    /// a listing only is completed by a HEAD of its key (or of its directory marker; a
    /// directory without one keeps the defaults). Returns the attributes under the inode
    /// number now in the table, which is a new one if the HEAD found another kind of
    /// object than the kernel was told of.
    pub(super) async fn ensure_meta(&self, ino: u64) -> FsResult<Attr> {
        self.complete_attr(ino, false).await
    }

    /// [`S3Fs::ensure_meta`]; with `fetch_small`, a small file's content comes along
    /// with its metadata into the block cache (a lookup is usually followed by a read).
    pub(super) async fn complete_attr(&self, ino: u64, fetch_small: bool) -> FsResult<Attr> {
        let (attr, _) = self.complete_attr_from(ino, fetch_small, false).await?;
        Ok(attr)
    }

    /// The version of `ino`'s object its listing showed, if it is a file known so.
    pub(super) fn listed_version(table: &InodeTable, ino: u64) -> Option<Version> {
        let inode = table.get(ino)?;
        if inode.attr.kind == Kind::Dir {
            return None;
        }
        let remote = inode.remote.as_ref()?;
        Some(Version {
            etag: remote.etag.clone(),
            size: remote.size,
            modified: remote.modified?,
        })
    }

    /// [`S3Fs::complete_attr`], answered by the local index for the version listed
    /// (unless `index_missed` says it was just asked) or else by a HEAD. Also returns,
    /// with `--shared-metadata-index`, what a HEAD answered for the listed version.
    pub(super) async fn complete_attr_from(
        &self,
        ino: u64,
        fetch_small: bool,
        index_missed: bool,
    ) -> FsResult<(Attr, Option<Learned>)> {
        let (key, dir, size, listed) = {
            let table = self.inodes.lock().unwrap();
            let inode = table.get(ino).ok_or(FsError::NotFound)?;
            let attr = Self::current_attr(&table, ino).expect("present");
            if inode.meta_known || table.stage(ino).is_some() {
                return Ok((attr, None));
            }
            let Some(path) = table.path(ino) else {
                return Ok((attr, None)); // unlinked: nothing to ask about
            };
            let listed = Self::listed_version(&table, ino);
            match attr.kind {
                Kind::Dir => (self.layout.dir_prefix(&path), true, 0, None),
                _ => (self.layout.file_key(&path), false, attr.size, listed),
            }
        };
        let asked_at = Instant::now();
        let known = match &listed {
            Some(v) if !index_missed => self.index.get(&key, v),
            _ => None,
        };
        let head = if let Some(known) = &known {
            Ok(known.clone())
        } else if fetch_small && !dir && (1..=SMALL_FILE).contains(&size) {
            match self.store.head_and_start(&key, SMALL_FILE).await {
                Ok((meta, start)) => {
                    if start.len() as u64 == meta.size {
                        self.cache.insert_small(&key, &meta.etag, start);
                    }
                    Ok(meta)
                }
                Err(StoreError::NotFound) => Err(StoreError::NotFound),
                // E.g. an object emptied meanwhile (a range of nothing is refused).
                Err(_) => self.store.head(&key).await,
            }
        } else {
            self.store.head(&key).await
        };
        let checked_at = now() - asked_at.elapsed();
        // A local index answer is in the local index already: writing it back would
        // cost a database write per entry of every listing.
        if let (Some(listed), Ok(meta)) = (&listed, &head)
            && known.is_none()
            && self.index.offer(&key, listed, meta, checked_at)
        {
            // A listing answers the kernel while its batch is written (a crash loses at
            // most those entries, which cost a HEAD again).
            self.index.flush_behind();
        }
        // (The local index's answer is in the shared object already, or will be.)
        let learned = match (&listed, &head) {
            (Some(listed), Ok(meta)) if self.cfg.shared_metadata_index && known.is_none() => {
                Some(Learned {
                    version: listed.clone(),
                    meta: meta.clone(),
                    checked_at,
                })
            }
            _ => None,
        };
        let mut table = self.inodes.lock().unwrap();
        let attr = self.apply_answer(&mut table, ino, dir, head, asked_at)?;
        Ok((attr, learned))
    }

    /// Records what HEAD (or an index, as of `asked_at`) answered about `ino` (a
    /// directory marker if `dir`) and returns the attributes; an answer older than a
    /// change made here is left out.
    fn apply_answer(
        &self,
        table: &mut InodeTable,
        ino: u64,
        dir: bool,
        head: Result<ObjectMeta, StoreError>,
        asked_at: Instant,
    ) -> FsResult<Attr> {
        let Some(inode) = table.get(ino) else {
            return Err(FsError::NotFound);
        };
        if inode.meta_known || inode.detached || inode.changed_after(asked_at) {
            // (Changed here after the HEAD was sent: the answer is out of date.)
            return Ok(Self::current_attr(table, ino).expect("present"));
        }
        let (parent, name) = (inode.parent, inode.name.clone());
        let touched = inode
            .touched()
            .then_some((inode.attr.mtime, inode.attr.ctime));
        let valid_until = self.valid_until();
        match head {
            Ok(meta) => {
                let (mut attr, extras) = self.attr_from_head(&meta, dir);
                if let Some((mtime, ctime)) = touched {
                    // Entry changes made here touch the directory's times in memory only
                    // (the marker is not rewritten for each); they do not go back.
                    attr.mtime = attr.mtime.max(mtime);
                    attr.ctime = attr.ctime.max(ctime);
                }
                let found = Found {
                    attr,
                    remote: (!dir).then(|| Remote::of(&meta)),
                    extras: Some(extras),
                    valid_until,
                    asked_at,
                };
                // (None: removed here after the HEAD was sent.)
                let ino = table
                    .upsert(parent, &name, found)
                    .ok_or(FsError::NotFound)?;
                Ok(Self::current_attr(table, ino).expect("just upserted"))
            }
            Err(StoreError::NotFound) if dir => {
                // A directory that exists only as a prefix: the mount's defaults, fresh
                // for the TTL like any answer (else every getattr after an entry change,
                // as each unlink of `rm -rf` is, would HEAD the marker again).
                let inode = table.get_mut(ino).expect("present");
                inode.meta_known = true;
                inode.valid_until = valid_until;
                Ok(Self::current_attr(table, ino).expect("present"))
            }
            Err(StoreError::NotFound) => {
                table.detach(ino);
                Err(FsError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Completes the entries `unknown` of `entries` that the local index answers, in
    /// one read of it and one hold of the table (after a remount a listing's entries
    /// are nearly all such); returns the others.
    fn complete_from_local_index(
        &self,
        entries: &mut [DirEntry],
        unknown: Vec<usize>,
    ) -> Vec<usize> {
        let asked_at = Instant::now();
        let wanted: Vec<(usize, String, Version)> = {
            let table = self.inodes.lock().unwrap();
            unknown
                .iter()
                .filter_map(|&i| {
                    let ino = entries[i].attr.ino;
                    let version = Self::listed_version(&table, ino)?;
                    let key = self.layout.file_key(&table.path(ino)?);
                    Some((i, key, version))
                })
                .collect()
        };
        if wanted.is_empty() {
            return unknown;
        }
        let answers = self.index.get_many(
            wanted
                .iter()
                .map(|(_, key, version)| (key.as_str(), version)),
        );
        let mut answered = vec![false; entries.len()];
        let mut table = self.inodes.lock().unwrap();
        for ((i, _, _), meta) in wanted.iter().zip(answers) {
            let Some(meta) = meta else { continue };
            let ino = entries[*i].attr.ino;
            if let Ok(attr) = self.apply_answer(&mut table, ino, false, Ok(meta), asked_at) {
                entries[*i].attr = attr;
                answered[*i] = true;
            }
        }
        unknown.into_iter().filter(|&i| !answered[i]).collect()
    }

    /// Completes the entries `unknown` of `entries` that `known` (the shared index's
    /// answers, one per entry) answers for their listed version, in one hold of the
    /// table; the answers go to the local index too. Returns the others.
    fn complete_from_known(
        &self,
        entries: &mut [DirEntry],
        unknown: Vec<usize>,
        known: Vec<Option<Known>>,
    ) -> Vec<usize> {
        if known.iter().all(Option::is_none) {
            return unknown;
        }
        let asked_at = Instant::now();
        let mut rest = Vec::new();
        let mut answers = Vec::new();
        {
            let table = self.inodes.lock().unwrap();
            for (i, known) in unknown.into_iter().zip(known) {
                let ino = entries[i].attr.ino;
                match (known, table.path(ino)) {
                    (Some(k), Some(path))
                        if Self::listed_version(&table, ino).as_ref() == Some(&k.version) =>
                    {
                        answers.push((i, self.layout.file_key(&path), k));
                    }
                    _ => rest.push(i),
                }
            }
        }
        for (_, key, k) in &answers {
            // Offered as of its writer's HEAD (the settled rule).
            self.index.offer(key, &k.version, &k.meta, k.settled_at);
        }
        let mut table = self.inodes.lock().unwrap();
        for (i, _, k) in answers {
            let ino = entries[i].attr.ino;
            let answer = if table.stage(ino).is_some() {
                // Written here meanwhile: the stage is the content.
                Self::current_attr(&table, ino).ok_or(FsError::NotFound)
            } else {
                self.apply_answer(&mut table, ino, false, Ok(k.meta), asked_at)
            };
            match answer {
                Ok(attr) => entries[i].attr = attr,
                Err(_) => rest.push(i),
            }
        }
        rest
    }

    /// Completes the attributes of directory entries known from a listing only, with
    /// HEADs in parallel. Entries whose object vanished meanwhile are left out. With
    /// `shared` (the directory's key prefix and its listing pass, under
    /// `--shared-metadata-index`), entries the local index misses are answered by the
    /// directory's shared index object where it holds their exact version.
    pub(super) async fn complete_meta(
        &self,
        entries: &mut Vec<DirEntry>,
        shared: Option<(&str, &mut Pass)>,
    ) -> FsResult<()> {
        if self.cfg.fast_listing {
            return Ok(());
        }
        let unknown: Vec<usize> = {
            let table = self.inodes.lock().unwrap();
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    table
                        .get(e.attr.ino)
                        .is_some_and(|i| !i.meta_known && table.stage(e.attr.ino).is_none())
                })
                .map(|(i, _)| i)
                .collect()
        };
        let unknown = self.complete_from_local_index(entries, unknown);
        if unknown.is_empty() {
            return Ok(());
        }
        let mut shared = shared.filter(|_| self.cfg.shared_metadata_index);
        let known = match shared.as_mut() {
            Some((prefix, pass)) => self.shared_hints(prefix, entries, &unknown, pass).await,
            None => unknown.iter().map(|_| None).collect(),
        };
        let unknown = self.complete_from_known(entries, unknown, known);
        let heads = !unknown.is_empty();
        let fetched = futures::stream::iter(unknown.into_iter().map(|i| {
            let ino = entries[i].attr.ino;
            // (complete_from_local_index asked the local index about each of them.)
            async move { (i, self.complete_attr_from(ino, false, true).await) }
        }))
        .buffer_unordered(META_FETCHES)
        .collect::<Vec<_>>()
        .await;
        let mut gone = Vec::new();
        for (i, result) in fetched {
            match result {
                Ok((attr, learned)) => {
                    entries[i].attr = attr;
                    if let (Some((_, pass)), Some(learned)) = (shared.as_mut(), learned) {
                        learned.add_to(pass, &entries[i].name);
                    }
                }
                Err(FsError::NotFound) => gone.push(i),
                Err(e) => return Err(e),
            }
        }
        if heads || self.index.pending() >= DEFERRED_OFFERS {
            self.index.flush_behind();
        }
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            entries.remove(i);
        }
        Ok(())
    }

    pub async fn setattr(&self, ino: u64, change: SetAttr) -> FsResult<Attr> {
        self.check_writable()?;
        // The metadata is rewritten whole: what others stored (xattrs) must be known.
        let attr = self.ensure_meta(ino).await?;
        if attr.ino != ino {
            return Err(FsError::NotFound);
        }
        if change.size.is_some() {
            match attr.kind {
                Kind::File => {}
                Kind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("only regular files can be truncated")),
            }
        }
        if let Some(size) = change.size {
            self.check_file_size(size)?;
        }
        {
            let mut table = self.inodes.lock().unwrap();
            let inode = table.get_mut(ino).ok_or(FsError::NotFound)?;
            let t = now();
            if let Some(mode) = change.mode {
                inode.attr.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = change.uid {
                inode.attr.uid = uid;
            }
            if let Some(gid) = change.gid {
                inode.attr.gid = gid;
            }
            if let Some(atime) = change.atime {
                inode.attr.atime = atime;
            }
            if let Some(mtime) = change.mtime {
                inode.attr.mtime = mtime;
            } else if change.size.is_some() {
                inode.attr.mtime = t;
            }
            inode.attr.ctime = t;
            inode.valid_until = self.valid_until();
            inode.mark_changed_now();
        }
        if let Some(size) = change.size {
            let stage = self.stage_for_write(ino, false)?;
            stage.truncate(&*self.store, size).await?;
            if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
                inode.attr.size = size;
            }
        }
        self.persist_or_forget(ino).await?;
        let table = self.inodes.lock().unwrap();
        Self::current_attr(&table, ino).ok_or(FsError::NotFound)
    }

    /// Stores the table's attributes and xattrs of `ino` in S3: with the pending upload
    /// of its staged data when there is one (now, unless a writer still has it open),
    /// otherwise by copying the object onto itself with new metadata (rewriting the
    /// marker of a directory).
    pub(super) async fn persist_meta(&self, ino: u64) -> FsResult<()> {
        let stage = self.inodes.lock().unwrap().stage(ino);
        if let Some(stage) = stage
            && stage.is_dirty()
        {
            {
                // An upload started while writing carries the old metadata: restart it.
                let _turn = stage.upload_turn().await;
                if let Some(st) = stage.take_streaming() {
                    self.uploader.abort_streaming(st);
                }
            }
            if self.handles.has_writer(ino) {
                return Ok(()); // the close uploads data and metadata together
            }
            if self.cfg.write_back {
                return self.commit_and_queue(ino).await;
            }
            self.sync(ino).await?;
            self.drop_clean_stage(ino);
            return Ok(());
        }
        let (path, attr, extras, remote) = {
            let table = self.inodes.lock().unwrap();
            let inode = table.get(ino).ok_or(FsError::NotFound)?;
            let Some(path) = table.path(ino) else {
                return Ok(()); // unlinked: nothing to store
            };
            (
                path,
                inode.attr.clone(),
                Extras::clone(inode.extras()),
                inode.remote.clone(),
            )
        };
        if ino == ROOT {
            return Ok(()); // the mount point itself has no object; kept in memory
        }
        let headers = Self::headers_of(&attr, &extras, true);
        if layout::user_meta_len(&headers) > layout::MAX_USER_META {
            return Err(FsError::TooBig);
        }
        if attr.kind == Kind::Dir {
            let marker = self.layout.dir_prefix(&path);
            self.store.put(&marker, Bytes::new(), &headers).await?;
            self.inodes.lock().unwrap().mark_changed(ino);
            return Ok(());
        }
        let key = self.layout.file_key(&path);
        let remote = match remote {
            Some(r) => r,
            None => Remote::of(&self.store.head(&key).await?),
        };
        let etag = self
            .store
            .copy(&key, &key, remote.size, Some(&headers), Some(&remote.etag))
            .await?; // (PreconditionFailed: replaced meanwhile; these were the old one's)
        let until = self.valid_until();
        let mut table = self.inodes.lock().unwrap();
        if let Some(inode) = table.get_mut(ino) {
            inode.remote = Some(Remote {
                etag,
                size: remote.size,
                modified: None,
            });
            inode.valid_until = until;
            inode.mark_changed_now();
        }
        Ok(())
    }

    /// [`S3Fs::persist_meta`]; when it fails, the table forgets the unsaved metadata so
    /// the next access reads what S3 has.
    pub(super) async fn persist_or_forget(&self, ino: u64) -> FsResult<()> {
        let result = self.persist_meta(ino).await;
        if result.is_err() {
            let mut table = self.inodes.lock().unwrap();
            if table.stage(ino).is_none()
                && let Some(inode) = table.get_mut(ino)
            {
                inode.meta_known = false;
                inode.valid_until = Instant::now();
            }
        }
        result
    }
}
