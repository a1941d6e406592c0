//! The last POSIX gaps, against the in-memory store: directory link counts, fallocate
//! (allocate, keep size, punch hole, zero range), SEEK_DATA/SEEK_HOLE and the
//! server-side copy_file_range of a whole object; and once through a real mount.
//! (`scripts/fsx.sh` and `scripts/pjdfstest.sh` exercise them at length.)

use std::ffi::OsStr;
use std::sync::Arc;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use s3mount::fs::{Caller, OpenMode, ROOT, S3Fs};
use s3mount::store::memory::{MemoryStore, Op};

use crate::common::{Bucket, TestMount, core_config, random_bytes, run, unique_prefix};

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn fixture() -> (Arc<MemoryStore>, S3Fs<MemoryStore>, tempfile::TempDir) {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let cfg = core_config("p/", cache.path());
    let fs = S3Fs::new(store.clone(), cfg).unwrap();
    (store, fs, cache)
}

async fn read_all(fs: &S3Fs<MemoryStore>, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 128 * 1024).await.unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

async fn nlink(fs: &S3Fs<MemoryStore>, ino: u64) -> u32 {
    fs.getattr(ino).await.unwrap().nlink
}

#[tokio::test]
async fn a_directory_links_its_subdirectories() {
    let (_store, fs, _cache) = fixture();
    let a = fs.mkdir(ROOT, OsStr::new("a"), 0o755, ME).await.unwrap();
    let b = fs.mkdir(ROOT, OsStr::new("b"), 0o755, ME).await.unwrap();
    assert_eq!((nlink(&fs, ROOT).await, a.nlink), (4, 2));
    fs.mkdir(a.ino, OsStr::new("x"), 0o755, ME).await.unwrap();
    fs.mkdir(a.ino, OsStr::new("y"), 0o755, ME).await.unwrap();
    let (_, fh) = fs.create(a.ino, OsStr::new("f"), 0o644, ME).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(nlink(&fs, a.ino).await, 4, "files do not count");
    fs.rename(a.ino, OsStr::new("x"), b.ino, OsStr::new("x"), false)
        .await
        .unwrap();
    assert_eq!((nlink(&fs, a.ino).await, nlink(&fs, b.ino).await), (3, 3));
    // Renamed within its parent: the count stays.
    fs.rename(a.ino, OsStr::new("y"), a.ino, OsStr::new("z"), false)
        .await
        .unwrap();
    assert_eq!(nlink(&fs, a.ino).await, 3);
    fs.rmdir(a.ino, OsStr::new("z")).await.unwrap();
    assert_eq!(nlink(&fs, a.ino).await, 2);
    fs.rename(ROOT, OsStr::new("b"), a.ino, OsStr::new("b"), false)
        .await
        .unwrap();
    assert_eq!((nlink(&fs, ROOT).await, nlink(&fs, a.ino).await), (3, 3));
}

#[tokio::test]
async fn fallocate_modes_change_the_staged_file_and_upload_at_close() {
    let (store, fs, _cache) = fixture();
    let (attr, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, ME).await.unwrap();
    fs.write(fh, 0, &[7u8; 100_000]).await.unwrap();
    // Mode 0 grows the file with zeros; KEEP_SIZE does not.
    fs.fallocate(fh, 90_000, 30_000, 0).await.unwrap();
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 120_000);
    fs.fallocate(fh, 0, 1 << 20, libc::FALLOC_FL_KEEP_SIZE)
        .await
        .unwrap();
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 120_000);
    // A punched hole and a zeroed range read as zeros; zeroing past the end grows it.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fs.fallocate(fh, 8192, 16384, punch).await.unwrap();
    fs.fallocate(fh, 115_000, 10_000, libc::FALLOC_FL_ZERO_RANGE)
        .await
        .unwrap();
    let mut want = vec![7u8; 100_000];
    want.resize(125_000, 0);
    want[8192..8192 + 16384].fill(0);
    assert_eq!(read_all(&fs, fh).await, want);
    // Modes the kernel's file systems have but the mount does not: EOPNOTSUPP.
    for mode in [
        libc::FALLOC_FL_PUNCH_HOLE, // without KEEP_SIZE
        libc::FALLOC_FL_COLLAPSE_RANGE,
        libc::FALLOC_FL_INSERT_RANGE,
    ] {
        let err = fs.fallocate(fh, 0, 4096, mode).await.unwrap_err();
        assert_eq!(err.errno(), libc::EOPNOTSUPP, "mode {mode:#x}");
    }
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.object("p/f").unwrap().as_ref(), &want[..]);
}

#[tokio::test]
async fn fallocate_on_an_existing_object_fetches_it_first() {
    let (store, fs, _cache) = fixture();
    store.insert("p/old", &[5u8; 50_000]);
    let attr = fs.lookup(ROOT, OsStr::new("old")).await.unwrap();
    let write = OpenMode {
        write: true,
        truncate: false,
        exec: false,
    };
    let (fh, _) = fs.open(attr.ino, write).await.unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fs.fallocate(fh, 4096, 4096, punch).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    let mut want = vec![5u8; 50_000];
    want[4096..8192].fill(0);
    assert_eq!(store.object("p/old").unwrap().as_ref(), &want[..]);
}

#[tokio::test]
async fn seek_data_and_hole_follow_the_stage_or_see_one_extent() {
    let (store, fs, _cache) = fixture();
    let (_, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, ME).await.unwrap();
    fs.write(fh, 0, &[1u8; 4096]).await.unwrap();
    fs.write(fh, 1 << 20, &[2u8; 4096]).await.unwrap();
    let (data, hole) = (libc::SEEK_DATA, libc::SEEK_HOLE);
    assert_eq!(fs.seek(fh, 0, data).await.unwrap(), 0);
    assert_eq!(fs.seek(fh, 0, hole).await.unwrap(), 4096);
    assert_eq!(fs.seek(fh, 8192, data).await.unwrap(), 1 << 20);
    assert_eq!(fs.seek(fh, 1 << 20, hole).await.unwrap(), (1 << 20) + 4096);
    let end = (1 << 20) + 4096;
    assert_eq!(
        fs.seek(fh, end, data).await.unwrap_err().errno(),
        libc::ENXIO
    );
    assert_eq!(
        fs.seek(fh, end, hole).await.unwrap_err().errno(),
        libc::ENXIO
    );
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    // An object without a stage is one extent of data.
    store.insert("p/plain", &[3u8; 10_000]);
    let attr = fs.lookup(ROOT, OsStr::new("plain")).await.unwrap();
    let (fh, _) = fs.open(attr.ino, OpenMode::default()).await.unwrap();
    assert_eq!(fs.seek(fh, 100, data).await.unwrap(), 100);
    assert_eq!(fs.seek(fh, 100, hole).await.unwrap(), 10_000);
    let err = fs.seek(fh, 10_000, data).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENXIO);
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn copying_a_whole_object_onto_an_empty_file_is_a_server_side_copy() {
    let (store, fs, _cache) = fixture();
    store.insert("p/src", &[9u8; 70_000]);
    let src = fs.lookup(ROOT, OsStr::new("src")).await.unwrap();
    let (fh_in, _) = fs.open(src.ino, OpenMode::default()).await.unwrap();
    let (dst, fh_out) = fs.create(ROOT, OsStr::new("dst"), 0o600, ME).await.unwrap();
    // Not the whole object: left to the kernel (EOPNOTSUPP), nothing copied.
    let err = fs
        .copy_range((fh_in, 10), (fh_out, 0), 100)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EOPNOTSUPP);
    let err = fs
        .copy_range((fh_in, 0), (fh_out, 0), 100)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EOPNOTSUPP);
    assert_eq!(store.count(Op::Copy), 0);
    let n = fs
        .copy_range((fh_in, 0), (fh_out, 0), 1 << 30)
        .await
        .unwrap();
    assert_eq!((n, store.count(Op::Copy)), (70_000, 1));
    assert_eq!(fs.getattr(dst.ino).await.unwrap().size, 70_000);
    assert_eq!(read_all(&fs, fh_out).await, vec![9u8; 70_000]);
    fs.flush(fh_out).await.unwrap();
    fs.release(fh_out).await.unwrap();
    fs.release(fh_in).await.unwrap();
    assert_eq!(store.object("p/dst").unwrap().as_ref(), &[9u8; 70_000][..]);
    assert_eq!(
        store.count(Op::Put),
        0,
        "the empty target was never uploaded"
    );
    let meta = store.user_meta("p/dst").unwrap();
    let mode = meta
        .iter()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.clone());
    assert_eq!(
        mode.as_deref(),
        Some("33152"),
        "the target's mode 0600: {meta:?}"
    );
}

#[test]
fn through_a_mount_link_counts_holes_and_cp_behave_as_on_a_disk() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("conformance");
    let m = TestMount::new(&prefix, &[]);
    let links = |rel: &str| std::fs::metadata(m.path(rel)).unwrap().nlink();
    for dir in ["d", "d/a", "d/b"] {
        std::fs::create_dir(m.path(dir)).unwrap();
    }
    assert_eq!(links("d"), 4);
    std::fs::rename(m.path("d/a"), m.path("d/b/a")).unwrap();
    assert_eq!((links("d"), links("d/b")), (3, 3));
    std::fs::remove_dir(m.path("d/b/a")).unwrap();
    assert_eq!(links("d/b"), 2);

    let data = random_bytes(64 * 1024, 13);
    std::fs::write(m.path("f"), &data).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: a valid fd and plain integers.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), punch, 8192, 16384) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole, 8192);
    crate::common::close_file(f).unwrap();
    let mut want = data.clone();
    want[8192..24576].fill(0);
    assert_eq!(bucket.get(&format!("{prefix}f")).unwrap(), want);

    let (src, dst) = (m.path("f"), m.path("g"));
    let out = run("cp", &[src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(bucket.get(&format!("{prefix}g")).unwrap(), want);
    assert_eq!(std::fs::read(m.path("g")).unwrap(), want);
}
