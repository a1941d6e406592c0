//! Shared fixtures of the end-to-end tests: the local S3 server's settings (from the
//! environment `scripts/test.sh` sets), a plain S3 client to check objects without the
//! mount, a real mount of the `s3mount` binary that unmounts on drop, and a TCP proxy
//! that can cut the mount off from the server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;

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

/// A unique prefix per test run, so tests never see each other's keys.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t-{test}-{nanos:x}-{}/", std::process::id())
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
        let env = S3Env::get();
        let client = env.client();
        Bucket {
            env,
            client,
            rt: runtime(),
        }
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

    pub fn etag(&self, key: &str) -> String {
        self.rt.block_on(async {
            let out = self
                .client
                .head_object()
                .bucket(&self.env.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            out.e_tag().unwrap().trim_matches('"').to_string()
        })
    }

    pub fn metadata(&self, key: &str) -> std::collections::HashMap<String, String> {
        self.rt.block_on(async {
            let out = self
                .client
                .head_object()
                .bucket(&self.env.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            out.metadata().cloned().unwrap_or_default()
        })
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

    /// Every key under `prefix`, all pages.
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
                    .send()
                    .await
                    .unwrap();
                keys.extend(
                    out.contents()
                        .iter()
                        .filter_map(|o| o.key().map(String::from)),
                );
                token = out.next_continuation_token().map(String::from);
                if token.is_none() {
                    break;
                }
            }
            keys
        })
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
        let env = S3Env::get();
        let dir = tempfile::tempdir().unwrap();
        let source = format!("s3://{}/{}", env.bucket, prefix);
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
        let out = Command::new(s3mount_bin()).args(&args).output().unwrap();
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
        std::fs::read_dir(self.cache.join("stage"))
            .map(|d| {
                d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_none()))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn unmount(&self) {
        if is_mounted(self.dir.path()) {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(self.dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wait_daemon_gone(&self.cache);
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if is_mounted(self.dir.path()) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(self.dir.path())
                .output();
        }
        wait_daemon_gone(&self.cache);
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

/// A TCP proxy in front of the S3 server that can be switched off: then it cuts every
/// open connection at once (socket shutdown, independent of scheduling) and drops new
/// ones as soon as they are accepted.
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let rt = runtime();
        let down = Arc::new(AtomicBool::new(false));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (flag, conns) = (down.clone(), open.clone());
        rt.spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Ok(std_in) = inbound.into_std() else {
                    continue;
                };
                let Ok(handle) = std_in.try_clone() else {
                    continue;
                };
                conns.lock().unwrap().push(handle);
                let Ok(mut inbound) = tokio::net::TcpStream::from_std(std_in) else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Proxy {
            addr,
            down,
            open,
            _rt: rt,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for conn in self.open.lock().unwrap().drain(..) {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
