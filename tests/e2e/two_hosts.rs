//! Several hosts on one bucket: one prefix mounted twice, each mount its own daemon and
//! cache dir (as two hosts would have). What one mount creates, overwrites, renames,
//! chmods, touches, symlinks and deletes is seen by the other within `--metadata-ttl`
//! plus a little; a reader on one never gets mixed bytes while the other replaces the
//! file; two simultaneous writers leave one whole version that both mounts then read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::*;

/// `--metadata-ttl` of both mounts.
const TTL: Duration = Duration::from_secs(1);
/// How long after a change (its close or call returned) the other mount must show it:
/// the ttl, plus a little for the requests that find it.
const SEEN_WITHIN: Duration = Duration::from_millis(1800);

const TTL_OPTS: [&str; 4] = ["--metadata-ttl", "1", "--part-size", "5MiB"];

/// Polls `seen` until it holds; panics if that takes longer than [`SEEN_WITHIN`]. Returns
/// how long it took.
fn seen_within(what: &str, mut seen: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !seen() {
        assert!(
            started.elapsed() <= SEEN_WITHIN,
            "{what}: not seen by the other mount within {SEEN_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

fn mtime_of(path: &Path) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.mtime())
}

/// utimensat(2) of both times to `sec` (what `touch -d` does).
fn touch(path: &Path, sec: i64) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    // SAFETY: p is a valid C string and times points to two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), [t, t].as_ptr(), 0) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn what_one_mount_changes_the_other_sees_within_the_ttl() {
    let prefix = unique_prefix("two-hosts");
    let x = TestMount::new(&prefix, &TTL_OPTS);
    let y = TestMount::new(&prefix, &TTL_OPTS);
    let mut slowest = Duration::ZERO;
    let mut check = |what: &str, seen: &mut dyn FnMut() -> bool| {
        let took = seen_within(what, seen);
        eprintln!("{what}: seen after {:.0} ms", took.as_secs_f64() * 1000.0);
        slowest = slowest.max(took);
    };
    let read = |m: &TestMount, rel: &str| std::fs::read(m.path(rel)).ok();

    // Both mounts have looked at the (empty) folder, so each has something cached.
    assert!(names(x.mountpoint()).is_empty() && names(y.mountpoint()).is_empty());

    let v1 = random_bytes(30_000, 1);
    std::fs::write(x.path("a.txt"), &v1).unwrap();
    check("create", &mut || read(&y, "a.txt").as_ref() == Some(&v1));

    let v2 = random_bytes(2 * MIB + 7, 2);
    std::fs::write(x.path("a.txt"), &v2).unwrap();
    check("overwrite, new size", &mut || {
        read(&y, "a.txt").as_ref() == Some(&v2)
    });

    // Same size: only the ETag tells the versions apart (the page cache must go).
    let v3 = random_bytes(v2.len(), 3);
    std::fs::write(x.path("a.txt"), &v3).unwrap();
    check("overwrite, same size", &mut || {
        read(&y, "a.txt").as_ref() == Some(&v3)
    });

    std::fs::set_permissions(x.path("a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    check("chmod", &mut || {
        std::fs::metadata(y.path("a.txt")).is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o600)
    });

    touch(&x.path("a.txt"), 1_000_000_000);
    check("touch", &mut || {
        mtime_of(&y.path("a.txt")) == Some(1_000_000_000)
    });

    std::os::unix::fs::symlink("a.txt", x.path("link")).unwrap();
    check("symlink", &mut || {
        std::fs::read_link(y.path("link")).is_ok_and(|t| t == Path::new("a.txt"))
    });

    std::fs::rename(x.path("a.txt"), x.path("b.txt")).unwrap();
    check("rename of a file", &mut || {
        !y.path("a.txt").exists() && read(&y, "b.txt").as_ref() == Some(&v3)
    });

    let inner = random_bytes(5_000, 4);
    std::fs::create_dir_all(x.path("d/sub")).unwrap();
    std::fs::write(x.path("d/sub/f.txt"), &inner).unwrap();
    check("mkdir and a file in it", &mut || {
        read(&y, "d/sub/f.txt").as_ref() == Some(&inner)
    });
    std::fs::rename(x.path("d"), x.path("e")).unwrap();
    check("rename of a directory", &mut || {
        !y.path("d").exists() && read(&y, "e/sub/f.txt").as_ref() == Some(&inner)
    });

    // The other way round too.
    std::fs::write(y.path("from-y.txt"), b"y wrote this").unwrap();
    check("create (other way)", &mut || {
        read(&x, "from-y.txt").as_deref() == Some(&b"y wrote this"[..])
    });

    check("listing", &mut || {
        names(y.mountpoint()) == ["b.txt", "e", "from-y.txt", "link"]
    });
    std::fs::remove_file(x.path("b.txt")).unwrap();
    std::fs::remove_file(x.path("link")).unwrap();
    std::fs::remove_dir_all(x.path("e")).unwrap();
    check("deletes", &mut || {
        !y.path("b.txt").exists()
            && std::fs::symlink_metadata(y.path("link")).is_err()
            && !y.path("e").exists()
            && names(y.mountpoint()) == ["from-y.txt"]
    });
    eprintln!(
        "slowest change seen after {:.0} ms (ttl {TTL:?})",
        slowest.as_secs_f64() * 1000.0
    );
}

/// Version `v` of a document: `size` bytes, all `v`.
fn version(v: u8, size: usize) -> Vec<u8> {
    vec![v; size]
}

/// A whole version: the right size, one byte value throughout.
fn whole_version(data: &[u8], size: usize) -> Option<u8> {
    let first = *data.first()?;
    (data.len() == size && data.iter().all(|&b| b == first)).then_some(first)
}

#[test]
fn a_reader_never_gets_mixed_bytes_while_the_other_mount_replaces_the_file() {
    let prefix = unique_prefix("two-hosts-torn");
    let writer = TestMount::new(&prefix, &TTL_OPTS);
    let reader = TestMount::new(&prefix, &TTL_OPTS);
    // A small file (read whole with its metadata) and one read in ranged GETs.
    for size in [40_000, 3 * MIB] {
        std::fs::write(writer.path("doc.bin"), version(1, size)).unwrap();
        let path = reader.path("doc.bin");
        assert!(eventually(Duration::from_secs(5), || {
            std::fs::read(&path).is_ok_and(|d| whole_version(&d, size) == Some(1))
        }));
        let done = Arc::new(AtomicBool::new(false));
        let replacing = {
            let (done, target) = (done.clone(), writer.path("doc.bin"));
            std::thread::spawn(move || {
                for v in 2..=40u8 {
                    std::fs::write(&target, version(v, size)).unwrap();
                    // 40 versions over more than two ttls: the reader sees several.
                    std::thread::sleep(Duration::from_millis(60));
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let (mut whole, mut failed) = (0, 0);
        let mut versions = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the writer did not finish");
            match std::fs::read(&path) {
                Ok(data) => {
                    let v = whole_version(&data, size);
                    assert!(
                        v.is_some(),
                        "mixed read of {} bytes: starts with {:?}, ends with {:?}",
                        data.len(),
                        data.first(),
                        data.last()
                    );
                    versions.extend(v);
                    whole += 1;
                }
                // SPEC 4: a read that meets a replaced object fails instead of mixing.
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                    failed += 1;
                }
            }
        }
        replacing.join().unwrap();
        eprintln!(
            "{size} bytes: {whole} whole reads of {} versions, {failed} reads failed with EIO",
            versions.len()
        );
        // How many reads meet a replacement (EIO) depends on how fast each read is
        // against the writer's pace, so on the machine's load: a CI run on 2 busy cores
        // saw 646 of 1,217 reads of the 3 MiB file fail, against none on a quiet one.
        // What holds regardless: no read mixes versions (above), whole reads see the
        // versions change, and the last version is read once the writer stops (below).
        assert!(versions.len() >= 2, "the reader saw only one version");
        // Once quiet, the reader gets the last version.
        assert!(eventually(SEEN_WITHIN, || {
            std::fs::read(&path).is_ok_and(|d| whole_version(&d, size) == Some(40))
        }));
    }
}

#[test]
fn two_simultaneous_writers_leave_one_whole_version_both_mounts_read() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("two-hosts-race");
    let x = TestMount::new(&prefix, &TTL_OPTS);
    let y = TestMount::new(&prefix, &TTL_OPTS);
    // Sizes differ between the writers, so a mix of sizes shows too; 12 MiB is multipart.
    for (round, (x_size, y_size)) in [(300_000, 200_000), (12 * MIB, 11 * MIB + 5)]
        .into_iter()
        .enumerate()
    {
        let name = format!("same-{round}.bin");
        let start = Arc::new(Barrier::new(2));
        let write = |m: &TestMount, v: u8, size: usize| {
            let (start, path) = (start.clone(), m.path(&name));
            std::thread::spawn(move || {
                let data = version(v, size);
                start.wait();
                std::fs::write(path, data)
            })
        };
        let (wx, wy) = (write(&x, 0xaa, x_size), write(&y, 0xbb, y_size));
        wx.join().unwrap().unwrap();
        wy.join().unwrap().unwrap();
        let in_s3 = bucket.get(&format!("{prefix}{name}")).unwrap();
        let winner = match whole_version(&in_s3, x_size) {
            Some(0xaa) => 0xaa,
            _ => {
                let v = whole_version(&in_s3, y_size);
                assert_eq!(v, Some(0xbb), "S3 holds no whole version of {name}");
                0xbb
            }
        };
        eprintln!(
            "{name}: S3 kept the version of {}",
            if winner == 0xaa { "x" } else { "y" }
        );
        for m in [&x, &y] {
            let took = seen_within(&name, &mut || {
                std::fs::read(m.path(&name)).is_ok_and(|d| d == in_s3)
            });
            eprintln!(
                "{name}: both mounts read it after {:.0} ms",
                took.as_secs_f64() * 1000.0
            );
        }
    }
}
