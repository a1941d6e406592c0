//! `s3mount migrate` against the local Garage: a generated tree (nested and empty
//! folders, modes, owners, old times, symlinks, xattrs, a FIFO, names with spaces and
//! non-ASCII, empty files and one over the part size) lands as a mount would have
//! written it (checked through the S3 API and through a fresh mount); a rerun writes
//! nothing; changed files and only those are copied again; a killed run is completed by
//! the next, which aborts its multipart uploads; corrupted uploads are refused; and
//! `--dry-run`, `--delete-source` and keys over 1024 bytes do what they say.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const PART: usize = 5 * MIB;

/// Runs `s3mount migrate SOURCE s3://BUCKET/PREFIX` (through `endpoint` if given).
fn migrate(source: &Path, prefix: &str, endpoint: Option<&str>, extra: &[&str]) -> Output {
    migrate_command(source, prefix, endpoint, extra)
        .output()
        .unwrap()
}

fn migrate_command(source: &Path, prefix: &str, endpoint: Option<&str>, extra: &[&str]) -> Command {
    let env = S3Env::get();
    let mut cmd = Command::new(s3mount_bin());
    cmd.arg("migrate")
        .arg(source)
        .arg(format!("s3://{}/{prefix}", env.bucket))
        .args([
            "--force-path-style",
            "--part-size",
            "5MiB",
            "--endpoint-url",
        ])
        .arg(endpoint.unwrap_or(&env.endpoint))
        .args(extra);
    cmd
}

/// (copied, skipped, failed) files from the summary, the last line of stdout.
fn files_summary(out: &Output) -> (u64, u64, u64) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let counts: Vec<u64> = last
        .split("files: ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(|part| {
            part.split(", ")
                .filter_map(|w| w.split(' ').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        counts.len(),
        3,
        "no summary line in:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (counts[0], counts[1], counts[2])
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "migrate failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn set_times(path: &Path, secs: i64, nanos: i64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with every kind of thing migrate must carry over; the big file's data.
fn build_tree(root: &Path) -> Vec<u8> {
    for d in ["a/b/c", "empty", "with space", "ünïcødé/ß", "private"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    write(&root.join("a/one.txt"), b"one\n", 0o640);
    write(&root.join("a/b/c/deep.bin"), &random_bytes(3000, 1), 0o600);
    write(&root.join("zero.bin"), b"", 0o644);
    write(&root.join("with space/file name.txt"), b"spaces", 0o644);
    write(
        &root.join("ünïcødé/ß/日本語 ファイル.txt"),
        "ünï".as_bytes(),
        0o644,
    );
    write(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    let big = random_bytes(PART + 12345, 2);
    write(&root.join("a/big.bin"), &big, 0o644);
    write(&root.join("private/owned.txt"), b"owned", 0o600);
    std::os::unix::fs::chown(root.join("private/owned.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::symlink("a/one.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("a/dangling")).unwrap();
    nix::unistd::mkfifo(
        &root.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    xattr::set(root.join("a/one.txt"), "user.color", b"blue").unwrap();
    xattr::set(root.join("zero.bin"), "user.bytes", &[0, 255, 1]).unwrap();
    xattr::set(root.join("a"), "user.folder", b"yes").unwrap();
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o750)).unwrap();
    set_times(&root.join("a/one.txt"), 1_000_000_000, 123_456_789);
    set_times(&root.join("a/big.bin"), 1_200_000_000, 0);
    set_times(&root.join("link-rel"), 1_300_000_000, 5);
    // Folders last: adding entries changes a folder's mtime.
    for d in ["a/b/c", "a/b", "a", "empty", "ünïcødé/ß"] {
        set_times(&root.join(d), 1_100_000_000, 42);
    }
    big
}

/// What a path shows: mode (with type), owner, size (not of folders), mtime, link target,
/// `user.*` xattrs and, for regular files, the content.
#[derive(Debug, PartialEq)]
struct Shown {
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    mtime: (i64, i64),
    link: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
    content: Option<Vec<u8>>,
}

fn snapshot(root: &Path) -> BTreeMap<String, Shown> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<String, Shown>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let ft = m.file_type();
            let mut xattrs = BTreeMap::new();
            if !ft.is_symlink() {
                for name in xattr::list(&path).unwrap() {
                    let name = name.to_str().unwrap().to_string();
                    if name.starts_with("user.") {
                        xattrs.insert(name.clone(), xattr::get(&path, &name).unwrap().unwrap());
                    }
                }
            }
            out.insert(
                rel,
                Shown {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    size: (!ft.is_dir()).then_some(m.size()),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    link: ft
                        .is_symlink()
                        .then(|| std::fs::read_link(&path).unwrap().to_str().unwrap().into()),
                    xattrs,
                    content: ft.is_file().then(|| std::fs::read(&path).unwrap()),
                },
            );
            if ft.is_dir() {
                visit(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

#[test]
fn a_migrated_tree_mounts_as_the_source_and_reruns_copy_only_changes() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("migrate");
    let src = tempfile::tempdir().unwrap();
    let big = build_tree(src.path());
    let before = snapshot(src.path());

    let out = migrate(src.path(), &prefix, None, &[]);
    assert_ok(&out);
    // Regular files, symlinks and the FIFO: 8 + 2 + 1.
    assert_eq!(files_summary(&out), (11, 0, 0));
    assert_eq!(snapshot(src.path()), before, "the source changed");

    // Through the S3 API: every folder has its marker, and the headers are s3fs's.
    let mut keys = bucket.keys(&prefix);
    keys.sort();
    for k in [
        "a/",
        "a/b/",
        "a/b/c/",
        "empty/",
        "with space/",
        "ünïcødé/",
        "ünïcødé/ß/",
        "private/",
        "a/one.txt",
        "a/big.bin",
        "zero.bin",
        "ünïcødé/ß/日本語 ファイル.txt",
        "link-rel",
        "pipe",
    ] {
        assert!(
            keys.contains(&format!("{prefix}{k}")),
            "no key {k} in {keys:?}"
        );
    }
    assert_eq!(keys.len(), 19, "{keys:?}");
    let meta = bucket.metadata(&format!("{prefix}a/one.txt"));
    assert_eq!(meta["mode"], (libc::S_IFREG | 0o640).to_string());
    assert_eq!(meta["mtime"], "1000000000.123456789");
    assert_eq!(meta["s3mount-md5"], md5_hex(b"one\n"));
    assert_eq!(
        bucket.etag(&format!("{prefix}a/one.txt")),
        md5_hex(b"one\n")
    );
    let owned = bucket.metadata(&format!("{prefix}private/owned.txt"));
    assert_eq!(
        (owned["uid"].as_str(), owned["gid"].as_str()),
        ("1234", "5678")
    );
    assert_eq!(
        bucket.etag(&format!("{prefix}a/big.bin")),
        multipart_etag(&big, PART),
        "the big file goes in parts of --part-size"
    );
    assert_eq!(
        bucket.get(&format!("{prefix}link-rel")).unwrap(),
        b"a/one.txt"
    );

    // Through a fresh mount: the same tree.
    {
        let m = TestMount::new(&prefix, &[]);
        let shown = snapshot(m.mountpoint());
        assert_eq!(
            shown.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
        for (path, want) in &before {
            assert_eq!(&shown[path], want, "{path} differs through the mount");
        }
    }

    // A rerun of the unchanged tree writes nothing.
    let proxy = Proxy::start(&bucket.env.endpoint);
    let out = migrate(src.path(), &prefix, Some(&proxy.url()), &[]);
    assert_ok(&out);
    assert_eq!(files_summary(&out), (0, 11, 0));
    assert_eq!(
        proxy.write_requests(),
        0,
        "an unchanged tree was written to"
    );

    // Three changed files (content and size, mode, content of the same size) are
    // copied again, and only those; a dry run first lists them and writes nothing.
    std::fs::write(src.path().join("a/b/c/deep.bin"), random_bytes(4000, 3)).unwrap();
    std::fs::set_permissions(
        src.path().join("run.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::write(src.path().join("with space/file name.txt"), b"SPACES").unwrap();
    proxy.reset_counts();
    let out = migrate(src.path(), &prefix, Some(&proxy.url()), &["--dry-run"]);
    assert_ok(&out);
    assert_eq!(files_summary(&out), (3, 8, 0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would copy run.sh (metadata differs)"),
        "{stdout}"
    );
    assert_eq!(proxy.write_requests(), 0, "a dry run wrote");
    let out = migrate(src.path(), &prefix, Some(&proxy.url()), &[]);
    assert_ok(&out);
    assert_eq!(files_summary(&out), (3, 8, 0));
    assert_eq!(proxy.requests("PUT"), 3, "only the three files are written");
    assert_eq!(proxy.write_requests(), 3);
    assert_eq!(
        bucket
            .get(&format!("{prefix}with space/file name.txt"))
            .unwrap(),
        b"SPACES"
    );

    // An object of the same size, mode and time but other content, written by another
    // client (its metadata copied, as a tool would), is found out by its content.
    let key = format!("{prefix}a/one.txt");
    let mut headers = bucket.metadata(&key);
    headers.remove("s3mount-md5");
    bucket.put_with_meta(&key, b"ONE\n", &headers);
    proxy.reset_counts();
    let out = migrate(src.path(), &prefix, Some(&proxy.url()), &[]);
    assert_ok(&out);
    assert_eq!(files_summary(&out), (1, 10, 0));
    assert_eq!(bucket.get(&key).unwrap(), b"one\n");
}

#[test]
fn dry_run_lists_and_writes_nothing() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("migrate-dry");
    let src = tempfile::tempdir().unwrap();
    build_tree(src.path());
    let proxy = Proxy::start(&bucket.env.endpoint);
    let out = migrate(src.path(), &prefix, Some(&proxy.url()), &["--dry-run"]);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("would copy a/big.bin (new)"), "{stdout}");
    assert!(stdout.contains("would copy empty/ (new)"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("dry run"),
        "{stdout}"
    );
    assert_eq!(files_summary(&out), (11, 0, 0));
    assert_eq!(proxy.write_requests(), 0);
    assert!(bucket.keys(&prefix).is_empty());
}

#[test]
fn delete_source_deletes_what_s3_has() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("migrate-del");
    let src = tempfile::tempdir().unwrap();
    build_tree(src.path());
    let before = snapshot(src.path());
    // One file is already in the bucket: skipped, but verified and deleted too.
    assert_ok(&migrate(src.path(), &prefix, None, &[]));
    std::fs::write(src.path().join("new.txt"), b"new").unwrap();
    let out = migrate(src.path(), &prefix, None, &["--delete-source"]);
    assert_ok(&out);
    assert_eq!(files_summary(&out), (1, 11, 0));
    let left: Vec<_> = std::fs::read_dir(src.path()).unwrap().collect();
    assert!(left.is_empty(), "left in the source: {left:?}");
    assert!(src.path().is_dir(), "LOCAL_DIR itself stays");
    assert_eq!(bucket.get(&format!("{prefix}new.txt")).unwrap(), b"new");
    let m = TestMount::new(&prefix, &[]);
    let shown = snapshot(m.mountpoint());
    for (path, want) in &before {
        assert_eq!(&shown[path], want, "{path} differs through the mount");
    }
}

#[test]
fn killed_run_is_completed_by_the_next_and_its_uploads_aborted() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("migrate-kill");
    let src = tempfile::tempdir().unwrap();
    let data: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(4 * PART + 1, 10 + i)).collect();
    for (i, d) in data.iter().enumerate() {
        std::fs::write(src.path().join(format!("big{i}.bin")), d).unwrap();
    }
    std::fs::write(src.path().join("small.txt"), b"small").unwrap();
    let proxy = Proxy::start(&bucket.env.endpoint);
    proxy.set_fault(Fault::SlowUpload, 100);
    let mut child = migrate_command(
        src.path(),
        &prefix,
        Some(&proxy.url()),
        &["--concurrency", "2"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while bucket.uploads(&prefix).is_empty() {
        assert!(Instant::now() < deadline, "no multipart upload started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "migrate ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !bucket.uploads(&prefix).is_empty(),
        "the killed run left no upload"
    );

    let out = migrate(src.path(), &prefix, None, &[]);
    assert_ok(&out);
    let (copied, skipped, failed) = files_summary(&out);
    assert_eq!((copied + skipped, failed), (4, 0));
    assert!(bucket.uploads(&prefix).is_empty(), "multipart uploads left");
    for (i, d) in data.iter().enumerate() {
        assert_eq!(
            bucket.etag(&format!("{prefix}big{i}.bin")),
            multipart_etag(d, PART)
        );
    }
}

#[test]
fn corrupted_uploads_are_refused() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("migrate-corrupt");
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("small.txt"), b"small file").unwrap();
    std::fs::write(src.path().join("big.bin"), random_bytes(PART + 1, 20)).unwrap();
    let proxy = Proxy::start(&bucket.env.endpoint);
    proxy.set_fault(Fault::Corrupt, 100);
    let out = migrate(src.path(), &prefix, Some(&proxy.url()), &[]);
    assert!(!out.status.success(), "a corrupted upload was accepted");
    assert_eq!(files_summary(&out), (0, 0, 2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("small.txt"), "{stderr}");
    assert!(
        bucket.keys(&prefix).is_empty(),
        "a corrupted object was stored"
    );
    assert!(bucket.uploads(&prefix).is_empty());
    proxy.set_fault(Fault::None, 100);
    let out = migrate(src.path(), &prefix, Some(&proxy.url()), &[]);
    assert_ok(&out);
    assert_eq!(files_summary(&out), (2, 0, 0));
}

#[test]
fn names_that_cannot_be_keys_are_reported_not_shortened() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("migrate-long");
    let src = tempfile::tempdir().unwrap();
    // Folders of 887 bytes fit; a file name of 150 bytes in the deepest does not.
    let deep = (0..4)
        .map(|i| format!("{i}{}", "d".repeat(220)))
        .collect::<Vec<_>>()
        .join("/");
    std::fs::create_dir_all(src.path().join(&deep)).unwrap();
    std::fs::write(src.path().join(&deep).join("f".repeat(150)), b"x").unwrap();
    std::fs::write(src.path().join("fine.txt"), b"fine").unwrap();
    let out = migrate(src.path(), &prefix, None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("over S3's limit of 1024"), "{stderr}");
    assert_eq!(files_summary(&out), (1, 0, 1));
    assert!(bucket.keys(&prefix).contains(&format!("{prefix}{deep}/")));
    assert_eq!(bucket.get(&format!("{prefix}fine.txt")).unwrap(), b"fine");
    assert!(bucket.keys(&prefix).iter().all(|k| k.len() <= 1024));
}
