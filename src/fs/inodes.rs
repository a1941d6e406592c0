//! The inode table: inode numbers ↔ (parent, name), attributes with their expiry, the
//! kernel's lookup counts, and the stage of files being written. Paths are derived by
//! walking parents, so renaming a directory is one update. Numbers are never reused.
//! It also counts the attached subdirectories of each directory, for its link count.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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

pub struct Inode {
    pub parent: u64,
    pub name: String,
    pub attr: Attr,
    pub remote: Option<Remote>,
    /// The object's metadata was read (or written here): `attr` and `extras` are whole.
    /// Entries known from a listing only have defaults until a HEAD.
    pub meta_known: bool,
    pub extras: Extras,
    /// Counts the content changes of the object (uploads here, other versions seen).
    pub content_version: u64,
    /// Directories: entries changed here, so mtime and ctime are newer in memory than
    /// on the marker.
    pub touched: bool,
    /// Until when `attr` may be served without asking S3.
    pub valid_until: Instant,
    pub lookups: u64,
    pub open_handles: u32,
    stage: Option<Arc<Stage>>,
    /// Unlinked or replaced: no longer reachable by name.
    pub detached: bool,
    /// Directories: every child is in the table until then (a full listing, or created
    /// empty here), so a name that is not there does not exist.
    pub listed_until: Option<Instant>,
    /// Files: the version whose pages the kernel may still cache from the last open.
    pub page_cache_etag: Option<ETag>,
    /// Directories: the last listing needed more than one page, so a lookup miss asks
    /// S3 about the one name instead of listing the directory again.
    pub large: bool,
    /// When this mount last changed the inode's object or attributes.
    pub changed_at: Option<Instant>,
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
        self.changed_at.is_some_and(|c| c > t)
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
            name: name.to_string(),
            attr,
            remote,
            meta_known: false,
            extras: Extras::default(),
            content_version: 0,
            touched: false,
            valid_until,
            lookups: 0,
            open_handles: 0,
            stage: None,
            detached: false,
            listed_until: None,
            large: false,
            page_cache_etag: None,
            changed_at: None,
        }
    }
}

pub struct InodeTable {
    inodes: HashMap<u64, Inode>,
    children: HashMap<(u64, String), u64>,
    /// Number of attached inodes under each directory inode.
    kids: HashMap<u64, usize>,
    /// Number of attached directories under each directory inode (its st_nlink - 2).
    subdirs: HashMap<u64, u32>,
    /// Inodes that have a stage.
    staged: HashSet<u64>,
    next: u64,
}

impl InodeTable {
    pub fn new(root: Attr) -> InodeTable {
        let mut inodes = HashMap::new();
        let mut root = Inode::new(ROOT, "", Attr { ino: ROOT, ..root }, None, far_future());
        root.meta_known = true;
        root.lookups = 1;
        inodes.insert(ROOT, root);
        InodeTable {
            inodes,
            children: HashMap::new(),
            kids: HashMap::new(),
            subdirs: HashMap::new(),
            staged: HashSet::new(),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&(parent, name.to_string())).copied()
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
            parts.push(inode.name.as_str());
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
    /// another kind is detached and replaced. Returns the inode number.
    pub fn upsert(&mut self, parent: u64, name: &str, found: Found) -> u64 {
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
                if inode.stage.is_none()
                    && extras.is_none()
                    && !same_object
                    && attr.kind == Kind::Dir
                {
                    // A listing knows nothing of a directory but its name: ask again.
                    inode.meta_known = false;
                } else if inode.stage.is_none() && (extras.is_some() || !same_object) {
                    if extras.is_none() && inode.attr.kind != Kind::Dir {
                        attr.kind = inode.attr.kind; // a listing cannot tell; HEAD will
                    }
                    attr.ino = ino;
                    inode.attr = attr;
                    if inode.remote != remote {
                        inode.content_version += 1;
                    }
                    inode.remote = remote;
                    inode.meta_known = extras.is_some();
                    inode.extras = extras.unwrap_or_default();
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
        inode.extras = extras.unwrap_or_default();
        let is_dir = inode.attr.kind == Kind::Dir;
        self.inodes.insert(ino, inode);
        self.children.insert((parent, name.to_string()), ino);
        self.link_to_parent(parent, is_dir);
        ino
    }

    /// This mount changed `ino` (its object or its attributes) just now.
    pub fn mark_changed(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.changed_at = Some(Instant::now());
        }
    }

    /// The directories the table knows under directory `ino` (attached ones only).
    pub fn subdir_count(&self, ino: u64) -> u32 {
        self.subdirs.get(&ino).copied().unwrap_or(0)
    }

    pub fn stage(&self, ino: u64) -> Option<Arc<Stage>> {
        self.inodes.get(&ino).and_then(|i| i.stage.clone())
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
        inode.stage = stage;
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
        inode.parent = new_parent;
        inode.name = new_name.to_string();
        inode.detached = false;
        if self.children.get(&old) == Some(&ino) {
            self.children.remove(&old);
        }
        if !was_detached {
            self.unlink_from_parent(old.0, is_dir);
        }
        self.children
            .insert((new_parent, new_name.to_string()), ino);
        self.link_to_parent(new_parent, is_dir);
    }

    /// Records a complete listing of directory `ino` (or that it was created empty).
    pub fn mark_listed(&mut self, ino: u64, until: Instant, large: bool) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.listed_until = Some(until);
            inode.large = large;
        }
    }

    /// Is every child of directory `ino` known right now?
    pub fn listing_fresh(&self, ino: u64) -> bool {
        self.inodes
            .get(&ino)
            .and_then(|i| i.listed_until)
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
                    && i.open_handles == 0
                    && i.stage.is_none()
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
            inode.lookups += 1;
        }
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(n);
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
            i.lookups == 0 && i.open_handles == 0 && i.stage.is_none() && !self.has_children(ino)
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
                if let Some(parent) = self.inodes.get_mut(&key.0) {
                    parent.listed_until = None;
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
                i.parent == parent
                    && !i.detached
                    && i.stage.as_ref().is_some_and(|s| s.is_local_only())
            })
            .map(|(ino, i)| (i.name.clone(), *ino))
            .collect()
    }

    /// Every inode with a stage.
    pub fn staged(&self) -> Vec<(u64, Arc<Stage>)> {
        self.staged
            .iter()
            .filter_map(|ino| Some((*ino, self.inodes.get(ino)?.stage.clone()?)))
            .collect()
    }

    /// Every inode with a stage that still has data S3 does not have.
    pub fn dirty_stages(&self) -> Vec<(u64, Arc<Stage>)> {
        self.staged
            .iter()
            .filter_map(|ino| {
                self.inodes
                    .get(ino)
                    .and_then(|i| i.stage.as_ref())
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
