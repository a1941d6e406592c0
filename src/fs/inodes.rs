//! The inode table: inode numbers ↔ (parent, name), attributes with their expiry, the
//! kernel's lookup counts, and the stage of files being written. Paths are derived by
//! walking parents, so renaming a directory is one update. Numbers are never reused.
//! It also counts the attached subdirectories of each directory, for its link count.
//! An inode is kept small (its name shared with the name index, rare parts boxed): the
//! kernel may hold 100,000 of them after an `ls -l` of a big folder.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::page_cache::{self, PageCache};
use super::removed::RemovedNames;
use crate::stage::Stage;
use crate::store::{ETag, ObjectMeta};

pub const ROOT: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The kind of an st_mode; objects without type bits are regular files.
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => Kind::File,
        }
    }

    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
        }
    }
}

/// Attributes as the core reports them (the adapter converts them for the kernel).
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub atime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Device number of character and block devices.
    pub rdev: u32,
    /// Hard links: 1 for files, 2 + known subdirectories for directories (set by
    /// `S3Fs::current_attr`), 0 once unlinked while still open.
    pub nlink: u32,
}

impl Attr {
    /// st_mode with the type bits.
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | u32::from(self.perm)
    }
}

/// What only the object's metadata (or its body) tells, beyond [`Attr`]: known once the
/// object was HEAD (or created here), not from a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras {
    pub xattrs: crate::layout::Xattrs,
    /// A symlink's target, once read.
    pub link: Option<String>,
}

/// What an inode without [`Rare`] parts has: no xattrs, no link target.
static NO_EXTRAS: Extras = Extras {
    xattrs: BTreeMap::new(),
    link: None,
};

/// The object in S3 that a file inode stands for.
#[derive(Clone, Debug)]
pub struct Remote {
    pub etag: ETag,
    pub size: u64,
    /// Its Last-Modified as S3 last reported it (None after our own writes). Another
    /// client's metadata change (a copy onto itself) keeps ETag and size and changes
    /// only this.
    pub modified: Option<SystemTime>,
}

/// Same content: ETag and size (Last-Modified is compared by [`Remote::metadata_changed`]).
impl PartialEq for Remote {
    fn eq(&self, other: &Remote) -> bool {
        self.etag == other.etag && self.size == other.size
    }
}

impl Remote {
    /// The object as a HEAD or GET described it.
    pub fn of(meta: &ObjectMeta) -> Remote {
        Remote {
            etag: meta.etag.clone(),
            size: meta.size,
            modified: Some(meta.last_modified),
        }
    }

    /// Did the object's metadata change since `self` was seen, by what `now` says?
    /// (Whole seconds: HEAD reports no more.) After our own write we do not know S3's
    /// Last-Modified, so the first listing that shows it counts as a change.
    pub fn metadata_changed(&self, now: &Remote) -> bool {
        let secs = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        match (self.modified, now.modified) {
            (Some(a), Some(b)) => secs(a) != secs(b),
            (None, Some(_)) => true,
            _ => false,
        }
    }
}

/// The parts of an inode that most inodes (files only listed or looked up) never use,
/// boxed so that they cost those 8 bytes.
#[derive(Default)]
struct Rare {
    /// Directories: every child is in the table until then (a full listing, or created
    /// empty here), so a name that is not there does not exist.
    listed_until: Option<Instant>,
    /// Directories: the last listing needed more than one page, so a lookup miss asks
    /// S3 about the one name instead of listing the directory again.
    large: bool,
    /// Directories: entries changed here, so mtime and ctime are newer in memory than
    /// on the marker.
    touched: bool,
    /// Directories: the range of names the last window listing of a lookup held
    /// (`window.rs`), until when: every child in it is in the table until then.
    window: Option<Box<Window>>,
    /// Files: the content whose pages the kernel may hold (`page_cache.rs`).
    page_cache: Option<PageCache>,
    /// When this mount last changed the inode's object or attributes.
    changed_at: Option<Instant>,
    /// Xattrs and a symlink's target: known once the object was HEAD (or created
    /// here); most inodes (every listed one) have none.
    extras: Extras,
    /// Files: the staged content, while there is one.
    stage: Option<Arc<Stage>>,
    /// Files: handles open on it.
    open_handles: u32,
}

/// The names a window listing held: those after `after` up to `through` (inclusive;
/// None: to the end of the directory), as sorted keys relative to the directory's prefix
/// (a subdirectory `d` is `d/`).
pub struct Window {
    pub after: String,
    pub through: Option<String>,
    pub until: Instant,
}

impl Window {
    /// Does the range hold `name` both as a file and as a directory (`name` sorts
    /// before `name/`), while it is fresh?
    fn covers(&self, name: &str) -> bool {
        let dir = format!("{name}/");
        self.after.as_str() < name
            && self.through.as_deref().is_none_or(|t| dir.as_str() <= t)
            && self.until > Instant::now()
    }
}

pub struct Inode {
    pub parent: u64,
    /// Shared with the table's name index.
    pub name: Arc<str>,
    pub attr: Attr,
    pub remote: Option<Remote>,
    /// The object's metadata was read (or written here): `attr` and `extras` are whole.
    /// Entries known from a listing only have defaults until a HEAD.
    pub meta_known: bool,
    /// Counts the content changes of the object (uploads here, other versions seen;
    /// compared for equality only, so it may wrap).
    pub content_version: u32,
    /// Until when `attr` may be served without asking S3.
    pub valid_until: Instant,
    lookups: u32,
    /// Entries of a directory batch a cursor may still hand out (see `DirCursor`): the
    /// kernel has not counted a lookup for them yet, but must find them when it does.
    pins: u32,
    /// Unlinked or replaced: no longer reachable by name.
    pub detached: bool,
    /// What few inodes need (see [`Rare`]): with it an inode is 200 bytes, which a
    /// table of 100,000 listed entries pays 100,000 times.
    rare: Option<Box<Rare>>,
}

/// What a request to S3, or a change made here, says about a name.
pub struct Found {
    pub attr: Attr,
    pub remote: Option<Remote>,
    /// The whole metadata (from HEAD, or a change made here); None: a listing's
    /// defaults.
    pub extras: Option<Extras>,
    pub valid_until: Instant,
    /// When the request was sent (a change made here: now).
    pub asked_at: Instant,
}

impl Found {
    /// What a change made here (a create, a PUT) says: the whole metadata, now.
    pub fn made_here(
        attr: Attr,
        remote: Option<Remote>,
        extras: Extras,
        valid_until: Instant,
    ) -> Found {
        Found {
            attr,
            remote,
            extras: Some(extras),
            valid_until,
            asked_at: Instant::now(),
        }
    }
}

impl Inode {
    /// Did this mount change the inode (in S3 or in the table) after `t`? Then what a
    /// request sent at `t` says of it is out of date.
    pub fn changed_after(&self, t: Instant) -> bool {
        self.rare
            .as_ref()
            .and_then(|r| r.changed_at)
            .is_some_and(|c| c > t)
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// What only the object's metadata tells beyond `attr` (empty for most inodes).
    pub fn extras(&self) -> &Extras {
        self.rare.as_ref().map_or(&NO_EXTRAS, |r| &r.extras)
    }

    pub fn extras_mut(&mut self) -> &mut Extras {
        &mut self.rare_mut().extras
    }

    pub fn set_extras(&mut self, extras: Extras) {
        if self.rare.is_some() || extras != Extras::default() {
            self.rare_mut().extras = extras;
        }
    }

    fn stage(&self) -> Option<&Arc<Stage>> {
        self.rare.as_ref().and_then(|r| r.stage.as_ref())
    }

    /// Handles open on the file.
    pub fn open_handles(&self) -> u32 {
        self.rare.as_ref().map_or(0, |r| r.open_handles)
    }

    pub fn add_open_handle(&mut self) {
        self.rare_mut().open_handles += 1;
    }

    /// One handle fewer; how many are still open.
    pub fn remove_open_handle(&mut self) -> u32 {
        let Some(rare) = self.rare.as_mut() else {
            return 0;
        };
        rare.open_handles = rare.open_handles.saturating_sub(1);
        rare.open_handles
    }

    /// This mount changed the inode's object or attributes just now.
    pub fn mark_changed_now(&mut self) {
        self.rare_mut().changed_at = Some(Instant::now());
    }

    /// Directories: the last listing needed more than one page.
    pub fn large(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.large)
    }

    /// Directories: a listing showed every child in one page (it may be stale now), so
    /// listing it again answers a lookup and those of its siblings in one request.
    pub fn listed_small(&self) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| r.listed_until.is_some() && !r.large)
    }

    /// Directories: entries changed here (mtime and ctime are newer than the marker's).
    pub fn touched(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.touched)
    }

    pub fn set_touched(&mut self) {
        self.rare_mut().touched = true;
    }

    /// Directories: a whole listing was recorded in this mount (it may be stale now).
    pub fn listed_before(&self) -> bool {
        self.listed_until().is_some()
    }

    fn listed_until(&self) -> Option<Instant> {
        self.rare.as_ref().and_then(|r| r.listed_until)
    }

    /// An open that may cache `current` (see [`page_cache::note_open`]): true if the
    /// kernel may keep the pages it holds.
    pub fn note_page_cache(&mut self, current: Option<PageCache>) -> bool {
        if current.is_none() && self.rare.is_none() {
            return false;
        }
        page_cache::note_open(&mut self.rare_mut().page_cache, current)
    }

    /// The record of what the kernel's pages of this file hold, to follow a change of
    /// the file's content with (`page_cache.rs`).
    pub fn page_cache(&mut self) -> &mut Option<PageCache> {
        &mut self.rare_mut().page_cache
    }

    /// A new inode nobody has looked up yet, known from a listing only.
    fn new(
        parent: u64,
        name: &str,
        attr: Attr,
        remote: Option<Remote>,
        valid_until: Instant,
    ) -> Inode {
        Inode {
            parent,
            name: Arc::from(name),
            attr,
            remote,
            meta_known: false,
            content_version: 0,
            valid_until,
            lookups: 0,
            pins: 0,
            detached: false,
            rare: None,
        }
    }
}

pub struct InodeTable {
    /// Boxed: a table of 100,000 inodes then grows by moving pointers, not whole
    /// inodes, and its spare capacity costs 16 bytes a slot instead of an inode.
    inodes: HashMap<u64, Box<Inode>>,
    children: HashMap<(u64, Arc<str>), u64>,
    /// Number of attached inodes under each directory inode.
    kids: HashMap<u64, usize>,
    /// Number of attached directories under each directory inode (its st_nlink - 2).
    subdirs: HashMap<u64, u32>,
    /// Inodes that have a stage.
    staged: HashSet<u64>,
    /// Names removed lately, which answers asked for before their removal must not revive.
    removed: RemovedNames,
    next: u64,
}

impl InodeTable {
    /// `ttl` is the metadata TTL: how long a removed name is remembered (see
    /// [`RemovedNames`]).
    pub fn new(root: Attr, ttl: Duration) -> InodeTable {
        let mut inodes = HashMap::new();
        let mut root = Inode::new(ROOT, "", Attr { ino: ROOT, ..root }, None, far_future());
        root.meta_known = true;
        root.lookups = 1;
        inodes.insert(ROOT, Box::new(root));
        InodeTable {
            inodes,
            children: HashMap::new(),
            kids: HashMap::new(),
            subdirs: HashMap::new(),
            staged: HashSet::new(),
            removed: RemovedNames::new(ttl),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino).map(|i| &**i)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino).map(|i| &mut **i)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&(parent, Arc::from(name))).copied()
    }

    /// The path of `ino` relative to the mount root ("" for the root); None once detached.
    pub fn path(&self, ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let inode = self.inodes.get(&cur)?;
            if inode.detached {
                return None;
            }
            parts.push(&*inode.name);
            cur = inode.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// The path `name` would have under `parent`.
    pub fn child_path(&self, parent: u64, name: &str) -> Option<String> {
        let dir = self.path(parent)?;
        Some(if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        })
    }

    /// Records what S3 (or a change made here) says of `name` under `parent`:
    /// authoritative attributes (with extras, from HEAD or a local change) replace what
    /// is known, a listing's only when the object changed. What a request sent before
    /// this mount last changed the inode says is older than the table and is ignored.
    /// An existing inode keeps its number if the kind agrees (a listing cannot tell
    /// files from symlinks, so it never changes a known non-directory kind); one of
    /// another kind is detached and replaced. Returns the inode number, or None when the
    /// answer was asked for before this mount removed the name (it must not revive it).
    pub fn upsert(&mut self, parent: u64, name: &str, found: Found) -> Option<u64> {
        if self.child(parent, name).is_none()
            && self.removed.removed_after(parent, name, found.asked_at)
        {
            return None;
        }
        Some(self.record(parent, name, found))
    }

    /// [`InodeTable::upsert`] of a change made here (newer than any removal, which took
    /// the table's lock before it).
    pub fn upsert_made_here(&mut self, parent: u64, name: &str, found: Found) -> u64 {
        self.record(parent, name, found)
    }

    fn record(&mut self, parent: u64, name: &str, found: Found) -> u64 {
        let Found {
            mut attr,
            remote,
            extras,
            valid_until,
            asked_at,
        } = found;
        if let Some(ino) = self.child(parent, name) {
            let inode = self
                .inodes
                .get_mut(&ino)
                .expect("child index is consistent");
            if inode.changed_after(asked_at) {
                return ino;
            }
            let same_kind = inode.attr.kind == attr.kind
                || (extras.is_none() && inode.attr.kind != Kind::Dir && attr.kind != Kind::Dir);
            if same_kind {
                // A listing knows less than HEAD: it keeps what HEAD said of the same
                // object, unless its metadata was changed since.
                let same_object = match (&inode.remote, &remote) {
                    (Some(old), Some(new)) => old == new && !old.metadata_changed(new),
                    // A directory's marker has no Last-Modified in a listing: once its
                    // attributes are stale, a listing has them asked for again.
                    (None, None) => extras.is_some() || inode.valid_until > Instant::now(),
                    _ => false,
                };
                if inode.stage().is_none()
                    && extras.is_none()
                    && !same_object
                    && attr.kind == Kind::Dir
                {
                    // A listing knows nothing of a directory but its name: ask again.
                    inode.meta_known = false;
                } else if inode.stage().is_none() && (extras.is_some() || !same_object) {
                    if extras.is_none() && inode.attr.kind != Kind::Dir {
                        attr.kind = inode.attr.kind; // a listing cannot tell; HEAD will
                    }
                    attr.ino = ino;
                    inode.attr = attr;
                    if inode.remote != remote {
                        inode.content_version = inode.content_version.wrapping_add(1);
                    }
                    inode.remote = remote;
                    inode.meta_known = extras.is_some();
                    inode.set_extras(extras.unwrap_or_default());
                }
                inode.valid_until = valid_until;
                return ino;
            }
            self.detach(ino);
        }
        let ino = self.next;
        self.next += 1;
        attr.ino = ino;
        let mut inode = Inode::new(parent, name, attr, remote, valid_until);
        inode.meta_known = extras.is_some();
        inode.set_extras(extras.unwrap_or_default());
        let is_dir = inode.attr.kind == Kind::Dir;
        let key = (parent, inode.name.clone());
        self.inodes.insert(ino, Box::new(inode));
        self.children.insert(key, ino);
        self.link_to_parent(parent, is_dir);
        ino
    }

    /// This mount changed `ino` (its object or its attributes) just now.
    pub fn mark_changed(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.mark_changed_now();
        }
    }

    /// The directories the table knows under directory `ino` (attached ones only).
    pub fn subdir_count(&self, ino: u64) -> u32 {
        self.subdirs.get(&ino).copied().unwrap_or(0)
    }

    pub fn stage(&self, ino: u64) -> Option<Arc<Stage>> {
        self.inodes.get(&ino).and_then(|i| i.stage().cloned())
    }

    pub fn set_stage(&mut self, ino: u64, stage: Option<Arc<Stage>>) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        if stage.is_some() {
            self.staged.insert(ino);
        } else {
            self.staged.remove(&ino);
        }
        if stage.is_some() || inode.rare.is_some() {
            inode.rare_mut().stage = stage;
        }
        self.remove_if_unused(ino);
    }

    fn link_to_parent(&mut self, parent: u64, is_dir: bool) {
        *self.kids.entry(parent).or_default() += 1;
        if is_dir {
            *self.subdirs.entry(parent).or_default() += 1;
        }
    }

    fn unlink_from_parent(&mut self, parent: u64, is_dir: bool) {
        if let Some(n) = self.kids.get_mut(&parent) {
            *n -= 1;
            if *n == 0 {
                self.kids.remove(&parent);
            }
        }
        if is_dir && let Some(n) = self.subdirs.get_mut(&parent) {
            *n -= 1;
            if *n == 0 {
                self.subdirs.remove(&parent);
            }
        }
    }

    /// Removes the name of `ino`; the inode lives on while the kernel or a handle uses it.
    pub fn detach(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino)
            && !inode.detached
        {
            inode.detached = true;
            let key = (inode.parent, inode.name.clone());
            let is_dir = inode.attr.kind == Kind::Dir;
            if self.children.get(&key) == Some(&ino) {
                self.children.remove(&key);
                self.removed.note(key.0, key.1.clone(), Instant::now());
            }
            self.unlink_from_parent(key.0, is_dir);
        }
        self.remove_if_unused(ino);
    }

    /// Moves `ino` to `new_parent`/`new_name`, detaching whatever was there.
    pub fn rename(&mut self, ino: u64, new_parent: u64, new_name: &str) {
        if let Some(existing) = self.child(new_parent, new_name)
            && existing != ino
        {
            self.detach(existing);
        }
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        let old = (inode.parent, inode.name.clone());
        let was_detached = inode.detached;
        let is_dir = inode.attr.kind == Kind::Dir;
        let new_name: Arc<str> = Arc::from(new_name);
        inode.parent = new_parent;
        inode.name = new_name.clone();
        inode.detached = false;
        if self.children.get(&old) == Some(&ino) {
            self.children.remove(&old);
            self.removed.note(old.0, old.1.clone(), Instant::now());
        }
        if !was_detached {
            self.unlink_from_parent(old.0, is_dir);
        }
        self.children.insert((new_parent, new_name), ino);
        self.link_to_parent(new_parent, is_dir);
    }

    /// Records a complete listing of directory `ino` (or that it was created empty).
    pub fn mark_listed(&mut self, ino: u64, until: Instant, large: bool) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            let rare = inode.rare_mut();
            rare.listed_until = Some(until);
            rare.large = large;
        }
    }

    /// Records the range of names a window listing of directory `ino` held.
    pub fn mark_window(&mut self, ino: u64, window: Window) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.rare_mut().window = Some(Box::new(window));
        }
    }

    /// Is every child of directory `ino` named `name` (file or directory) known right
    /// now, from a window listing?
    pub fn window_covers(&self, ino: u64, name: &str) -> bool {
        self.inodes
            .get(&ino)
            .and_then(|i| i.rare.as_ref())
            .and_then(|r| r.window.as_ref())
            .is_some_and(|w| w.covers(name))
    }

    /// Is every child of directory `ino` known right now?
    pub fn listing_fresh(&self, ino: u64) -> bool {
        self.inodes
            .get(&ino)
            .and_then(|i| i.listed_until())
            .is_some_and(|t| t > Instant::now())
    }

    /// Drops inodes the kernel never heard of (listed but not looked up) once their
    /// attributes are stale, so long listings do not accumulate.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        let stale: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(ino, i)| {
                **ino != ROOT
                    && i.lookups == 0
                    && i.open_handles() == 0
                    && i.pins == 0
                    && i.stage().is_none()
                    && i.valid_until < now
            })
            .map(|(ino, _)| *ino)
            .collect();
        for ino in stale {
            self.remove_if_unused(ino);
        }
    }

    pub fn add_lookup(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_add(1);
        }
    }

    /// Keeps `ino` in the table until [`InodeTable::unpin`], whatever its lookup count.
    pub fn pin(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.pins += 1;
        }
    }

    /// Undoes one [`InodeTable::pin`]; an entry nobody refers to any more goes at once
    /// if its attributes are stale (else the sweep takes it later).
    pub fn unpin(&mut self, ino: u64) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.pins = inode.pins.saturating_sub(1);
        if inode.valid_until < Instant::now() {
            self.remove_if_unused(ino);
        }
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            // (u32: the kernel counts one lookup per reply naming the inode, and sends
            // them back in FORGETs; four billion outstanding ones cannot happen.)
            inode.lookups = inode
                .lookups
                .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        }
        self.remove_if_unused(ino);
    }

    /// Drops an inode nobody refers to any more (the kernel forgot it, no handle is
    /// open, no stage is waiting). Its name mapping goes with it.
    pub fn remove_if_unused(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        let unused = self.inodes.get(&ino).is_some_and(|i| {
            i.lookups == 0
                && i.open_handles() == 0
                && i.pins == 0
                && i.stage().is_none()
                && !self.has_children(ino)
        });
        if unused {
            let inode = self.inodes.remove(&ino).expect("checked above");
            let key = (inode.parent, inode.name);
            if self.children.get(&key) == Some(&ino) {
                self.children.remove(&key);
            }
            if !inode.detached {
                self.unlink_from_parent(key.0, inode.attr.kind == Kind::Dir);
                // The parent's listing no longer has every child in the table.
                if let Some(rare) = self.inodes.get_mut(&key.0).and_then(|p| p.rare.as_mut()) {
                    rare.listed_until = None;
                    rare.window = None;
                }
            }
            let parent = inode.parent;
            if self.inodes.get(&parent).is_some_and(|p| p.detached) {
                self.remove_if_unused(parent);
            }
        }
    }

    /// Does any live inode name `ino` as its parent? (Children keep parents alive so
    /// that paths can always be derived.)
    fn has_children(&self, ino: u64) -> bool {
        self.kids.contains_key(&ino)
    }

    /// Files under `parent` that exist only locally (staged, never uploaded yet).
    pub fn local_only_children(&self, parent: u64) -> Vec<(String, u64)> {
        self.staged
            .iter()
            .filter_map(|ino| self.inodes.get(ino).map(|i| (ino, i)))
            .filter(|(_, i)| {
                i.parent == parent && !i.detached && i.stage().is_some_and(|s| s.is_local_only())
            })
            .map(|(ino, i)| (i.name.to_string(), *ino))
            .collect()
    }

    /// Every inode with a stage.
    pub fn staged(&self) -> Vec<(u64, Arc<Stage>)> {
        self.staged
            .iter()
            .filter_map(|ino| Some((*ino, self.inodes.get(ino)?.stage()?.clone())))
            .collect()
    }

    /// Every inode with a stage that still has data S3 does not have.
    pub fn dirty_stages(&self) -> Vec<(u64, Arc<Stage>)> {
        self.staged
            .iter()
            .filter_map(|ino| {
                self.inodes
                    .get(ino)
                    .and_then(|i| i.stage())
                    .filter(|s| s.is_dirty() && s.broken().is_none())
                    .map(|s| (*ino, s.clone()))
            })
            .collect()
    }
}

impl InodeTable {
    /// Whether a file below directory `dir` has data S3 does not have yet.
    pub fn holds_pending(&self, dir: u64) -> bool {
        let below = |ino: u64| {
            let mut cur = ino;
            while let Some(inode) = self.inodes.get(&cur) {
                if inode.detached || cur == ROOT {
                    return false;
                }
                if inode.parent == dir {
                    return true;
                }
                cur = inode.parent;
            }
            false
        };
        self.dirty_stages().into_iter().any(|(ino, _)| below(ino))
    }
}

pub fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
#[path = "inodes_tests.rs"]
mod tests;
