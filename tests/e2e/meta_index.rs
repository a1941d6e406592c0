//! The persistent metadata index: a listing after a remount costs no HEAD for objects
//! unchanged since they were read, and an object changed by another client in any way
//! (content, metadata-only copy, delete, re-create with the same size) is never shown
//! with the index's old metadata. Core tests against the in-memory store (which counts
//! requests), and one through a real mount against the local Garage.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use s3mount::fs::{DirEntry, S3Fs};
use s3mount::store::ObjectStore;
use s3mount::store::memory::{MemoryStore, Op};

use crate::common::{S3Env, TestMount, core_config, runtime, unique_prefix};

const HOUR: Duration = Duration::from_secs(3600);

fn core_fs(store: &Arc<MemoryStore>, cache: &Path) -> S3Fs<MemoryStore> {
    S3Fs::new(store.clone(), core_config("p/", cache)).unwrap()
}

async fn list(fs: &S3Fs<MemoryStore>, ino: u64) -> Vec<DirEntry> {
    let dh = fs.opendir(ino).await.unwrap();
    let (mut all, mut offset) = (Vec::new(), 0);
    loop {
        let batch = fs.readdir(dh, offset).await.unwrap();
        let Some(last) = batch.last() else { break };
        offset = last.offset;
        all.extend(batch);
    }
    fs.releasedir(dh);
    all.retain(|e| e.name != "." && e.name != "..");
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

fn perm_of(entries: &[DirEntry], name: &str) -> Option<u16> {
    entries.iter().find(|e| e.name == name).map(|e| e.attr.perm)
}

/// An object as s3fs (or an earlier mount) wrote it an hour ago.
fn put_old(store: &MemoryStore, key: &str, data: &[u8], mode: u32) {
    let mode = (0o100000 | mode).to_string();
    store.insert_with_meta(key, data, &[("mode", &mode), ("uid", "7"), ("gid", "8")]);
    store.age(key, HOUR);
}

#[tokio::test]
async fn remount_lists_unchanged_objects_without_heads() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    for i in 0..300 {
        put_old(
            &store,
            &format!("p/f{i:03}"),
            b"doc",
            0o600 + (i % 8) as u32,
        );
    }
    let first = core_fs(&store, cache.path());
    let before = store.count(Op::Head);
    let entries = list(&first, 1).await;
    assert_eq!(entries.len(), 300);
    assert_eq!(
        store.count(Op::Head) - before,
        300,
        "a cold listing HEADs each"
    );
    first.shutdown().await;
    drop(first);

    let second = core_fs(&store, cache.path());
    let before = store.count(Op::Head);
    let again = list(&second, 1).await;
    assert_eq!(store.count(Op::Head) - before, 0, "no HEAD after a remount");
    for (a, b) in entries.iter().zip(&again) {
        assert_eq!(
            (&a.name, a.attr.perm, a.attr.uid),
            (&b.name, b.attr.perm, b.attr.uid)
        );
    }
    assert_eq!(perm_of(&again, "f003"), Some(0o603));
    assert_eq!(again[0].attr.uid, 7);
}

#[tokio::test]
async fn another_clients_changes_are_never_masked() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    for name in ["content", "metaonly", "deleted", "recreated", "same"] {
        put_old(&store, &format!("p/{name}"), b"0123456789", 0o640);
    }
    let fs = core_fs(&store, cache.path());
    list(&fs, 1).await;
    fs.shutdown().await;
    drop(fs);

    // Another client: new content; the same content with new metadata (a copy onto
    // itself keeps the ETag); a delete; a delete and re-create with the same size and
    // the same bytes (only Last-Modified tells).
    put_old(&store, "p/content", b"9876543210", 0o640);
    store.insert_with_meta("p/metaonly", b"0123456789", &[("mode", "33279")]);
    store.delete("p/deleted").await.unwrap();
    store.delete("p/recreated").await.unwrap();
    store.insert_with_meta("p/recreated", b"0123456789", &[("mode", "33188")]);

    let fs = core_fs(&store, cache.path());
    let before = store.count(Op::Head);
    let entries = list(&fs, 1).await;
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["content", "metaonly", "recreated", "same"]);
    assert_eq!(perm_of(&entries, "metaonly"), Some(0o777));
    assert_eq!(perm_of(&entries, "recreated"), Some(0o644));
    assert_eq!(perm_of(&entries, "same"), Some(0o640));
    assert_eq!(
        store.count(Op::Head) - before,
        3,
        "the three changed objects are HEAD'd again, the unchanged one is not"
    );
}

#[tokio::test]
async fn a_damaged_index_is_rebuilt() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    for i in 0..20 {
        put_old(&store, &format!("p/f{i}"), b"doc", 0o600);
    }
    let fs = core_fs(&store, cache.path());
    list(&fs, 1).await;
    fs.shutdown().await;
    drop(fs);
    let file = cache.path().join("meta-index.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    // Truncated mid-file, then garbage.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let fs = core_fs(&store, cache.path());
    let before = store.count(Op::Head);
    assert_eq!(list(&fs, 1).await.len(), 20);
    assert_eq!(
        store.count(Op::Head) - before,
        20,
        "nothing trusted from it"
    );
    fs.shutdown().await;
    drop(fs);
    std::fs::write(&file, b"not an index at all").unwrap();
    let fs = core_fs(&store, cache.path());
    assert_eq!(list(&fs, 1).await.len(), 20);
    fs.shutdown().await;
    drop(fs);
    // Rebuilt: the next mount uses it again.
    let fs = core_fs(&store, cache.path());
    let before = store.count(Op::Head);
    assert_eq!(list(&fs, 1).await.len(), 20);
    assert_eq!(store.count(Op::Head) - before, 0);
}

/// Through a real mount on Garage: after a remount with the same cache dir, modes come
/// from the index for unchanged objects, and every kind of change by another client
/// shows.
#[test]
fn remount_shows_other_clients_changes() {
    use std::os::unix::fs::PermissionsExt;
    let env = S3Env::get();
    let (client, rt) = (env.client(), runtime());
    let prefix = unique_prefix("metaindex");
    let put_mode = |name: &str, data: &[u8], mode: u32| {
        let put = client
            .put_object()
            .bucket(&env.bucket)
            .key(format!("{prefix}{name}"))
            .metadata("mode", (0o100000 | mode).to_string())
            .body(data.to_vec().into());
        rt.block_on(put.send()).unwrap();
    };
    let delete = |name: &str| {
        let delete = client
            .delete_object()
            .bucket(&env.bucket)
            .key(format!("{prefix}{name}"));
        rt.block_on(delete.send()).unwrap();
    };
    for name in ["content", "metaonly", "deleted", "recreated", "same"] {
        put_mode(name, b"0123456789", 0o640);
    }
    // Objects are indexed once settled (Last-Modified some seconds in the past).
    std::thread::sleep(s3mount::meta_index::SETTLED + Duration::from_secs(1));
    let cache = tempfile::tempdir().unwrap();
    let mode_of = |m: &TestMount, name: &str| {
        std::fs::metadata(m.path(name))
            .ok()
            .map(|md| md.permissions().mode() & 0o7777)
    };
    {
        let m = TestMount::with_cache(&prefix, cache.path(), &[], None);
        assert_eq!(std::fs::read_dir(m.mountpoint()).unwrap().count(), 5);
        assert_eq!(mode_of(&m, "same"), Some(0o640));
        m.unmount();
    }
    assert!(cache.path().join("meta-index.redb").exists());
    put_mode("content", b"9876543210", 0o640);
    put_mode("metaonly", b"0123456789", 0o604);
    delete("deleted");
    delete("recreated");
    put_mode("recreated", b"0123456789", 0o600);
    let m = TestMount::with_cache(&prefix, cache.path(), &[], None);
    let mut names: Vec<_> = std::fs::read_dir(m.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["content", "metaonly", "recreated", "same"]);
    assert_eq!(mode_of(&m, "same"), Some(0o640));
    assert_eq!(mode_of(&m, "metaonly"), Some(0o604));
    assert_eq!(mode_of(&m, "recreated"), Some(0o600));
    assert_eq!(std::fs::read(m.path("content")).unwrap(), b"9876543210");
}
