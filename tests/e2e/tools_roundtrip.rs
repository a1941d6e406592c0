//! Everyday tools through the mount: `tar -x`, `cp -a`, `rsync -a` and `git clone` write a
//! tree into the mount, and the tree must come back with the same content, modes, owners,
//! mtimes and symlink targets, both at once and after a remount (a fresh mount of the same
//! prefix with a fresh cache dir, so only what is in S3 counts).
//!
//! The tests run as root, so the tools restore owners (uid 1234, gid 5678).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

const UID: u32 = 1234;
const GID: u32 = 5678;

// ---------------------------------------------------------------------------------------
// Running commands

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if let Some(dir) = cmd.get_current_dir() {
        s = format!("(in {}) {s}", dir.display());
    }
    s
}

/// Runs `cmd`, panics with its output unless it succeeds.
fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    assert!(
        out.status.success(),
        "`{}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------
// The source tree

/// Sets the mtime of `path` (not following symlinks) with `touch -h -d @SECS`.
fn touch(path: &Path, secs: &str) {
    ok(&mut cmd(
        "touch",
        &["-h", "-d", &format!("@{secs}"), s(path)],
    ));
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds `parent/tree`: nested directories, files of many sizes (one over 8 MiB, so it is a
/// multipart upload with the default part size), several modes, owners, symlinks and
/// mtimes. Returns the tree's root.
fn build_tree(parent: &Path) -> PathBuf {
    let root = parent.join("tree");
    let files: Vec<(&str, Vec<u8>, u32)> = vec![
        ("README.md", b"# a small project\n".to_vec(), 0o644),
        (
            "src/main.rs",
            b"fn main() { println!(\"hi\"); }\n".to_vec(),
            0o644,
        ),
        ("src/lib/util.rs", random_bytes(20_000, 11), 0o644),
        ("bin/run.sh", b"#!/bin/sh\necho run\n".to_vec(), 0o755),
        ("secret/key.pem", random_bytes(1_700, 12), 0o600),
        ("etc/app.conf", b"[app]\nlevel = 3\n".to_vec(), 0o640),
        ("etc/shared.conf", b"shared = yes\n".to_vec(), 0o644),
        ("data/big.bin", random_bytes(9 * MIB + 12_345, 13), 0o644),
        ("data/medium.bin", random_bytes(300_000, 14), 0o644),
        ("data/empty", Vec::new(), 0o644),
        (
            "docs/Ünïcødé name & more+%.txt",
            b"unicode\n".to_vec(),
            0o644,
        ),
        ("deep/a/b/c/d/leaf.txt", b"leaf\n".to_vec(), 0o640),
    ];
    for (path, data, mode) in &files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        set_mode(&p, *mode);
    }
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    std::os::unix::fs::symlink("run.sh", root.join("bin/run")).unwrap();
    std::os::unix::fs::symlink("big.bin", root.join("data/latest")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute/target", root.join("dangling")).unwrap();

    // Owners.
    for p in ["secret", "secret/key.pem", "etc/app.conf"] {
        std::os::unix::fs::chown(root.join(p), Some(UID), Some(GID)).unwrap();
    }
    std::os::unix::fs::chown(root.join("etc/shared.conf"), None, Some(GID)).unwrap();
    std::os::unix::fs::lchown(root.join("data/latest"), Some(UID), Some(GID)).unwrap();

    // Modes of directories.
    for d in [
        "", "src", "src/lib", "bin", "etc", "data", "docs", "emptydir", "deep",
    ] {
        set_mode(&root.join(d), 0o755);
    }
    set_mode(&root.join("secret"), 0o700);
    set_mode(&root.join("deep/a/b"), 0o750);

    // Mtimes: every entry its own time; files and symlinks first, then directories from
    // the deepest up (creating entries changes the parent's mtime). One time has a
    // fraction of a second: it must come back at least to the second.
    let mut t: u64 = 1_600_000_000;
    for (path, _, _) in &files {
        t += 3_607;
        touch(&root.join(path), &t.to_string());
    }
    for link in ["bin/run", "data/latest", "dangling"] {
        t += 3_607;
        touch(&root.join(link), &t.to_string());
    }
    touch(&root.join("src/main.rs"), "1500000000.25");
    let dirs = [
        "deep/a/b/c/d",
        "deep/a/b/c",
        "deep/a/b",
        "deep/a",
        "deep",
        "src/lib",
        "src",
        "bin",
        "secret",
        "etc",
        "data",
        "docs",
        "emptydir",
        "",
    ];
    for d in dirs {
        t += 3_607;
        touch(&root.join(d), &t.to_string());
    }
    root
}

// ---------------------------------------------------------------------------------------
// Comparing trees

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Dir,
    File { size: u64, md5: String },
    Symlink(PathBuf),
    Other(u32),
}

#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Every entry under `root` (and `root` itself as ""), symlinks not followed.
fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Entry>) {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            assert_eq!(
                data.len() as u64,
                meta.len(),
                "{}: st_size differs from the bytes read",
                path.display()
            );
            Kind::File {
                size: meta.len(),
                md5: md5_hex(&data),
            }
        } else if ft.is_symlink() {
            Kind::Symlink(
                std::fs::read_link(&path)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display())),
            )
        } else {
            Kind::Other(meta.mode() & libc::S_IFMT)
        };
        out.insert(
            rel.to_string(),
            Entry {
                kind: kind.clone(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
            },
        );
        if kind == Kind::Dir {
            let mut names: Vec<String> = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for name in names {
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                walk(root, &child, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// Every difference between the tree at `want` and the tree at `got`, one line each.
fn tree_differences(want: &Path, got: &Path) -> Vec<String> {
    let (a, b) = (snapshot(want), snapshot(got));
    let mut diffs = Vec::new();
    for (path, w) in &a {
        let shown = if path.is_empty() { "." } else { path };
        let Some(g) = b.get(path) else {
            diffs.push(format!("{shown}: missing"));
            continue;
        };
        match (&w.kind, &g.kind) {
            (Kind::File { size: ws, md5: wm }, Kind::File { size: gs, md5: gm })
                if (ws, wm) != (gs, gm) =>
            {
                diffs.push(format!(
                    "{shown}: content differs (want {ws} bytes md5 {wm}, got {gs} bytes md5 {gm})"
                ));
            }
            (Kind::File { .. }, Kind::File { .. }) => {}
            (wk, gk) if wk != gk => {
                diffs.push(format!("{shown}: want {wk:?}, got {gk:?}"));
                continue;
            }
            _ => {}
        }
        // A symlink's own permission bits mean nothing on Linux.
        if !matches!(w.kind, Kind::Symlink(_)) && w.mode != g.mode {
            diffs.push(format!(
                "{shown}: mode want {:04o}, got {:04o}",
                w.mode, g.mode
            ));
        }
        if (w.uid, w.gid) != (g.uid, g.gid) {
            diffs.push(format!(
                "{shown}: owner want {}:{}, got {}:{}",
                w.uid, w.gid, g.uid, g.gid
            ));
        }
        if w.mtime != g.mtime {
            diffs.push(format!(
                "{shown}: mtime want {}, got {} ({:+} s)",
                w.mtime,
                g.mtime,
                g.mtime - w.mtime
            ));
        }
    }
    for path in b.keys() {
        if !a.contains_key(path) {
            diffs.push(format!("{path}: unexpected entry"));
        }
    }
    diffs
}

fn assert_same_tree(want: &Path, got: &Path, when: &str) {
    let diffs = tree_differences(want, got);
    assert!(
        diffs.is_empty(),
        "{when}: {} differs from {} in {} ways:\n  {}",
        got.display(),
        want.display(),
        diffs.len(),
        diffs.join("\n  ")
    );
    // And an independent content check.
    let out = cmd("diff", &["-r", "--no-dereference", s(want), s(got)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{when}: diff -r {} {}:\n{}{}",
        want.display(),
        got.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts `m` (pending uploads finish) and mounts the same prefix with a fresh cache dir.
fn remount(m: TestMount, prefix: &str) -> TestMount {
    drop(m);
    TestMount::new(prefix, &[])
}

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn tar_extract_keeps_content_modes_owners_mtimes_and_symlinks_across_a_remount() {
    let prefix = unique_prefix("tar");
    let local = tempfile::tempdir().unwrap();
    let src = build_tree(local.path());
    let archive = local.path().join("tree.tar");
    ok(&mut cmd(
        "tar",
        &[
            "--numeric-owner",
            "-cf",
            s(&archive),
            "-C",
            s(local.path()),
            "tree",
        ],
    ));

    let m = TestMount::new(&prefix, &[]);
    ok(&mut cmd(
        "tar",
        &[
            "--numeric-owner",
            "-xpf",
            s(&archive),
            "-C",
            s(m.mountpoint()),
        ],
    ));
    assert_same_tree(&src, &m.path("tree"), "right after tar -xpf");
    let big = std::fs::read(src.join("data/big.bin")).unwrap();
    assert_eq!(
        Bucket::new().etag(&format!("{prefix}tree/data/big.bin")),
        multipart_etag(&big, 8 * MIB),
        "the file over 8 MiB is a multipart upload in parts of the default 8 MiB"
    );
    // tar reads back what it wrote.
    ok(&mut cmd(
        "tar",
        &[
            "--numeric-owner",
            "-df",
            s(&archive),
            "-C",
            s(m.mountpoint()),
        ],
    ));

    let m = remount(m, &prefix);
    assert_same_tree(&src, &m.path("tree"), "after a remount");
    ok(&mut cmd(
        "tar",
        &[
            "--numeric-owner",
            "-df",
            s(&archive),
            "-C",
            s(m.mountpoint()),
        ],
    ));
}

#[test]
fn cp_a_keeps_content_modes_owners_mtimes_and_symlinks_across_a_remount() {
    let prefix = unique_prefix("cpa");
    let local = tempfile::tempdir().unwrap();
    let src = build_tree(local.path());

    let m = TestMount::new(&prefix, &[]);
    ok(&mut cmd("cp", &["-a", s(&src), s(m.mountpoint())]));
    assert_same_tree(&src, &m.path("tree"), "right after cp -a");

    let m = remount(m, &prefix);
    assert_same_tree(&src, &m.path("tree"), "after a remount");
}

/// Runs `rsync -a --itemize-changes --stats SRC DEST/` and asserts it had nothing to do.
fn assert_rsync_copies_nothing(src: &Path, dest: &Path, when: &str) {
    let out = ok(&mut cmd(
        "rsync",
        &["-a", "--itemize-changes", "--stats", s(src), s(dest)],
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    // With -i (and no -v) every line before the statistics is an itemized change.
    let changes: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Number of files:"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let transferred = text
        .lines()
        .find(|l| l.starts_with("Number of regular files transferred:"))
        .unwrap_or("(no \"Number of regular files transferred\" line)");
    assert!(
        changes.is_empty() && transferred.trim_end() == "Number of regular files transferred: 0",
        "{when}: a second rsync -a found differences ({transferred}):\n  {}\n--- full output\n{text}",
        changes.join("\n  ")
    );
}

#[test]
fn rsync_a_then_a_second_rsync_copies_nothing_also_after_a_remount() {
    let prefix = unique_prefix("rsync");
    let local = tempfile::tempdir().unwrap();
    let src = build_tree(local.path());

    let m = TestMount::new(&prefix, &[]);
    ok(&mut cmd("rsync", &["-a", s(&src), s(m.mountpoint())]));
    assert_same_tree(&src, &m.path("tree"), "right after rsync -a");
    assert_rsync_copies_nothing(&src, m.mountpoint(), "same mount");

    let m = remount(m, &prefix);
    assert_same_tree(&src, &m.path("tree"), "after a remount");
    assert_rsync_copies_nothing(&src, m.mountpoint(), "after a remount");
}

/// `git` with a clean configuration: no system or global config, every directory safe,
/// fixed author and dates.
fn git(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(dir)
        .args([
            "-c",
            "safe.directory=*",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
        .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z")
        .env("LC_ALL", "C");
    ok(&mut c)
}

fn git_text(dir: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&git(dir, args).stdout)
        .trim_end()
        .to_string()
}

/// A repository with a few commits: text files, an executable, a binary, a symlink, a
/// deleted file; the first commits packed, the last loose.
fn build_repo(parent: &Path) -> PathBuf {
    let repo = parent.join("origin");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    let write = |rel: &str, data: &[u8]| {
        let p = repo.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    write("README.md", b"# origin\n");
    write("src/a.c", b"int a(void) { return 1; }\n");
    write("src/b.c", b"int b(void) { return 2; }\n");
    write("tools/build.sh", b"#!/bin/sh\nmake\n");
    set_mode(&repo.join("tools/build.sh"), 0o755);
    write("assets/blob.bin", &random_bytes(200_000, 21));
    std::os::unix::fs::symlink("README.md", repo.join("readme-link")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "first"]);

    write("src/a.c", b"int a(void) { return 10; }\n");
    write("src/c.c", b"int c(void) { return 3; }\n");
    std::fs::remove_file(repo.join("src/b.c")).unwrap();
    write("assets/more.bin", &random_bytes(64_000, 22));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "second"]);
    git(&repo, &["repack", "-q", "-a", "-d"]);

    write("README.md", b"# origin\n\nthird commit\n");
    write("docs/guide.md", b"guide\n");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "third"]);
    repo
}

#[test]
fn git_clone_into_the_mount_passes_fsck_and_stays_clean_after_a_remount() {
    let prefix = unique_prefix("git");
    let local = tempfile::tempdir().unwrap();
    let origin = build_repo(local.path());
    let head = git_text(&origin, &["rev-parse", "HEAD"]);

    let m = TestMount::new(&prefix, &[]);
    let clone = m.path("clone");
    git(m.mountpoint(), &["clone", "-q", s(&origin), "clone"]);
    assert_eq!(git_text(&clone, &["rev-parse", "HEAD"]), head);
    git(&clone, &["fsck", "--full", "--strict"]);
    assert_eq!(
        git_text(&clone, &["status", "--porcelain"]),
        "",
        "a fresh clone is clean"
    );
    let out = cmd(
        "diff",
        &[
            "-r",
            "--no-dereference",
            "--exclude=.git",
            s(&origin),
            s(&clone),
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "the clone's work tree differs from the origin's:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let m = remount(m, &prefix);
    let clone = m.path("clone");
    assert_eq!(
        git_text(&clone, &["status", "--porcelain"]),
        "",
        "after a remount the clone is still clean"
    );
    git(&clone, &["fsck", "--full", "--strict"]);
    assert_eq!(git_text(&clone, &["rev-parse", "HEAD"]), head);

    // And it keeps working as a repository: a new commit, then fsck again.
    std::fs::write(clone.join("src/d.c"), b"int d(void) { return 4; }\n").unwrap();
    std::fs::write(clone.join("README.md"), b"# changed on the mount\n").unwrap();
    git(&clone, &["add", "-A"]);
    git(&clone, &["commit", "-q", "-m", "on the mount"]);
    git(&clone, &["fsck", "--full", "--strict"]);
    assert_eq!(git_text(&clone, &["status", "--porcelain"]), "");
    assert_eq!(git_text(&clone, &["rev-list", "--count", "HEAD"]), "4");
}

/// The comparison itself: on a local directory the same tools keep everything the tests
/// above check, so a difference on the mount is the mount's doing.
#[test]
fn the_tools_keep_everything_on_a_local_directory() {
    let local = tempfile::tempdir().unwrap();
    let src = build_tree(local.path());
    let archive = local.path().join("tree.tar");
    ok(&mut cmd(
        "tar",
        &[
            "--numeric-owner",
            "-cf",
            s(&archive),
            "-C",
            s(local.path()),
            "tree",
        ],
    ));
    let by_tar = tempfile::tempdir().unwrap();
    ok(&mut cmd(
        "tar",
        &[
            "--numeric-owner",
            "-xpf",
            s(&archive),
            "-C",
            s(by_tar.path()),
        ],
    ));
    assert_same_tree(&src, &by_tar.path().join("tree"), "local tar -xpf");
    let by_cp = tempfile::tempdir().unwrap();
    ok(&mut cmd("cp", &["-a", s(&src), s(by_cp.path())]));
    assert_same_tree(&src, &by_cp.path().join("tree"), "local cp -a");
    let by_rsync = tempfile::tempdir().unwrap();
    ok(&mut cmd("rsync", &["-a", s(&src), s(by_rsync.path())]));
    assert_same_tree(&src, &by_rsync.path().join("tree"), "local rsync -a");
    assert_rsync_copies_nothing(&src, by_rsync.path(), "local");
}

/// `cp -a` changes each entry's metadata twice in a row right after creating it (owner,
/// then times): each change is a CopyObject onto the key. A server that stamps a copy
/// with the current millisecond without ordering it after the key's last version
/// (Garage 2.5) kept the owner change instead of the times in about 1 copy of 4, until
/// the store spaced the writes of one key. What S3 holds must be the last change, for
/// every entry.
#[test]
fn quick_successive_metadata_changes_leave_the_last_one_in_s3() {
    let prefix = unique_prefix("burst");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("burst");
    std::fs::create_dir(&src).unwrap();
    let mut want = BTreeMap::new();
    for i in 0..24u64 {
        let (file, link) = (format!("f{i:02}"), format!("l{i:02}"));
        std::fs::write(src.join(&file), format!("file {i}")).unwrap();
        std::os::unix::fs::symlink(format!("/nonexistent/{i}"), src.join(&link)).unwrap();
        for (n, name) in [&file, &link].into_iter().enumerate() {
            let t = 1_500_000_000 + i * 1000 + n as u64;
            touch(&src.join(name), &t.to_string());
            want.insert(name.clone(), t);
        }
    }
    ok(&mut cmd(
        "chown",
        &["-h", "-R", &format!("{UID}:{GID}"), s(&src)],
    ));

    let m = TestMount::new(&prefix, &[]);
    ok(&mut cmd("cp", &["-a", s(&src), s(m.mountpoint())]));
    let bucket = Bucket::new();
    let mut wrong = Vec::new();
    for (name, t) in &want {
        let meta = bucket.metadata(&format!("{prefix}burst/{name}"));
        let mtime = meta
            .get("mtime")
            .map(|m| m.split('.').next().unwrap_or(m).to_string());
        let owner = (meta.get("uid").cloned(), meta.get("gid").cloned());
        if mtime != Some(t.to_string()) || owner != (Some(UID.to_string()), Some(GID.to_string())) {
            wrong.push(format!("{name}: {meta:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} entries lost a change in S3:\n  {}",
        wrong.len(),
        want.len(),
        wrong.join("\n  ")
    );
}

/// `unlink x; mv y x` in quick succession, as editors and document stores save: the rename
/// is a CopyObject onto the key the DELETE just removed. Garage stamps that copy with the
/// current millisecond, so a copy in the DELETE's millisecond could be ordered before it
/// and the renamed file lost; the store spaces writes of one key, and S3 must hold the
/// renamed content under every name.
#[test]
fn a_rename_onto_a_name_just_deleted_keeps_the_renamed_file() {
    let prefix = unique_prefix("swap");
    let m = TestMount::new(&prefix, &[]);
    let dir = m.mountpoint();
    for i in 0..24 {
        std::fs::write(dir.join(format!("x{i:02}")), "old").unwrap();
        std::fs::write(dir.join(format!("y{i:02}")), format!("new {i}")).unwrap();
    }
    for i in 0..24 {
        let (x, y) = (dir.join(format!("x{i:02}")), dir.join(format!("y{i:02}")));
        std::fs::remove_file(&x).unwrap();
        std::fs::rename(&y, &x).unwrap();
    }
    let bucket = Bucket::new();
    let mut wrong = Vec::new();
    for i in 0..24 {
        let got = bucket.get(&format!("{prefix}x{i:02}"));
        if got.as_deref() != Some(format!("new {i}").as_bytes()) {
            wrong.push(format!(
                "x{i:02}: {:?}",
                got.map(|g| String::from_utf8_lossy(&g).into_owned())
            ));
        }
        if bucket.get(&format!("{prefix}y{i:02}")).is_some() {
            wrong.push(format!("y{i:02} still in S3"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
