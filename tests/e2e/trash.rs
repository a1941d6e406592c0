//! `--trash`: a deleted file is first copied (with its metadata) to the trash, in the
//! mount's bucket or another one; a failed copy fails the unlink with EIO and leaves
//! the file; rename over a file and O_TRUNC do not trash; a trash that is missing or
//! overlaps the mount is refused at mount time. The core against the in-memory store
//! (staged files, the write-back queue, injected faults), then real mounts on Garage.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use s3mount::fs::{Caller, OpenMode, ROOT, S3Fs, Trash};
use s3mount::store::StoreError;
use s3mount::store::memory::{MemoryStore, Op};

use crate::common::{
    Bucket, MIB, S3Env, TestMount, close_file, core_config, eventually, random_bytes, runtime,
    s3mount_bin, unique_prefix,
};

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

// ---- the core, against the in-memory store ----

/// A core on `mount` (bucket "main", prefix `docs/`) whose trash is `trash` under
/// prefix `deleted/`: the same store, or another bucket that copies from "main".
fn core_with_trash(
    mount: &Arc<MemoryStore>,
    trash: &Arc<MemoryStore>,
    cache: &std::path::Path,
    write_back: bool,
) -> S3Fs<MemoryStore> {
    let mut cfg = core_config("docs/", cache);
    cfg.write_back = write_back;
    let source_bucket = (!Arc::ptr_eq(mount, trash)).then(|| {
        trash.add_bucket("main", mount.clone());
        "main".to_string()
    });
    let bin = Trash::new(
        trash.clone(),
        source_bucket,
        "deleted/",
        cfg.upload_limits(),
    );
    S3Fs::new(mount.clone(), cfg).unwrap().with_trash(bin)
}

async fn write_closed(fs: &S3Fs<MemoryStore>, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = fs
        .create(parent, OsStr::new(name), 0o640, ME)
        .await
        .unwrap();
    fs.write(fh, 0, data).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    attr.ino
}

#[tokio::test]
async fn core_a_failed_trash_copy_fails_the_unlink_and_keeps_the_file() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = core_with_trash(&store, &store, cache.path(), false);
    let dir = fs.mkdir(ROOT, OsStr::new("case"), 0o755, ME).await.unwrap();
    write_closed(&fs, dir.ino, "d1.pdf", b"the document").await;
    store.fail_next(Op::Copy, 1, StoreError::AccessDenied("denied".into()));
    let deletes = store.count(Op::Delete);
    let err = fs.unlink(dir.ino, OsStr::new("d1.pdf")).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert_eq!(store.count(Op::Delete), deletes, "nothing was deleted");
    assert_eq!(
        store.object("docs/case/d1.pdf").unwrap(),
        &b"the document"[..]
    );
    assert!(store.object("deleted/case/d1.pdf").is_none());
    let attr = fs.lookup(dir.ino, OsStr::new("d1.pdf")).await.unwrap();
    assert_eq!(attr.size, 12, "the file is still there");
    // Once the trash takes it, the unlink goes through.
    fs.unlink(dir.ino, OsStr::new("d1.pdf")).await.unwrap();
    assert!(store.object("docs/case/d1.pdf").is_none());
    assert_eq!(
        store.object("deleted/case/d1.pdf").unwrap(),
        &b"the document"[..]
    );
    let meta: HashMap<_, _> = store
        .user_meta("deleted/case/d1.pdf")
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(meta["mode"], (libc::S_IFREG | 0o640).to_string());
    // rmdir removes the marker without trashing it.
    fs.rmdir(ROOT, OsStr::new("case")).await.unwrap();
    assert_eq!(store.keys(), vec!["deleted/case/d1.pdf".to_string()]);
}

#[tokio::test]
async fn core_a_file_being_written_goes_to_another_bucket_with_its_latest_content() {
    let store = Arc::new(MemoryStore::new());
    let recycle = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = core_with_trash(&store, &recycle, cache.path(), false);
    // An uploaded version, then a newer one still being written (12 MiB: multipart).
    write_closed(&fs, ROOT, "big.bin", b"old version").await;
    let ino = fs.lookup(ROOT, OsStr::new("big.bin")).await.unwrap().ino;
    let (fh, _) = fs
        .open(
            ino,
            OpenMode {
                write: true,
                truncate: true,
                exec: false,
            },
        )
        .await
        .unwrap();
    let data = random_bytes(12 * MIB, 7);
    for (i, chunk) in data.chunks(MIB).enumerate() {
        fs.write(fh, (i * MIB) as u64, chunk).await.unwrap();
    }
    // A failing trash upload keeps everything as it was.
    recycle.fail_next(Op::CreateMultipart, 1, StoreError::Transient("500".into()));
    let err = fs.unlink(ROOT, OsStr::new("big.bin")).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(store.object("docs/big.bin").unwrap(), &b"old version"[..]);
    fs.unlink(ROOT, OsStr::new("big.bin")).await.unwrap();
    assert_eq!(recycle.object("deleted/big.bin").unwrap(), &data[..]);
    assert!(store.object("docs/big.bin").is_none());
    // The close after the unlink uploads nothing: the file stays deleted.
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(store.keys().is_empty(), "{:?}", store.keys());
    // The upload streamed while writing is aborted in the background.
    for _ in 0..500 {
        if store.pending_uploads() + recycle.pending_uploads() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.pending_uploads() + recycle.pending_uploads(), 0);
    assert_eq!(recycle.keys(), vec!["deleted/big.bin".to_string()]);
}

#[tokio::test]
async fn core_a_queued_write_back_file_is_trashed_and_never_uploaded_after() {
    let store = Arc::new(MemoryStore::new());
    let recycle = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let fs = Arc::new(core_with_trash(&store, &recycle, cache.path(), true));
    // The background queue is not started yet: the closed file is still queued.
    let ino = write_closed(&fs, ROOT, "queued.txt", b"queued content").await;
    fs.setxattr(ino, "user.note", b"kept", 0).await.unwrap();
    assert!(store.object("docs/queued.txt").is_none());
    fs.unlink(ROOT, OsStr::new("queued.txt")).await.unwrap();
    assert_eq!(
        recycle.object("deleted/queued.txt").unwrap(),
        &b"queued content"[..]
    );
    let meta: HashMap<_, _> = recycle
        .user_meta("deleted/queued.txt")
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(meta["mode"], (libc::S_IFREG | 0o640).to_string());
    assert!(meta.contains_key("mtime") && meta["xattr"].contains("user.note"));
    fs.start_background();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.keys().is_empty(), "resurrected: {:?}", store.keys());
    assert_eq!(fs.dirty_count(), 0);
}

// ---- real mounts on the local Garage ----

/// Plain S3 calls on any bucket.
struct S3 {
    client: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
}

impl S3 {
    fn new() -> S3 {
        S3 {
            client: S3Env::get().client(),
            rt: runtime(),
        }
    }

    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await;
            match out {
                Ok(out) => Some(out.body.collect().await.unwrap().to_vec()),
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    assert_eq!(status, Some(404), "GET {bucket}/{key}: {e:?}");
                    None
                }
            }
        })
    }

    fn metadata(&self, bucket: &str, key: &str) -> HashMap<String, String> {
        self.rt.block_on(async {
            let out = self.client.head_object().bucket(bucket).key(key);
            let out = out.send().await.unwrap();
            out.metadata().cloned().unwrap_or_default()
        })
    }

    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.rt.block_on(async {
            let out = self.client.list_objects_v2().bucket(bucket).prefix(prefix);
            let out = out.send().await.unwrap();
            let mut keys: Vec<String> = out
                .contents()
                .iter()
                .filter_map(|o| o.key().map(String::from))
                .collect();
            keys.sort();
            keys
        })
    }
}

/// A bucket of its own for one test, made with the garage CLI (as
/// scripts/local-s3.sh makes the test bucket) so that the CLI can change the test key's
/// permissions on it; deleted (with its objects) at the end.
struct OtherBucket {
    name: String,
}

impl OtherBucket {
    fn new(test: &str) -> OtherBucket {
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("trash-{test}-{nanos:x}");
        garage(&["bucket", "create", &name]).unwrap();
        let bucket = OtherBucket { name };
        bucket.allow(true);
        bucket
    }

    /// Gives the test key read, write and owner rights on the bucket, or takes its
    /// write right away.
    fn allow(&self, write: bool) {
        let (verb, rights) = match write {
            true => ("allow", &["--read", "--write", "--owner"][..]),
            false => ("deny", &["--write"][..]),
        };
        let mut args = vec!["bucket", verb];
        args.extend_from_slice(rights);
        args.extend_from_slice(&[&self.name, "--key", "s3mount"]);
        garage(&args).unwrap();
    }
}

impl Drop for OtherBucket {
    fn drop(&mut self) {
        // No panic here (it may run while a failed test unwinds).
        let args = [
            "bucket", "allow", "--read", "--write", "--owner", &self.name,
        ];
        let _ = garage(&[&args[..], &["--key", "s3mount"]].concat());
        let s3 = S3::new();
        let listed = s3
            .rt
            .block_on(s3.client.list_objects_v2().bucket(&self.name).send());
        for o in listed.iter().flat_map(|out| out.contents()) {
            let delete = s3.client.delete_object().bucket(&self.name);
            let _ = s3
                .rt
                .block_on(delete.key(o.key().unwrap_or_default()).send());
        }
        if let Err(e) = garage(&["bucket", "delete", "--yes", &self.name]) {
            eprintln!("could not delete bucket {}: {e}", self.name);
        }
    }
}

/// Runs the local Garage's CLI on the test server.
fn garage(args: &[&str]) -> Result<(), String> {
    let dir = std::env::var("S3MOUNT_TEST_GARAGE_DIR")
        .map_err(|_| "S3MOUNT_TEST_GARAGE_DIR is not set: run the tests with scripts/test.sh")?;
    let tools = std::env::var("S3MOUNT_TOOLS")
        .unwrap_or_else(|_| format!("{}/.cache/s3mount", std::env::var("HOME").unwrap()));
    let out = Command::new(format!("{tools}/garage/bin/garage"))
        .arg("-c")
        .arg(format!("{dir}/garage.toml"))
        .args(args)
        .env("RUST_LOG", "garage=warn")
        .output()
        .map_err(|e| format!("garage: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "garage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

#[test]
fn same_bucket_keeps_content_mode_mtime_and_xattrs_at_the_files_path() {
    let base = unique_prefix("trash-same");
    let (docs, deleted) = (format!("{base}docs/"), format!("{base}deleted/"));
    let m = TestMount::new(&docs, &["--trash", &deleted]);
    let s3 = S3::new();
    let bucket = S3Env::get().bucket;
    std::fs::create_dir_all(m.path("case/att")).unwrap();
    let file = m.path("case/att/d1.pdf");
    std::fs::write(&file, b"%PDF-1.7 a document").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_times(
        std::fs::FileTimes::new()
            .set_modified(old)
            .set_accessed(old),
    )
    .unwrap();
    drop(f);
    set_xattr(&file, "user.case", b"4711");
    std::os::unix::fs::symlink("att/d1.pdf", m.path("case/link")).unwrap();
    let before = s3.metadata(&bucket, &format!("{docs}case/att/d1.pdf"));
    assert_eq!(before["mode"], (libc::S_IFREG | 0o640).to_string());
    std::fs::remove_file(&file).unwrap();
    std::fs::remove_file(m.path("case/link")).unwrap();
    assert!(!file.exists());
    let trashed = format!("{deleted}case/att/d1.pdf");
    assert_eq!(s3.get(&bucket, &trashed).unwrap(), b"%PDF-1.7 a document");
    assert_eq!(
        s3.metadata(&bucket, &trashed),
        before,
        "the metadata travels"
    );
    assert!(before["mtime"].starts_with("1500000000"), "{before:?}");
    assert!(before["xattr"].contains("user.case"), "{before:?}");
    assert_eq!(
        s3.get(&bucket, &format!("{deleted}case/link")).unwrap(),
        b"att/d1.pdf"
    );
    let link_mode = s3.metadata(&bucket, &format!("{deleted}case/link"))["mode"].clone();
    assert_eq!(link_mode, (libc::S_IFLNK | 0o777).to_string());
    assert_eq!(s3.get(&bucket, &format!("{docs}case/att/d1.pdf")), None);
    // The trash is not part of the mount: only the (now empty) folders are.
    let names: Vec<_> = std::fs::read_dir(m.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("case")]);
}

#[test]
fn rm_rf_of_a_tree_trashes_every_file_into_another_bucket() {
    let other = OtherBucket::new("tree");
    let docs = unique_prefix("trash-tree");
    let trash = format!("s3://{}/recycle/", other.name);
    let m = TestMount::new(&docs, &["-o", &format!("trash={trash}")]);
    let s3 = S3::new();
    let mut expected = Vec::new();
    for dir in ["tree/a", "tree/a/b", "tree/c", "tree/empty"] {
        std::fs::create_dir_all(m.path(dir)).unwrap();
    }
    for (i, path) in [
        "tree/top.txt",
        "tree/a/one.txt",
        "tree/a/b/two.txt",
        "tree/c/three.txt",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(m.path(path), format!("file {i}")).unwrap();
        expected.push(format!("recycle/{path}"));
    }
    let big = random_bytes(9 * MIB, 3);
    std::fs::write(m.path("tree/c/big.bin"), &big).unwrap();
    expected.push("recycle/tree/c/big.bin".into());
    std::os::unix::fs::symlink("../top.txt", m.path("tree/a/link")).unwrap();
    expected.push("recycle/tree/a/link".into());
    expected.sort();
    let out = Command::new("rm")
        .arg("-rf")
        .arg(m.path("tree"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!m.path("tree").exists());
    assert_eq!(
        s3.keys(&other.name, ""),
        expected,
        "files only, no folder markers"
    );
    assert_eq!(
        s3.get(&other.name, "recycle/tree/a/b/two.txt").unwrap(),
        b"file 2"
    );
    assert!(s3.get(&other.name, "recycle/tree/c/big.bin").unwrap() == big);
    let mode = s3.metadata(&other.name, "recycle/tree/a/b/two.txt")["mode"].clone();
    assert_eq!(mode, (libc::S_IFREG | 0o644).to_string());
    assert!(
        Bucket::new().keys(&docs).is_empty(),
        "nothing left in the mount"
    );
}

#[test]
fn files_still_being_written_or_queued_are_trashed_with_their_latest_content() {
    let other = OtherBucket::new("staged");
    let s3 = S3::new();
    let trash = format!("s3://{}/", other.name);
    for write_back in [false, true] {
        let docs = unique_prefix("trash-staged");
        let mut args = vec!["--trash", trash.as_str()];
        if write_back {
            args.push("--write-back");
        }
        let m = TestMount::new(&docs, &args);
        // Open, written (an older version is in S3), unlinked before the close.
        std::fs::write(m.path("open.txt"), b"version 1").unwrap();
        let mut f = std::fs::File::options()
            .write(true)
            .truncate(true)
            .open(m.path("open.txt"))
            .unwrap();
        f.write_all(b"version 2, never closed before the rm")
            .unwrap();
        std::fs::remove_file(m.path("open.txt")).unwrap();
        f.write_all(b" (and after)").unwrap();
        close_file(f).unwrap();
        assert_eq!(
            s3.get(&other.name, "open.txt").unwrap(),
            b"version 2, never closed before the rm"
        );
        // Closed a moment ago: with --write-back most likely still queued.
        let files: Vec<(String, Vec<u8>)> = (0..6)
            .map(|i| (format!("q{i}.bin"), random_bytes(3 * MIB, i)))
            .collect();
        for (name, data) in &files {
            std::fs::write(m.path(name), data).unwrap();
        }
        for (name, _) in &files {
            std::fs::remove_file(m.path(name)).unwrap();
        }
        for (name, data) in &files {
            assert!(s3.get(&other.name, name).unwrap() == *data, "{name}");
        }
        // Nothing comes back once the uploads are done.
        assert!(eventually(Duration::from_secs(10), || m.staged_files() == 0));
        m.unmount();
        assert!(
            Bucket::new().keys(&docs).is_empty(),
            "write-back {write_back}"
        );
    }
}

#[test]
fn a_trash_copy_that_fails_leaves_the_file_with_eio() {
    let other = OtherBucket::new("denied");
    let docs = unique_prefix("trash-denied");
    let trash = format!("s3://{}/kept/", other.name);
    let m = TestMount::new(&docs, &["--trash", &trash]);
    std::fs::write(m.path("keep.txt"), b"must not be lost").unwrap();
    other.allow(false);
    let err = std::fs::remove_file(m.path("keep.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        std::fs::read(m.path("keep.txt")).unwrap(),
        b"must not be lost"
    );
    assert_eq!(
        Bucket::new().get(&format!("{docs}keep.txt")).unwrap(),
        b"must not be lost"
    );
    // A mount with that trash now refuses to start.
    let source = format!("s3://{}/{docs}", S3Env::get().bucket);
    let (code, err) = try_mount(&source, &["--trash", &trash], &[]);
    assert_ne!(code, 0);
    let said = the_line(&err);
    assert!(
        said.contains(&trash) && said.contains("not writable"),
        "{err}"
    );
    other.allow(true);
    std::fs::remove_file(m.path("keep.txt")).unwrap();
    assert_eq!(
        S3::new().get(&other.name, "kept/keep.txt").unwrap(),
        b"must not be lost"
    );
}

#[test]
fn rename_over_a_file_truncation_and_rmdir_do_not_trash() {
    let base = unique_prefix("trash-not");
    let (docs, deleted) = (format!("{base}docs/"), format!("{base}deleted/"));
    let m = TestMount::new(&docs, &["--trash", &deleted]);
    std::fs::write(m.path("a.txt"), b"a").unwrap();
    std::fs::write(m.path("b.txt"), b"b").unwrap();
    std::fs::rename(m.path("a.txt"), m.path("b.txt")).unwrap();
    std::fs::write(m.path("b.txt"), b"rewritten with O_TRUNC").unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(m.path("b.txt"))
        .unwrap();
    f.set_len(3).unwrap();
    close_file(f).unwrap();
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::remove_dir(m.path("dir")).unwrap();
    assert_eq!(std::fs::read(m.path("b.txt")).unwrap(), b"rew");
    let bucket = Bucket::new();
    assert!(
        bucket.keys(&deleted).is_empty(),
        "{:?}",
        bucket.keys(&deleted)
    );
    std::fs::remove_file(m.path("b.txt")).unwrap();
    assert_eq!(bucket.keys(&deleted), vec![format!("{deleted}b.txt")]);
}

/// `s3mount mount` with `args` after the source and mount point: its exit status and
/// stderr (a mount that succeeds is unmounted again).
fn try_mount(source: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let s3 = S3Env::get();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(s3mount_bin())
        .args(["mount", source, dir.path().to_str().unwrap()])
        .args(["--force-path-style", "--endpoint-url", &s3.endpoint])
        .args(["--cache-dir", cache.path().to_str().unwrap()])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    if out.status.success() {
        crate::common::fuse_unmount(dir.path()).unwrap();
        crate::common::wait_daemon_gone(cache.path());
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The one line `s3mount:` says on stderr (beside the daemon's log lines).
fn the_line(stderr: &str) -> &str {
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("s3mount: "))
        .collect();
    assert_eq!(said.len(), 1, "one line: {stderr}");
    said[0]
}

#[test]
fn a_missing_or_overlapping_trash_is_refused_at_mount_time() {
    let bucket = S3Env::get().bucket;
    let docs = unique_prefix("trash-refused");
    let source = format!("s3://{bucket}/{docs}");
    let missing = format!("s3://no-such-trash-{}/deleted/", std::process::id());
    let (code, err) = try_mount(&source, &["--trash", &missing], &[]);
    assert_ne!(code, 0);
    let said = the_line(&err);
    assert!(
        said.contains("trash bucket no-such-trash-") && said.contains("does not exist"),
        "{err}"
    );
    let inside = format!("{docs}deleted/");
    for args in [
        vec!["--trash", inside.as_str()],
        vec!["-o", &format!("trash={docs}")],
    ] {
        let (code, err) = try_mount(&source, &args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        let said = the_line(&err);
        assert!(said.contains("--trash") && said.contains(&docs), "{err}");
    }
    // The unit's env file form (S3MOUNT_TRASH), checked the same way.
    let (code, err) = try_mount(&source, &[], &[("S3MOUNT_TRASH", &missing)]);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");
    // A trash beside the mount's prefix is fine.
    let beside = format!("{}-deleted/", docs.trim_end_matches('/'));
    let (code, err) = try_mount(&source, &["--trash", &beside], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        Bucket::new().keys(&beside).is_empty(),
        "the probe is removed"
    );
}
