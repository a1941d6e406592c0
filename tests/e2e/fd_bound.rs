//! The daemon's open descriptors stay bounded however many write-back files wait for their
//! upload: against the in-memory store, many more stage files than the bound of open ones
//! (`OPEN_STAGE_FILES`), written and queued while every upload fails, some reopened,
//! truncated, renamed and deleted while queued; and through a real mount against Garage,
//! 2,000 write-back files closed while the proxy holds every upload. Every object is
//! byte-exact in S3 once uploads go through again.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use s3mount::fs::{Caller, OpenMode, ROOT, S3Fs, SetAttr};
use s3mount::stage::OPEN_STAGE_FILES;
use s3mount::store::StoreError;
use s3mount::store::memory::{MemoryStore, Op};

use crate::common::{
    Bucket, Fault, MIB, Proxy, TestMount, close_file, core_config, eventually, random_bytes,
    staged_data_files, unique_prefix,
};

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

/// Descriptors of process `pid` open on stage files in `cache` (not the journal).
fn open_stage_files(pid: &str, cache: &Path) -> usize {
    let stage = cache.join("stage");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.starts_with(&stage))
        .filter(|t| {
            let name = t.file_name().unwrap_or_default().to_string_lossy();
            !name.starts_with("journal-")
        })
        .count()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The content of file `i`: 1 byte to ~64 KiB, and every 50th one past 2 MiB (written
/// front to back, so it also takes the O_DIRECT path where the disk has one).
fn content(i: usize) -> Vec<u8> {
    let len = match i % 50 {
        0 => 2 * MIB + 3 * 4096 + i,
        _ => 1 + (i * 7919) % (64 * 1024),
    };
    random_bytes(len, i as u64)
}

async fn write_all(fs: &S3Fs<MemoryStore>, fh: u64, data: &[u8]) {
    for (n, chunk) in data.chunks(MIB).enumerate() {
        fs.write(fh, (n * MIB) as u64, chunk).await.unwrap();
    }
}

#[tokio::test]
async fn a_write_back_backlog_keeps_at_most_the_bound_of_stage_files_open() {
    const HELD_OPEN: usize = OPEN_STAGE_FILES + 100;
    const FILES: usize = 2 * OPEN_STAGE_FILES + 150;
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = core_config("", cache.path());
    cfg.write_back = true;
    let fs = Arc::new(S3Fs::new(store.clone(), cfg).unwrap());
    fs.start_background();
    let outage = || StoreError::Transient("S3 is away".into());
    store.fail_next(Op::Put, u32::MAX, outage());
    let count = || open_stage_files("self", cache.path());
    let mut peak = 0;

    // More files open for writing at once than the bound: the least recently used are
    // closed and opened again by the next write, which lands where it belongs.
    let mut open = Vec::new();
    for i in 0..HELD_OPEN {
        let (attr, fh) = fs
            .create(ROOT, OsStr::new(&format!("f{i:04}")), 0o644, ME)
            .await
            .unwrap();
        let data = content(i);
        let half = data.len() / 2;
        write_all(&fs, fh, &data[..half]).await;
        open.push((attr.ino, fh, half));
        peak = peak.max(count());
    }
    for (i, (_, fh, half)) in open.iter().enumerate() {
        fs.write(*fh, *half as u64, &content(i)[*half..])
            .await
            .unwrap();
        peak = peak.max(count());
    }
    for (_, fh, _) in &open {
        fs.flush(*fh).await.unwrap();
        fs.release(*fh).await.unwrap();
    }
    // The rest written and closed one by one, as the queue grows.
    for i in HELD_OPEN..FILES {
        let (_, fh) = fs
            .create(ROOT, OsStr::new(&format!("f{i:04}")), 0o644, ME)
            .await
            .unwrap();
        write_all(&fs, fh, &content(i)).await;
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
        peak = peak.max(count());
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the queue tries and fails
    assert_eq!(store.object("f0001"), None, "uploads are failing");
    assert_eq!(fs.dirty_count(), FILES, "every file waits for its upload");
    assert!(
        staged_data_files(cache.path()).len() >= FILES - 5,
        "the queued files are in the cache dir"
    );
    assert!(
        peak <= OPEN_STAGE_FILES,
        "{peak} stage files were open at once; the bound is {OPEN_STAGE_FILES}"
    );
    let idle = count();
    eprintln!(
        "{FILES} queued write-back files ({HELD_OPEN} open at once): peak {peak} stage files \
         open, {idle} once all were closed"
    );
    assert!(
        idle <= 16,
        "{idle} stage files open while nobody has a file open"
    );

    // Queued files are read, truncated and deleted: each opens its stage file again.
    let mut expected: Vec<Option<(String, Vec<u8>)>> = (0..FILES)
        .map(|i| Some((format!("f{i:04}"), content(i))))
        .collect();
    let read_back = fs.lookup(ROOT, OsStr::new("f0003")).await.unwrap();
    let mode = OpenMode {
        write: false,
        truncate: false,
        exec: false,
    };
    let (fh, _) = fs.open(read_back.ino, mode).await.unwrap();
    let got = fs.read(fh, 0, 128 * 1024).await.unwrap();
    assert_eq!(&got[..], &content(3)[..], "a queued file reads back whole");
    fs.release(fh).await.unwrap();
    let cut = fs.lookup(ROOT, OsStr::new("f0010")).await.unwrap();
    let change = SetAttr {
        size: Some(100),
        ..SetAttr::default()
    };
    fs.setattr(cut.ino, change).await.unwrap();
    expected[10].as_mut().unwrap().1.truncate(100);
    fs.unlink(ROOT, OsStr::new("f0030")).await.unwrap();
    expected[30] = None;
    assert!(count() <= 16, "{} stage files open after that", count());

    // S3 is back: every queued file is uploaded byte-exact and its stage file goes. A
    // rename (which needs S3) of a file the queue has not reached yet moves its upload.
    store.fail_next(Op::Put, 0, outage());
    fs.rename(ROOT, OsStr::new("f0620"), ROOT, OsStr::new("moved"), false)
        .await
        .unwrap();
    expected[620].as_mut().unwrap().0 = "moved".into();
    let uploaded = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs.dirty_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fs.dirty_count() == 0
    };
    assert!(uploaded.await, "{} files still queued", fs.dirty_count());
    for (i, want) in expected.iter().enumerate() {
        let name = format!("f{i:04}");
        match want {
            Some((key, data)) => {
                let got = store.object(key);
                let got = got.unwrap_or_else(|| panic!("{key} missing"));
                assert!(got == data[..], "{key} differs in S3");
            }
            None => assert_eq!(store.object(&name), None, "{name} was deleted"),
        }
    }
    assert_eq!(store.object("f0620"), None, "renamed away");
    let settled = async {
        for _ in 0..200 {
            if count() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(settled.await, "{} stage files still open", count());
}

/// 2,000 write-back files written through a real mount while the proxy holds every
/// connection to Garage: each close returns, the uploads wait, and the daemon's
/// descriptors stay far below the number of queued files; released, every object
/// reaches S3 byte-exact.
#[test]
fn a_held_write_back_backlog_keeps_the_daemons_descriptors_bounded() {
    const WRITERS: usize = 16;
    const FILES: usize = 2000;
    /// The bound of open stage files, plus sockets, the FUSE channel, logs and the journal.
    const MAX_FDS: usize = OPEN_STAGE_FILES + 150;
    let bucket = Bucket::new();
    let prefix = unique_prefix("fdbound");
    let proxy = Proxy::start(&bucket.env.endpoint);
    let cache_root = tempfile::tempdir().unwrap();
    let cache = cache_root.path().join("cache");
    // A long metadata TTL and a complete listing of the (empty) folder let a create know
    // without asking S3 that its name is free: the hold then stops only uploads.
    let opts = ["--write-back", "--metadata-ttl", "600"];
    let m = TestMount::with_cache(&prefix, &cache, &opts, Some(&proxy.url()));
    let pid = daemon_pid(&cache);
    let file = |i: usize| random_bytes(1 + (i * 7919) % (32 * 1024), i as u64);
    assert_eq!(std::fs::read_dir(m.mountpoint()).unwrap().count(), 0);
    proxy.set_fault(Fault::Hold, 100);

    let stop = AtomicBool::new(false);
    let (peak, peak_stage) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(open_fds(pid) as u64, Ordering::SeqCst);
                let stage = open_stage_files(&pid.to_string(), &cache);
                peak_stage.fetch_max(stage as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let root = m.mountpoint().to_path_buf();
                s.spawn(move || {
                    for i in (w..FILES).step_by(WRITERS) {
                        let path = root.join(format!("f{i:05}"));
                        let mut f = std::fs::File::create(&path).unwrap();
                        f.write_all(&file(i)).unwrap();
                        close_file(f).unwrap_or_else(|e| panic!("close of {i}: {e}"));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::SeqCst);
    });
    let written = started.elapsed();
    let queued = staged_data_files(&cache).len();
    let (peak, peak_stage) = (peak.into_inner(), peak_stage.into_inner());
    let idle_stage = open_stage_files(&pid.to_string(), &cache);
    eprintln!(
        "{FILES} write-back files closed in {:.1} s with uploads held: {queued} queued, \
         peak {peak} open fds ({peak_stage} on stage files); now {} ({idle_stage} on \
         stage files): {}",
        written.as_secs_f64(),
        open_fds(pid),
        fd_kinds(pid)
    );
    assert!(
        idle_stage <= 16,
        "{idle_stage} stage files open while the queue waits and nobody has a file open"
    );
    assert!(
        queued > FILES / 2,
        "only {queued} files waited: was S3 held?"
    );
    assert!(
        peak_stage <= OPEN_STAGE_FILES as u64,
        "{peak_stage} stage files open at once"
    );
    assert!(peak <= MAX_FDS as u64, "the daemon had {peak} fds open");

    proxy.set_fault(Fault::None, 100);
    assert!(
        eventually(Duration::from_secs(90), || staged_data_files(&cache)
            .is_empty()),
        "{} files still staged",
        staged_data_files(&cache).len()
    );
    eprintln!("uploaded after {:.1} s", started.elapsed().as_secs_f64());
    for i in 0..FILES {
        let key = format!("{prefix}f{i:05}");
        let got = bucket.get(&key).unwrap_or_else(|| panic!("{key} missing"));
        assert!(got == file(i), "{key} differs in S3");
    }
    drop(m);
}

/// What the descriptors of `pid` are open on, counted by kind, for messages.
fn fd_kinds(pid: u32) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let kind = match target.split_once(':') {
            Some((kind, _)) => kind.to_string(),
            None if target.contains("/stage/journal-") => "journal".into(),
            None if target.contains("/stage/") => "stage file".into(),
            None => target.rsplit('/').next().unwrap_or("").to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The daemon that holds the lock of cache dir `cache` (it has the dir's lock file open).
fn daemon_pid(cache: &Path) -> u32 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "s3mount" {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .any(|t| t.starts_with(cache));
        if holds {
            return pid;
        }
    }
    panic!("no daemon has {} open", cache.display());
}

/// A queued file whose stage file cannot be opened again when its upload comes (here: the
/// stage folder moved away) fails that upload and keeps everything; once the file can be
/// opened, the next try uploads it whole.
#[tokio::test]
async fn an_upload_that_cannot_reopen_its_stage_file_fails_and_keeps_the_data() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = core_config("", cache.path());
    cfg.write_back = true;
    let fs = S3Fs::new(store.clone(), cfg).unwrap(); // no background: uploads run here
    let data = content(7);
    let (attr, fh) = fs
        .create(ROOT, OsStr::new("kept"), 0o644, ME)
        .await
        .unwrap();
    write_all(&fs, fh, &data).await;
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        open_stage_files("self", cache.path()),
        0,
        "a queued file nobody has open keeps no descriptor"
    );

    let (stage, away) = (cache.path().join("stage"), cache.path().join("away"));
    std::fs::rename(&stage, &away).unwrap();
    let err = fs.sync(attr.ino).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert_eq!(store.object("kept"), None);
    assert_eq!(fs.dirty_count(), 1, "still queued");
    std::fs::rename(&away, &stage).unwrap();
    assert_eq!(staged_data_files(cache.path()).len(), 1, "the data stayed");

    fs.sync(attr.ino).await.unwrap();
    assert!(store.object("kept").unwrap() == data[..], "uploaded whole");
    assert_eq!(fs.dirty_count(), 0);
}
