//! Shared fixtures of the end-to-end tests: the local S3 server's settings (from the
//! environment `scripts/test.sh` sets), a plain S3 client to check objects without the
//! mount, a real mount of the `s3mount` binary that unmounts on drop, and a TCP proxy
//! that can cut the mount off from the server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;

pub const MIB: usize = 1024 * 1024;

pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with scripts/test.sh, which starts a local S3 server"
        )
    })
}

impl S3Env {
    pub fn get() -> S3Env {
        S3Env {
            endpoint: required("AWS_ENDPOINT_URL"),
            bucket: required("S3MOUNT_TEST_BUCKET"),
            access_key: required("AWS_ACCESS_KEY_ID"),
            secret_key: required("AWS_SECRET_ACCESS_KEY"),
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        }
    }

    pub fn client(&self) -> Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .build();
        Client::from_conf(conf)
    }
}

/// A unique prefix per call, so tests never see each other's keys (all tests share one
/// process, hence the counter next to the time and the pid).
pub fn unique_prefix(test: &str) -> String {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    format!("t-{test}-{nanos:x}-{}-{n}/", std::process::id())
}

/// The number in environment variable `name` (decimal or 0x-hex), or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
    .unwrap_or_else(|| panic!("{name}={v} is not a number"))
}

/// Polls `done` every 20 ms for up to `limit`; whether it became true. For what the
/// daemon does after a close() has returned: the kernel sends RELEASE (which drops a
/// finished or failed stage file) asynchronously.
pub fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// close() of `f` with its result, which dropping a `File` would ignore (on the mount,
/// a failed upload fails close with EIO).
pub fn close_file(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: fd came from into_raw_fd and is closed exactly once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Plain S3 calls for checking what the mount did.
pub struct Bucket {
    pub env: S3Env,
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl Bucket {
    pub fn new() -> Bucket {
        Self::with_env(S3Env::get())
    }

    /// A client of another server (e.g. one node of a cluster).
    pub fn with_env(env: S3Env) -> Bucket {
        let client = env.client();
        Bucket {
            env,
            client,
            rt: runtime(),
        }
    }

    /// GET `key`: Ok(None) if S3 says 404, Err for any other failure (a server that
    /// cannot answer yet), for polling.
    pub fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.rt.block_on(async {
            let sent = (self.client.get_object())
                .bucket(&self.env.bucket)
                .key(key)
                .send()
                .await;
            match sent {
                Ok(out) => match out.body.collect().await {
                    Ok(body) => Ok(Some(body.to_vec())),
                    Err(e) => Err(format!("GET {key}: {e}")),
                },
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(None),
                Err(e) => Err(format!("GET {key}: {e:?}")),
            }
        })
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.rt.block_on(async {
            match self
                .client
                .get_object()
                .bucket(&self.env.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => Some(out.body.collect().await.unwrap().to_vec()),
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    assert_eq!(status, Some(404), "GET {key}: {e:?}");
                    None
                }
            }
        })
    }

    fn head(&self, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        self.rt.block_on(async {
            (self.client.head_object())
                .bucket(&self.env.bucket)
                .key(key)
                .send()
                .await
                .unwrap()
        })
    }

    pub fn etag(&self, key: &str) -> String {
        let out = self.head(key);
        out.e_tag().unwrap().trim_matches('"').to_string()
    }

    pub fn metadata(&self, key: &str) -> std::collections::HashMap<String, String> {
        self.head(key).metadata().cloned().unwrap_or_default()
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        self.rt.block_on(async {
            self.client
                .put_object()
                .bucket(&self.env.bucket)
                .key(key)
                .body(ByteStream::from(data.to_vec()))
                .send()
                .await
                .unwrap();
        })
    }

    /// Puts `data` with user metadata `meta` (as another client would).
    pub fn put_with_meta(
        &self,
        key: &str,
        data: &[u8],
        meta: &std::collections::HashMap<String, String>,
    ) {
        self.rt.block_on(async {
            self.client
                .put_object()
                .bucket(&self.env.bucket)
                .key(key)
                .set_metadata(Some(meta.clone()))
                .body(ByteStream::from(data.to_vec()))
                .send()
                .await
                .unwrap();
        })
    }

    /// Creates bucket `name` (the test key may create buckets).
    pub fn create_bucket(&self, name: &str) {
        self.rt.block_on(async {
            self.client
                .create_bucket()
                .bucket(name)
                .send()
                .await
                .unwrap();
        })
    }

    /// Deletes every object of bucket `name`, then the bucket.
    pub fn destroy_bucket(&self, name: &str) {
        self.rt.block_on(async {
            let out = self
                .client
                .list_objects_v2()
                .bucket(name)
                .send()
                .await
                .unwrap();
            for o in out.contents() {
                self.client
                    .delete_object()
                    .bucket(name)
                    .key(o.key().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            self.client
                .delete_bucket()
                .bucket(name)
                .send()
                .await
                .unwrap();
        })
    }

    /// The keys of the multipart uploads in progress under `prefix`.
    pub fn uploads(&self, prefix: &str) -> Vec<String> {
        self.rt.block_on(async {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.env.bucket)
                .prefix(prefix)
                .send()
                .await
                .unwrap();
            out.uploads()
                .iter()
                .filter_map(|u| u.key().map(String::from))
                .collect()
        })
    }

    /// Every key under `prefix`, all pages. Keys are asked for URL-encoded
    /// (`encoding-type=url`), so keys XML cannot carry (control characters) list too.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.rt.block_on(async {
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.env.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token)
                    .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                    .send()
                    .await
                    .unwrap();
                keys.extend(out.contents().iter().filter_map(|o| o.key()).map(|k| {
                    let spaced = k.replace('+', " ");
                    percent_encoding::percent_decode_str(&spaced)
                        .decode_utf8()
                        .unwrap()
                        .into_owned()
                }));
                token = out.next_continuation_token().map(String::from);
                if token.is_none() {
                    break;
                }
            }
            keys
        })
    }

    /// DELETE `key` (as another S3 client would).
    pub fn delete(&self, key: &str) {
        self.rt.block_on(async {
            self.client
                .delete_object()
                .bucket(&self.env.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
        });
    }

    /// Puts `n` small objects concurrently.
    pub fn put_many(&self, prefix: &str, n: usize) {
        self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                let (client, bucket, key) = (
                    self.client.clone(),
                    self.env.bucket.clone(),
                    format!("{prefix}f{i:06}"),
                );
                set.spawn(async move {
                    client
                        .put_object()
                        .bucket(bucket)
                        .key(key)
                        .body(ByteStream::from_static(b"x"))
                        .send()
                        .await
                        .unwrap();
                });
                while set.len() >= 16 {
                    set.join_next().await.unwrap().unwrap();
                }
            }
            while let Some(r) = set.join_next().await {
                r.unwrap();
            }
        })
    }
}

pub fn s3mount_bin() -> &'static str {
    env!("CARGO_BIN_EXE_s3mount")
}

/// A live mount of the s3mount binary; unmounted (and its daemon gone) on drop.
pub struct TestMount {
    pub dir: tempfile::TempDir,
    pub cache: PathBuf,
    _cache_root: Option<tempfile::TempDir>,
}

impl TestMount {
    pub fn mountpoint(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Mounts `prefix` of the test bucket with a fresh cache dir.
    pub fn new(prefix: &str, extra: &[&str]) -> TestMount {
        let cache_root = tempfile::tempdir().unwrap();
        let cache = cache_root.path().join("cache");
        let mut m = Self::with_cache(prefix, &cache, extra, None);
        m._cache_root = Some(cache_root);
        m
    }

    /// Mounts with a given cache dir and optionally another endpoint (a proxy).
    pub fn with_cache(
        prefix: &str,
        cache: &Path,
        extra: &[&str],
        endpoint: Option<&str>,
    ) -> TestMount {
        Self::of_bucket(&S3Env::get().bucket, prefix, cache, extra, endpoint)
    }

    /// Mounts `prefix` of another bucket.
    pub fn of_bucket(
        bucket: &str,
        prefix: &str,
        cache: &Path,
        extra: &[&str],
        endpoint: Option<&str>,
    ) -> TestMount {
        Self::of_server(&S3Env::get(), bucket, prefix, cache, extra, endpoint)
    }

    /// Mounts `prefix` of `bucket` on the server `env` describes (its endpoint unless
    /// `endpoint` is given, its credentials).
    pub fn of_server(
        env: &S3Env,
        bucket: &str,
        prefix: &str,
        cache: &Path,
        extra: &[&str],
        endpoint: Option<&str>,
    ) -> TestMount {
        let dir = tempfile::tempdir().unwrap();
        let source = format!("s3://{bucket}/{prefix}");
        let endpoint = endpoint.map(String::from).unwrap_or(env.endpoint.clone());
        let mut args = vec![
            "mount",
            &source,
            dir.path().to_str().unwrap(),
            "--force-path-style",
            "--endpoint-url",
            &endpoint,
            "--cache-dir",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(s3mount_bin());
        cmd.args(&args)
            .env("AWS_ACCESS_KEY_ID", &env.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &env.secret_key)
            .env("AWS_REGION", &env.region);
        // S3MOUNT_TEST_LOG_DIR=DIR keeps each daemon's debug log in DIR (for failures).
        let log_dir = std::env::var("S3MOUNT_TEST_LOG_DIR").ok();
        if let Some(log_dir) = &log_dir {
            let name = prefix.trim_end_matches('/').replace('/', "_");
            let log = Path::new(log_dir).join(format!("{name}.log"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log);
            cmd.args(["--log-level", "debug"]).stderr(file.unwrap());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(dir.path()), "exit 0 but not mounted");
        TestMount {
            dir,
            cache: cache.to_path_buf(),
            _cache_root: None,
        }
    }

    /// Data files still staged (not confirmed by S3) in the cache dir.
    pub fn staged_files(&self) -> usize {
        staged_data_files(&self.cache).len()
    }

    /// Unmounts (as an operator would, `fusermount3 -u`) and waits for the daemon to
    /// finish its pending uploads and exit.
    pub fn unmount(&self) {
        if let Err(e) = fuse_unmount(self.dir.path()) {
            panic!("{e}");
        }
        wait_daemon_gone(&self.cache);
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let result = fuse_unmount(self.dir.path());
        if result.is_err() {
            // Lazily then, so that the daemon (which waits for the unmount) exits.
            let _ = run("fusermount3", &["-uz", self.dir.path().to_str().unwrap()]);
        }
        wait_daemon_gone(&self.cache);
        if let Err(e) = result {
            if std::thread::panicking() {
                eprintln!("{e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

/// How long [`fuse_unmount`] tries again while the mount is busy.
pub const UNMOUNT_BUSY_FOR: Duration = Duration::from_secs(10);

/// `fusermount3 -u DIR` unless DIR is not mounted (any more). While the kernel finds the
/// mount busy (EBUSY), tries again for up to [`UNMOUNT_BUSY_FOR`]: a file closed just
/// before can still be held for a moment elsewhere, e.g. by a child process that another
/// test thread is starting (fork copies every open file; exec closes it, with a FLUSH
/// that waits for the daemon). A mount still busy after that is an error that names the
/// processes using it.
/// The staged files holding data in a cache dir: not the journal, not the empty
/// stage files made ahead for later use.
pub fn staged_data_files(cache: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(cache.join("stage")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with("journal-") && !name.contains('.')
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        .map(|e| e.path())
        .collect()
}

/// Waits (up to `limit`) until the mount says `path` is in S3 (`user.s3.state`). The
/// object can be in the bucket before the mount has the answer to its PUT: a test that
/// cuts the connections next (a proxy fault) must wait for this, not for the bucket.
pub fn wait_uploaded(path: &Path, limit: Duration) -> bool {
    eventually(limit, || {
        xattr::get(path, "user.s3.state").is_ok_and(|v| v.as_deref() == Some(&b"uploaded"[..]))
    })
}

pub fn fuse_unmount(dir: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut busy_seen = Vec::new();
    for attempt in 1.. {
        if !is_mounted(dir) {
            return Ok(());
        }
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run fusermount3: {e}"))?;
        if out.status.success() {
            if attempt > 1 {
                eprintln!(
                    "fusermount3 -u {}: busy, unmounted after {:.2} s ({attempt} tries); held by: {}",
                    dir.display(),
                    started.elapsed().as_secs_f64(),
                    busy_seen.join("; ")
                );
            }
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !is_mounted(dir) {
            return Ok(()); // unmounted meanwhile (by the daemon, after a signal)
        }
        if !stderr.contains("Device or resource busy") {
            return Err(stderr);
        }
        let holders = mount_users(dir);
        if busy_seen.last() != Some(&holders) {
            busy_seen.push(holders.clone());
        }
        if started.elapsed() > UNMOUNT_BUSY_FOR {
            return Err(format!(
                "{stderr}: still busy after {:.1} s ({attempt} tries); using it now: {holders}",
                started.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unreachable!()
}

/// The processes with a file, working directory or root under `dir`, for messages.
pub fn mount_users(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    let mut users = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let proc_dir = e.path();
        let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
        let mut links = vec![proc_dir.join("cwd"), proc_dir.join("root")];
        if let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for link in links {
            if let Ok(target) = std::fs::read_link(&link)
                && target.starts_with(&dir)
            {
                users.push(format!(
                    "{pid} ({}) {}: {}",
                    comm.trim(),
                    link.file_name().unwrap_or_default().to_string_lossy(),
                    target.display()
                ));
            }
        }
    }
    if users.is_empty() {
        "no process (a reference inside the kernel)".into()
    } else {
        users.join(", ")
    }
}

pub fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
}

/// The daemon holds a lock on its cache dir until it has finished; wait for it.
pub fn wait_daemon_gone(cache: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(cache.join("lock")) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // SAFETY: the fd is valid while `f` lives.
        let got = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if got {
            return;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// The ETag S3 gives a multipart upload of `data` in parts of `part`.
pub fn multipart_etag(data: &[u8], part: usize) -> String {
    use md5::{Digest, Md5};
    let mut all = Vec::new();
    let chunks: Vec<&[u8]> = data.chunks(part).collect();
    for c in &chunks {
        all.extend_from_slice(&Md5::digest(c));
    }
    format!("{:x}-{}", Md5::digest(&all), chunks.len())
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    format!("{:x}", Md5::digest(data))
}

/// What the proxy does to connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Pass traffic through.
    None = 0,
    /// Accept, then reset at once (RST).
    Reset = 1,
    /// Answer every request with 503 SlowDown and close.
    SlowDown = 2,
    /// Pass traffic through with a delay on every chunk.
    Slow = 3,
    /// Pass traffic through, flipping the first body byte of every PUT request (what a
    /// bad network card or middlebox might do; S3 stores it unless a checksum says no).
    Corrupt = 4,
    /// Pass traffic through, with a delay on every chunk sent to the server (slow uploads).
    SlowUpload = 5,
    /// Accept, then forward nothing until the fault changes (at most [`HOLD_LIMIT`]);
    /// then pass traffic through: requests wait, as behind a stalled link.
    Hold = 6,
}

/// Longest time a connection is held by [`Fault::Hold`].
pub const HOLD_LIMIT: Duration = Duration::from_secs(120);

/// A TCP proxy in front of the S3 server that injects faults. Switching to a fault cuts
/// every open connection at once (socket shutdown, independent of scheduling); a
/// fault then hits a share (`percent`) of the new connections.
pub struct Proxy {
    pub addr: SocketAddr,
    fault: Arc<std::sync::atomic::AtomicU8>,
    percent: Arc<std::sync::atomic::AtomicU8>,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    /// Requests passed through, by HTTP method.
    requests: RequestCounts,
    _rt: tokio::runtime::Runtime,
}

type RequestCounts = Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>;

const SLOW_DOWN: &[u8] = b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: 92\r\nConnection: close\r\n\r\n<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>";

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        use std::sync::atomic::AtomicU8;
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let rt = runtime();
        let fault = Arc::new(AtomicU8::new(0));
        let percent = Arc::new(AtomicU8::new(100));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, share, conns) = (fault.clone(), percent.clone(), open.clone());
        let requests = RequestCounts::default();
        let counts = requests.clone();
        rt.spawn(async move {
            let mut n: u64 = 0;
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                n += 1;
                let hit = (n * 37 % 100) < share.load(Ordering::SeqCst) as u64;
                let fault = if hit { mode.load(Ordering::SeqCst) } else { 0 };
                let Ok(std_in) = inbound.into_std() else {
                    continue;
                };
                if fault == Fault::Reset as u8 {
                    let _ = socket_reset(&std_in);
                    drop(std_in);
                    continue;
                }
                let Ok(handle) = std_in.try_clone() else {
                    continue;
                };
                conns.lock().unwrap().push(handle);
                let Ok(mut inbound) = tokio::net::TcpStream::from_std(std_in) else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let counts = counts.clone();
                let mode = mode.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if fault == Fault::Hold as u8 {
                        let deadline = Instant::now() + HOLD_LIMIT;
                        while mode.load(Ordering::SeqCst) == Fault::Hold as u8
                            && Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    if fault == Fault::SlowDown as u8 {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match inbound.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = inbound.write_all(SLOW_DOWN).await;
                        let _ = inbound.shutdown().await;
                        return;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    if fault == Fault::Slow as u8 {
                        let (mut ri, mut wi) = inbound.into_split();
                        let (mut ro, mut wo) = outbound.into_split();
                        let up = async move {
                            let mut buf = vec![0u8; 256 * 1024];
                            while let Ok(n) = ri.read(&mut buf).await {
                                if n == 0 || wo.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = wo.shutdown().await;
                        };
                        let down = async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            while let Ok(n) = ro.read(&mut buf).await {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                if n == 0 || wi.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = wi.shutdown().await;
                        };
                        tokio::join!(up, down);
                        return;
                    }
                    let (ri, mut wi) = inbound.into_split();
                    let (mut ro, wo) = outbound.into_split();
                    let corrupt = fault == Fault::Corrupt as u8;
                    let delay =
                        (fault == Fault::SlowUpload as u8).then(|| Duration::from_millis(5));
                    let up = relay_requests(ri, wo, counts, corrupt, delay);
                    let down = async move {
                        let _ = tokio::io::copy(&mut ro, &mut wi).await;
                        let _ = wi.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Proxy {
            addr,
            fault,
            percent,
            open,
            requests,
            _rt: rt,
        }
    }

    /// Requests with HTTP method `method` passed through so far.
    pub fn requests(&self, method: &str) -> u64 {
        (self.requests.lock().unwrap())
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    /// Requests that may change the bucket (PUT, POST, DELETE) passed through so far.
    pub fn write_requests(&self) -> u64 {
        ["PUT", "POST", "DELETE"]
            .iter()
            .map(|m| self.requests(m))
            .sum()
    }

    /// Forgets the requests counted so far.
    pub fn reset_counts(&self) {
        self.requests.lock().unwrap().clear();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Injects `fault` into `percent`% of the connections from now on.
    pub fn set_fault(&self, fault: Fault, percent: u8) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        self.percent.store(percent, Ordering::SeqCst);
        if fault != Fault::None {
            for conn in self.open.lock().unwrap().drain(..) {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// All connections fail (reset) or all pass.
    pub fn set_down(&self, down: bool) {
        if down {
            self.set_fault(Fault::Reset, 100);
        } else {
            self.set_fault(Fault::None, 100);
        }
    }
}

/// Copies HTTP/1.1 requests from a client to the server, counting them by method (from
/// each request's head and its Content-Length); with `corrupt`, flips the first body byte
/// of every PUT; with `delay`, waits that long before passing on each chunk read. A
/// request in chunked transfer encoding ends the counting of that connection (the rest
/// passes through untouched).
async fn relay_requests(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counts: RequestCounts,
    corrupt: bool,
    delay: Option<Duration>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut head: Vec<u8> = Vec::new();
    let (mut body_left, mut opaque, mut flip_next) = (0u64, false, false);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let chunk = &mut buf[..n];
        let mut i = 0;
        while i < chunk.len() && !opaque {
            if body_left > 0 {
                let take = body_left.min((chunk.len() - i) as u64) as usize;
                if flip_next {
                    chunk[i] ^= 0xff;
                    flip_next = false;
                }
                body_left -= take as u64;
                i += take;
                continue;
            }
            head.push(chunk[i]);
            i += 1;
            if !head.ends_with(b"\r\n\r\n") {
                continue;
            }
            let text = String::from_utf8_lossy(&head).to_string();
            head.clear();
            let method = text.split(' ').next().unwrap_or("").to_string();
            *counts.lock().unwrap().entry(method.clone()).or_default() += 1;
            for line in text.lines() {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => body_left = value.trim().parse().unwrap_or(0),
                    "transfer-encoding" => opaque = true,
                    _ => {}
                }
            }
            flip_next = corrupt && method == "PUT" && body_left > 0;
        }
        if to.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Closes a socket with RST instead of FIN.
fn socket_reset(stream: &std::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is valid while `stream` lives and `linger` is a valid option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The settings of a core under test: prefix `prefix`, cache dir `cache`, 5 MiB parts.
pub fn core_config(prefix: &str, cache: &Path) -> s3mount::fs::FsConfig {
    use s3mount::fs::FsConfig;
    FsConfig {
        prefix: prefix.into(),
        uid: 1000,
        gid: 1000,
        file_mode: 0o644,
        dir_mode: 0o755,
        metadata_ttl: Duration::from_secs(1),
        read_only: false,
        part_size: 5 * MIB as u64,
        upload_concurrency: 4,
        max_parts: 10_000,
        upload_memory: 16 * MIB as u64,
        cache_dir: cache.to_path_buf(),
        cache_size: 16 * MIB,
        write_back: false,
        write_back_delay: Duration::ZERO,
        url_expiry: Duration::from_secs(3600),
        fast_listing: false,
        metadata_index_entries: s3mount::meta_index::DEFAULT_MAX_ENTRIES,
        shared_metadata_index: false,
    }
}
