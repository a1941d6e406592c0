//! CI-sized versions of `scripts/bigdir.sh` and `scripts/many-writers.sh` through a real
//! mount: a folder of 6,000 objects listed by `ls -l`, `find` and a seekdir walk (each
//! name once, sizes right), a lookup of one name in it costing at most two requests, and
//! 16 writers × 400 files plus appenders and readers of log files, in the default and the
//! `--write-back` mode, checked through the S3 API; the daemon's peak RSS stays under
//! 64 MiB and its open file descriptors bounded. Readers that reopen a log while two
//! processes append to it see only whole appends.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Bucket, S3Env, TestMount, close_file, random_bytes, runtime, unique_prefix};

const MAX_RSS_KIB: u64 = 64 * 1024;
/// Open files of the writers and uploads (at most 256 stage files open, see
/// `fd_bound.rs`), connections and the daemon's own.
const MAX_FDS: usize = 600;

/// The daemon serving `mountpoint` (the process whose command line names it).
fn daemon_pid(mountpoint: &Path) -> u32 {
    let want = mountpoint.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"s3mount")) && args.contains(&want.as_bytes())
        {
            return pid;
        }
    }
    panic!("no daemon for {want}");
}

/// A field of /proc/PID/status, in kB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Samples the daemon's open fds every 20 ms until dropped; the peak seen.
struct FdSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdSampler {
    fn start(pid: u32) -> FdSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(open_fds(pid) as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FdSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.peak.load(Ordering::SeqCst) as usize
    }
}

/// A TCP proxy to the S3 server that counts the HTTP requests passing through it.
struct CountingProxy {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl CountingProxy {
    fn start(upstream: &str) -> CountingProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        rt.spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up = async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut parser = RequestCounter::default();
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = ri.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            counter.fetch_add(parser.feed(&buf[..n]), Ordering::SeqCst);
                            if wo.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = wo.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut ro, &mut wi).await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        CountingProxy {
            addr,
            requests,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Counts the requests of one HTTP/1.1 client stream: a head up to an empty line, then
/// a body of Content-Length bytes.
#[derive(Default)]
struct RequestCounter {
    head: Vec<u8>,
    body_left: u64,
}

impl RequestCounter {
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut requests = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = (self.body_left as usize).min(data.len());
                self.body_left -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            if self.head.ends_with(b"\r\n\r\n") {
                requests += 1;
                let head = String::from_utf8_lossy(&self.head).to_ascii_lowercase();
                self.body_left = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
                    .unwrap_or(0);
                self.head.clear();
            }
        }
        requests
    }
}

/// Names of `dir` read with seekdir back to telldir values now and then, as a program
/// that walks a directory twice over parts of it would.
fn names_with_seekdir(dir: &Path) -> Vec<String> {
    use std::ffi::{CStr, CString};
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    let mut names = Vec::new();
    // SAFETY: `path` is a valid C string; the DIR* is used only until closedir below.
    unsafe {
        let d = libc::opendir(path.as_ptr());
        assert!(!d.is_null(), "opendir {}", dir.display());
        let mut marks: Vec<(libc::c_long, usize)> = Vec::new();
        let mut reread = 0;
        loop {
            if names.len() % 997 == 0 {
                marks.push((libc::telldir(d), names.len()));
            }
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = CStr::from_ptr((*e).d_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            names.push(name);
            // Every 1500 names, go back to a mark and check the names read again.
            if names.len() % 1500 == 0 && reread < 6 {
                reread += 1;
                let (mark, at) = marks[marks.len() / 2];
                libc::seekdir(d, mark);
                for (i, name) in names.iter().enumerate().skip(at) {
                    let e = libc::readdir(d);
                    assert!(!e.is_null(), "end of directory after seekdir");
                    let again = CStr::from_ptr((*e).d_name.as_ptr()).to_string_lossy();
                    assert_eq!(again, *name, "name {i} after seekdir");
                }
            }
        }
        libc::closedir(d);
    }
    names
}

#[test]
fn a_big_folder_lists_each_name_once_in_bounded_memory() {
    const N: usize = 6000;
    let bucket = Bucket::new();
    let prefix = unique_prefix("bigdir");
    bucket.put_many(&format!("{prefix}big/"), N);
    let proxy = CountingProxy::start(&S3Env::get().endpoint);
    let cache = tempfile::tempdir().unwrap();
    let m = TestMount::with_cache(&prefix, &cache.path().join("c"), &[], Some(&proxy.url()));
    let pid = daemon_pid(m.mountpoint());
    let dir = m.path("big");
    let want: HashSet<String> = (0..N).map(|i| format!("f{i:06}")).collect();

    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = HashSet::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name = fields.last().unwrap().to_string();
        assert_eq!(fields[4], "1", "size of {name}");
        assert!(seen.insert(name.clone()), "ls -l: {name} twice");
    }
    assert_eq!(seen, want, "ls -l");

    let out = std::process::Command::new("find")
        .arg(&dir)
        .arg("-mindepth")
        .arg("1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let found: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(found.len(), N, "find");
    assert_eq!(found.into_iter().collect::<HashSet<_>>(), want, "find");

    let walked = names_with_seekdir(&dir);
    let children: Vec<&String> = walked.iter().filter(|n| *n != "." && *n != "..").collect();
    assert_eq!(children.len(), N, "readdir with seekdir");
    assert_eq!(
        children.into_iter().cloned().collect::<HashSet<_>>(),
        want,
        "readdir with seekdir"
    );

    // One name, after the listings' TTL: a HEAD of the key and a one-key LIST at most
    // (the folder's own entry is refreshed first: that is a lookup in the parent).
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::metadata(&dir).unwrap();
    let before = proxy.count();
    let meta = std::fs::metadata(dir.join("f003210")).unwrap();
    assert_eq!(meta.len(), 1);
    let lookup = proxy.count() - before;
    assert!(
        lookup <= 2,
        "a lookup in the big folder made {lookup} requests"
    );

    let hwm = status_kib(pid, "VmHWM:");
    assert!(hwm < MAX_RSS_KIB, "peak RSS {hwm} kB listing {N} entries");
}

/// What `writers` threads (each its own open/write/close sequence, as processes would
/// do) create: file i of 1–256 KiB under `w{i % writers}/`.
/// The names `ls -a` shows in `dir`, each once (asserted).
fn ls_names(dir: &Path) -> HashSet<String> {
    let out = std::process::Command::new("ls")
        .arg("-1a")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut names = HashSet::new();
    for name in String::from_utf8(out.stdout).unwrap().lines() {
        assert!(names.insert(name.to_string()), "{name} twice");
    }
    names
}

/// A folder listed before is listed again in parallel spans from the cuts of the last
/// listing (StartAfter on a real server): after another client added names inside a
/// span, deleted names around a cut and added a folder, each listing shows exactly what
/// S3 holds, each name once; so does the first listing of a remount of the cache dir.
#[test]
fn a_big_folder_changed_by_another_client_lists_exactly_what_s3_holds() {
    const N: usize = 3000;
    let bucket = Bucket::new();
    let prefix = unique_prefix("spans");
    let dir_prefix = format!("{prefix}big/");
    bucket.put_many(&dir_prefix, N);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    let mut want: HashSet<String> = (0..N).map(|i| format!("f{i:06}")).collect();
    want.extend([".".to_string(), "..".to_string()]);
    {
        let m = TestMount::with_cache(&prefix, &cache_dir, &[], None);
        let dir = m.path("big");
        assert_eq!(ls_names(&dir), want, "first listing");
        // Another client: 300 names inside the first span, 100 gone around the second
        // cut (after f001799), a folder.
        for i in 0..300 {
            let name = format!("f000100x{i:03}");
            bucket.put(&format!("{dir_prefix}{name}"), b"x");
            want.insert(name);
        }
        for i in 1750..1850 {
            let name = format!("f{i:06}");
            bucket.delete(&format!("{dir_prefix}{name}"));
            want.remove(&name);
        }
        bucket.put(&format!("{dir_prefix}g/inner"), b"x");
        want.insert("g".into());
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(ls_names(&dir), want, "after the changes");
        assert_eq!(ls_names(&dir), want, "again");
    }
    crate::common::wait_daemon_gone(&cache_dir);
    let m = TestMount::with_cache(&prefix, &cache_dir, &[], None);
    assert_eq!(ls_names(&m.path("big")), want, "after a remount");
}

fn file_content(i: usize) -> Vec<u8> {
    let len = 1024 + (i * 7919) % (255 * 1024);
    random_bytes(len, i as u64)
}

fn log_line(w: usize, seq: usize) -> String {
    let body = format!("{w} {seq} {}", "x".repeat(20 + (w * 31 + seq * 17) % 150));
    format!("{body} {:016x}\n", fnv(body.as_bytes()))
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Checks every complete line of log `w`: whole, its own, in order. The lines checked.
fn check_log(w: usize, data: &[u8]) -> usize {
    let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |e| e + 1);
    let text = std::str::from_utf8(&data[..end]).expect("log is UTF-8");
    for (seq, line) in text.lines().enumerate() {
        assert_eq!(format!("{line}\n"), log_line(w, seq), "log{w} line {seq}");
    }
    text.lines().count()
}

fn many_writers(mode: &[&str]) {
    const WRITERS: usize = 16;
    const FILES: usize = 400;
    const LOGS: usize = 8;
    const APPENDS: usize = 40;
    let bucket = Bucket::new();
    let prefix = unique_prefix("writers");
    let m = TestMount::new(&prefix, mode);
    let pid = daemon_pid(m.mountpoint());
    let fds = FdSampler::start(pid);
    let root: PathBuf = m.mountpoint().to_path_buf();
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let root = root.clone();
            s.spawn(move || {
                let dir = root.join(format!("w{w}"));
                std::fs::create_dir(&dir).unwrap();
                for i in (w..FILES).step_by(WRITERS) {
                    let path = dir.join(format!("f{i:05}"));
                    let mut f = std::fs::File::create(&path).unwrap();
                    f.write_all(&file_content(i)).unwrap();
                    close_file(f).unwrap_or_else(|e| panic!("close of {}: {e}", path.display()));
                }
            });
        }
        let done = Arc::new(AtomicU64::new(0));
        for w in 0..LOGS {
            let (root, done) = (root.clone(), done.clone());
            s.spawn(move || {
                let path = root.join(format!("log{w}"));
                for seq in 0..APPENDS {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&path)
                        .unwrap();
                    f.write_all(log_line(w, seq).as_bytes()).unwrap();
                    close_file(f).unwrap_or_else(|e| panic!("close of log{w}: {e}"));
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        for r in 0..LOGS {
            let (root, done) = (root.clone(), done.clone());
            s.spawn(move || {
                let mut lines = 0;
                while done.load(Ordering::SeqCst) < LOGS as u64 {
                    let w = (r + lines) % LOGS;
                    let mut data = Vec::new();
                    match std::fs::File::open(root.join(format!("log{w}"))) {
                        Ok(mut f) => {
                            f.read_to_end(&mut data)
                                .unwrap_or_else(|e| panic!("reading log{w}: {e}"));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => panic!("open log{w}: {e}"),
                    }
                    lines += check_log(w, &data) + 1;
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let hwm = status_kib(pid, "VmHWM:");
    m.unmount();
    let peak_fds = fds.peak();
    eprintln!(
        "many writers {mode:?}: {FILES} files in {secs:.1} s ({:.0} files/s), peak RSS {} MiB, peak fds {peak_fds}",
        FILES as f64 / secs,
        hwm / 1024
    );
    for i in 0..FILES {
        let key = format!("{prefix}w{}/f{i:05}", i % WRITERS);
        let got = bucket
            .get(&key)
            .unwrap_or_else(|| panic!("{key} missing in S3"));
        assert!(got == file_content(i), "{key} differs in S3");
    }
    for w in 0..LOGS {
        let got = bucket.get(&format!("{prefix}log{w}")).unwrap();
        assert_eq!(check_log(w, &got), APPENDS, "log{w} in S3");
        assert_eq!(
            got.len(),
            (0..APPENDS).map(|s| log_line(w, s).len()).sum::<usize>()
        );
    }
    assert!(hwm < MAX_RSS_KIB, "peak RSS {hwm} kB");
    assert!(peak_fds < MAX_FDS, "peak {peak_fds} open fds");
}

#[test]
fn many_writers_default_mode() {
    many_writers(&[]);
}

#[test]
fn many_writers_write_back() {
    many_writers(&["--write-back"]);
}

/// Two processes append to one log through descriptors they keep open while four others
/// open it again and again and read it: no reader ever sees a byte that was not
/// appended (session 5 saw zeros: a reader's open dropped the kernel's pages while an
/// append was on its way, and the old last page came back zero-filled past the old end).
fn readers_reopening_during_appends(mode: &[&str]) {
    const APPENDERS: usize = 2;
    const READERS: usize = 4;
    const MAX_APPENDS: usize = 40_000;
    let limit = Duration::from_secs(8);
    let bucket = Bucket::new();
    let prefix = unique_prefix("reopen");
    let m = TestMount::new(&prefix, mode);
    let path = m.path("log");
    std::fs::File::create(&path).unwrap();
    let appended = AtomicU64::new(0);
    let running = AtomicU64::new(APPENDERS as u64);
    let reads = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..APPENDERS {
            let (path, appended, running) = (&path, &appended, &running);
            s.spawn(move || {
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                let mut seq = 0;
                while seq < MAX_APPENDS && started.elapsed() < limit {
                    f.write_all(log_line(w, seq).as_bytes()).unwrap();
                    seq += 1;
                }
                close_file(f).unwrap();
                appended.fetch_add(seq as u64, Ordering::SeqCst);
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        for _ in 0..READERS {
            let (path, running, reads) = (&path, &running, &reads);
            s.spawn(move || {
                // Mostly the end (from a little before what the last read saw), as
                // `tail -f` would; every 64th read the whole log.
                let mut seen = 0u64;
                let mut n = 0u64;
                while running.load(Ordering::SeqCst) > 0 {
                    let from = if n.is_multiple_of(64) {
                        0
                    } else {
                        seen.saturating_sub(4096)
                    };
                    let mut f = std::fs::File::open(path).unwrap();
                    f.seek(SeekFrom::Start(from)).unwrap();
                    let mut data = Vec::new();
                    f.read_to_end(&mut data).unwrap();
                    if let Some(at) = data.iter().position(|b| *b == 0) {
                        panic!("a zero byte at {} of {} read", from + at as u64, data.len());
                    }
                    if from == 0 {
                        check_interleaved_log(&data);
                    }
                    seen = from + data.len() as u64;
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    eprintln!(
        "reopening readers {mode:?}: {} appends, {} opens and reads",
        appended.load(Ordering::SeqCst),
        reads.load(Ordering::SeqCst)
    );
    assert!(reads.load(Ordering::SeqCst) > 0);
    m.unmount();
    let got = bucket.get(&format!("{prefix}log")).unwrap();
    assert_eq!(
        check_interleaved_log(&got),
        appended.load(Ordering::SeqCst) as usize,
        "every append in S3"
    );
}

/// Checks every complete line of a log several appenders share: each line whole, each
/// appender's lines in order. The lines checked.
fn check_interleaved_log(data: &[u8]) -> usize {
    let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |e| e + 1);
    let text = std::str::from_utf8(&data[..end]).expect("log is UTF-8");
    let mut next = std::collections::HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let w: usize = fields.next().unwrap().parse().expect(line);
        let seq = next.entry(w).or_insert(0);
        assert_eq!(format!("{line}\n"), log_line(w, *seq), "appender {w}");
        *seq += 1;
    }
    text.lines().count()
}

#[test]
fn readers_reopening_during_appends_default_mode() {
    readers_reopening_during_appends(&[]);
}

#[test]
fn readers_reopening_during_appends_write_back() {
    readers_reopening_during_appends(&["--write-back"]);
}
