//! Watching a running mount (issue 9): the Prometheus counters at `--metrics-addr`
//! after a workload, the `user.s3.state` attribute of a file going from `pending` to
//! `uploaded` and to `failed: …` while S3 is unreachable, `s3mount status` and its exit
//! status in both situations, and `df` showing the cache disk's space.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::*;

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `GET /metrics` on `port`: every sample as `name{labels}` → value.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}"))
}

fn state(path: &Path) -> String {
    let value = xattr::get(path, "user.s3.state").unwrap().unwrap();
    String::from_utf8(value).unwrap()
}

fn status(mountpoint: &Path) -> Output {
    let out = std::process::Command::new(s3mount_bin())
        .args(["status", mountpoint.to_str().unwrap()])
        .output()
        .unwrap();
    eprintln!(
        "s3mount status (exit {:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn metrics_after_a_workload() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("metrics");
    let existing = random_bytes(3 * MIB + 5, 9);
    bucket.put(&format!("{prefix}existing.bin"), &existing);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = TestMount::new(
        &prefix,
        &[
            "--write-back",
            "--part-size",
            "5MiB",
            "--metrics-addr",
            &addr,
        ],
    );
    let small = random_bytes(100_000, 1);
    let large = random_bytes(12 * MIB, 2);
    // Written by `cp` from local copies: a descriptor of this process would be inherited
    // by the children other tests fork meanwhile, and each of their closes at exec is a
    // FLUSH, which in write-back mode uploads the file so far (requests not counted here).
    let local = tempfile::tempdir().unwrap();
    for (name, data) in [("small.bin", &small), ("large.bin", &large)] {
        let from = local.path().join(name);
        std::fs::write(&from, data).unwrap();
        let out = run(
            "cp",
            &[from.to_str().unwrap(), m.path(name).to_str().unwrap()],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let written = (small.len() + large.len()) as f64;
    assert_eq!(std::fs::read(m.path("existing.bin")).unwrap(), existing);
    assert!(
        eventually(Duration::from_secs(30), || {
            let s = scrape(port);
            value(&s, "s3mount_pending_uploads") == 0.0
                && value(&s, "s3mount_pending_upload_bytes") == 0.0
        }),
        "the pending gauges go back to 0 once the uploads are done"
    );
    let s = scrape(port);
    let requests = |op: &str| value(&s, &format!("s3mount_requests_total{{op=\"{op}\"}}"));
    assert!(requests("PutObject") >= 1.0);
    assert!(requests("GetObject") >= 1.0);
    assert_eq!(requests("CreateMultipartUpload"), 1.0);
    assert_eq!(requests("UploadPart"), 3.0, "12 MiB in parts of 5 MiB");
    assert_eq!(requests("CompleteMultipartUpload"), 1.0);
    assert_eq!(requests("HeadBucket"), 1.0, "the preflight");
    assert_eq!(
        value(&s, "s3mount_request_errors_total{op=\"PutObject\"}"),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "s3mount_request_duration_seconds_count{op=\"PutObject\"}"
        ),
        requests("PutObject"),
        "one latency per request"
    );
    let uploaded = value(&s, "s3mount_bytes_uploaded_total");
    assert!(
        uploaded >= written && uploaded <= written + 64.0 * 1024.0,
        "uploaded {uploaded} bytes for {written} written"
    );
    let downloaded = value(&s, "s3mount_bytes_downloaded_total");
    assert!(
        downloaded >= existing.len() as f64 && downloaded <= 2.0 * existing.len() as f64,
        "downloaded {downloaded} bytes to read {}",
        existing.len()
    );
    assert!(value(&s, "s3mount_cache_misses_total") >= 1.0);
    assert!(s.contains_key("s3mount_cache_hits_total"));
    assert!(s.contains_key("s3mount_retries_total{op=\"PutObject\"}"));
    assert_eq!(value(&s, "s3mount_failed_uploads"), 0.0);

    // The same counters in `s3mount status`.
    let out = status(m.mountpoint());
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("uploads: 0 pending (0 B), 0 failing"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("UploadPart") && l.trim_end().ends_with(" 3")),
        "{text}"
    );
}

#[test]
fn a_busy_or_bad_metrics_address_is_refused_before_mounting() {
    let prefix = unique_prefix("metrics-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    for (addr, words) in [
        (busy.as_str(), "cannot listen"),
        ("nowhere", "not HOST:PORT"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let env = S3Env::get();
        let out = std::process::Command::new(s3mount_bin())
            .args([
                "mount",
                &format!("s3://{}/{prefix}", env.bucket),
                dir.path().to_str().unwrap(),
                "--force-path-style",
                "--endpoint-url",
                &env.endpoint,
                "--cache-dir",
                cache.path().to_str().unwrap(),
                "-o",
                &format!("metrics_addr={addr}"),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{addr}: mounted");
        assert!(
            stderr.contains("--metrics-addr") && stderr.contains(words),
            "{addr}: {stderr}"
        );
        assert!(!is_mounted(dir.path()), "{addr}: mounted anyway");
    }
}

#[test]
fn upload_state_and_status_while_pending_failing_and_uploaded() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("state");
    let proxy = Proxy::start(&bucket.env.endpoint);
    let cache_root = tempfile::tempdir().unwrap();
    let cache = cache_root.path().join("cache");
    // A long TTL: new names are looked up in this mount's listing, not in S3 (it is held
    // or down in the steps below).
    let opts = ["--write-back", "--metadata-ttl", "600"];
    let m = TestMount::with_cache(&prefix, &cache, &opts, Some(&proxy.url()));

    // Open for writing: staged, not in S3 yet. A child process (this test's `s3mount
    // status`, or one another test thread forks) inherits the descriptor and flushes it
    // when it execs, which starts the upload in write-back mode; the proxy holds every
    // new connection meanwhile, so the file stays pending until the test lets go.
    let draft = m.path("draft.doc");
    let f = std::fs::File::create(&draft).unwrap();
    proxy.set_fault(Fault::Hold, 100);
    std::os::unix::fs::FileExt::write_all_at(&f, b"first version", 0).unwrap();
    assert_eq!(state(&draft), "pending");
    let out = status(m.mountpoint());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(state(&draft), "pending");
    assert_eq!(
        out.status.code(),
        Some(0),
        "pending uploads are not a failure: {text}"
    );
    assert!(
        text.contains("uploads: 1 pending (13 B), 0 failing"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("  pending")
            && l.contains("13 B")
            && l.ends_with(draft.to_str().unwrap())),
        "{text}"
    );
    proxy.set_fault(Fault::None, 100);
    close_file(f).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || state(&draft) == "uploaded"),
        "uploaded after the close: {}",
        state(&draft)
    );
    assert_eq!(
        bucket.get(&format!("{prefix}draft.doc")).as_deref(),
        Some(&b"first version"[..])
    );

    // S3 unreachable: the close of write-back mode succeeds, the upload fails.
    proxy.set_down(true);
    std::fs::write(m.path("offline.doc"), b"written while S3 is away").unwrap();
    let offline = m.path("offline.doc");
    assert!(
        eventually(Duration::from_secs(30), || state(&offline)
            .starts_with("failed: ")),
        "{}",
        state(&offline)
    );
    let failed = state(&offline);
    assert!(failed.contains("S3"), "the reason is in words: {failed}");
    assert_eq!(state(&draft), "uploaded", "a file S3 has stays uploaded");
    let out = status(m.mountpoint());
    assert_eq!(out.status.code(), Some(1), "uploads are failing");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("uploads: 1 pending (24 B), 1 failing"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("  failed")
            && l.contains("24 B")
            && l.ends_with(offline.to_str().unwrap())),
        "{text}"
    );
    let reason = failed.trim_start_matches("failed: ");
    assert!(
        text.lines()
            .any(|l| l.trim_start() == format!("last error: {reason}")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("PutObject") && l.contains("failed")),
        "the failed requests are counted: {text}"
    );

    // The attribute is read-only like the other user.s3.* ones.
    let err = xattr::set(&offline, "user.s3.state", b"uploaded").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err = xattr::remove(&offline, "user.s3.state").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));

    // S3 is back: the retry uploads it.
    proxy.set_down(false);
    assert!(
        eventually(Duration::from_secs(60), || state(&offline) == "uploaded"),
        "{}",
        state(&offline)
    );
    assert_eq!(
        bucket.get(&format!("{prefix}offline.doc")).as_deref(),
        Some(&b"written while S3 is away"[..])
    );
    let out = status(m.mountpoint());
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("uploads: 0 pending (0 B), 0 failing"));
}

#[test]
fn status_of_a_directory_that_is_not_an_s3mount_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = status(dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not an s3mount"), "{stderr}");
}

#[test]
fn df_shows_the_space_of_the_cache_disk() {
    let prefix = unique_prefix("statfs");
    let m = TestMount::new(&prefix, &[]);
    let mount = nix::sys::statvfs::statvfs(m.mountpoint()).unwrap();
    let cache = nix::sys::statvfs::statvfs(&m.cache).unwrap();
    assert_eq!(mount.fragment_size(), cache.fragment_size());
    assert_eq!(mount.blocks(), cache.blocks());
    // Other tests write to the same disk meanwhile: the free space may move a little.
    let near = |a: u64, b: u64| a.abs_diff(b) * mount.fragment_size() < 512 * MIB as u64;
    assert!(
        near(mount.blocks_available(), cache.blocks_available()),
        "available: mount {} cache {}",
        mount.blocks_available(),
        cache.blocks_available()
    );
    assert!(near(mount.blocks_free(), cache.blocks_free()));
    assert!(mount.blocks_available() <= mount.blocks());
}
