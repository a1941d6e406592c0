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
    read_dir_handle(fs, dh).await
}

/// Every entry of the open directory `dh` but `.` and `..`, sorted; releases it.
async fn read_dir_handle(fs: &S3Fs<MemoryStore>, dh: u64) -> Vec<DirEntry> {
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

// The shared metadata index (`--shared-metadata-index`): two mounts with their own cache
// dirs stand for two hosts.

fn shared_fs(store: &Arc<MemoryStore>, cache: &Path) -> S3Fs<MemoryStore> {
    let mut cfg = core_config("p/", cache);
    cfg.shared_metadata_index = true;
    S3Fs::new(store.clone(), cfg).unwrap()
}

/// The key of the root's shared index object of a mount of `p/`.
fn root_index_key() -> String {
    s3mount::layout::Layout::new("p/").shared_index_key("", s3mount::shared_index::FORMAT)
}

/// Waits (bounded) until the background write made the object at `key` differ from
/// `before`; returns it.
async fn written(store: &MemoryStore, key: &str, before: Option<&[u8]>) -> bytes::Bytes {
    for _ in 0..100 {
        if let Some(object) = store.object(key)
            && Some(&object[..]) != before
        {
            return object;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the shared index object {key} was not written");
}

#[tokio::test]
async fn a_second_host_lists_from_the_shared_index_without_heads() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..200 {
        put_old(
            &store,
            &format!("p/f{i:03}"),
            b"doc",
            0o600 + (i % 8) as u32,
        );
    }
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host_a = shared_fs(&store, cache_a.path());
    let before = store.count(Op::Head);
    let on_a = list(&host_a, 1).await;
    assert_eq!(store.count(Op::Head) - before, 200);
    written(&store, &root_index_key(), None).await;

    let host_b = shared_fs(&store, cache_b.path());
    let (heads, gets) = (store.count(Op::Head), store.count(Op::Get));
    let on_b = list(&host_b, 1).await;
    assert_eq!(
        store.count(Op::Head) - heads,
        0,
        "no HEAD on the second host"
    );
    assert_eq!(
        store.count(Op::Get) - gets,
        1,
        "one GET of the index object"
    );
    assert_eq!(on_b.len(), 200, "the index itself is not listed");
    for (a, b) in on_a.iter().zip(&on_b) {
        assert_eq!(
            (&a.name, a.attr.perm, a.attr.uid, a.attr.gid),
            (&b.name, b.attr.perm, b.attr.uid, b.attr.gid)
        );
    }
    assert_eq!(perm_of(&on_b, "f005"), Some(0o605));
    // Copied into host B's local index: a remount of B needs neither HEAD nor GET.
    host_b.shutdown().await;
    drop(host_b);
    let host_b = shared_fs(&store, cache_b.path());
    let (heads, gets) = (store.count(Op::Head), store.count(Op::Get));
    assert_eq!(list(&host_b, 1).await.len(), 200);
    assert_eq!(store.count(Op::Head) - heads, 0);
    assert_eq!(store.count(Op::Get) - gets, 0);
    // Nothing was HEAD'd: the object is not rewritten.
    assert_eq!(store.count(Op::Put), 1);
}

/// An unmount right after a listing lets the index object's write finish: the next
/// host finds it.
#[tokio::test]
async fn unmount_waits_for_the_shared_index_write() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..40 {
        put_old(&store, &format!("p/f{i:03}"), b"doc", 0o640);
    }
    let cache = tempfile::tempdir().unwrap();
    let host_a = shared_fs(&store, cache.path());
    list(&host_a, 1).await;
    store.delay(Op::Put, Duration::from_millis(500));
    host_a.shutdown().await;
    drop(host_a);
    assert!(
        store.object(&root_index_key()).is_some(),
        "written before the unmount returned"
    );
}

/// The index object is asked for when the directory is opened, so its GET runs while
/// the first LIST does; the listing then uses that answer (still one GET, no HEAD).
#[tokio::test]
async fn a_second_hosts_opendir_fetches_the_index_ahead_of_the_listing() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..40 {
        put_old(&store, &format!("p/f{i:03}"), b"doc", 0o640);
    }
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    list(&shared_fs(&store, cache_a.path()), 1).await;
    written(&store, &root_index_key(), None).await;

    let host_b = shared_fs(&store, cache_b.path());
    let (heads, gets, lists) = (
        store.count(Op::Head),
        store.count(Op::Get),
        store.count(Op::List),
    );
    let dh = host_b.opendir(1).await.unwrap();
    for _ in 0..100 {
        if store.count(Op::Get) > gets {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.count(Op::Get) - gets, 1, "the GET starts at opendir");
    assert_eq!(store.count(Op::List), lists, "before any LIST");
    let listed = read_dir_handle(&host_b, dh).await;
    assert_eq!(listed.len(), 40);
    assert!(
        listed
            .iter()
            .all(|e| e.attr.perm == 0o640 && e.attr.uid == 7)
    );
    assert_eq!(
        store.count(Op::Head) - heads,
        0,
        "answered by the prefetched object"
    );
    assert_eq!(store.count(Op::Get) - gets, 1);
    // Listed once here, and known to its local index: no fetch ahead any more.
    let gets = store.count(Op::Get);
    let dh = host_b.opendir(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    host_b.releasedir(dh);
    assert_eq!(store.count(Op::Get), gets);
}

/// A second host keeps what the shared object answered in its local index (written at
/// the end of the listing pass, not batch by batch): restarted, it lists with neither
/// HEADs nor the object.
#[tokio::test]
async fn a_second_hosts_shared_answers_serve_its_next_mount() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..600 {
        put_old(&store, &format!("p/f{i:03}"), b"doc", 0o640);
    }
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    list(&shared_fs(&store, cache_a.path()), 1).await;
    written(&store, &root_index_key(), None).await;
    let heads = store.count(Op::Head);
    let host_b = shared_fs(&store, cache_b.path());
    assert_eq!(list(&host_b, 1).await.len(), 600);
    assert_eq!(
        store.count(Op::Head),
        heads,
        "answered by the shared object"
    );
    host_b.shutdown().await;
    drop(host_b);
    store.insert(&root_index_key(), b"damaged");
    let host_b = shared_fs(&store, cache_b.path());
    let listed = list(&host_b, 1).await;
    assert_eq!(listed.len(), 600);
    assert!(
        listed
            .iter()
            .all(|e| e.attr.perm == 0o640 && e.attr.uid == 7)
    );
    assert_eq!(store.count(Op::Head), heads, "answered by its local index");
}

#[tokio::test]
async fn the_shared_index_name_is_reserved() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    store.insert("p/.s3mount-index/v1/0123", b"x");
    store.insert("p/sub/.s3mount-index", b"a user's file below the root");
    for shared in [false, true] {
        let mut cfg = core_config("p/", cache.path());
        cfg.shared_metadata_index = shared;
        let fs = S3Fs::new(store.clone(), cfg).unwrap();
        let names: Vec<String> = list(&fs, 1).await.into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["sub"]);
        let name = std::ffi::OsStr::new(".s3mount-index");
        assert_eq!(fs.lookup(1, name).await.unwrap_err().errno(), libc::ENOENT);
        let caller = s3mount::fs::Caller { uid: 0, gid: 0 };
        let refused = fs.mkdir(1, name, 0o755, caller).await.unwrap_err();
        assert_eq!(refused.errno(), libc::EPERM);
        let refused = fs.create(1, name, 0o644, caller).await.unwrap_err();
        assert_eq!(refused.errno(), libc::EPERM);
        let refused = fs
            .symlink(1, name, Path::new("t"), caller)
            .await
            .unwrap_err();
        assert_eq!(refused.errno(), libc::EPERM);
        let sub = fs.lookup(1, std::ffi::OsStr::new("sub")).await.unwrap();
        let moved = fs.rename(sub.ino, name, 1, name, false).await.unwrap_err();
        assert_eq!(moved.errno(), libc::EPERM, "nothing is renamed onto it");
        // Nothing deletes it (so nothing trashes it either).
        assert_eq!(fs.unlink(1, name).await.unwrap_err().errno(), libc::ENOENT);
        assert_eq!(fs.rmdir(1, name).await.unwrap_err().errno(), libc::ENOENT);
        assert!(
            fs.lookup(sub.ino, name).await.is_ok(),
            "reserved at the root only"
        );
    }
    assert_eq!(store.object("p/.s3mount-index/v1/0123").unwrap(), &b"x"[..]);
    assert!(store.object("p/sub/.s3mount-index").is_some());
}

#[tokio::test]
async fn the_shared_index_never_masks_another_clients_change() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..20 {
        put_old(&store, &format!("p/f{i:02}"), b"0123456789", 0o640);
    }
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host_a = shared_fs(&store, cache_a.path());
    list(&host_a, 1).await;
    let first = written(&store, &root_index_key(), None).await;

    // Another client: new content; the same content with new metadata; a delete; a
    // delete and re-create with the same bytes, settled (only Last-Modified tells).
    put_old(&store, "p/f00", b"9876543210", 0o640);
    store.insert_with_meta("p/f01", b"0123456789", &[("mode", "33279")]);
    store.delete("p/f02").await.unwrap();
    store.delete("p/f03").await.unwrap();
    store.insert_with_meta("p/f03", b"0123456789", &[("mode", "33188")]);
    store.age("p/f03", HOUR / 2);

    let host_b = shared_fs(&store, cache_b.path());
    let before = store.count(Op::Head);
    let entries = list(&host_b, 1).await;
    assert_eq!(entries.len(), 19);
    assert!(perm_of(&entries, "f02").is_none());
    assert_eq!(perm_of(&entries, "f01"), Some(0o777));
    assert_eq!(perm_of(&entries, "f03"), Some(0o644));
    assert_eq!(perm_of(&entries, "f04"), Some(0o640));
    assert_eq!(
        store.count(Op::Head) - before,
        3,
        "the three changed objects are HEAD'd, the others come from the shared index"
    );
    // Host B HEAD'd: it rewrites the object with what it learned.
    let second = written(&store, &root_index_key(), Some(&first)).await;
    let cache_c = tempfile::tempdir().unwrap();
    let host_c = shared_fs(&store, cache_c.path());
    let before = store.count(Op::Head);
    let entries = list(&host_c, 1).await;
    assert_eq!(perm_of(&entries, "f03"), Some(0o644));
    // f01 is unsettled (written just now): never indexed, HEAD'd by every host.
    assert_eq!(store.count(Op::Head) - before, 1);
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_damaged_shared_index_is_ignored_and_rewritten() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..20 {
        put_old(
            &store,
            &format!("p/f{i:02}"),
            b"doc",
            0o600 + (i % 8) as u32,
        );
    }
    let key = root_index_key();
    let cache_a = tempfile::tempdir().unwrap();
    let host_a = shared_fs(&store, cache_a.path());
    list(&host_a, 1).await;
    let good = written(&store, &key, None).await;
    let truncated = good.slice(..good.len() - 7);
    let mut flipped = good.to_vec();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    for damaged in [&truncated[..], &flipped[..], b"not an index"] {
        store.insert(&key, damaged);
        let cache = tempfile::tempdir().unwrap();
        let host = shared_fs(&store, cache.path());
        let before = store.count(Op::Head);
        let entries = list(&host, 1).await;
        assert_eq!(
            store.count(Op::Head) - before,
            20,
            "nothing trusted from it"
        );
        assert_eq!(perm_of(&entries, "f05"), Some(0o605));
        let rewritten = written(&store, &key, Some(damaged)).await;
        let index = s3mount::shared_index::decode("", &rewritten).unwrap();
        assert_eq!(index.len(), 20, "rewritten whole");
    }
}

/// Puts `names` under `prefix` as s3fs would write them (mode, uid, gid), in parallel;
/// every fifth one a symlink to `target-NAME`.
fn put_s3fs_objects(prefix: &str, names: &[String]) {
    let env = S3Env::get();
    let (client, rt) = (env.client(), runtime());
    rt.block_on(async {
        let puts = names.iter().enumerate().map(|(i, name)| {
            let (mode, body) = if i % 5 == 0 {
                (0o120777, format!("target-{name}"))
            } else {
                (0o100600 + (i % 8) as u32, format!("doc {name}"))
            };
            client
                .put_object()
                .bucket(&env.bucket)
                .key(format!("{prefix}{name}"))
                .metadata("mode", mode.to_string())
                .metadata("uid", (1000 + i % 3).to_string())
                .metadata("gid", "2000")
                .body(body.into_bytes().into())
                .send()
        });
        for put in futures::future::join_all(puts).await {
            put.unwrap();
        }
    });
}

/// `ls -l` of a mounted directory: names (sorted), with mode, uid, gid and link target.
fn ls_l(dir: &Path) -> Vec<(String, u32, u32, u32, Option<String>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let link = md
                .file_type()
                .is_symlink()
                .then(|| std::fs::read_link(e.path()).unwrap());
            let link = link.map(|l| l.to_string_lossy().into_owned());
            let name = e.file_name().into_string().unwrap();
            (name, md.mode(), md.uid(), md.gid(), link)
        })
        .collect();
    out.sort();
    out
}

/// Waits (bounded) until `key` holds a shared index object of the root that differs
/// from `before`; returns it.
fn wait_index(bucket: &crate::common::Bucket, key: &str, before: Option<&[u8]>) -> Vec<u8> {
    let mut found = None;
    let done = crate::common::eventually(Duration::from_secs(10), || {
        found = bucket
            .get(key)
            .filter(|o| Some(&o[..]) != before && s3mount::shared_index::decode("", o).is_ok());
        found.is_some()
    });
    assert!(done, "the shared index object {key} was not written");
    found.unwrap()
}

/// Two hosts (two mounts, two cache dirs) of one prefix on Garage: the second host's
/// first `ls -l` makes no HEAD and shows the s3fs modes, owners and symlinks.
#[test]
fn shared_index_second_host_lists_without_heads() {
    let env = S3Env::get();
    let bucket = crate::common::Bucket::new();
    let prefix = unique_prefix("shared-index");
    let names: Vec<String> = (0..200).map(|i| format!("doc{i:03}")).collect();
    put_s3fs_objects(&prefix, &names);
    std::thread::sleep(s3mount::meta_index::SETTLED + Duration::from_secs(1));
    let key =
        s3mount::layout::Layout::new(&prefix).shared_index_key("", s3mount::shared_index::FORMAT);

    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let opt = ["-o", "shared_metadata_index"];
    let host_a = TestMount::with_cache(&prefix, cache_a.path(), &opt, None);
    let on_a = ls_l(host_a.mountpoint());
    assert_eq!(on_a.len(), 200);
    wait_index(&bucket, &key, None);

    let proxy = crate::common::Proxy::start(&env.endpoint);
    let host_b = TestMount::with_cache(
        &prefix,
        cache_b.path(),
        &["--shared-metadata-index"],
        Some(&proxy.url()),
    );
    proxy.reset_counts();
    let on_b = ls_l(host_b.mountpoint());
    assert_eq!(proxy.requests("HEAD"), 0, "no HEAD on the second host");
    assert_eq!(
        on_b, on_a,
        "the same modes, owners and links; no index entry"
    );
    let (name, mode, uid, gid, link) = &on_b[7];
    assert_eq!(
        (name.as_str(), *mode, *uid, *gid),
        ("doc007", 0o100607, 1001, 2000)
    );
    assert!(link.is_none());
    assert_eq!(on_b[5].4.as_deref(), Some("target-doc005"));
    assert_eq!(on_b[5].1 & libc::S_IFMT, libc::S_IFLNK);
    let hidden = host_b.path(".s3mount-index");
    assert!(std::fs::symlink_metadata(&hidden).is_err());
    let refused = std::fs::create_dir(&hidden).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EPERM));
}

/// Objects changed by another client after the shared index was written (content, a
/// metadata-only copy, a delete, a re-create with the same size) are never shown with
/// its metadata; a damaged index object is ignored (HEADs) and rewritten.
#[test]
fn shared_index_never_shows_stale_metadata() {
    use std::os::unix::fs::MetadataExt;
    let env = S3Env::get();
    let bucket = crate::common::Bucket::new();
    let (client, rt) = (env.client(), runtime());
    let prefix = unique_prefix("shared-stale");
    let names: Vec<String> = (0..24).map(|i| format!("f{i:02}")).collect();
    put_s3fs_objects(&prefix, &names);
    std::thread::sleep(s3mount::meta_index::SETTLED + Duration::from_secs(1));
    let key =
        s3mount::layout::Layout::new(&prefix).shared_index_key("", s3mount::shared_index::FORMAT);
    let opt = ["--shared-metadata-index"];
    let cache_a = tempfile::tempdir().unwrap();
    {
        let host_a = TestMount::with_cache(&prefix, cache_a.path(), &opt, None);
        assert_eq!(ls_l(host_a.mountpoint()).len(), 24);
        wait_index(&bucket, &key, None);
    }
    let full = |name: &str| format!("{prefix}{name}");
    // f01: new content of the same size; f02: a metadata-only copy onto itself;
    // f03: deleted; f04: deleted and re-created with the same bytes.
    bucket.put(&full("f01"), b"doc f99");
    let copy = client
        .copy_object()
        .bucket(&env.bucket)
        .key(full("f02"))
        .copy_source(format!("{}/{}", env.bucket, full("f02")))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .metadata("mode", (0o100604).to_string())
        .metadata("uid", "3000");
    rt.block_on(copy.send()).unwrap();
    let delete = |name: &str| {
        let delete = client.delete_object().bucket(&env.bucket).key(full(name));
        rt.block_on(delete.send()).unwrap();
    };
    delete("f03");
    delete("f04");
    let recreate = std::collections::HashMap::from([("mode".to_string(), "33152".to_string())]);
    bucket.put_with_meta(&full("f04"), b"doc f04", &recreate);

    let check = |m: &TestMount| {
        let listed = ls_l(m.mountpoint());
        assert_eq!(listed.len(), 23);
        let get = |name: &str| listed.iter().find(|e| e.0 == name).cloned();
        assert!(get("f03").is_none());
        let f01 = get("f01").unwrap();
        assert_eq!(
            (f01.1, f01.2),
            (0o100644, 0),
            "no metadata: the mount's defaults"
        );
        assert_eq!(std::fs::read(m.path("f01")).unwrap(), b"doc f99");
        let f02 = get("f02").unwrap();
        assert_eq!((f02.1, f02.2), (0o100604, 3000));
        assert_eq!(get("f04").unwrap().1, 0o100600);
        assert_eq!(get("f06").unwrap().1, 0o100606, "unchanged: as indexed");
        assert_eq!(get("f05").unwrap().4.as_deref(), Some("target-f05"));
    };
    let uid_of = |m: &TestMount, name: &str| std::fs::symlink_metadata(m.path(name)).unwrap().uid();
    let cache_b = tempfile::tempdir().unwrap();
    {
        let host_b = TestMount::with_cache(&prefix, cache_b.path(), &opt, None);
        check(&host_b);
        assert_eq!(uid_of(&host_b, "f06"), 1000);
    }

    // A damaged object (truncated, then a flipped byte) is ignored, and rewritten by the
    // host that had to HEAD.
    let good = bucket.get(&key).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    for damaged in [good[..good.len() - 3].to_vec(), flipped] {
        bucket.put(&key, &damaged);
        let proxy = crate::common::Proxy::start(&env.endpoint);
        let cache = tempfile::tempdir().unwrap();
        let host = TestMount::with_cache(&prefix, cache.path(), &opt, Some(&proxy.url()));
        proxy.reset_counts();
        check(&host);
        assert!(proxy.requests("HEAD") >= 23, "every entry HEAD'd");
        let rewritten = wait_index(&bucket, &key, Some(&damaged));
        let index = s3mount::shared_index::decode("", &rewritten).unwrap();
        assert!(index.len() >= 20, "the settled entries are indexed again");
    }
}

/// A second host's first listing of a large directory is cut where the files of the
/// directory's shared object say, and its spans are listed at once: every name once,
/// and no HEAD.
#[tokio::test]
async fn a_second_host_lists_a_large_directory_in_spans_cut_at_the_shared_objects_files() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..2000 {
        put_old(&store, &format!("p/f{i:04}"), b"doc", 0o640);
    }
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host_a = shared_fs(&store, cache_a.path());
    assert_eq!(list(&host_a, 1).await.len(), 2000);
    written(&store, &root_index_key(), None).await;

    let host_b = shared_fs(&store, cache_b.path());
    store.delay(Op::List, Duration::from_millis(30));
    let (heads, lists) = (store.count(Op::Head), store.count(Op::List));
    let on_b = list(&host_b, 1).await;
    let names: Vec<String> = on_b.iter().map(|e| e.name.clone()).collect();
    let want: Vec<String> = (0..2000).map(|i| format!("f{i:04}")).collect();
    assert_eq!(names, want);
    assert_eq!(store.count(Op::Head) - heads, 0);
    assert_eq!(
        store.count(Op::List) - lists,
        3,
        "cut after f0899 and f1799"
    );
    assert!(store.peak_in_flight(Op::List) > 1, "spans listed at once");
    host_b.shutdown().await;
}
