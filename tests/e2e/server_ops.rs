//! Running s3mount on a server: an /etc/fstab line mounted by mount(8) through the
//! `mount.fuse.s3mount` helper (and `umount` draining a held-back upload), the install
//! script, the systemd notify protocol against a socket of the test's own, SIGHUP, and a
//! trace-level log checked for secrets.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// mount(8) looks for the helper of type `fuse.s3mount` here (its search path is fixed).
const HELPER: &str = "/sbin/mount.fuse.s3mount";

/// `/sbin/mount.fuse.s3mount` pointing at the binary under test while it lives; whatever
/// was there before is put back on drop.
struct HelperLink {
    saved: Option<PathBuf>,
}

impl HelperLink {
    fn install() -> HelperLink {
        let helper = Path::new(HELPER);
        let saved = helper.symlink_metadata().is_ok().then(|| {
            let saved = PathBuf::from(format!("{HELPER}.saved-by-s3mount-test"));
            std::fs::rename(helper, &saved).unwrap();
            saved
        });
        std::os::unix::fs::symlink(s3mount_bin(), helper).unwrap();
        HelperLink { saved }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
        if let Some(saved) = &self.saved {
            let _ = std::fs::rename(saved, HELPER);
        }
    }
}

/// Whether the daemon of cache dir `cache` still runs (it holds the dir's lock).
fn daemon_alive(cache: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(cache.join("lock")) else {
        return false;
    };
    // SAFETY: the fd is valid while `f` lives.
    let got = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    !got
}

fn mount_type(dir: &Path) -> Option<(String, String)> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[1] == dir.to_str().unwrap())
        .map(|f| (f[2].to_string(), f[3].to_string()))
}

fn run_ok(cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `log_file=PATH` for a mount's options when S3MOUNT_TEST_LOG_DIR asks for logs.
fn test_log_option(name: &str) -> String {
    match std::env::var("S3MOUNT_TEST_LOG_DIR") {
        Ok(dir) => format!(",log_level=debug,log_file={dir}/{name}.log"),
        Err(_) => String::new(),
    }
}

#[test]
fn fstab_line_mounts_through_mount8_and_umount_drains() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("fstab");
    bucket.put(&format!("{prefix}seed.txt"), b"from the bucket");
    let proxy = Proxy::start(&bucket.env.endpoint);
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let fstab = work.path().join("fstab");
    let mp = mnt.path().to_str().unwrap();
    // The generic options an operator writes, then s3mount's own.
    let line = format!(
        "{} {mp} fuse.s3mount _netdev,defaults,default_permissions,allow_other,noatime,\
         nodev,nosuid,noexec,nofail,x-systemd.automount,x-systemd.mount-timeout=30,\
         comment=dms,prefix={prefix},endpoint_url={},force_path_style,cache_dir={},\
         write_back,metadata_ttl=600{} 0 0\n",
        bucket.env.bucket,
        proxy.url(),
        cache.display(),
        test_log_option(prefix.trim_end_matches('/'))
    );
    std::fs::write(&fstab, line).unwrap();
    let _helper = HelperLink::install();
    let fstab = fstab.to_str().unwrap();

    run_ok("mount", &["-T", fstab, mp]);
    let (fstype, options) = mount_type(mnt.path()).expect("mounted");
    assert_eq!(fstype, "fuse.s3mount");
    for flag in [
        "nosuid",
        "nodev",
        "noexec",
        "allow_other",
        "default_permissions",
    ] {
        assert!(options.split(',').any(|o| o == flag), "{flag} in {options}");
    }
    assert_eq!(
        std::fs::read(mnt.path().join("seed.txt")).unwrap(),
        b"from the bucket"
    );
    std::fs::write(mnt.path().join("a.txt"), b"written through fstab").unwrap();
    assert!(eventually(Duration::from_secs(20), || bucket
        .get(&format!("{prefix}a.txt"))
        .is_some()));

    // A write-back upload held back by the link: a plain umount must not lose it; the
    // daemon outlives the mount until S3 has the file.
    assert!(wait_uploaded(
        &mnt.path().join("a.txt"),
        Duration::from_secs(20)
    ));
    proxy.set_fault(Fault::Hold, 100);
    let held = random_bytes(300_000, 9);
    std::fs::write(mnt.path().join("held.bin"), &held).unwrap();
    run_ok("umount", &[mp]);
    assert!(!is_mounted(mnt.path()));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon_alive(&cache),
        "the daemon exited with an upload pending"
    );
    assert_eq!(bucket.get(&format!("{prefix}held.bin")), None);
    proxy.set_fault(Fault::None, 100);
    wait_daemon_gone(&cache);
    assert_eq!(bucket.get(&format!("{prefix}held.bin")), Some(held.clone()));

    // `mount -a` mounts every entry of the file that is not noauto.
    run_ok("mount", &["-a", "-T", fstab]);
    assert!(is_mounted(mnt.path()));
    assert_eq!(std::fs::read(mnt.path().join("held.bin")).unwrap(), held);
    run_ok("umount", &[mp]);
    wait_daemon_gone(&cache);
    assert!(!is_mounted(mnt.path()));
}

#[test]
fn install_script_is_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    for _ in 0..2 {
        let out = Command::new(&script)
            .arg("/opt/s3")
            .env("DESTDIR", root.path())
            .env("SBINDIR", "/sbin")
            .env("S3MOUNT_BIN", s3mount_bin())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let bin = root.path().join("opt/s3/bin/s3mount");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(s3mount_bin()).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let helper = root.path().join("sbin/mount.fuse.s3mount");
    assert_eq!(
        std::fs::read_link(&helper).unwrap(),
        Path::new("/opt/s3/bin/s3mount")
    );
    let unit =
        std::fs::read_to_string(root.path().join("etc/systemd/system/s3mount@.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/s3/bin/s3mount mount "),
        "{unit}"
    );
    assert!(unit.contains("Type=notify"), "{unit}");
    let env = root.path().join("etc/s3mount/example.env");
    assert!(
        std::fs::read_to_string(&env)
            .unwrap()
            .contains("S3MOUNT_SOURCE=")
    );
    assert_eq!(
        std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let entries = std::fs::read_dir(root.path().join("etc/systemd/system")).unwrap();
    assert_eq!(entries.count(), 1, "no temporary files are left");
}

/// The messages of the daemon's notify socket, each split into its lines.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            _dir: dir,
            path,
        }
    }

    /// The next message within `limit`.
    fn next(&self, limit: Duration) -> Option<Vec<String>> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let text = String::from_utf8(buf[..n].to_vec()).unwrap();
        Some(text.lines().map(String::from).collect())
    }

    /// Messages until one has a line starting with `start` (within `limit`).
    fn until(&self, start: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Some(lines) = self.next(deadline - Instant::now()) else {
                break;
            };
            let found = lines.iter().any(|l| l.starts_with(start));
            seen.extend(lines);
            if found {
                return seen;
            }
        }
        panic!("no {start} within {limit:?}; got {seen:?}");
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn systemd_notify_ready_stopping_and_drain_status() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("notify");
    bucket.put(&format!("{prefix}seed.txt"), b"seed");
    let proxy = Proxy::start(&bucket.env.endpoint);
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let log = work.path().join("s3mount.log");
    let notify = NotifySocket::new();
    let source = format!("s3://{}/{prefix}", bucket.env.bucket);
    let mut child = Command::new(s3mount_bin())
        .args([
            "mount",
            &source,
            mnt.path().to_str().unwrap(),
            "--foreground",
        ])
        .args(["--force-path-style", "--endpoint-url", &proxy.url()])
        .args(["--cache-dir", cache.to_str().unwrap(), "--write-back"])
        // The held file's lookup is answered from this mount's listing, not by S3.
        .args(["--metadata-ttl", "600"])
        .args(["--log-level", "debug", "--log-file", log.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let before_ready = notify.until("READY=1", Duration::from_secs(30));
    // At the moment READY=1 arrives the mount answers: it is in the mount table and a
    // stat of the mount point and of a file in the bucket returns at once.
    let asked = Instant::now();
    assert!(is_mounted(mnt.path()), "READY=1 before the mount");
    let (root, below) = (
        std::fs::metadata(mnt.path()).unwrap(),
        std::fs::metadata(work.path()).unwrap(),
    );
    use std::os::unix::fs::MetadataExt;
    assert_ne!(root.dev(), below.dev(), "READY=1 before the mount");
    assert_eq!(std::fs::read(mnt.path().join("seed.txt")).unwrap(), b"seed");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the mount answered only after {:?}",
        asked.elapsed()
    );
    assert!(
        !before_ready.iter().any(|l| l.starts_with("STOPPING")),
        "{before_ready:?}"
    );

    // SIGHUP after a log rotation: the log file is reopened, the mount stays.
    std::fs::rename(&log, work.path().join("s3mount.log.1")).unwrap();
    signal(&child, libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("SIGHUP: log file reopened"))
    }));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the daemon"
    );
    assert!(is_mounted(mnt.path()));
    std::fs::write(mnt.path().join("after-hup.txt"), b"still here").unwrap();
    assert_eq!(
        std::fs::read(mnt.path().join("after-hup.txt")).unwrap(),
        b"still here"
    );
    assert!(eventually(Duration::from_secs(20), || bucket
        .get(&format!("{prefix}after-hup.txt"))
        .is_some()));

    // A write-back upload held back, then SIGTERM: STOPPING=1, and while the upload
    // waits, a STATUS= line with the pending files and bytes and a stop-timeout extension.
    assert!(wait_uploaded(
        &mnt.path().join("after-hup.txt"),
        Duration::from_secs(20)
    ));
    proxy.set_fault(Fault::Hold, 100);
    let held = random_bytes(3 * MIB, 3);
    std::fs::write(mnt.path().join("held.bin"), &held).unwrap();
    signal(&child, libc::SIGTERM);
    let stopping = notify.until("STOPPING=1", Duration::from_secs(10));
    assert!(stopping.iter().all(|l| l != "READY=1"), "{stopping:?}");
    let draining = notify.until("STATUS=", Duration::from_secs(10));
    assert!(
        draining
            .iter()
            .any(|l| l == "STATUS=draining 1 upload, 3 MiB"),
        "{draining:?}"
    );
    assert!(
        draining
            .iter()
            .any(|l| l.starts_with("EXTEND_TIMEOUT_USEC=") && l != "EXTEND_TIMEOUT_USEC=0"),
        "{draining:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "exited while draining");
    assert_eq!(bucket.get(&format!("{prefix}held.bin")), None);
    proxy.set_fault(Fault::None, 100);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert_eq!(bucket.get(&format!("{prefix}held.bin")), Some(held));
    assert!(!is_mounted(mnt.path()));
}

/// `getfattr --only-values -n NAME PATH`.
fn get_xattr(path: &Path, name: &str) -> String {
    let out = run(
        "getfattr",
        &["--only-values", "-n", name, path.to_str().unwrap()],
    );
    assert!(out.status.success(), "getfattr {name}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn trace_log_holds_no_secret() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("secrets");
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let log = work.path().join("trace.log");
    // Garage does not check session tokens: it signs and verifies the header like any
    // other, so a made-up token goes out with every request (and in the presigned URL).
    let token = "FQoGZXIvYXdzEXAMPLESESSIONTOKEN/Zm9vYmFy+cXVpeA==";
    let source = format!("s3://{}/{prefix}", bucket.env.bucket);
    let out = Command::new(s3mount_bin())
        .args(["mount", &source, mnt.path().to_str().unwrap()])
        .args(["--force-path-style", "--endpoint-url", &bucket.env.endpoint])
        .args([
            "--cache-dir",
            cache.to_str().unwrap(),
            "--part-size",
            "5MiB",
        ])
        .args(["--log-level", "trace", "--log-file", log.to_str().unwrap()])
        .env("AWS_SESSION_TOKEN", token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let dir = mnt.path();
    let small = random_bytes(40_000, 1);
    let large = random_bytes(11 * MIB, 2);
    std::fs::write(dir.join("small.bin"), &small).unwrap();
    std::fs::write(dir.join("large.bin"), &large).unwrap();
    assert_eq!(std::fs::read(dir.join("small.bin")).unwrap(), small);
    std::fs::rename(dir.join("large.bin"), dir.join("moved.bin")).unwrap();
    assert_eq!(std::fs::read(dir.join("moved.bin")).unwrap(), large);
    run_ok(
        "setfattr",
        &[
            "-n",
            "user.note",
            "-v",
            "kept",
            dir.join("small.bin").to_str().unwrap(),
        ],
    );
    assert_eq!(get_xattr(&dir.join("small.bin"), "user.note"), "kept");
    let url = get_xattr(&dir.join("moved.bin"), "user.s3.url");
    let signature = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("X-Amz-Signature="))
        .expect("a presigned URL")
        .to_string();
    assert!(url.contains("X-Amz-Security-Token="), "{url}");
    std::fs::remove_file(dir.join("small.bin")).unwrap();
    let mut f = std::fs::File::create(dir.join("last.txt")).unwrap();
    f.write_all(b"x").unwrap();
    close_file(f).unwrap();
    run_ok("fusermount3", &["-u", dir.to_str().unwrap()]);
    wait_daemon_gone(&cache);

    let text = std::fs::read_to_string(&log).unwrap();
    // The SDK's own trace (requests, responses, signing) is in the log.
    for expected in [
        "aws_smithy_runtime",
        "PutObject",
        "UploadPart",
        "CopyObject",
    ] {
        assert!(text.contains(expected), "no {expected} in the log");
    }
    let secret = &bucket.env.secret_key;
    for (what, needle) in [
        ("the secret key", secret.as_str()),
        ("the session token", token),
        ("the presigned URL's signature", signature.as_str()),
        ("the presigned URL", url.as_str()),
    ] {
        let at = text.find(needle);
        assert!(
            at.is_none(),
            "{what} in the log: {}",
            &text[at.unwrap().saturating_sub(200)..][..400.min(text.len() - at.unwrap())]
        );
    }
    // Every signature and token the SDK prints is redacted.
    for marker in ["Signature=", "X-Amz-Signature=", "x-amz-security-token"] {
        let lower = text.to_ascii_lowercase();
        let needle = marker.to_ascii_lowercase();
        for (at, _) in lower.match_indices(&needle) {
            let rest = &text[at + marker.len()..];
            let value = rest.trim_start_matches(['"', ':', '=', ' ', '\\']);
            assert!(
                value.starts_with("<redacted>")
                    || value.starts_with("** redacted")
                    || !value.starts_with(|c: char| c.is_ascii_alphanumeric()),
                "{marker} with a value in the log: {}",
                &rest[..rest.len().min(120)]
            );
        }
    }
}

#[test]
fn helper_dash_f_is_a_fake_mount() {
    // `mount.fuse.s3mount SOURCE DIR -f -o ...` is what mount(8) runs for `mount -f`:
    // exit 0, nothing checked (the endpoint is dead), nothing mounted.
    let dir = tempfile::tempdir().unwrap();
    let link_dir = tempfile::tempdir().unwrap();
    let helper = link_dir.path().join("mount.fuse.s3mount");
    std::os::unix::fs::symlink(s3mount_bin(), &helper).unwrap();
    let out = Command::new(&helper)
        .args(["no-such-bucket", dir.path().to_str().unwrap(), "-f", "-o"])
        .arg("rw,prefix=x/,endpoint_url=http://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!is_mounted(dir.path()));
}
