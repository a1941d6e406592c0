//! The file-system core against the in-memory store: POSIX rules and upload behaviour
//! without FUSE, plus fault injection.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use s3mount::fs::{Caller, FsError, Kind, OpenMode, ROOT, S3Fs};
use s3mount::store::StoreError;
use s3mount::store::memory::{MemoryStore, Op};

use crate::common::{MIB, core_config, staged_data_files};

struct Fixture {
    store: Arc<MemoryStore>,
    fs: S3Fs<MemoryStore>,
    cache: tempfile::TempDir,
}

fn fixture(prefix: &str) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = S3Fs::new(store.clone(), core_config(prefix, cache.path())).unwrap();
    Fixture { store, fs, cache }
}

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Waits (up to 10 s) for background work to make `done` true; false if it never does.
/// (The tests run on a current-thread runtime: the background tasks run while this sleeps.)
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn write_file(fs: &S3Fs<MemoryStore>, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = fs
        .create(parent, OsStr::new(name), 0o644, ME)
        .await
        .unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        fs.write(fh, (i * MIB) as u64, chunk).await.unwrap();
    }
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    attr.ino
}

async fn read_all(fs: &S3Fs<MemoryStore>, ino: u64) -> Vec<u8> {
    let (fh, _) = fs.open(ino, OpenMode::default()).await.unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 128 * 1024).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh).await.unwrap();
    out
}

#[tokio::test]
async fn small_file_is_one_put_with_s3fs_metadata() {
    let f = fixture("docs/");
    write_file(&f.fs, ROOT, "a.txt", b"hello").await;
    assert_eq!(f.store.object("docs/a.txt").unwrap(), &b"hello"[..]);
    assert_eq!(f.store.count(Op::Put), 1);
    let meta = f.store.user_meta("docs/a.txt").unwrap();
    assert!(meta.contains(&("mode".into(), (libc::S_IFREG | 0o644).to_string())));
    assert!(meta.contains(&("uid".into(), "1000".into())));
    // The stage is gone once S3 has the file.
    assert!(staged_data_files(f.cache.path()).is_empty());
}

#[tokio::test]
async fn large_file_streams_parts_while_writing() {
    let f = fixture("");
    let data = pattern(23 * MIB + 123, 7);
    let (_, fh) =
        f.fs.create(ROOT, OsStr::new("big"), 0o644, ME)
            .await
            .unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        f.fs.write(fh, (i * MIB) as u64, chunk).await.unwrap();
    }
    // Parts started before close.
    assert!(
        eventually(|| f.store.count(Op::UploadPart) >= 2).await,
        "parts upload while writing"
    );
    assert!(f.store.object("big").is_none(), "no half object is visible");
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(f.store.object("big").unwrap(), &data[..]);
    assert_eq!(f.store.count(Op::Put), 0);
    assert_eq!(f.store.pending_uploads(), 0);
}

#[tokio::test]
async fn rewrite_in_the_middle_invalidates_streamed_parts() {
    let f = fixture("");
    let mut data = pattern(16 * MIB, 1);
    let (_, fh) = f.fs.create(ROOT, OsStr::new("f"), 0o644, ME).await.unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        f.fs.write(fh, (i * MIB) as u64, chunk).await.unwrap();
    }
    f.fs.write(fh, 10, b"PATCHED").await.unwrap();
    data[10..17].copy_from_slice(b"PATCHED");
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(f.store.object("f").unwrap(), &data[..]);
    assert!(
        eventually(|| f.store.pending_uploads() == 0).await,
        "the abandoned upload was aborted"
    );
}

#[tokio::test]
async fn objects_of_other_clients_are_found_and_read() {
    let f = fixture("p/");
    let data = pattern(3 * MIB + 5, 3);
    f.store.insert("p/dir/x.bin", &data);
    f.store.insert("outside.txt", b"not mine");
    let dir = f.fs.lookup(ROOT, OsStr::new("dir")).await.unwrap();
    assert_eq!(dir.kind, Kind::Dir);
    let file = f.fs.lookup(dir.ino, OsStr::new("x.bin")).await.unwrap();
    assert_eq!(file.size, data.len() as u64);
    assert_eq!(read_all(&f.fs, file.ino).await, data);
    assert!(matches!(
        f.fs.lookup(ROOT, OsStr::new("outside.txt")).await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn a_changed_object_fails_the_read_instead_of_mixing_versions() {
    let f = fixture("");
    let old = pattern(8 * MIB, 1);
    f.store.insert("v", &old);
    let attr = f.fs.lookup(ROOT, OsStr::new("v")).await.unwrap();
    let (fh, _) = f.fs.open(attr.ino, OpenMode::default()).await.unwrap();
    f.fs.read(fh, 0, 4096).await.unwrap();
    f.store.insert("v", &pattern(8 * MIB, 2));
    // What was fetched before the change is the old version, consistently.
    let early = f.fs.read(fh, 4096, 4096).await.unwrap();
    assert_eq!(&early[..], &old[4096..8192]);
    // Anything fetched after it fails instead of mixing in the new version.
    let err = f.fs.read(fh, 6 * MIB as u64, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
}

#[tokio::test]
async fn listing_merges_keys_prefixes_markers_and_staged_files() {
    let f = fixture("d/");
    f.store.insert("d/b.txt", b"b");
    f.store.insert("d/a/", b"");
    f.store.insert("d/c/deep/file", b"x");
    f.store.insert("d/dup", b"file and dir");
    f.store.insert("d/dup/inner", b"x");
    f.store.insert("d/", b"");
    let (_, fh) =
        f.fs.create(ROOT, OsStr::new("new.txt"), 0o644, ME)
            .await
            .unwrap();
    let dh = f.fs.opendir(ROOT).await.unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let batch = f.fs.readdir(dh, offset).await.unwrap();
        if batch.is_empty() {
            break;
        }
        offset = batch.last().unwrap().offset;
        names.extend(batch.into_iter().map(|e| (e.name, e.attr.kind)));
    }
    assert_eq!(
        names,
        vec![
            (".".into(), Kind::Dir),
            ("..".into(), Kind::Dir),
            ("new.txt".into(), Kind::File),
            ("a".into(), Kind::Dir),
            ("b.txt".into(), Kind::File),
            ("c".into(), Kind::Dir),
            ("dup".into(), Kind::Dir),
        ]
    );
    f.fs.releasedir(dh);
    f.fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn long_listings_page_through() {
    let f = fixture("");
    for i in 0..2500 {
        f.store.insert(&format!("many/f{i:05}"), b"x");
    }
    let dir = f.fs.lookup(ROOT, OsStr::new("many")).await.unwrap();
    let dh = f.fs.opendir(dir.ino).await.unwrap();
    let (mut count, mut offset) = (0, 0);
    loop {
        let batch = f.fs.readdir(dh, offset).await.unwrap();
        if batch.is_empty() {
            break;
        }
        // The kernel takes only part of a batch; resume from inside it.
        let take = batch.len().min(37);
        offset = batch[take - 1].offset;
        count += take;
    }
    assert_eq!(count, 2502);
    assert!(f.store.count(Op::List) >= 3);
}

#[tokio::test]
async fn mkdir_rmdir_and_notempty() {
    let f = fixture("p/");
    let dir =
        f.fs.mkdir(ROOT, OsStr::new("sub"), 0o755, ME)
            .await
            .unwrap();
    assert!(
        f.store.object("p/sub/").is_some(),
        "mkdir writes the marker"
    );
    write_file(&f.fs, dir.ino, "x", b"1").await;
    let err = f.fs.rmdir(ROOT, OsStr::new("sub")).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOTEMPTY);
    f.fs.unlink(dir.ino, OsStr::new("x")).await.unwrap();
    f.fs.rmdir(ROOT, OsStr::new("sub")).await.unwrap();
    assert!(f.store.keys().is_empty());
    let err =
        f.fs.mkdir(ROOT, OsStr::new(&"n".repeat(256)), 0o755, ME)
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
}

#[tokio::test]
async fn names_and_keys_that_are_too_long_write_nothing() {
    let f = fixture("p/");
    let err =
        f.fs.create(ROOT, OsStr::new(&"n".repeat(256)), 0o644, ME)
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    let mut parent = ROOT;
    let mut depth = 0;
    // Nest directories until the key limit is reached.
    loop {
        match f
            .fs
            .mkdir(parent, OsStr::new(&"d".repeat(200)), 0o755, ME)
            .await
        {
            Ok(a) => parent = a.ino,
            Err(e) => {
                assert_eq!(e.errno(), libc::ENAMETOOLONG);
                break;
            }
        }
        depth += 1;
    }
    assert_eq!(depth, 5);
    assert!(f.store.keys().iter().all(|k| k.len() <= 1024));
}

#[tokio::test]
async fn rename_copies_then_deletes_and_replaces_the_target() {
    let f = fixture("");
    write_file(&f.fs, ROOT, "a", b"content a").await;
    write_file(&f.fs, ROOT, "b", b"content b").await;
    f.fs.rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"), false)
        .await
        .unwrap();
    assert_eq!(f.store.keys(), vec!["b".to_string()]);
    assert_eq!(f.store.object("b").unwrap(), &b"content a"[..]);
}

#[tokio::test]
async fn rename_of_an_open_unuploaded_file_rekeys_the_stage() {
    let f = fixture("");
    let (_, fh) =
        f.fs.create(ROOT, OsStr::new("tmp"), 0o644, ME)
            .await
            .unwrap();
    f.fs.write(fh, 0, b"draft").await.unwrap();
    f.fs.rename(ROOT, OsStr::new("tmp"), ROOT, OsStr::new("final"), false)
        .await
        .unwrap();
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(f.store.keys(), vec!["final".to_string()]);
    assert_eq!(f.store.count(Op::Copy), 0);
}

#[tokio::test]
async fn directory_rename_moves_every_key() {
    let f = fixture("");
    for i in 0..30 {
        f.store.insert(&format!("old/sub/f{i}"), b"x");
    }
    f.store.insert("old/", b"");
    f.store.insert("older", b"not under old/");
    f.fs.lookup(ROOT, OsStr::new("old")).await.unwrap();
    f.fs.rename(ROOT, OsStr::new("old"), ROOT, OsStr::new("new"), false)
        .await
        .unwrap();
    let keys = f.store.keys();
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("new/sub/")).count(),
        30
    );
    assert!(keys.contains(&"new/".to_string()));
    assert!(keys.contains(&"older".to_string()));
    assert!(!keys.iter().any(|k| k.starts_with("old/")));
}

#[tokio::test]
async fn failed_upload_returns_eio_keeps_the_stage_and_retries() {
    let f = fixture("");
    let (attr, fh) =
        f.fs.create(ROOT, OsStr::new("doc"), 0o644, ME)
            .await
            .unwrap();
    f.fs.write(fh, 0, b"precious").await.unwrap();
    f.store
        .fail_next(Op::Put, 1, StoreError::Transient("HTTP 500".into()));
    let err = f.fs.flush(fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(f.store.object("doc").is_none());
    // Reads through the mount still see the data.
    let data = f.fs.read(fh, 0, 100).await.unwrap();
    assert_eq!(&data[..], b"precious");
    f.store
        .fail_next(Op::Put, 1, StoreError::Transient("HTTP 500".into()));
    assert!(f.fs.release(fh).await.is_err());
    let staged = staged_data_files(f.cache.path());
    assert_eq!(staged.len(), 1, "the staged data is kept");
    assert_eq!(records(&f.fs).len(), 1, "and journaled");
    f.fs.retry_failed_uploads().await;
    assert_eq!(f.store.object("doc").unwrap(), &b"precious"[..]);
    assert_eq!(f.fs.dirty_count(), 0);
    let _ = attr;
}

#[tokio::test]
async fn partial_rewrite_of_an_existing_object_keeps_the_rest() {
    let f = fixture("");
    let mut data = pattern(3 * MIB, 9);
    f.store.insert("e", &data);
    let attr = f.fs.lookup(ROOT, OsStr::new("e")).await.unwrap();
    let (fh, _) =
        f.fs.open(
            attr.ino,
            OpenMode {
                write: true,
                truncate: false,
                exec: false,
            },
        )
        .await
        .unwrap();
    f.fs.write(fh, 0, b"HEAD").await.unwrap();
    data[..4].copy_from_slice(b"HEAD");
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(f.store.object("e").unwrap(), &data[..]);
}

#[tokio::test]
async fn truncating_open_needs_no_download() {
    let f = fixture("");
    f.store.insert("t", &pattern(2 * MIB, 9));
    let attr = f.fs.lookup(ROOT, OsStr::new("t")).await.unwrap();
    let gets = f.store.count(Op::Get);
    let (fh, _) =
        f.fs.open(
            attr.ino,
            OpenMode {
                write: true,
                truncate: true,
                exec: false,
            },
        )
        .await
        .unwrap();
    f.fs.write(fh, 0, b"new").await.unwrap();
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(f.store.count(Op::Get), gets);
    assert_eq!(f.store.object("t").unwrap(), &b"new"[..]);
}

#[tokio::test]
async fn read_only_mount_refuses_writes() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = core_config("", cache.path());
    cfg.read_only = true;
    let fs = S3Fs::new(store, cfg).unwrap();
    let err = fs
        .create(ROOT, OsStr::new("x"), 0o644, ME)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EROFS);
}

fn write_back_fixture(store: Arc<MemoryStore>, cache: &std::path::Path) -> Arc<S3Fs<MemoryStore>> {
    delayed_write_back_fixture(store, cache, Duration::ZERO)
}

/// A write-back mount whose uploads start `delay` after each close.
fn delayed_write_back_fixture(
    store: Arc<MemoryStore>,
    cache: &std::path::Path,
    delay: Duration,
) -> Arc<S3Fs<MemoryStore>> {
    let mut cfg = core_config("", cache);
    cfg.write_back = true;
    cfg.write_back_delay = delay;
    Arc::new(S3Fs::new(store, cfg).unwrap())
}

/// The journal records in the cache dir, as JSON.
fn records<S: s3mount::store::ObjectStore>(fs: &S3Fs<S>) -> Vec<serde_json::Value> {
    (fs.journal_records().into_iter())
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

#[tokio::test]
async fn write_back_close_returns_once_durable_and_uploads_in_the_background() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = write_back_fixture(store.clone(), cache.path());
    fs.start_background();
    store.fail_next(Op::Put, 2, StoreError::Throttled("503 SlowDown".into()));
    let (attr, fh) = fs
        .create(ROOT, OsStr::new("wb.txt"), 0o600, ME)
        .await
        .unwrap();
    fs.write(fh, 0, b"saved").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    let recs = records(&fs);
    assert_eq!(recs.len(), 1, "close committed a journal record");
    assert_eq!(recs[0]["key"], "wb.txt");
    assert_eq!(recs[0]["state"], "committed");
    // Visible through the mount at once, before S3 has it.
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 5);
    for _ in 0..100 {
        if store.object("wb.txt").is_some() && fs.dirty_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.object("wb.txt").unwrap(), &b"saved"[..]);
    assert!(
        eventually(|| records(&fs).is_empty()).await,
        "the record goes once S3 has the file"
    );
}

/// The safe-save pattern of editors and document systems (write a temporary file, close
/// it, rename it over the name) within `--write-back-delay`: one PUT under the final
/// name, no server-side copy, no DELETE; a file deleted within the delay is never
/// uploaded. The delay holds no close up, and every pending file is in S3 once it ends.
#[tokio::test]
async fn write_back_delay_uploads_a_quick_rename_once_and_a_quick_delete_never() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = delayed_write_back_fixture(store.clone(), cache.path(), Duration::from_millis(700));
    fs.start_background();
    let closed = std::time::Instant::now();
    for (name, body) in [("report.tmp", &b"final text"[..]), ("lock.tmp", b"pid")] {
        let (_, fh) = fs.create(ROOT, OsStr::new(name), 0o644, ME).await.unwrap();
        fs.write(fh, 0, body).await.unwrap();
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    let (new_name, tmp) = (OsStr::new("report.pdf"), OsStr::new("report.tmp"));
    fs.rename(ROOT, tmp, ROOT, new_name, false).await.unwrap();
    fs.unlink(ROOT, OsStr::new("lock.tmp")).await.unwrap();
    // The 30 s retry of failed uploads leaves files waiting out the delay alone.
    fs.retry_failed_uploads().await;
    assert!(
        closed.elapsed() < Duration::from_millis(700),
        "the test ran its steps within the delay"
    );
    assert_eq!(
        store.count(Op::Put),
        0,
        "nothing is uploaded within the delay"
    );
    assert!(
        eventually(|| store.object("report.pdf").is_some() && fs.dirty_count() == 0).await,
        "the renamed file is uploaded once the delay has passed"
    );
    assert!(closed.elapsed() >= Duration::from_millis(700));
    assert_eq!(store.object("report.pdf").unwrap(), &b"final text"[..]);
    assert!(store.object("report.tmp").is_none());
    assert!(store.object("lock.tmp").is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.count(Op::Put), 1, "one PUT: the final name's");
    assert_eq!(
        store.count(Op::Copy),
        0,
        "no server-side copy for the rename"
    );
    assert!(records(&fs).is_empty(), "no journal record is left");
}

/// An unmount does not wait out `--write-back-delay`: it uploads every pending file.
#[tokio::test]
async fn shutdown_uploads_files_still_inside_the_write_back_delay() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = delayed_write_back_fixture(store.clone(), cache.path(), Duration::from_secs(3600));
    fs.start_background();
    let (_, fh) = fs
        .create(ROOT, OsStr::new("late.txt"), 0o644, ME)
        .await
        .unwrap();
    fs.write(fh, 0, b"kept").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(store.object("late.txt").is_none());
    let started = std::time::Instant::now();
    assert_eq!(fs.shutdown().await, 0, "no file failed to upload");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(store.object("late.txt").unwrap(), &b"kept"[..]);
}

#[tokio::test]
async fn recovery_uploads_committed_files_and_sets_unfinished_ones_aside() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let big = pattern(12 * MIB, 5);
    {
        // A life that ends abruptly: S3 refuses everything, nothing is shut down.
        let fs = write_back_fixture(store.clone(), cache.path());
        store.fail_next(Op::Put, 100, StoreError::Transient("down".into()));
        store.fail_next(
            Op::CreateMultipart,
            100,
            StoreError::Transient("down".into()),
        );
        let (_, fh) = fs
            .create(ROOT, OsStr::new("done.txt"), 0o640, ME)
            .await
            .unwrap();
        fs.write(fh, 0, b"close returned").await.unwrap();
        fs.flush(fh).await.unwrap();
        let (_, fh2) = fs
            .create(ROOT, OsStr::new("half.txt"), 0o644, ME)
            .await
            .unwrap();
        fs.write(fh2, 0, b"never closed").await.unwrap();
        store.fail_next(Op::CreateMultipart, 0, StoreError::Transient("down".into()));
        let (_, fh3) = fs
            .create(ROOT, OsStr::new("big-half"), 0o644, ME)
            .await
            .unwrap();
        for (i, chunk) in big.chunks(MIB).enumerate() {
            fs.write(fh3, (i * MIB) as u64, chunk).await.unwrap();
        }
        assert!(
            eventually(|| store.pending_uploads() == 1).await,
            "a streaming upload was started"
        );
        std::mem::forget(fs); // no release, no shutdown: as after kill -9
    }
    store.fail_next(Op::Put, 0, StoreError::Transient("down".into()));
    let fs = write_back_fixture(store.clone(), cache.path());
    let report = fs.recover().await;
    assert_eq!(report.uploaded, 1, "{report:?}");
    assert_eq!(report.orphaned, 2, "{report:?}");
    assert_eq!(report.aborted, 1, "{report:?}");
    assert_eq!(store.object("done.txt").unwrap(), &b"close returned"[..]);
    let meta = store.user_meta("done.txt").unwrap();
    assert!(meta.contains(&("mode".into(), (libc::S_IFREG | 0o640).to_string())));
    assert!(store.object("half.txt").is_none(), "never half a document");
    assert!(store.object("big-half").is_none());
    assert_eq!(
        store.pending_uploads(),
        0,
        "the abandoned multipart upload was aborted"
    );
    let aside = std::fs::read_dir(cache.path().join("orphaned"))
        .unwrap()
        .count();
    assert_eq!(aside, 2, "unfinished data is kept aside, not deleted");
    assert!(records(&fs).is_empty());
    // A second recovery finds nothing more to do.
    assert_eq!(fs.recover().await, Default::default());
}

#[tokio::test]
async fn a_failed_upload_is_journaled_so_a_crash_cannot_lose_it() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    {
        let fs = S3Fs::new(store.clone(), core_config("", cache.path())).unwrap();
        store.fail_next(Op::Put, 100, StoreError::Transient("down".into()));
        let (_, fh) = fs.create(ROOT, OsStr::new("x"), 0o644, ME).await.unwrap();
        fs.write(fh, 0, b"eio at close").await.unwrap();
        assert_eq!(fs.flush(fh).await.unwrap_err().errno(), libc::EIO);
        std::mem::forget(fs);
    }
    store.fail_next(Op::Put, 0, StoreError::Transient("down".into()));
    let fs = S3Fs::new(store.clone(), core_config("", cache.path())).unwrap();
    assert_eq!(fs.recover().await.uploaded, 1);
    assert_eq!(store.object("x").unwrap(), &b"eio at close"[..]);
}

#[tokio::test]
async fn a_failed_part_fails_close_aborts_the_upload_and_a_retry_completes_it() {
    let f = fixture("");
    let data = pattern(22 * MIB, 4);
    f.store.fail_after(
        Op::UploadPart,
        2,
        100,
        StoreError::Transient("HTTP 500".into()),
    );
    let (_, fh) =
        f.fs.create(ROOT, OsStr::new("parts"), 0o644, ME)
            .await
            .unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        f.fs.write(fh, (i * MIB) as u64, chunk).await.unwrap();
    }
    assert_eq!(f.fs.flush(fh).await.unwrap_err().errno(), libc::EIO);
    assert!(f.store.object("parts").is_none(), "no half object");
    assert!(
        eventually(|| f.store.pending_uploads() == 0).await,
        "failed uploads are aborted"
    );
    f.store.fail_after(
        Op::UploadPart,
        0,
        0,
        StoreError::Transient("HTTP 500".into()),
    );
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(f.store.object("parts").unwrap(), &data[..]);
}

#[tokio::test]
async fn a_failed_complete_leaves_no_object_and_no_upload() {
    let f = fixture("");
    let data = pattern(12 * MIB, 6);
    f.store.fail_next(
        Op::CompleteMultipart,
        2,
        StoreError::Transient("HTTP 503".into()),
    );
    let (_, fh) = f.fs.create(ROOT, OsStr::new("c"), 0o644, ME).await.unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        f.fs.write(fh, (i * MIB) as u64, chunk).await.unwrap();
    }
    assert_eq!(f.fs.flush(fh).await.unwrap_err().errno(), libc::EIO);
    assert!(f.store.object("c").is_none());
    assert_eq!(f.store.pending_uploads(), 0);
    f.fs.flush(fh).await.unwrap();
    assert_eq!(f.store.object("c").unwrap(), &data[..]);
    f.fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn a_failed_journal_write_fails_a_write_back_close() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = write_back_fixture(store.clone(), cache.path());
    let (_, fh) = fs.create(ROOT, OsStr::new("j"), 0o644, ME).await.unwrap();
    fs.write(fh, 0, b"data").await.unwrap();
    fs.fail_next_journal_writes(1);
    let err = fs.flush(fh).await.unwrap_err();
    assert_eq!(
        err.errno(),
        libc::EIO,
        "close must not claim durability it lacks"
    );
    // The next close succeeds and is durable.
    fs.flush(fh).await.unwrap();
    assert_eq!(records(&fs)[0]["state"], "committed");
    fs.release(fh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_in_one_directory_share_one_listing() {
    let f = Arc::new(fixture(""));
    for i in 0..200 {
        f.store.insert(&format!("d/f{i}"), b"x");
    }
    let dir = f.fs.lookup(ROOT, OsStr::new("d")).await.unwrap();
    // A listing showed the directory small (its entries' metadata read with it); once
    // that is stale, a lookup lists it again rather than asking about one name.
    let fh = f.fs.opendir(dir.ino).await.unwrap();
    let mut offset = 0;
    while let Some(last) = f.fs.readdir(fh, offset).await.unwrap().last() {
        offset = last.offset;
    }
    f.fs.releasedir(fh);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the TTL
    let (lists, asks) = (
        f.store.count(Op::List),
        f.store.count(Op::Head) + f.store.count(Op::Get),
    );
    let mut tasks = Vec::new();
    for i in 0..16 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            f.fs.lookup(dir.ino, OsStr::new(&format!("f{i}")))
                .await
                .unwrap();
            f.fs.lookup(dir.ino, OsStr::new(&format!("missing{i}")))
                .await
                .unwrap_err();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        f.store.count(Op::List) - lists,
        1,
        "one listing answered all 32 lookups"
    );
    // The listing shows each file unchanged since its metadata was read: no HEAD, and
    // the misses cost nothing.
    assert_eq!(f.store.count(Op::Head) + f.store.count(Op::Get) - asks, 0);
}

fn meta_of(store: &MemoryStore, key: &str, name: &str) -> Option<String> {
    store
        .user_meta(key)?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn objects_written_by_s3fs_show_their_modes_owners_times_and_kinds() {
    let f = fixture("");
    let reg = (libc::S_IFREG | 0o600).to_string();
    let lnk = (libc::S_IFLNK | 0o777).to_string();
    let fifo = (libc::S_IFIFO | 0o640).to_string();
    let dir = (libc::S_IFDIR | 0o700).to_string();
    f.store.insert_with_meta(
        "a",
        b"data",
        &[
            ("mode", &reg),
            ("uid", "1234"),
            ("gid", "5678"),
            ("mtime", "1577934245.123456789"),
            ("xattr", "%7B%22user.foo%22%3A%22YmFy%22%7D"),
        ],
    );
    f.store
        .insert_with_meta("link", b"a", &[("mode", &lnk), ("mtime", "1600000000")]);
    f.store.insert_with_meta("fifo", b"", &[("mode", &fifo)]);
    f.store
        .insert_with_meta("d/", b"", &[("mode", &dir), ("uid", "42")]);
    f.store.insert("d/inner", b"x");

    // Through a listing (readdirplus) as through a lookup, the metadata is what s3fs stored.
    let dh = f.fs.opendir(ROOT).await.unwrap();
    let entries = f.fs.readdir(dh, 0).await.unwrap();
    f.fs.releasedir(dh);
    let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap().attr.clone();
    let a = by_name("a");
    assert_eq!(
        (a.kind, a.perm, a.uid, a.gid),
        (Kind::File, 0o600, 1234, 5678)
    );
    assert_eq!(
        a.mtime,
        std::time::UNIX_EPOCH + Duration::new(1_577_934_245, 123_456_789)
    );
    assert_eq!(by_name("link").kind, Kind::Symlink);
    assert_eq!(
        (by_name("fifo").kind, by_name("fifo").perm),
        (Kind::Fifo, 0o640)
    );
    let d = by_name("d");
    assert_eq!((d.kind, d.perm, d.uid), (Kind::Dir, 0o700, 42));

    let link = f.fs.lookup(ROOT, OsStr::new("link")).await.unwrap();
    assert_eq!(f.fs.readlink(link.ino).await.unwrap(), "a");
    assert_eq!(f.fs.getxattr(a.ino, "user.foo").await.unwrap(), b"bar");
    assert_eq!(f.fs.listxattr(a.ino).await.unwrap(), vec!["user.foo"]);
    // An object without metadata gets the mount's defaults.
    let inner = f.fs.lookup(d.ino, OsStr::new("inner")).await.unwrap();
    assert_eq!((inner.perm, inner.uid), (0o644, 1000));
}

#[tokio::test]
async fn symlinks_and_special_files_are_stored_as_s3fs_does() {
    let f = fixture("p/");
    let l =
        f.fs.symlink(ROOT, OsStr::new("l"), std::path::Path::new("../target"), ME)
            .await
            .unwrap();
    assert_eq!((l.kind, l.perm, l.size), (Kind::Symlink, 0o777, 9));
    assert_eq!(f.store.object("p/l").unwrap(), &b"../target"[..]);
    assert_eq!(
        meta_of(&f.store, "p/l", "mode").unwrap(),
        (libc::S_IFLNK | 0o777).to_string()
    );
    assert_eq!(f.fs.readlink(l.ino).await.unwrap(), "../target");
    let err =
        f.fs.symlink(ROOT, OsStr::new("l"), std::path::Path::new("x"), ME)
            .await
            .unwrap_err();
    assert!(matches!(err, FsError::Exists));

    let fifo =
        f.fs.mknod(ROOT, OsStr::new("fifo"), libc::S_IFIFO | 0o600, 0, ME)
            .await
            .unwrap();
    assert_eq!(fifo.kind, Kind::Fifo);
    assert_eq!(f.store.object("p/fifo").unwrap().len(), 0);
    let dev =
        f.fs.mknod(ROOT, OsStr::new("dev"), libc::S_IFCHR | 0o600, 0x0501, ME)
            .await
            .unwrap();
    assert_eq!((dev.kind, dev.rdev), (Kind::CharDevice, 0x0501));

    // A fresh mount reads them back.
    let again = S3Fs::new(f.store.clone(), core_config("p/", f.cache.path())).unwrap();
    let l2 = again.lookup(ROOT, OsStr::new("l")).await.unwrap();
    assert_eq!(l2.kind, Kind::Symlink);
    assert_eq!(again.readlink(l2.ino).await.unwrap(), "../target");
    let dev2 = again.lookup(ROOT, OsStr::new("dev")).await.unwrap();
    assert_eq!(
        (dev2.kind, dev2.rdev, dev2.perm),
        (Kind::CharDevice, 0x0501, 0o600)
    );
}

#[tokio::test]
async fn chmod_chown_and_utimens_persist_by_copying_the_object_onto_itself() {
    let f = fixture("");
    let ino = write_file(&f.fs, ROOT, "doc", b"content").await;
    let etag_before = f.store.count(Op::Copy);
    let mtime = std::time::UNIX_EPOCH + Duration::new(1_500_000_000, 5);
    let change = s3mount::fs::SetAttr {
        mode: Some(0o640),
        uid: Some(7),
        gid: Some(8),
        mtime: Some(mtime),
        ..Default::default()
    };
    let attr = f.fs.setattr(ino, change).await.unwrap();
    assert_eq!(
        (attr.perm, attr.uid, attr.gid, attr.mtime),
        (0o640, 7, 8, mtime)
    );
    assert_eq!(f.store.count(Op::Copy) - etag_before, 1);
    assert_eq!(f.store.object("doc").unwrap(), &b"content"[..]);
    assert_eq!(
        meta_of(&f.store, "doc", "mode").unwrap(),
        (libc::S_IFREG | 0o640).to_string()
    );
    assert_eq!(
        meta_of(&f.store, "doc", "mtime").unwrap(),
        "1500000000.000000005"
    );

    // A directory's attributes go to its marker.
    let d = f.fs.mkdir(ROOT, OsStr::new("d"), 0o755, ME).await.unwrap();
    let change = s3mount::fs::SetAttr {
        mode: Some(0o711),
        ..Default::default()
    };
    f.fs.setattr(d.ino, change).await.unwrap();
    assert_eq!(
        meta_of(&f.store, "d/", "mode").unwrap(),
        (libc::S_IFDIR | 0o711).to_string()
    );

    let again = S3Fs::new(f.store.clone(), core_config("", f.cache.path())).unwrap();
    let doc = again.lookup(ROOT, OsStr::new("doc")).await.unwrap();
    assert_eq!(
        (doc.perm, doc.uid, doc.gid, doc.mtime),
        (0o640, 7, 8, mtime)
    );
    let d = again.lookup(ROOT, OsStr::new("d")).await.unwrap();
    assert_eq!(d.perm, 0o711);
}

#[tokio::test]
async fn attribute_changes_of_an_open_file_ride_along_with_its_upload() {
    let f = fixture("");
    let (attr, fh) = f.fs.create(ROOT, OsStr::new("w"), 0o644, ME).await.unwrap();
    f.fs.write(fh, 0, b"abc").await.unwrap();
    let change = s3mount::fs::SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    f.fs.setattr(attr.ino, change).await.unwrap();
    f.fs.setxattr(attr.ino, "user.k", b"v", 0).await.unwrap();
    assert!(
        f.store.object("w").is_none(),
        "nothing uploaded before close"
    );
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(f.store.count(Op::Copy), 0);
    assert_eq!(f.store.count(Op::Put), 1);
    assert_eq!(
        meta_of(&f.store, "w", "mode").unwrap(),
        (libc::S_IFREG | 0o600).to_string()
    );
    assert!(meta_of(&f.store, "w", "xattr").is_some());
}

#[tokio::test]
async fn user_xattrs_follow_the_linux_rules_and_s3_attributes_are_read_only() {
    let f = fixture("docs/");
    let ino = write_file(&f.fs, ROOT, "x", b"1").await;
    let fs = &f.fs;
    assert!(matches!(
        fs.getxattr(ino, "user.none").await,
        Err(FsError::NoXattr)
    ));
    assert!(matches!(
        fs.setxattr(ino, "user.a", b"1", libc::XATTR_REPLACE).await,
        Err(FsError::NoXattr)
    ));
    fs.setxattr(ino, "user.a", b"1", libc::XATTR_CREATE)
        .await
        .unwrap();
    assert!(matches!(
        fs.setxattr(ino, "user.a", b"2", libc::XATTR_CREATE).await,
        Err(FsError::Exists)
    ));
    fs.setxattr(ino, "user.a", &[0, 1, 2], libc::XATTR_REPLACE)
        .await
        .unwrap();
    fs.setxattr(ino, "user.b", b"", 0).await.unwrap();
    assert_eq!(fs.getxattr(ino, "user.a").await.unwrap(), vec![0, 1, 2]);
    assert_eq!(fs.listxattr(ino).await.unwrap(), vec!["user.a", "user.b"]);
    fs.removexattr(ino, "user.b").await.unwrap();
    assert!(matches!(
        fs.removexattr(ino, "user.b").await,
        Err(FsError::NoXattr)
    ));
    assert!(matches!(
        fs.setxattr(ino, "trusted.x", b"1", 0).await,
        Err(FsError::XattrNamespace)
    ));
    assert!(matches!(
        fs.setxattr(ino, "user.a,b", b"1", 0).await,
        Err(FsError::Unsupported(_))
    ));
    assert!(matches!(
        fs.setxattr(ino, "user.big", &[b'x'; 3000], 0).await,
        Err(FsError::TooBig)
    ));
    assert!(matches!(
        fs.setxattr(ino, "user.s3.key", b"x", 0).await,
        Err(FsError::NotPermitted(_))
    ));
    assert_eq!(fs.getxattr(ino, "user.s3.key").await.unwrap(), b"docs/x");
    let etag = String::from_utf8(fs.getxattr(ino, "user.s3.etag").await.unwrap()).unwrap();
    assert!(etag.starts_with('"'), "{etag}");
    let url = String::from_utf8(fs.getxattr(ino, "user.s3.url").await.unwrap()).unwrap();
    assert!(
        url.contains("docs/x") && url.contains("expires=3600"),
        "{url}"
    );

    let again = S3Fs::new(f.store.clone(), core_config("docs/", f.cache.path())).unwrap();
    let x = again.lookup(ROOT, OsStr::new("x")).await.unwrap();
    assert_eq!(
        again.getxattr(x.ino, "user.a").await.unwrap(),
        vec![0, 1, 2]
    );
    assert_eq!(again.listxattr(x.ino).await.unwrap(), vec!["user.a"]);
}

#[tokio::test]
async fn a_forgotten_inode_is_found_again_while_the_listing_is_fresh() {
    let f = fixture("");
    let d = f.fs.mkdir(ROOT, OsStr::new("d"), 0o755, ME).await.unwrap();
    // A miss lists the root: its listing is complete for the metadata TTL.
    assert!(f.fs.lookup(ROOT, OsStr::new("nothing")).await.is_err());
    // The kernel forgets `d` (memory pressure, a remount): the table drops it.
    f.fs.forget(d.ino, 1);
    let again = f.fs.lookup(ROOT, OsStr::new("d")).await.unwrap();
    assert_eq!(again.kind, Kind::Dir);
}

#[tokio::test]
async fn a_failed_unlink_keeps_the_unsaved_data() {
    let f = fixture("");
    write_file(&f.fs, ROOT, "doc", b"v1").await;
    let doc = f.fs.lookup(ROOT, OsStr::new("doc")).await.unwrap();
    // S3 is unreachable: the new content stays staged, the close fails.
    let (fh, _) =
        f.fs.open(
            doc.ino,
            OpenMode {
                write: true,
                truncate: true,
                exec: false,
            },
        )
        .await
        .unwrap();
    f.fs.write(fh, 0, b"v2 unsaved").await.unwrap();
    f.store
        .fail_next(Op::Put, 10, StoreError::Unreachable("down".into()));
    assert!(f.fs.flush(fh).await.is_err());
    f.fs.release(fh).await.ok();
    f.store
        .fail_next(Op::Delete, 10, StoreError::Unreachable("down".into()));
    assert!(f.fs.unlink(ROOT, OsStr::new("doc")).await.is_err());
    // Nothing was given up: the file still reads the unsaved content and uploads later.
    let doc = f.fs.lookup(ROOT, OsStr::new("doc")).await.unwrap();
    assert_eq!(read_all(&f.fs, doc.ino).await, b"v2 unsaved");
    f.store
        .fail_next(Op::Put, 0, StoreError::Unreachable("".into()));
    f.store
        .fail_next(Op::Delete, 0, StoreError::Unreachable("".into()));
    f.fs.retry_failed_uploads().await;
    assert_eq!(f.store.object("doc").unwrap(), &b"v2 unsaved"[..]);
}

#[tokio::test]
async fn an_open_reader_follows_its_file_through_a_rename_here() {
    let f = fixture("");
    let data = pattern(300 * 1024, 3);
    let ino = write_file(&f.fs, ROOT, "old", &data).await;
    let (fh, _) = f.fs.open(ino, OpenMode::default()).await.unwrap();
    assert_eq!(f.fs.read(fh, 0, 1000).await.unwrap(), &data[..1000]);
    f.fs.rename(ROOT, OsStr::new("old"), ROOT, OsStr::new("new"), false)
        .await
        .unwrap();
    assert!(f.store.object("old").is_none());
    let tail = f.fs.read(fh, 200 * 1024, 1000).await.unwrap();
    assert_eq!(tail, &data[200 * 1024..200 * 1024 + 1000]);
    f.fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn fast_listing_lists_without_a_head_per_entry() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = core_config("", cache.path());
    cfg.fast_listing = true;
    let fs = S3Fs::new(store.clone(), cfg).unwrap();
    let mode = (libc::S_IFREG | 0o600).to_string();
    for i in 0..50 {
        store.insert_with_meta(&format!("f{i}"), b"x", &[("mode", &mode)]);
    }
    let dh = fs.opendir(ROOT).await.unwrap();
    let entries = fs.readdir(dh, 0).await.unwrap();
    fs.releasedir(dh);
    assert_eq!(entries.len(), 52);
    assert_eq!(store.count(Op::Head), 0);
    // Listed entries carry the defaults; a lookup by name reads the stored metadata.
    let f0 = entries.iter().find(|e| e.name == "f0").unwrap();
    assert_eq!(f0.attr.perm, 0o644);
    let found = fs.getattr(f0.attr.ino).await.unwrap();
    assert_eq!(found.perm, 0o600);
}

#[tokio::test]
async fn a_small_file_comes_with_its_metadata_in_one_request() {
    let f = fixture("");
    let data = pattern(16 * 1024, 9);
    f.store.insert("small", &data);
    let gets = f.store.count(Op::Get);
    let small = f.fs.lookup(ROOT, OsStr::new("small")).await.unwrap();
    assert_eq!(small.size, data.len() as u64);
    assert_eq!(read_all(&f.fs, small.ino).await, data);
    assert_eq!(
        f.store.count(Op::Get) - gets,
        1,
        "one GET for lookup and read"
    );
    assert_eq!(f.store.count(Op::Head), 0);
}

#[tokio::test]
async fn a_reader_opened_before_an_append_here_reads_the_appended_content() {
    let f = fixture("");
    let ino = write_file(&f.fs, ROOT, "log", b"first line\n").await;
    let read_only = OpenMode {
        write: false,
        truncate: false,
        exec: false,
    };
    let (reader, _) = f.fs.open(ino, read_only).await.unwrap();
    assert_eq!(
        &f.fs.read(reader, 0, 4096).await.unwrap()[..],
        b"first line\n"
    );
    // Another handle of this mount appends, closes (uploaded), and its stage goes.
    let append = OpenMode {
        write: true,
        truncate: false,
        exec: false,
    };
    let (writer, _) = f.fs.open(ino, append).await.unwrap();
    f.fs.write(writer, 11, b"second line\n").await.unwrap();
    f.fs.flush(writer).await.unwrap();
    f.fs.release(writer).await.unwrap();
    assert_eq!(
        f.store.object("log").unwrap(),
        &b"first line\nsecond line\n"[..]
    );
    // The kernel asks the open reader for the new size's pages: read-your-writes.
    assert_eq!(
        &f.fs.read(reader, 0, 4096).await.unwrap()[..],
        b"first line\nsecond line\n"
    );
    f.fs.release(reader).await.unwrap();
}

/// FOPEN_KEEP_CACHE: an open keeps the kernel's pages exactly while they are the file's
/// content. Dropping them at a reader's open while an append is on its way lets the
/// reader cache the old last page and read zeros past the old end.
#[tokio::test]
async fn opens_keep_the_kernel_pages_while_they_are_the_files_content() {
    let f = fixture("");
    let read_only = OpenMode {
        write: false,
        truncate: false,
        exec: false,
    };
    let append = OpenMode {
        write: true,
        truncate: false,
        exec: false,
    };
    let (attr, fh) =
        f.fs.create(ROOT, OsStr::new("log"), 0o644, ME)
            .await
            .unwrap();
    let ino = attr.ino;
    f.fs.write(fh, 0, b"one\n").await.unwrap();
    // Staged: what the kernel holds was written through it.
    let (reader, keep) = f.fs.open(ino, read_only).await.unwrap();
    assert!(keep, "a reader of a file created here");
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    f.fs.release(reader).await.unwrap();
    // Uploaded and let go: the object is the content the pages hold.
    let (reader, keep) = f.fs.open(ino, read_only).await.unwrap();
    assert!(keep, "a reader after the upload");
    f.fs.release(reader).await.unwrap();
    // An appender's stage starts from that object: the pages stay valid for it, and for
    // a reader that opens while it appends.
    let (writer, keep) = f.fs.open(ino, append).await.unwrap();
    assert!(keep, "an appender");
    let (reader, keep) = f.fs.open(ino, read_only).await.unwrap();
    assert!(keep, "a reader while an append is on its way");
    f.fs.write(writer, 4, b"two\n").await.unwrap();
    f.fs.flush(writer).await.unwrap();
    f.fs.release(writer).await.unwrap();
    f.fs.release(reader).await.unwrap();
    let (reader, keep) = f.fs.open(ino, read_only).await.unwrap();
    assert!(keep, "a reader after the appender's upload");
    f.fs.release(reader).await.unwrap();
    // Another client's version: the pages are dropped once.
    f.store.insert("log", b"another client\n");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.fs.lookup(ROOT, OsStr::new("log")).await.unwrap();
    let (reader, keep) = f.fs.open(ino, read_only).await.unwrap();
    assert!(!keep, "another client's version");
    f.fs.release(reader).await.unwrap();
    let (reader, keep) = f.fs.open(ino, read_only).await.unwrap();
    assert!(keep, "the same version again");
    assert_eq!(
        &f.fs.read(reader, 0, 100).await.unwrap()[..],
        b"another client\n"
    );
    f.fs.release(reader).await.unwrap();
    // A truncating open starts from nothing: the pages are dropped.
    let truncate = OpenMode {
        write: true,
        truncate: true,
        exec: false,
    };
    let (writer, keep) = f.fs.open(ino, truncate).await.unwrap();
    assert!(!keep, "a truncating open");
    f.fs.release(writer).await.unwrap();
}

/// A handle opened before another client replaced the object reads nothing more of the
/// old version, not even blocks still cached here: they would enter the kernel's pages
/// of the file, which newer opens share (and keep).
#[tokio::test]
async fn a_handle_on_a_replaced_object_fails_even_where_blocks_are_cached() {
    let f = fixture("");
    let old = pattern(3 * MIB, 1);
    f.store.insert("v", &old);
    let attr = f.fs.lookup(ROOT, OsStr::new("v")).await.unwrap();
    let (old_handle, _) = f.fs.open(attr.ino, OpenMode::default()).await.unwrap();
    // A sequential read: the blocks of the old version are in the block cache now.
    for i in 0..3 {
        let got =
            f.fs.read(old_handle, (i * MIB) as u64, MIB as u32)
                .await
                .unwrap();
        assert_eq!(&got[..], &old[i * MIB..(i + 1) * MIB]);
    }
    f.store.insert("v", &pattern(3 * MIB, 2));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.fs.lookup(ROOT, OsStr::new("v")).await.unwrap();
    let (new_handle, keep) = f.fs.open(attr.ino, OpenMode::default()).await.unwrap();
    assert!(!keep, "the kernel drops the old version's pages");
    let err = f.fs.read(old_handle, 0, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert_eq!(
        &f.fs.read(new_handle, 0, 4096).await.unwrap()[..],
        &pattern(3 * MIB, 2)[..4096]
    );
    f.fs.release(old_handle).await.unwrap();
    f.fs.release(new_handle).await.unwrap();
}

/// A read that finds the object replaced by another client fails (EIO), and the next
/// open, still within the metadata TTL, reads the new version: the table does not keep
/// the version a read found gone until its TTL ends.
#[tokio::test]
async fn the_open_after_a_read_found_the_object_replaced_reads_the_new_version() {
    let f = fixture("");
    f.store.insert("v", &pattern(2 * MIB, 1));
    let attr = f.fs.lookup(ROOT, OsStr::new("v")).await.unwrap();
    let (old_handle, _) = f.fs.open(attr.ino, OpenMode::default()).await.unwrap();
    f.store.insert("v", &pattern(2 * MIB, 2));
    let err = f.fs.read(old_handle, 0, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    f.fs.release(old_handle).await.unwrap();

    let heads = f.store.count(Op::Head);
    let (new_handle, keep) = f.fs.open(attr.ino, OpenMode::default()).await.unwrap();
    assert!(!keep, "the kernel drops the old version's pages");
    assert_eq!(f.store.count(Op::Head) - heads, 1, "the open asked S3 once");
    assert_eq!(
        &f.fs.read(new_handle, 0, 4096).await.unwrap()[..],
        &pattern(2 * MIB, 2)[..4096]
    );
    f.fs.release(new_handle).await.unwrap();
    let (again, _) = f.fs.open(attr.ino, OpenMode::default()).await.unwrap();
    assert_eq!(f.store.count(Op::Head) - heads, 1, "later opens do not");
    f.fs.release(again).await.unwrap();
}

/// A listing sent before this mount removed a name and answered after it does not bring
/// the name back: once unlink has returned, neither readdir nor lookup shows the file
/// (before, it was back until the metadata TTL ended).
/// (`--fast-listing` takes a listing's entries without HEADs, as a metadata index that
/// knows the listed versions does.)
#[tokio::test]
async fn a_listing_answered_after_an_unlink_does_not_bring_the_name_back() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let config = s3mount::fs::FsConfig {
        fast_listing: true,
        ..core_config("", cache.path())
    };
    let f = Fixture {
        fs: S3Fs::new(store.clone(), config).unwrap(),
        store,
        cache,
    };
    for name in ["d/keep", "d/gone"] {
        f.store.insert(name, b"1");
    }
    let d = f.fs.lookup(ROOT, OsStr::new("d")).await.unwrap();
    f.fs.lookup(d.ino, OsStr::new("gone")).await.unwrap();
    // Every listing reads the store at once and arrives 300 ms later.
    f.store.answer_late(Op::List, Duration::from_millis(300));
    let listing = async {
        let dh = f.fs.opendir(d.ino).await.unwrap();
        let (mut names, mut offset) = (Vec::new(), 0);
        loop {
            let batch = f.fs.readdir(dh, offset).await.unwrap();
            let Some(last) = batch.last() else {
                break;
            };
            offset = last.offset;
            names.extend(batch.into_iter().map(|e| e.name));
        }
        f.fs.releasedir(dh);
        names
    };
    let removal = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.fs.unlink(d.ino, OsStr::new("gone")).await.unwrap();
    };
    let (names, ()) = tokio::join!(listing, removal);
    assert!(f.store.object("d/gone").is_none());
    assert!(names.contains(&"keep".to_string()), "{names:?}");
    assert!(
        !names.contains(&"gone".to_string()),
        "readdir shows it: {names:?}"
    );
    let err = f.fs.lookup(d.ino, OsStr::new("gone")).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
}

/// Names another client (s3fs) stored outside `user.` are kept but not listed: they
/// cannot be read here.
#[tokio::test]
async fn only_user_xattrs_are_listed() {
    let f = fixture("");
    // {"user.foo":"bar","security.selinux":"x"}, s3fs's format.
    f.store.insert_with_meta(
        "s",
        b"1",
        &[(
            "xattr",
            "%7B%22user.foo%22%3A%22YmFy%22%2C%22security.selinux%22%3A%22eA%3D%3D%22%7D",
        )],
    );
    let attr = f.fs.lookup(ROOT, OsStr::new("s")).await.unwrap();
    assert_eq!(f.fs.listxattr(attr.ino).await.unwrap(), vec!["user.foo"]);
    assert_eq!(f.fs.known_xattr_names(attr.ino).unwrap(), vec!["user.foo"]);
    // A change of a user attribute keeps what it cannot show.
    f.fs.setxattr(attr.ino, "user.new", b"1", 0).await.unwrap();
    let stored = meta_of(&f.store, "s", "xattr").unwrap();
    assert!(stored.contains("security.selinux"), "{stored}");
}

/// A truncating open while the kernel executes the file is ETXTBSY and changes nothing;
/// afterwards even a read-only O_TRUNC open truncates, and its close saves the change.
#[tokio::test]
async fn a_truncating_open_of_a_file_being_executed_is_text_busy() {
    let f = fixture("");
    f.store.insert("tool", b"#!/bin/sh\necho hi\n");
    let attr = f.fs.lookup(ROOT, OsStr::new("tool")).await.unwrap();
    let exec = OpenMode {
        exec: true,
        ..OpenMode::default()
    };
    let truncating_read = OpenMode {
        truncate: true,
        ..OpenMode::default()
    };
    let (running, _) = f.fs.open(attr.ino, exec).await.unwrap();
    for mode in [
        truncating_read,
        OpenMode {
            write: true,
            ..truncating_read
        },
    ] {
        let err = f.fs.open(attr.ino, mode).await.unwrap_err();
        assert_eq!(err.errno(), libc::ETXTBSY, "{mode:?}: {err}");
    }
    assert_eq!(f.fs.getattr(attr.ino).await.unwrap().size, 18);
    assert_eq!(
        &f.fs.read(running, 0, 100).await.unwrap()[..],
        b"#!/bin/sh\necho hi\n"
    );
    f.fs.release(running).await.unwrap();

    let (fh, _) = f.fs.open(attr.ino, truncating_read).await.unwrap();
    assert_eq!(f.fs.getattr(attr.ino).await.unwrap().size, 0);
    f.fs.flush(fh).await.unwrap();
    assert_eq!(f.store.object("tool").unwrap(), &b""[..]);
    f.fs.release(fh).await.unwrap();
}
