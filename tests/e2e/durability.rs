//! Never lose a document: faults between the mount and S3 (resets, 503 SlowDown, slow
//! answers), a full cache disk, and SIGTERM with uploads pending. Every close either
//! succeeds with the data in S3, or fails with the data kept and uploaded later.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// How saving a document went, as the application saw it.
enum Saved {
    /// close() returned 0: the document must be in S3.
    Yes,
    /// open or write failed: the application knows nothing was saved.
    Refused,
    /// close() failed: the data must be kept and uploaded later.
    CloseFailed(std::io::Error),
}

/// Saves a document; `before_close` runs between the last write and close().
fn save(path: &Path, data: &[u8], before_close: impl FnOnce()) -> Saved {
    let Ok(mut f) = std::fs::File::create(path) else {
        return Saved::Refused;
    };
    if f.write_all(data).is_err() {
        return Saved::Refused;
    }
    before_close();
    match close_file(f) {
        Ok(()) => Saved::Yes,
        Err(e) => Saved::CloseFailed(e),
    }
}

#[test]
fn faults_never_turn_into_lost_documents() {
    let bucket = Bucket::new();
    let proxy = Proxy::start(&bucket.env.endpoint);
    let prefix = unique_prefix("faults");
    let cache_root = tempfile::tempdir().unwrap();
    let cache = cache_root.path().join("cache");
    let m = TestMount::with_cache(
        &prefix,
        &cache,
        &["--part-size", "5MiB"],
        Some(&proxy.url()),
    );
    let mut ok = Vec::new();
    let mut eio = Vec::new();
    let mut refused = 0;
    let faults = [
        (Fault::Reset, 100),
        (Fault::SlowDown, 100),
        (Fault::Reset, 50),
        (Fault::SlowDown, 60),
        (Fault::Slow, 100),
        (Fault::None, 0),
    ];
    for (round, (fault, percent)) in faults.into_iter().enumerate() {
        for i in 0..6 {
            let size = if i % 3 == 0 { 11 * MIB } else { 1000 * (i + 1) };
            let name = format!("r{round}-{i}.doc");
            let data = random_bytes(size, (round * 100 + i) as u64);
            // Half the documents meet the fault from the start, half only at close.
            let early = i % 2 == 0;
            proxy.set_fault(if early { fault } else { Fault::None }, percent);
            match save(&m.path(&name), &data, || proxy.set_fault(fault, percent)) {
                Saved::Yes => ok.push((name, data)),
                Saved::Refused => refused += 1,
                Saved::CloseFailed(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
                    eio.push((name, data));
                }
            }
        }
    }
    // Every successful close has its data in S3 already.
    for (name, data) in &ok {
        assert!(
            bucket.get(&format!("{prefix}{name}")).as_deref() == Some(&data[..]),
            "{name}: close returned success without the data in S3"
        );
    }
    assert!(!eio.is_empty(), "the faults caused no failed close");
    eprintln!(
        "{} saved, {} close failed, {refused} refused at open",
        ok.len(),
        eio.len()
    );
    // The failed ones are uploaded once S3 answers again (at the latest on unmount).
    proxy.set_fault(Fault::None, 0);
    m.unmount();
    for (name, data) in &eio {
        let got = bucket.get(&format!("{prefix}{name}"));
        assert!(
            got.as_deref() == Some(&data[..]),
            "{name}: data of a failed close was lost (S3 has {:?} bytes; failed: {:?})",
            got.map(|g| g.len()),
            eio.iter().map(|e| &e.0).collect::<Vec<_>>()
        );
    }
    assert_eq!(m.staged_files(), 0);
}

#[test]
fn a_full_cache_disk_gives_enospc_uploads_nothing_half_and_keeps_serving() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("enospc");
    bucket.put(&format!("{prefix}report.pdf"), b"version 1");
    let disk = tempfile::tempdir().unwrap();
    let out = run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=3m",
            "tmpfs",
            disk.path().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = run("umount", &["-l", self.0.to_str().unwrap()]);
        }
    }
    let _tmpfs = Unmount(disk.path());
    let cache = disk.path().join("cache");
    let m = TestMount::with_cache(&prefix, &cache, &[], None);

    let data = random_bytes(8 * MIB, 1);
    let mut f = std::fs::File::create(m.path("report.pdf")).unwrap();
    let err = f.write_all(&data).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert!(close_file(f).is_err(), "close reports the failed write too");
    assert_eq!(
        bucket.get(&format!("{prefix}report.pdf")).as_deref(),
        Some(&b"version 1"[..]),
        "nothing half-written replaced the document"
    );
    // The mount keeps serving once the failed stage is gone. RELEASE drops it, and the
    // kernel sends RELEASE only after close() returned: until then the disk is still full.
    assert!(
        eventually(Duration::from_secs(10), || m.staged_files() == 0),
        "the failed stage stays in the cache dir"
    );
    std::fs::write(m.path("small.txt"), b"fits").unwrap();
    assert_eq!(
        bucket.get(&format!("{prefix}small.txt")).as_deref(),
        Some(&b"fits"[..])
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read(m.path("report.pdf")).unwrap(), b"version 1");
    drop(m);
}

#[test]
fn sigterm_finishes_pending_uploads_then_unmounts() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("sigterm");
    let cache_root = tempfile::tempdir().unwrap();
    let cache = cache_root.path().join("cache");
    let m = TestMount::with_cache(
        &prefix,
        &cache,
        &["--write-back", "--part-size", "5MiB"],
        None,
    );
    let mut files = Vec::new();
    for i in 0..8 {
        let data = random_bytes(if i == 0 { 12 * MIB } else { 50_000 }, 77 + i as u64);
        let name = format!("t{i}.bin");
        std::fs::write(m.path(&name), &data).unwrap();
        files.push((name, data));
    }
    let out = run("pkill", &["-TERM", "-f", cache.to_str().unwrap()]);
    assert!(out.status.success());
    wait_daemon_gone(&cache);
    assert!(!is_mounted(m.mountpoint()), "SIGTERM unmounts");
    for (name, data) in &files {
        assert!(
            bucket.get(&format!("{prefix}{name}")).as_deref() == Some(&data[..]),
            "{name}"
        );
    }
    assert_eq!(m.staged_files(), 0);
}

#[test]
fn a_bucket_that_disappears_gives_errors_not_hangs() {
    let bucket = Bucket::new();
    let name = format!(
        "vanish-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    bucket.create_bucket(&name);
    let cache_root = tempfile::tempdir().unwrap();
    let cache = cache_root.path().join("cache");
    let m = TestMount::of_bucket(&name, "", &cache, &[], None);
    std::fs::write(m.path("before.txt"), b"ok").unwrap();
    bucket.destroy_bucket(&name);
    std::thread::sleep(Duration::from_millis(1100));
    let started = std::time::Instant::now();
    let err = std::fs::read_dir(m.mountpoint())
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    match save(&m.path("after.txt"), b"lost?", || {}) {
        Saved::Yes => panic!("a save into a deleted bucket cannot succeed"),
        Saved::Refused | Saved::CloseFailed(_) => {}
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "errors come quickly"
    );
    // The daemon still serves and unmounts.
    assert!(std::fs::metadata(m.mountpoint()).is_ok());
    drop(m);
}

/// A server that takes connections and never answers (a stalled link, a hung gateway):
/// a lookup fails with EIO once the attempts of `--request-timeout` are used up, not
/// after a 60 s read timeout per attempt, and the mount serves again once the server
/// answers.
#[test]
fn a_silent_server_fails_a_lookup_after_the_request_timeout_and_the_mount_recovers() {
    let bucket = Bucket::new();
    let proxy = Proxy::start(&bucket.env.endpoint);
    let prefix = unique_prefix("silent");
    let cache_root = tempfile::tempdir().unwrap();
    let m = TestMount::with_cache(
        &prefix,
        &cache_root.path().join("cache"),
        &["--request-timeout", "1"],
        Some(&proxy.url()),
    );
    proxy.set_fault(Fault::Hold, 100);
    let started = std::time::Instant::now();
    let err = std::fs::metadata(m.path("report.pdf")).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // 4 attempts of 1 s and the backoff between them; a read timeout would hold each
    // attempt 60 s (and the proxy lets go after HOLD_LIMIT).
    assert!(took < Duration::from_secs(40), "EIO after {took:?}");

    proxy.set_fault(Fault::None, 0);
    let err = std::fs::metadata(m.path("report.pdf")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    std::fs::write(m.path("report.pdf"), b"saved").unwrap();
    assert_eq!(
        bucket.get(&format!("{prefix}report.pdf")).unwrap(),
        b"saved"
    );
}
