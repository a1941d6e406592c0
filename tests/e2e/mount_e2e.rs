//! End to end: the real binary mounts a prefix of a bucket on the local S3 server, real
//! programs use it, and the results are checked through the S3 API, not the mount.

use std::io::Write;
use std::time::Duration;

use crate::common::*;

#[test]
fn a_copied_tree_lands_byte_for_byte_and_reads_back_after_a_fresh_mount() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("tree");
    // A local tree: small files, nested folders, an empty folder, one multipart file.
    let src = tempfile::tempdir().unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("readme.txt", b"hello documents\n".to_vec()),
        ("invoices/2026/inv-001.pdf", random_bytes(70_000, 1)),
        ("invoices/2026/inv-002.pdf", random_bytes(1, 2)),
        ("invoices/empty.bin", Vec::new()),
        ("scans/big scan (1).tiff", random_bytes(13 * MIB + 4321, 3)),
        ("names/üñí cødé & more+%.txt", b"unicode".to_vec()),
    ];
    for (path, data) in &files {
        let p = src.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::create_dir_all(src.path().join("empty-folder")).unwrap();

    let mount = TestMount::new(&prefix, &["--part-size", "5MiB"]);
    let out = run(
        "cp",
        &[
            "-r",
            &format!("{}/.", src.path().display()),
            mount.mountpoint().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (path, data) in &files {
        let key = format!("{prefix}{path}");
        assert_eq!(bucket.get(&key).as_deref(), Some(&data[..]), "{key}");
    }
    let big = &files[4].1;
    assert_eq!(
        bucket.etag(&format!("{prefix}scans/big scan (1).tiff")),
        multipart_etag(big, 5 * MIB),
        "a parallel multipart upload in 5 MiB parts"
    );
    assert_eq!(
        bucket.etag(&format!("{prefix}readme.txt")),
        md5_hex(&files[0].1),
        "small files are one PUT"
    );
    assert_eq!(
        bucket.get(&format!("{prefix}empty-folder/")).as_deref(),
        Some(&b""[..])
    );
    // (The stage files go at RELEASE, which the kernel sends after close() returned.)
    assert!(
        eventually(Duration::from_secs(10), || mount.staged_files() == 0),
        "nothing left staged once S3 has it ({} files)",
        mount.staged_files()
    );
    drop(mount);

    let fresh = TestMount::new(&prefix, &[]);
    for (path, data) in &files {
        assert_eq!(&std::fs::read(fresh.path(path)).unwrap(), data, "{path}");
    }
    assert!(fresh.path("empty-folder").is_dir());
    let out = run(
        "diff",
        &[
            "-r",
            src.path().to_str().unwrap(),
            fresh.mountpoint().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let meta = std::fs::metadata(fresh.path("scans/big scan (1).tiff")).unwrap();
    assert_eq!(meta.len(), big.len() as u64);
}

#[test]
fn directories_renames_and_deletes_through_the_s3_api() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("ops");
    let m = TestMount::new(&prefix, &[]);
    std::fs::create_dir(m.path("empty")).unwrap();
    assert_eq!(
        bucket.get(&format!("{prefix}empty/")).as_deref(),
        Some(&b""[..])
    );

    std::fs::create_dir(m.path("full")).unwrap();
    std::fs::write(m.path("full/doc.txt"), b"doc").unwrap();
    let err = std::fs::remove_dir(m.path("full")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    std::fs::remove_dir(m.path("empty")).unwrap();
    assert_eq!(bucket.get(&format!("{prefix}empty/")), None);

    // mv: server-side copy then delete.
    std::fs::write(m.path("draft.txt"), b"version 1").unwrap();
    let out = run(
        "mv",
        &[
            m.path("draft.txt").to_str().unwrap(),
            m.path("full/final.txt").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(bucket.get(&format!("{prefix}draft.txt")), None);
    assert_eq!(
        bucket.get(&format!("{prefix}full/final.txt")).as_deref(),
        Some(&b"version 1"[..])
    );
    // mv over an existing file replaces it.
    std::fs::write(m.path("new.txt"), b"version 2").unwrap();
    std::fs::rename(m.path("new.txt"), m.path("full/final.txt")).unwrap();
    assert_eq!(
        bucket.get(&format!("{prefix}full/final.txt")).as_deref(),
        Some(&b"version 2"[..])
    );
    assert_eq!(bucket.get(&format!("{prefix}new.txt")), None);
    assert_eq!(
        std::fs::read(m.path("full/final.txt")).unwrap(),
        b"version 2"
    );

    // The write-to-temporary-then-rename pattern of document applications.
    {
        let mut f = std::fs::File::create(m.path("full/.~tmp123")).unwrap();
        f.write_all(b"part one, ").unwrap();
        f.write_all(b"part two").unwrap();
    }
    std::fs::rename(m.path("full/.~tmp123"), m.path("full/report.odt")).unwrap();
    assert_eq!(
        bucket.get(&format!("{prefix}full/report.odt")).as_deref(),
        Some(&b"part one, part two"[..])
    );

    std::fs::remove_file(m.path("full/doc.txt")).unwrap();
    assert_eq!(bucket.get(&format!("{prefix}full/doc.txt")), None);
    let mut names: Vec<String> = std::fs::read_dir(m.path("full"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["final.txt", "report.odt"]);
    let mut keys = bucket.keys(&prefix);
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{prefix}full/"),
            format!("{prefix}full/final.txt"),
            format!("{prefix}full/report.odt")
        ]
    );
}

#[test]
fn nothing_outside_the_prefix_is_listed_read_written_or_deleted() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("fence");
    let sibling = format!("{}-sibling/x.txt", prefix.trim_end_matches('/'));
    let outside = format!("{}outside.txt", prefix.trim_end_matches('/'));
    bucket.put(&sibling, b"sibling");
    bucket.put(&outside, b"outside");
    bucket.put(&format!("{prefix}inside.txt"), b"inside");
    let m = TestMount::new(&prefix, &[]);
    let names: Vec<String> = std::fs::read_dir(m.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["inside.txt"]);
    std::fs::write(m.path("new.txt"), b"n").unwrap();
    std::fs::remove_file(m.path("inside.txt")).unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::remove_dir(m.path("d")).unwrap();
    assert!(
        std::fs::metadata(m.path("../outside.txt")).is_err()
            || !m.path("../outside.txt").starts_with(m.mountpoint())
    );
    assert_eq!(bucket.get(&sibling).as_deref(), Some(&b"sibling"[..]));
    assert_eq!(bucket.get(&outside).as_deref(), Some(&b"outside"[..]));
    let keys = bucket.keys(&prefix);
    assert_eq!(keys, vec![format!("{prefix}new.txt")]);
}

#[test]
fn objects_put_by_another_client_become_visible() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("visible");
    let m = TestMount::new(&prefix, &["--metadata-ttl", "1"]);
    assert_eq!(std::fs::read_dir(m.mountpoint()).unwrap().count(), 0);
    bucket.put(
        &format!("{prefix}from-elsewhere.txt"),
        b"put by another client",
    );
    bucket.put(&format!("{prefix}implicit/dir/file.txt"), b"deep");
    std::thread::sleep(Duration::from_millis(1100));
    let mut names: Vec<String> = std::fs::read_dir(m.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["from-elsewhere.txt", "implicit"]);
    assert_eq!(
        std::fs::read(m.path("from-elsewhere.txt")).unwrap(),
        b"put by another client"
    );
    assert!(
        m.path("implicit/dir").is_dir(),
        "directories that exist only as key prefixes appear"
    );
    assert_eq!(
        std::fs::read(m.path("implicit/dir/file.txt")).unwrap(),
        b"deep"
    );
    // A new version replaces the old one once the metadata TTL has passed.
    bucket.put(&format!("{prefix}from-elsewhere.txt"), b"changed");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        std::fs::read(m.path("from-elsewhere.txt")).unwrap(),
        b"changed"
    );
}

#[test]
fn close_fails_with_eio_while_s3_is_unreachable_and_the_data_is_kept() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("eio");
    let proxy = Proxy::start(&bucket.env.endpoint);
    let cache_root = tempfile::tempdir().unwrap();
    let cache = cache_root.path().join("cache");
    let m = TestMount::with_cache(&prefix, &cache, &[], Some(&proxy.url()));
    std::fs::write(m.path("before.txt"), b"ok").unwrap();

    let mut f = std::fs::File::create(m.path("precious.doc")).unwrap();
    f.write_all(b"a document that must not be lost").unwrap();
    proxy.set_down(true);
    let Err(err) = close_file(f) else {
        panic!(
            "close() must fail while S3 is unreachable (object in S3: {})",
            bucket.get(&format!("{prefix}precious.doc")).is_some()
        );
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(
        m.staged_files() >= 1,
        "the staged data stays in the cache dir"
    );
    // Reads through the mount still see the data.
    assert_eq!(
        std::fs::read(m.path("precious.doc")).unwrap(),
        b"a document that must not be lost"
    );
    assert_eq!(bucket.get(&format!("{prefix}precious.doc")), None);

    // Once S3 is back, the pending upload finishes (at the latest when unmounting).
    proxy.set_down(false);
    m.unmount();
    assert_eq!(
        bucket.get(&format!("{prefix}precious.doc")).as_deref(),
        Some(&b"a document that must not be lost"[..])
    );
    assert_eq!(m.staged_files(), 0);
}

#[test]
fn limits_ls_stat_df_and_a_large_listing() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("limits");
    bucket.put_many(&format!("{prefix}many/"), 2500);
    let m = TestMount::new(&prefix, &[]);

    let long = "n".repeat(256);
    let err = std::fs::write(m.path(&long), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    let err = std::fs::create_dir(m.path(&long)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    // A key over 1024 bytes: nested names of 250 bytes.
    let mut deep = m.mountpoint().to_path_buf();
    let mut failed = false;
    for _ in 0..5 {
        deep.push("d".repeat(250));
        if let Err(e) = std::fs::create_dir(&deep) {
            assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
            failed = true;
            break;
        }
    }
    assert!(failed, "a key over 1024 bytes must be refused");
    assert!(bucket.keys(&prefix).iter().all(|k| k.len() <= 1024));
    assert!(!bucket.keys(&prefix).iter().any(|k| k.contains(&long)));

    let out = run("ls", &["-l", m.path("many").to_str().unwrap()]);
    assert!(out.status.success());
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 2501, "total line plus 2500 entries");

    let out = run(
        "stat",
        &["-c", "%s %F", m.path("many/f000007").to_str().unwrap()],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 regular file"
    );

    let out = run(
        "df",
        &[
            "-k",
            "--output=size,avail",
            m.mountpoint().to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(figures.iter().all(|&v| v > 0), "df: {text}");
}

#[test]
fn large_sequential_write_and_read() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("large");
    let data = random_bytes(40 * MIB + 17, 42);
    let m = TestMount::new(&prefix, &["--part-size", "8MiB", "--cache-size", "8MiB"]);
    {
        let mut f = std::fs::File::create(m.path("large.bin")).unwrap();
        for chunk in data.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(
        bucket.etag(&format!("{prefix}large.bin")),
        multipart_etag(&data, 8 * MIB)
    );
    drop(m);
    let m = TestMount::new(&prefix, &["--cache-size", "8MiB"]);
    let back = std::fs::read(m.path("large.bin")).unwrap();
    assert!(back == data, "read back differs");
    // Random reads.
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(m.path("large.bin")).unwrap();
    for (i, off) in [33 * MIB + 5, 7, 20 * MIB - 3, 40 * MIB]
        .into_iter()
        .enumerate()
    {
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        let mut buf = vec![0u8; 10_000];
        let n = f.read(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            &data[off..(off + 10_000).min(data.len())],
            "read {i}"
        );
    }
}

#[test]
fn the_mount_is_a_fuse_s3mount_and_remounts_read_only_and_back() {
    let prefix = unique_prefix("remount");
    let m = TestMount::new(&prefix, &[]);
    let mp = m.mountpoint().to_string_lossy().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mp.as_str()))
        .expect("mounted");
    assert_eq!(line.split(' ').nth(2), Some("fuse.s3mount"), "{line}");
    std::fs::write(m.path("before"), b"1").unwrap();

    // What mount(8) runs for `mount -o remount,ro DIR` on a fuse.s3mount mount.
    let source = line.split(' ').next().unwrap();
    let out = run(s3mount_bin(), &[source, &mp, "-o", "rw,remount,ro"]);
    assert!(out.status.success(), "{out:?}");
    let err = std::fs::write(m.path("during"), b"2").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read(m.path("before")).unwrap(), b"1");

    let out = run(s3mount_bin(), &[source, &mp, "-o", "remount,rw"]);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(m.path("after"), b"3").unwrap();
    assert_eq!(Bucket::new().get(&format!("{prefix}after")).unwrap(), b"3");
}

#[test]
fn acl_and_security_probes_answer_enotsup_and_user_xattrs_persist() {
    let prefix = unique_prefix("xattrns");
    let m = TestMount::new(&prefix, &[]);
    let file = m.path("doc.txt");
    std::fs::write(&file, b"x").unwrap();
    // What a file system without ACLs or labels answers, which `ls -l` remembers for the
    // device instead of asking once per file.
    for name in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
        let err = xattr::get(&file, name).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSUP), "get {name}");
        if !name.starts_with("system.") {
            // (The kernel parses an ACL before it reaches us: "1" is EINVAL there.)
            let err = xattr::set(&file, name, b"1").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOTSUP), "set {name}");
        }
        let err = xattr::remove(&file, name).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSUP), "remove {name}");
    }
    // (The xattr crate answers ENODATA with None.)
    assert_eq!(xattr::get(&file, "user.missing").unwrap(), None);
    xattr::set(&file, "user.color", b"blue").unwrap();
    assert_eq!(
        xattr::get(&file, "user.color").unwrap().as_deref(),
        Some(&b"blue"[..])
    );
    let out = run("ls", &["-l", m.path("").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("doc.txt"));
}

/// `open(O_RDONLY | O_TRUNC)` reaches the daemon before the kernel's ETXTBSY check (which
/// a write-mode open passes first): a program run from the mount must not lose its file
/// to it. Once nothing runs it, the same open truncates, and the close saves that.
#[test]
fn a_truncating_read_only_open_of_a_running_program_is_text_busy() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let bucket = Bucket::new();
    let prefix = unique_prefix("etxtbsy");
    let m = TestMount::new(&prefix, &[]);
    let program = m.path("sleep");
    let original = std::fs::read("/bin/sleep").unwrap();
    std::fs::copy("/bin/sleep", &program).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = std::process::Command::new(&program)
        .arg("30")
        .spawn()
        .unwrap();
    let truncating_read = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&program)
    };
    for _ in 0..3 {
        let err = truncating_read().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&program)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the program still runs"
    );
    assert_eq!(
        std::fs::metadata(&program).unwrap().len(),
        original.len() as u64
    );
    assert_eq!(std::fs::read(&program).unwrap(), original);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        bucket.get(&format!("{prefix}sleep")).as_deref(),
        Some(&original[..])
    );

    close_file(truncating_read().unwrap()).unwrap();
    assert_eq!(std::fs::metadata(&program).unwrap().len(), 0);
    assert_eq!(
        bucket.get(&format!("{prefix}sleep")).as_deref(),
        Some(&b""[..]),
        "a default-mode close returns once S3 has the truncated file"
    );
}
