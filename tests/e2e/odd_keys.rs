//! Keys written by other S3 clients that are odd or cannot be paths (issue 15): control
//! characters, tabs, newlines, `%`, `+`, `\`, non-ASCII; empty, `.` and `..` segments,
//! names over 255 bytes, NULs, a file hidden by a directory of the same name, a marker
//! with content. What can be a path lists, reads and round-trips byte for byte; what
//! cannot is left out of listings and never renamed, rewritten or deleted.
//!
//! The core tests run against the in-memory store; the others need the local S3 server
//! and root for mounts. The fuzz test takes its seed from `S3MOUNT_FUZZ_SEED`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use s3mount::fs::{Caller, FsError, ROOT, S3Fs};
use s3mount::store::memory::MemoryStore;

use crate::common::*;

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn core_fs(store: &Arc<MemoryStore>, cache: &Path) -> S3Fs<MemoryStore> {
    let config = core_config("p/", cache);
    S3Fs::new(store.clone(), config).unwrap()
}

async fn names_in(fs: &S3Fs<MemoryStore>, ino: u64) -> Vec<String> {
    let dh = fs.opendir(ino).await.unwrap();
    let (mut names, mut offset) = (Vec::new(), 0);
    loop {
        let batch = fs.readdir(dh, offset).await.unwrap();
        let Some(last) = batch.last() else { break };
        offset = last.offset;
        names.extend(batch.into_iter().map(|e| e.name));
    }
    fs.releasedir(dh);
    names
}

/// Keys (under `p/`) that cannot be shown, each with its content.
const HIDDEN: &[&str] = &[
    "p/d/a//b.txt",
    "p/d/./dot.txt",
    "p/d/../up.txt",
    "p/d/sub//",
    "p/d/nul\0x",
    "p/d/x",
];

#[tokio::test]
async fn core_leaves_out_unshowable_keys_and_lists_the_rest() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let long_ok = format!("p/d/{}", "l".repeat(255));
    let long_bad = format!("p/d/{}", "L".repeat(256));
    for key in HIDDEN.iter().copied().chain([long_bad.as_str()]) {
        store.insert(key, key.as_bytes());
    }
    for key in [
        "p/d/ok.txt",
        "p/d/c\u{1}\t\n\\%+ é.txt",
        "p/d/x/in",
        &long_ok,
    ] {
        store.insert(key, key.as_bytes());
    }
    let fs = core_fs(&store, cache.path());
    let d = fs.lookup(ROOT, OsStr::new("d")).await.unwrap();
    let mut names = names_in(&fs, d.ino).await;
    names.sort();
    // `a` and `sub` exist (keys lie below them) but show nothing inside.
    let mut expected: Vec<String> = [".", "..", "ok.txt", "c\u{1}\t\n\\%+ é.txt", "x", "a", "sub"]
        .into_iter()
        .map(String::from)
        .chain([long_ok[4..].to_string()])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    // The folder keeps working: lookups, a new file.
    fs.lookup(d.ino, OsStr::new("ok.txt")).await.unwrap();
    let (_, fh) = fs
        .create(d.ino, OsStr::new("new"), 0o644, ME)
        .await
        .unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(store.object("p/d/new").is_some());
}

#[tokio::test]
async fn core_rmdir_and_rename_leave_unshowable_keys_alone() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    for key in HIDDEN {
        store.insert(key, key.as_bytes());
    }
    store.insert("p/d/x/in", b"in");
    store.insert("p/e/./only-hidden", b"h");
    store.insert("p/m/", b"a marker with content");
    let before = store.keys();
    let fs = core_fs(&store, cache.path());
    for dir in ["d", "e", "m"] {
        let err = fs.rmdir(ROOT, OsStr::new(dir)).await.unwrap_err();
        assert!(matches!(err, FsError::NotEmpty), "rmdir {dir}: {err:?}");
    }
    for dir in ["d", "e"] {
        let err = fs
            .rename(ROOT, OsStr::new(dir), ROOT, OsStr::new("moved"), false)
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EPERM, "rename {dir}: {err:?}");
    }
    assert_eq!(store.keys(), before, "nothing moved, nothing deleted");
    for key in HIDDEN {
        assert_eq!(store.object(key).unwrap(), key.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// Through a real mount

/// Runs `program` with `args`; its exit status and output.
fn run_tool(program: &str, args: &[&OsStr]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The names in directory `dir` of the mount, as bytes.
fn dir_names(dir: &Path) -> BTreeSet<Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_vec())
        .collect()
}

#[test]
fn a_folder_with_odd_keys_lists_reads_writes_and_keeps_what_it_cannot_show() {
    let bucket = Bucket::new();
    let p = unique_prefix("odd-keys");
    let long_ok = "l".repeat(255);
    let shown: Vec<String> = [
        "plain.txt",
        "ctrl\u{1}.txt",
        "tab\there.txt",
        "new\nline.txt",
        "cr\r.txt",
        "back\\slash.txt",
        "pct%41%2F%zz.txt",
        "plus+and space.txt",
        "émoji 📄.txt",
        "\u{7f}del\u{1b}[0m",
        "  leading and trailing  ",
        "-dash",
        long_ok.as_str(),
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let hidden: Vec<String> = [
        "a//b.txt",
        "./dot.txt",
        "../up.txt",
        "x",
        "nul\0x",
        "sub//",
        "sub/./y",
        &"L".repeat(256),
        "rmme//hidden",
        "rmme/../evil",
        "mvme/./hidden",
    ]
    .iter()
    .map(|k| format!("{p}docs/{k}"))
    .collect();
    for name in &shown {
        bucket.put(&format!("{p}docs/{name}"), name.as_bytes());
    }
    for key in &hidden {
        bucket.put(key, format!("hidden {key:?}").as_bytes());
    }
    let extra = [
        ("x/inner.txt", "inner"),
        ("dir/", "marker content"),
        ("dir/in.txt", "in dir"),
        ("rmme/keep.txt", "to be removed"),
        ("mvme/ok.txt", "stays with its folder"),
        ("clean/c\u{2} %+.txt", "moves"),
    ];
    for (rel, data) in extra {
        bucket.put(&format!("{p}docs/{rel}"), data.as_bytes());
    }
    let before = bucket.keys(&p);
    for key in &hidden {
        assert!(before.contains(key), "the test client lists {key:?}");
    }

    let m = TestMount::new(&p, &[]);
    let docs = m.path("docs");
    let (ok, out) = run_tool("ls", &["-la".as_ref(), docs.as_os_str()]);
    assert!(ok, "ls -la: {out}");
    let mut expected: BTreeSet<Vec<u8>> = shown.iter().map(|n| n.clone().into_bytes()).collect();
    // `a` and `sub` exist (keys lie below them) but show nothing inside.
    for d in ["x", "dir", "rmme", "mvme", "clean", "sub", "a"] {
        expected.insert(d.into());
    }
    assert_eq!(dir_names(&docs), expected);
    let (ok, out) = run_tool("find", &[m.mountpoint().as_os_str()]);
    assert!(ok, "find: {out}");
    for name in &shown {
        let data = std::fs::read(docs.join(name)).unwrap();
        assert_eq!(data, name.as_bytes(), "{name:?}");
    }
    assert_eq!(std::fs::read(docs.join("dir/in.txt")).unwrap(), b"in dir");
    assert_eq!(std::fs::read(docs.join("x/inner.txt")).unwrap(), b"inner");
    assert!(dir_names(&docs.join("sub")).is_empty());
    assert!(dir_names(&docs.join("a")).is_empty());

    // Writing in the folder, with a name of the same kind.
    let written = "w\u{1}\t%41+ é\\.txt";
    std::fs::write(docs.join(written), b"written").unwrap();
    assert_eq!(
        bucket.get(&format!("{p}docs/{written}")).unwrap(),
        b"written"
    );

    // rm -rf removes what it sees and fails on what it cannot see.
    let (ok, out) = run_tool("rm", &["-rf".as_ref(), docs.join("rmme").as_os_str()]);
    assert!(!ok, "rm -rf of a folder with hidden keys must fail: {out}");
    assert!(out.contains("Directory not empty"), "{out}");
    assert!(bucket.get(&format!("{p}docs/rmme/keep.txt")).is_none());

    // A directory rename is refused while the folder holds keys it cannot show ...
    let (ok, out) = run_tool(
        "mv",
        &[
            docs.join("mvme").as_os_str(),
            docs.join("moved").as_os_str(),
        ],
    );
    assert!(!ok, "mv of a folder with hidden keys must fail: {out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(bucket.keys(&format!("{p}docs/moved")).is_empty());
    // ... and moves a folder of odd but showable names byte for byte.
    std::fs::rename(docs.join("clean"), docs.join("clean2")).unwrap();
    assert_eq!(
        bucket
            .get(&format!("{p}docs/clean2/c\u{2} %+.txt"))
            .unwrap(),
        b"moves"
    );
    drop(m);

    for key in &hidden {
        let data = bucket.get(key);
        assert_eq!(
            data.as_deref(),
            Some(format!("hidden {key:?}").as_bytes()),
            "{key:?} is still there, byte for byte"
        );
    }
    assert_eq!(
        bucket.get(&format!("{p}docs/mvme/ok.txt")).unwrap(),
        b"stays with its folder"
    );
}

/// Could `name` (one path segment) be shown by the mount? The rules of issue 15,
/// restated independently of the code.
fn showable(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains('/')
        && !name.contains('\0')
}

/// A random name: characters picked to hit the edges (controls, `%`, `+`, `\`, dots,
/// spaces, multi-byte), lengths up to and past 255 bytes.
fn random_name(rng: &mut StdRng) -> String {
    const PICKS: &[char] = &[
        'a', 'Z', '0', '.', '.', ' ', '%', '+', '\\', '\t', '\n', '\r', '\u{1}', '\u{1f}',
        '\u{7f}', '\0', '~', '*', '?', '#', '&', 'é', '€', '📄', '\u{fffe}', '\u{202e}',
    ];
    match rng.random_range(0..10) {
        0 => [".", "..", ""][rng.random_range(0..3)].to_string(),
        1 => "n".repeat(rng.random_range(250..=260)),
        _ => {
            let len = rng.random_range(1..=40);
            (0..len)
                .map(|_| PICKS[rng.random_range(0..PICKS.len())])
                .collect()
        }
    }
}

/// Random bytes for a name given to the kernel (no `/`, no NUL): often not UTF-8.
fn random_os_name(rng: &mut StdRng) -> OsString {
    let len = if rng.random_bool(0.1) {
        rng.random_range(250..=300)
    } else {
        rng.random_range(1..=24)
    };
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            loop {
                let b: u8 = if rng.random_bool(0.7) {
                    rng.random_range(0x20..0x7f)
                } else {
                    rng.random()
                };
                if b != b'/' && b != 0 {
                    break b;
                }
            }
        })
        .collect();
    if bytes == b"." || bytes == b".." {
        bytes.push(b'x'); // the kernel's own names, not files
    }
    OsString::from_vec(bytes)
}

#[test]
fn fuzzed_names_round_trip_or_are_left_alone() {
    let seed = env_or("S3MOUNT_FUZZ_SEED", 0x15);
    eprintln!("S3MOUNT_FUZZ_SEED={seed:#x}");
    let mut rng = StdRng::seed_from_u64(seed);
    let bucket = Bucket::new();
    let p = unique_prefix("odd-fuzz");
    let mut from_s3: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..60 {
        let name = random_name(&mut rng);
        let data = format!("s3 {i}").into_bytes();
        bucket.put(&format!("{p}s3/{name}"), &data);
        from_s3.insert(name, data);
    }
    let m = TestMount::new(&p, &[]);
    let expected: BTreeSet<Vec<u8>> = from_s3
        .keys()
        .filter(|n| showable(n))
        .map(|n| n.clone().into_bytes())
        .collect();
    assert_eq!(dir_names(&m.path("s3")), expected, "seed {seed:#x}");
    for (name, data) in from_s3.iter().filter(|(n, _)| showable(n)) {
        assert_eq!(&std::fs::read(m.path("s3").join(name)).unwrap(), data);
    }

    std::fs::create_dir(m.path("fs")).unwrap();
    let mut made = BTreeMap::new();
    for i in 0..60 {
        let name = random_os_name(&mut rng);
        let data = format!("fs {i}").into_bytes();
        let result = std::fs::write(m.path("fs").join(&name), &data);
        match name.to_str() {
            Some(text) if name.len() <= 255 => {
                result.unwrap_or_else(|e| panic!("creating {name:?} (seed {seed:#x}): {e}"));
                made.insert(text.to_string(), data);
            }
            _ => {
                let errno = result.expect_err("refused").raw_os_error();
                let want = if name.len() > 255 {
                    libc::ENAMETOOLONG
                } else {
                    libc::EINVAL
                };
                assert_eq!(errno, Some(want), "{name:?} (seed {seed:#x})");
            }
        }
    }
    let names: BTreeSet<Vec<u8>> = made.keys().map(|n| n.clone().into_bytes()).collect();
    assert_eq!(dir_names(&m.path("fs")), names);
    drop(m);
    let keys: BTreeSet<String> = bucket.keys(&format!("{p}fs/")).into_iter().collect();
    let mut want: BTreeSet<String> = made.keys().map(|n| format!("{p}fs/{n}")).collect();
    want.insert(format!("{p}fs/")); // the marker mkdir wrote
    assert_eq!(keys, want, "seed {seed:#x}");
    for (name, data) in &made {
        assert_eq!(&bucket.get(&format!("{p}fs/{name}")).unwrap(), data);
    }
    // Every key the mount could not show is still there, untouched.
    for (name, data) in from_s3.iter().filter(|(n, _)| !showable(n)) {
        assert_eq!(&bucket.get(&format!("{p}s3/{name}")).unwrap(), data);
    }
}

#[test]
fn a_large_file_whose_name_has_a_control_character_is_uploaded_in_parts() {
    // Garage echoes such a key raw in its multipart answers, which XML 1.0 cannot carry.
    let bucket = Bucket::new();
    let p = unique_prefix("oddbig");
    let m = TestMount::new(&p, &["--part-size", "5MiB"]);
    let data = random_bytes(12 * MIB, 7);
    for name in ["big\u{1}.bin", "tab\tand\u{1b}esc.bin"] {
        std::fs::write(m.path(name), &data).unwrap();
        assert!(
            bucket.get(&format!("{p}{name}")).as_deref() == Some(&data[..]),
            "{name:?}: S3 has the whole file under its own name"
        );
        assert_eq!(std::fs::read(m.path(name)).unwrap(), data);
    }
    assert_eq!(m.staged_files(), 0);
}
