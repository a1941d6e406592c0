//! Unit tests of the inode table.

use std::time::{Duration, UNIX_EPOCH};

use super::*;

fn attr(kind: Kind, size: u64, perm: u16) -> Attr {
    let t = UNIX_EPOCH + Duration::from_secs(1_000);
    Attr {
        ino: 0,
        kind,
        size,
        mtime: t,
        ctime: t,
        atime: t,
        perm,
        uid: 0,
        gid: 0,
        rdev: 0,
        nlink: 1,
    }
}

fn remote(etag: &str, size: u64, modified_secs: u64) -> Option<Remote> {
    Some(Remote {
        etag: ETag(etag.into()),
        size,
        modified: Some(UNIX_EPOCH + Duration::from_secs(modified_secs)),
    })
}

fn file(size: u64, perm: u16) -> Attr {
    attr(Kind::File, size, perm)
}

fn dir() -> Attr {
    attr(Kind::Dir, 0, 0o755)
}

fn table() -> InodeTable {
    InodeTable::new(dir(), Duration::from_secs(60))
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// What a request sent now says.
fn found(attr: Attr, remote: Option<Remote>, extras: Option<Extras>) -> Found {
    Found {
        attr,
        remote,
        extras,
        valid_until: soon(),
        asked_at: Instant::now(),
    }
}

/// What HEAD says of a file: attributes, the object and its (empty) extras.
fn head(t: &mut InodeTable, parent: u64, name: &str, a: Attr, r: Option<Remote>) -> u64 {
    t.upsert(parent, name, found(a, r, Some(Extras::default())))
        .expect("not removed")
}

/// What a listing says of a name.
fn listed(t: &mut InodeTable, parent: u64, name: &str, a: Attr, r: Option<Remote>) -> u64 {
    t.upsert(parent, name, found(a, r, None))
        .expect("not removed")
}

#[test]
fn upsert_keeps_the_number_and_what_head_said_of_the_same_object() {
    let mut t = table();
    let ino = head(
        &mut t,
        ROOT,
        "a",
        attr(Kind::Symlink, 3, 0o777),
        remote("e1", 3, 5),
    );
    assert_eq!(t.child(ROOT, "a"), Some(ino));
    assert!(t.get(ino).unwrap().meta_known);
    // A listing of the same object (same ETag, size and Last-Modified) says less.
    let again = listed(&mut t, ROOT, "a", file(3, 0o644), remote("e1", 3, 5));
    assert_eq!(again, ino);
    let inode = t.get(ino).unwrap();
    assert_eq!((inode.attr.kind, inode.attr.perm), (Kind::Symlink, 0o777));
    assert!(inode.meta_known);
    assert_eq!(inode.content_version, 0);
}

#[test]
fn upsert_takes_a_listing_of_a_changed_object_and_asks_again() {
    let mut t = table();
    let ino = head(&mut t, ROOT, "f", file(3, 0o600), remote("e1", 3, 5));
    // New content: new ETag.
    listed(&mut t, ROOT, "f", file(9, 0o644), remote("e2", 9, 6));
    let inode = t.get(ino).unwrap();
    assert_eq!((inode.attr.size, inode.content_version), (9, 1));
    assert!(
        !inode.meta_known,
        "a listing's attributes are defaults until a HEAD"
    );
    // Metadata-only change (a copy onto itself by another client): Last-Modified.
    head(&mut t, ROOT, "f", file(9, 0o644), remote("e2", 9, 5));
    listed(&mut t, ROOT, "f", file(9, 0o644), remote("e2", 9, 70));
    assert!(!t.get(ino).unwrap().meta_known);
}

#[test]
fn upsert_replaces_an_inode_of_another_kind_and_detaches_the_old_one() {
    let mut t = table();
    let file = listed(&mut t, ROOT, "x", file(1, 0o644), remote("e", 1, 1));
    let dir = listed(&mut t, ROOT, "x", dir(), None);
    assert_ne!(file, dir);
    assert_eq!(t.child(ROOT, "x"), Some(dir));
    assert!(t.get(file).is_none_or(|i| i.detached));
    assert_eq!(t.path(dir).as_deref(), Some("x"));
}

#[test]
fn paths_follow_renames_and_end_at_detach() {
    let mut t = table();
    let d = head(&mut t, ROOT, "d", dir(), None);
    let f = head(&mut t, d, "f", file(1, 0o644), None);
    assert_eq!(t.path(f).as_deref(), Some("d/f"));
    t.rename(d, ROOT, "e");
    assert_eq!(t.path(f).as_deref(), Some("e/f"));
    assert_eq!(t.child_path(d, "g").as_deref(), Some("e/g"));
    t.detach(f);
    assert_eq!(t.path(f), None);
    assert_eq!(t.child(d, "f"), None);
}

#[test]
fn forgotten_inodes_go_but_parents_stay_while_children_live() {
    let mut t = table();
    let d = listed(&mut t, ROOT, "d", dir(), None);
    let f = listed(&mut t, d, "f", file(1, 0o644), None);
    t.add_lookup(d);
    t.add_lookup(f);
    t.forget(d, 1);
    assert!(t.get(d).is_some(), "a parent of a live inode stays");
    t.forget(f, 1);
    assert!(t.get(f).is_none());
    t.remove_if_unused(d);
    assert!(t.get(d).is_none());
    assert!(t.get(ROOT).is_some());
}

#[test]
fn what_s3_said_before_a_change_made_here_does_not_undo_it() {
    let mut t = table();
    let ino = head(&mut t, ROOT, "f", file(3, 0o600), remote("e1", 3, 5));
    // A listing (or HEAD) is sent, then this mount uploads a new version...
    let asked_before = Instant::now();
    std::thread::sleep(Duration::from_millis(2));
    t.get_mut(ino).unwrap().remote = remote("e2", 7, 6);
    t.mark_changed(ino);
    // ... and the old answer arrives afterwards: it changes nothing.
    let stale = Found {
        asked_at: asked_before,
        ..found(file(3, 0o644), remote("e1", 3, 5), Some(Extras::default()))
    };
    assert_eq!(t.upsert(ROOT, "f", stale), Some(ino));
    let inode = t.get(ino).unwrap();
    assert_eq!(
        (
            inode.remote.as_ref().unwrap().etag.0.as_str(),
            inode.attr.perm
        ),
        ("e2", 0o600)
    );
    // An answer to a request sent after the change is taken.
    head(&mut t, ROOT, "f", file(7, 0o644), remote("e3", 7, 7));
    assert_eq!(t.get(ino).unwrap().attr.perm, 0o644);
}

#[test]
fn an_answer_asked_before_this_mount_removed_a_name_does_not_bring_it_back() {
    let mut t = table();
    let ino = listed(&mut t, ROOT, "f", file(3, 0o644), remote("e1", 3, 5));
    let moved = listed(&mut t, ROOT, "old", file(3, 0o644), remote("e2", 3, 5));
    // A listing page (or HEAD) is sent; meanwhile this mount unlinks f and renames old.
    let asked_before = Instant::now();
    std::thread::sleep(Duration::from_millis(2));
    t.detach(ino);
    t.rename(moved, ROOT, "new");
    // The late answer still shows both names: neither comes back.
    for name in ["f", "old"] {
        let late = Found {
            asked_at: asked_before,
            ..found(file(3, 0o644), remote("e1", 3, 5), None)
        };
        assert_eq!(t.upsert(ROOT, name, late), None, "{name} came back");
        assert_eq!(t.child(ROOT, name), None);
    }
    // An answer asked for after the removal is news (another client made the name again).
    let again = listed(&mut t, ROOT, "f", file(9, 0o644), remote("e3", 9, 9));
    assert_ne!(again, ino);
    assert_eq!(t.child(ROOT, "f"), Some(again));
    // A change made here is newer than any removal.
    t.detach(again);
    let made = t.upsert_made_here(
        ROOT,
        "f",
        found(file(1, 0o600), None, Some(Extras::default())),
    );
    assert_eq!(t.child(ROOT, "f"), Some(made));
}

#[test]
fn subdirectories_are_counted_across_create_rename_replace_and_detach() {
    let mut t = table();
    let a = head(&mut t, ROOT, "a", dir(), None);
    let b = head(&mut t, ROOT, "b", dir(), None);
    head(&mut t, a, "f", file(1, 0o644), remote("e", 1, 5));
    let sub = head(&mut t, a, "sub", dir(), None);
    assert_eq!((t.subdir_count(ROOT), t.subdir_count(a)), (2, 1));
    t.rename(sub, b, "moved");
    assert_eq!((t.subdir_count(a), t.subdir_count(b)), (0, 1));
    // A file listed where the directory was replaces it.
    listed(&mut t, b, "moved", file(2, 0o644), remote("x", 2, 6));
    assert_eq!(t.subdir_count(b), 0);
    let c = head(&mut t, b, "c", dir(), None);
    t.detach(c);
    assert_eq!(t.subdir_count(b), 0);
    t.rename(a, b, "a2");
    assert_eq!((t.subdir_count(ROOT), t.subdir_count(b)), (1, 1));
}

/// An inode of a listed entry fits glibc's 208-byte chunk (a request of at most 200
/// bytes): a folder of 100,000 listed entries costs 3 MiB less than at 232 bytes.
#[test]
fn an_inode_is_at_most_200_bytes() {
    assert!(
        std::mem::size_of::<Inode>() <= 200,
        "{}",
        std::mem::size_of::<Inode>()
    );
}
