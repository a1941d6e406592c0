//! Closes and releases answered in the calling (FUSE) thread (`S3Fs::flush_now`,
//! `S3Fs::release_is_local`): they must promise exactly what the close on a worker
//! promises. With `--write-back` the commit's syncs happen before the answer; in default
//! mode a file S3 does not have yet is never answered here (its close must upload).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use s3mount::fs::{Caller, OpenMode, ROOT, S3Fs};
use s3mount::store::memory::MemoryStore;

use crate::common::core_config;

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn mount(store: Arc<MemoryStore>, cache: &std::path::Path, write_back: bool) -> S3Fs<MemoryStore> {
    let mut cfg = core_config("", cache);
    cfg.write_back = write_back;
    S3Fs::new(store, cfg).unwrap()
}

/// The journal records' states, in the order of the records.
fn record_states(fs: &S3Fs<MemoryStore>) -> Vec<String> {
    (fs.journal_records().into_iter())
        .map(|r| serde_json::to_value(r).unwrap()["state"].to_string())
        .collect()
}

#[tokio::test]
async fn a_write_back_close_here_is_durable_before_it_returns_and_uploads_later() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = Arc::new(mount(store.clone(), cache.path(), true));
    fs.start_background();
    let (attr, fh) = fs.create(ROOT, OsStr::new("a"), 0o644, ME).await.unwrap();
    fs.write(fh, 0, b"durable").await.unwrap();
    assert!(
        fs.release_is_local(fh),
        "a write-back release never waits for S3"
    );
    fs.flush_now(fh).expect("answered here").unwrap();
    assert_eq!(record_states(&fs), ["\"committed\""]);
    fs.release(fh).await.unwrap();
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 7);
    for _ in 0..100 {
        if store.object("a").is_some() && fs.dirty_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.object("a").unwrap(), &b"durable"[..]);
}

#[tokio::test]
async fn a_failed_journal_write_fails_a_write_back_close_here() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = mount(store, cache.path(), true);
    let (_, fh) = fs.create(ROOT, OsStr::new("j"), 0o644, ME).await.unwrap();
    fs.write(fh, 0, b"data").await.unwrap();
    fs.fail_next_journal_writes(1);
    let err = fs.flush_now(fh).expect("answered here").unwrap_err();
    assert_eq!(
        err.errno(),
        libc::EIO,
        "no durability claimed that is not there"
    );
    fs.flush_now(fh).expect("answered here").unwrap();
    assert_eq!(record_states(&fs), ["\"committed\""]);
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn a_default_close_of_new_data_is_left_to_the_upload() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = mount(store.clone(), cache.path(), false);
    let (attr, fh) = fs.create(ROOT, OsStr::new("d"), 0o644, ME).await.unwrap();
    fs.write(fh, 0, b"new").await.unwrap();
    assert!(
        fs.flush_now(fh).is_none(),
        "S3 does not have it: the close must upload"
    );
    assert!(!fs.release_is_local(fh));
    assert!(store.object("d").is_none());
    fs.flush(fh).await.unwrap();
    assert_eq!(store.object("d").unwrap(), &b"new"[..]);
    // Uploaded: a second close (a dup'd descriptor) and the release wait for nothing.
    fs.flush_now(fh).expect("answered here").unwrap();
    assert!(fs.release_is_local(fh));
    fs.release(fh).await.unwrap();
    // A reader's close waits for nothing either.
    let (reader, _) = fs.open(attr.ino, OpenMode::default()).await.unwrap();
    fs.flush_now(reader).expect("answered here").unwrap();
    assert!(fs.release_is_local(reader));
    fs.release(reader).await.unwrap();
    // A handle that is gone is told so, as flush tells it.
    let gone = fs.flush_now(reader).expect("answered here").unwrap_err();
    assert_eq!(gone.errno(), fs.flush(reader).await.unwrap_err().errno());
}
