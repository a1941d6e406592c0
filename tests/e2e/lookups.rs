//! What a lookup costs in requests, and that it stays right: a first lookup of one name
//! in a big folder the mount never listed is one or two requests (a window listing from
//! the name on, then the metadata of what it found), never a page listing of the folder;
//! a walk in name order costs a window per many names; unlink and rmdir ask for no
//! metadata. Counted in the in-memory store and, through the counting proxy, against
//! the local S3 server with a real mount.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use s3mount::fs::{FsError, Kind, ROOT, S3Fs};
use s3mount::store::memory::{MemoryStore, Op};

use crate::common::{Bucket, Proxy, TestMount, core_config, unique_prefix};

struct Core {
    store: Arc<MemoryStore>,
    fs: S3Fs<MemoryStore>,
    _cache: tempfile::TempDir,
}

fn core() -> Core {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = S3Fs::new(store.clone(), core_config("", cache.path())).unwrap();
    Core {
        store,
        fs,
        _cache: cache,
    }
}

impl Core {
    fn requests(&self) -> u64 {
        [Op::List, Op::Head, Op::Get]
            .iter()
            .map(|op| self.store.count(*op))
            .sum()
    }

    async fn lookup(&self, parent: u64, name: &str) -> Result<s3mount::fs::Attr, FsError> {
        self.fs.lookup(parent, OsStr::new(name)).await
    }
}

#[tokio::test]
async fn first_lookup_in_a_never_listed_folder_is_at_most_two_requests() {
    let c = core();
    for i in 0..3000 {
        c.store.insert(&format!("big/f{i:06}"), b"x");
    }
    c.store.insert("big/marked/", b"");
    c.store.insert("big/marked/inner", b"y");
    c.store.insert("big/implicit/inner", b"z");
    let big = c.lookup(ROOT, "big").await.unwrap();
    for (name, want) in [
        ("f001234", Some(Kind::File)),
        ("marked", Some(Kind::Dir)),
        ("implicit", Some(Kind::Dir)),
        ("f001234x", None),
        ("zzz", None),
    ] {
        let before = c.requests();
        let got = c.lookup(big.ino, name).await;
        let spent = c.requests() - before;
        match want {
            Some(kind) => assert_eq!(got.unwrap().kind, kind, "{name}"),
            None => assert!(matches!(got, Err(FsError::NotFound)), "{name}: {got:?}"),
        }
        assert!(spent <= 2, "{name}: {spent} requests");
    }
}

#[tokio::test]
async fn a_directory_wins_over_a_file_beyond_the_window() {
    let c = core();
    // `a` < `a.00` … `a.39` < `a/` in key order: the smallest window ends before `a/`.
    c.store.insert("d/a", b"file");
    c.store.insert("d/b", b"file");
    for i in 0..40 {
        c.store.insert(&format!("d/a.{i:02}"), b"x");
        c.store.insert(&format!("d/c.{i:02}"), b"x");
    }
    c.store.insert("d/a/inner", b"x");
    let d = c.lookup(ROOT, "d").await.unwrap();
    // (First in this folder: the smallest window.)
    let before = c.requests();
    let missing = c.lookup(d.ino, "c").await;
    assert!(matches!(missing, Err(FsError::NotFound)), "{missing:?}");
    assert_eq!(
        c.requests() - before,
        2,
        "a window, then a one-key LIST of `c/`"
    );
    assert_eq!(c.lookup(d.ino, "a").await.unwrap().kind, Kind::Dir);
    assert_eq!(c.lookup(d.ino, "b").await.unwrap().kind, Kind::File);
}

#[tokio::test]
async fn a_walk_in_name_order_costs_a_window_per_many_names() {
    let c = core();
    for i in 0..3000 {
        c.store.insert(&format!("big/f{i:06}"), b"x");
    }
    let big = c.lookup(ROOT, "big").await.unwrap();
    let lists = c.store.count(Op::List);
    for i in 0..3000 {
        c.lookup(big.ino, &format!("f{i:06}")).await.unwrap();
    }
    let windows = c.store.count(Op::List) - lists;
    // 16 + 32 + … + 1000 + 1000 …: a handful of listings for 3000 names.
    assert!(windows <= 10, "{windows} listings for a walk of 3000 names");
    // Once the TTL passed, walking again costs the windows alone: the entries are
    // unchanged, so the metadata read the first time still holds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (lists, asks) = (c.store.count(Op::List), c.requests());
    for i in 0..3000 {
        c.lookup(big.ino, &format!("f{i:06}")).await.unwrap();
    }
    let windows = c.store.count(Op::List) - lists;
    assert!(windows <= 10, "{windows} listings for the second walk");
    assert_eq!(
        c.requests() - asks,
        windows,
        "no HEAD or GET the second time"
    );
}

#[tokio::test]
async fn unlink_of_an_entry_known_from_a_listing_asks_for_no_metadata() {
    let c = core();
    for i in 0..50 {
        c.store.insert(&format!("d/f{i:02}"), b"x");
    }
    c.store.insert("d/sub/", b"");
    let d = c.lookup(ROOT, "d").await.unwrap();
    c.lookup(d.ino, "f00").await.unwrap(); // a window lists the siblings too
    let asks = c.store.count(Op::Head) + c.store.count(Op::Get);
    for i in 1..50 {
        c.fs.unlink(d.ino, OsStr::new(&format!("f{i:02}")))
            .await
            .unwrap();
    }
    c.fs.rmdir(d.ino, OsStr::new("sub")).await.unwrap();
    assert_eq!(
        c.store.count(Op::Head) + c.store.count(Op::Get) - asks,
        0,
        "unlink and rmdir need the kind, which the listing told"
    );
    assert_eq!(c.store.keys(), vec!["d/f00".to_string()]);
    // Deleted meanwhile by another client: once the entry is stale, ENOENT.
    use s3mount::store::ObjectStore;
    c.store.delete("d/f00").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let gone = c.fs.unlink(d.ino, OsStr::new("f00")).await;
    assert!(matches!(gone, Err(FsError::NotFound)), "{gone:?}");
}

/// Requests of every method the proxy passed since `reset_counts`.
fn proxied(proxy: &Proxy) -> u64 {
    ["GET", "HEAD", "PUT", "POST", "DELETE"]
        .iter()
        .map(|m| proxy.requests(m))
        .sum()
}

#[test]
fn stat_of_one_name_in_a_big_folder_never_listed_is_at_most_two_requests() {
    let bucket = Bucket::new();
    let proxy = Proxy::start(&bucket.env.endpoint);
    let prefix = unique_prefix("lookups");
    bucket.put_many(&format!("{prefix}big/"), 2500);
    bucket.put(&format!("{prefix}big/marked/"), b"");
    bucket.put(&format!("{prefix}big/marked/inner"), b"in");
    bucket.put(&format!("{prefix}big/implicit/inner"), b"in");
    let cache = tempfile::tempdir().unwrap();
    // A long TTL: the folder itself stays known between the stats below.
    let m = TestMount::with_cache(
        &prefix,
        &cache.path().join("cache"),
        &["--metadata-ttl", "60"],
        Some(&proxy.url()),
    );
    assert!(std::fs::metadata(m.path("big")).unwrap().is_dir());
    let cases: [(&str, Option<bool>); 4] = [
        ("big/f001234", Some(false)),
        ("big/marked", Some(true)),
        ("big/implicit", Some(true)),
        ("big/f001234.missing", None),
    ];
    for (path, dir) in cases {
        proxy.reset_counts();
        let got = std::fs::symlink_metadata(m.path(path));
        let spent = proxied(&proxy);
        match dir {
            Some(dir) => assert_eq!(got.unwrap().is_dir(), dir, "{path}"),
            None => assert_eq!(
                got.unwrap_err().raw_os_error(),
                Some(libc::ENOENT),
                "{path}"
            ),
        }
        assert!(
            (1..=2).contains(&spent),
            "stat {path}: {spent} requests (GET {}, HEAD {})",
            proxy.requests("GET"),
            proxy.requests("HEAD")
        );
    }
}

#[test]
fn rm_rf_of_a_folder_costs_a_delete_per_file_and_few_listings() {
    let bucket = Bucket::new();
    let proxy = Proxy::start(&bucket.env.endpoint);
    let prefix = unique_prefix("lookups-rm");
    let n = 600;
    bucket.put_many(&format!("{prefix}d/"), n);
    let cache = tempfile::tempdir().unwrap();
    let m = TestMount::with_cache(
        &prefix,
        &cache.path().join("cache"),
        &[],
        Some(&proxy.url()),
    );
    proxy.reset_counts();
    let rm = std::process::Command::new("rm")
        .arg("-rf")
        .arg(m.path("d"))
        .status()
        .unwrap();
    assert!(rm.success());
    assert!(bucket.keys(&format!("{prefix}d/")).is_empty());
    let (deletes, heads, gets) = (
        proxy.requests("DELETE"),
        proxy.requests("HEAD"),
        proxy.requests("GET"),
    );
    // Each file: its DELETE, and the HEAD of the listing that showed it (its metadata
    // for the kernel); rmdir deletes the marker key. Lookups after the TTL cost a
    // window listing per many names, the folder's own marker is asked for once per
    // TTL, and nothing asks for a file's content.
    assert_eq!(deletes, n as u64 + 1, "DELETEs");
    assert!(heads <= n as u64 + 30, "{heads} HEADs for {n} files");
    assert!(gets <= 30, "{gets} GETs (listings) for {n} files");
}

#[tokio::test]
async fn a_name_in_the_range_of_a_fresh_window_is_missing_without_asking() {
    let c = core();
    for i in 0..3000 {
        c.store.insert(&format!("big/f{i:06}"), b"x");
    }
    let big = c.lookup(ROOT, "big").await.unwrap();
    c.lookup(big.ino, "f001234").await.unwrap();
    let before = c.requests();
    // f001234 … f001249 were in the window: a name between them is known missing.
    let missing = c.lookup(big.ino, "f001240.tmp").await;
    assert!(matches!(missing, Err(FsError::NotFound)), "{missing:?}");
    assert_eq!(c.requests() - before, 0);
    // What this mount creates there is found, and another client's object in the
    // range is seen once the window is stale.
    let (created, fh) =
        c.fs.create(
            big.ino,
            OsStr::new("f001241.new"),
            0o644,
            s3mount::fs::Caller { uid: 0, gid: 0 },
        )
        .await
        .unwrap();
    c.fs.release(fh).await.unwrap();
    assert_eq!(
        c.lookup(big.ino, "f001241.new").await.unwrap().ino,
        created.ino
    );
    c.store.insert("big/f001242.other", b"o");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.lookup(big.ino, "f001242.other").await.unwrap().kind,
        Kind::File
    );
}
