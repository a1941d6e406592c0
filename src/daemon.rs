//! The mount's lifecycle: local checks, daemonizing (fork before any thread exists),
//! the S3 preflight, mounting (the mount is live when `Session::new` returns), telling
//! the waiting parent (exit 0) or systemd (READY=1), then serving until unmounted or
//! signalled, and finishing every pending upload before the process exits.
//!
//! Invariants: the fork happens while the process has one thread; SIGTERM, SIGINT and
//! SIGHUP are blocked in every thread and taken only by the signal thread, which drains
//! pending uploads before it unmounts on SIGTERM/SIGINT and only reopens the log file on
//! SIGHUP; the daemonizing parent exits 0, and systemd hears READY=1, only once the mount
//! answers a stat; one process at a time holds a cache directory (its `lock` file), for the
//! whole life of the mount.

use std::fs::{File, OpenOptions};
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use fuser::{MountOption, Session, SessionACL};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::{SFlag, fstat};
use nix::unistd::{ForkResult, dup2_stderr, dup2_stdin, dup2_stdout, fork, geteuid, setsid};
use sd_notify::NotifyState;
use tokio::runtime::{Handle, Runtime};

use crate::config::MountConfig;
use crate::fs::S3Fs;
use crate::fs::Trash;
use crate::fuse::FuseAdapter;
use crate::logging;
use crate::store::s3::S3Store;
use crate::store::{ObjectStore, StoreError};
use crate::sysmount::{self, DirectMount};
use crate::systemd;
use crate::trash::{TrashTarget, check_trash_destination};

/// The file system as this daemon serves it: on S3.
type Fs = S3Fs<S3Store>;

/// Mounts and serves `cfg` until unmounted or signalled, in this process (foreground) or
/// in a forked child while this process waits for the mount to be live. Must be called
/// while the process has a single thread (as `main` does): it may fork.
pub fn mount(cfg: MountConfig) -> ExitCode {
    if let Err(e) = logging::init(cfg.log_level.as_deref(), cfg.log_file.as_deref()) {
        eprintln!("s3mount: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = local_checks(&cfg) {
        eprintln!("s3mount: {e}");
        return ExitCode::from(1);
    }
    if cfg.foreground {
        return serve(cfg, Parent(None));
    }
    let (reader, writer) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(e) => {
            eprintln!("s3mount: cannot create a pipe: {e}");
            return ExitCode::from(1);
        }
    };
    // SAFETY: fork(2) is unsafe because the child of a multi-threaded process may only
    // call async-signal-safe functions (another thread may have held a lock, e.g. the
    // allocator's, at the fork). This process has a single thread here: nothing before
    // this point starts one (argument parsing, logging setup and the local checks run on
    // the main thread), and the tokio runtime, the FUSE threads and the signal thread
    // are all started later by `serve`, in the child. So the child is an ordinary
    // single-threaded copy and may continue normally.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("s3mount: cannot fork: {}", std::io::Error::from(e));
            ExitCode::from(1)
        }
        Ok(ForkResult::Child) => {
            drop(reader);
            // Leaves the caller's session and terminal; failing (already a session
            // leader) is harmless.
            let _ = setsid();
            serve(cfg, Parent(Some(writer)))
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(writer);
            wait_for_child(reader)
        }
    }
}

/// The daemonizing parent: exits 0 once the child wrote "OK", 1 with its message otherwise.
fn wait_for_child(mut reader: PipeReader) -> ExitCode {
    let mut answer = String::new();
    let _ = reader.read_to_string(&mut answer);
    if answer.starts_with("OK") {
        return ExitCode::SUCCESS;
    }
    let msg = answer.trim();
    if msg.is_empty() {
        eprintln!("s3mount: the mount process ended before the mount was ready");
    } else {
        eprintln!("s3mount: {msg}");
    }
    ExitCode::from(1)
}

/// The pipe to the waiting parent (None in the foreground): told "OK" once the mount is
/// live, or the reason it failed.
struct Parent(Option<PipeWriter>);

impl Parent {
    /// Reports a failure before the mount was live (to the parent, or on stderr).
    fn fail(&mut self, msg: String) -> ExitCode {
        match self.0.take() {
            Some(mut pipe) => {
                let _ = writeln!(pipe, "{msg}");
            }
            None => eprintln!("s3mount: {msg}"),
        }
        log::error!("{msg}");
        ExitCode::from(1)
    }

    /// The mount is live: the parent may exit 0, and this process leaves its terminal.
    fn ready(&mut self) {
        if let Some(mut pipe) = self.0.take() {
            let _ = writeln!(pipe, "OK");
            detach_stdio();
        }
    }
}

/// Checks that need no network: mount point, FUSE device, cache directory.
fn local_checks(cfg: &MountConfig) -> Result<(), String> {
    let mp = &cfg.mountpoint;
    match std::fs::metadata(mp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("mount point {} does not exist", mp.display()));
        }
        Err(e) if e.raw_os_error() == Some(Errno::ENOTCONN as i32) => {
            return Err(format!(
                "mount point {} is a dead mount; run fusermount3 -u {} first",
                mp.display(),
                mp.display()
            ));
        }
        Err(e) => return Err(format!("mount point {}: {e}", mp.display())),
        Ok(m) if !m.is_dir() => {
            return Err(format!("mount point {} is not a directory", mp.display()));
        }
        Ok(_) => {}
    }
    if !cfg.nonempty {
        let mut entries =
            std::fs::read_dir(mp).map_err(|e| format!("mount point {}: {e}", mp.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "mount point {} is not empty (use --nonempty to mount over it)",
                mp.display()
            ));
        }
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Err(format!("FUSE is unavailable: /dev/fuse: {e}"));
    }
    let cache = &cfg.fs.cache_dir;
    std::fs::create_dir_all(cache)
        .map_err(|e| format!("cache directory {}: {e}", cache.display()))?;
    Ok(())
}

/// Holds the cache directory for this process: two mounts must not share one.
fn lock_cache_dir(dir: &Path) -> Result<File, String> {
    let path = dir.join("lock");
    let file =
        File::create(&path).map_err(|e| format!("cache directory {}: {e}", dir.display()))?;
    if file.try_lock().is_err() {
        return Err(format!(
            "cache directory {} is in use by another s3mount (give each mount its own --cache-dir)",
            dir.display()
        ));
    }
    Ok(file)
}

fn describe(cfg: &MountConfig, err: &StoreError) -> String {
    let endpoint = cfg
        .s3
        .endpoint_url
        .clone()
        .unwrap_or_else(|| "the AWS S3 endpoint".into());
    match err {
        StoreError::NoSuchBucket => format!("no such bucket: {}", cfg.bucket),
        StoreError::AccessDenied(m) => {
            format!(
                "access denied to bucket {} (check the credentials): {m}",
                cfg.bucket
            )
        }
        StoreError::Unreachable(m) => format!("endpoint unreachable: {endpoint} ({m})"),
        other => format!("bucket {} at {endpoint}: {other}", cfg.bucket),
    }
}

/// Stage files keep at most 256 descriptors open (`stage/fds.rs`), whatever the backlog;
/// the soft limit is still raised to the hard one, as servers do, for the connections and
/// the operations running at once.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::warn!("could not raise the open file limit from {soft} to {hard}: {e}");
    }
}

/// Large buffers (parts, read blocks) come and go all the time; a fixed mmap threshold
/// returns them to the system at once instead of letting glibc's adaptive threshold
/// keep them in per-thread arenas, which would let the resident size creep up.
fn limit_heap_growth() {
    // SAFETY: mallopt only changes allocator tuning parameters; no crate wraps it.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Blocks the termination signals in this thread and every thread it starts afterwards;
/// the signal thread receives them with sigwait.
fn block_signals() -> SigSet {
    let set: SigSet = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]
        .into_iter()
        .collect();
    if let Err(e) = set.thread_block() {
        log::warn!("could not block the termination signals: {e}");
    }
    set
}

/// Runs the mount in this process; `parent` is the daemonizing parent's pipe.
fn serve(cfg: MountConfig, mut parent: Parent) -> ExitCode {
    let _lock = match lock_cache_dir(&cfg.fs.cache_dir) {
        Ok(l) => l,
        Err(e) => return parent.fail(e),
    };
    limit_heap_growth();
    raise_fd_limit();
    let signals = block_signals();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3mount-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => return parent.fail(format!("cannot start the runtime: {e}")),
    };
    let fs = match open_fs(&cfg, &runtime) {
        Ok(fs) => fs,
        Err(e) => return parent.fail(e),
    };
    let counters = fs.store().request_counters();
    if let Err(e) = crate::metrics::start(cfg.metrics_addr, counters, &fs, runtime.handle()) {
        return parent.fail(e);
    }
    if let Err(e) = recover(&cfg, &runtime, &fs) {
        return parent.fail(e);
    }
    let (session, unmounter) = match mount_fuse(&cfg, &fs, runtime.handle()) {
        Ok(mounted) => mounted,
        Err(e) => return parent.fail(e),
    };
    log::info!(
        "mounted s3://{}/{} on {} (cache {})",
        cfg.bucket,
        cfg.fs.prefix,
        cfg.mountpoint.display(),
        cfg.fs.cache_dir.display()
    );
    raise_kernel_readahead(&cfg.mountpoint);
    announce_when_live(cfg.mountpoint.clone(), parent);

    let on_error = unmounter.direct();
    spawn_signal_thread(signals, fs.clone(), runtime.handle().clone(), unmounter);
    {
        let _in_runtime = runtime.enter();
        fs.start_background();
    }
    if let Err(e) = session.run() {
        log::error!("FUSE session ended with an error: {e}");
        if let Some(mount) = &on_error {
            mount.detach();
        }
    }
    let pending = fs.dirty_count();
    if pending > 0 {
        log::info!("unmounted; finishing {pending} pending upload(s)");
    }
    systemd::notify(&[NotifyState::Stopping]);
    let failed = runtime.block_on(drain(&fs));
    if failed > 0 {
        log::error!(
            "{failed} file(s) could not be uploaded; their data stays in {}",
            cfg.fs.cache_dir.join("stage").display()
        );
        return ExitCode::from(1);
    }
    log::info!("unmounted {}", cfg.mountpoint.display());
    ExitCode::SUCCESS
}

/// Connects to S3, checks that the bucket and prefix can be listed, and opens the file
/// system on the cache directory.
fn open_fs(cfg: &MountConfig, runtime: &Runtime) -> Result<Arc<Fs>, String> {
    let store = Arc::new(runtime.block_on(S3Store::connect(&cfg.s3)));
    let preflight = runtime.block_on(async {
        store.check_bucket().await?;
        store
            .list_page(&cfg.fs.prefix, true, None, Some(1))
            .await
            .map(|_| ())
    });
    if let Err(e) = preflight {
        return Err(describe(cfg, &e));
    }
    let trash = match &cfg.trash {
        Some(target) => Some(runtime.block_on(open_trash(cfg, target, &store))?),
        None => None,
    };
    match S3Fs::new(store, cfg.fs.clone()) {
        Ok(fs) => Ok(Arc::new(match trash {
            Some(trash) => fs.with_trash(trash),
            None => fs,
        })),
        Err(e) => Err(format!(
            "cache directory {}: {e}",
            cfg.fs.cache_dir.display()
        )),
    }
}

/// The trash of `--trash`, checked (the bucket exists, the prefix is writable): in the
/// mount's bucket through `store`, or through a store of its own bucket.
async fn open_trash(
    cfg: &MountConfig,
    target: &TrashTarget,
    store: &Arc<S3Store>,
) -> Result<Trash<S3Store>, String> {
    let trash_store = match target.other_bucket {
        true => Arc::new(S3Store::connect(&target.store_settings(&cfg.s3)).await),
        false => store.clone(),
    };
    check_trash_destination(&*trash_store, target).await?;
    log::info!("deleted files are kept in {}", target.url());
    let source_bucket = target.other_bucket.then(|| cfg.bucket.clone());
    let limits = cfg.fs.upload_limits();
    Ok(Trash::new(
        trash_store,
        source_bucket,
        &target.prefix,
        limits,
    ))
}

/// Uploads what the last run left committed in the cache directory; refuses to serve
/// while some of it could not be uploaded.
fn recover(cfg: &MountConfig, runtime: &Runtime, fs: &Fs) -> Result<(), String> {
    let recovery = runtime.block_on(fs.recover());
    if recovery != Default::default() {
        log::info!(
            "recovery: {} file(s) ({} bytes) uploaded from the cache dir, {} unfinished file(s) moved to {}, {} stale multipart upload(s) aborted",
            recovery.uploaded,
            recovery.bytes,
            recovery.orphaned,
            cfg.fs.cache_dir.join("orphaned").display(),
            recovery.aborted
        );
    }
    if recovery.failed > 0 {
        return Err(format!(
            "{} file(s) saved before the last stop could not be uploaded yet; they stay in {} (mount again when S3 is reachable)",
            recovery.failed,
            cfg.fs.cache_dir.join("stage").display()
        ));
    }
    Ok(())
}

/// Mounts the file system: with mount(2) as root (type `fuse.s3mount`), through fuser
/// (fusermount3) otherwise or when mount(2) is not permitted.
fn mount_fuse(
    cfg: &MountConfig,
    fs: &Arc<Fs>,
    handle: &Handle,
) -> Result<(Session<FuseAdapter<S3Store>>, Unmounter), String> {
    let cannot = |e: std::io::Error| format!("cannot mount on {}: {e}", cfg.mountpoint.display());
    let fsname = format!("s3mount:{}/{}", cfg.bucket, cfg.fs.prefix);
    let mut fuse_config = fuser::Config::default();
    fuse_config.acl = if cfg.allow_other {
        SessionACL::All
    } else if cfg.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(2);
    fuse_config.clone_fd = true;
    let adapter = FuseAdapter::new(fs.clone(), handle.clone());
    let allow_other = cfg.allow_other || cfg.allow_root;
    let direct = if geteuid().is_root() {
        match sysmount::mount(
            &cfg.mountpoint,
            &fsname,
            cfg.fs.read_only,
            allow_other,
            cfg.noexec,
        ) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
            Err(e) => return Err(cannot(e)),
        }
    } else {
        None
    };
    if let Some((device, mount)) = direct {
        let acl = fuse_config.acl;
        return match Session::from_fd(adapter, device, acl, fuse_config) {
            Ok(s) => Ok((s, Unmounter::Direct(mount))),
            Err(e) => {
                mount.detach();
                Err(cannot(e))
            }
        };
    }
    let mut options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("s3mount".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if cfg.fs.read_only {
        options.push(MountOption::RO);
    }
    if cfg.noexec {
        options.push(MountOption::NoExec);
    }
    fuse_config.mount_options = options;
    let mut session = Session::new(adapter, &cfg.mountpoint, &fuse_config).map_err(cannot)?;
    let unmounter = Unmounter::Fuser(session.unmount_callable());
    Ok((session, unmounter))
}

/// Tells the waiting parent (exit 0) and systemd (READY=1) that the mount is live, once
/// it answers: a stat of the mount point returns only after the FUSE session has
/// answered the kernel's INIT and the root's GETATTR. A mount point that shows the
/// directory below it (the session failed and the mount was taken away) is a failure.
fn announce_when_live(mountpoint: PathBuf, mut parent: Parent) {
    std::thread::Builder::new()
        .name("s3mount-ready".into())
        .spawn(move || {
            let mounted = std::fs::metadata(&mountpoint);
            let below = std::fs::metadata(mountpoint.join(".."));
            match (mounted, below) {
                (Ok(m), Ok(b)) if m.dev() != b.dev() => {
                    parent.ready();
                    systemd::notify(&[NotifyState::Ready]);
                }
                (Err(e), _) | (_, Err(e)) => {
                    parent.fail(format!(
                        "the mount on {} does not answer: {e}",
                        mountpoint.display()
                    ));
                }
                _ => {
                    parent.fail(format!(
                        "the mount on {} went away before it was ready",
                        mountpoint.display()
                    ));
                }
            }
        })
        .expect("spawning the readiness thread");
}

/// The thread that takes the signals: SIGHUP reopens the log file (the mount stays);
/// SIGTERM or SIGINT finish every pending upload and unmount (which ends the FUSE
/// session in the main thread).
fn spawn_signal_thread(signals: SigSet, fs: Arc<Fs>, handle: Handle, mut unmounter: Unmounter) {
    std::thread::Builder::new()
        .name("s3mount-signals".into())
        .spawn(move || {
            let sig = loop {
                match signals.wait() {
                    Ok(Signal::SIGHUP) => match logging::reopen() {
                        Some(Ok(())) => log::info!("SIGHUP: log file reopened"),
                        Some(Err(e)) => log::error!("SIGHUP: cannot reopen the log file: {e}"),
                        None => log::info!("SIGHUP: no --log-file to reopen; the mount stays"),
                    },
                    other => break other.map_or(0, |s| s as i32),
                }
            };
            log::info!(
                "signal {sig}: finishing {} pending upload(s), then unmounting",
                fs.dirty_count()
            );
            systemd::notify(&[NotifyState::Stopping]);
            handle.block_on(drain(&fs));
            if let Err(e) = unmounter.unmount() {
                log::error!("unmount failed: {e}");
            }
        })
        .expect("spawning the signal thread");
}

/// Finishes every pending upload while reporting the progress to systemd and the log;
/// returns the number of files that could not be uploaded (they stay staged).
async fn drain(fs: &Fs) -> usize {
    tokio::select! {
        failed = fs.shutdown() => failed,
        never = systemd::report_drain(|| {
            let pending = fs.pending_totals();
            (pending.files as usize, pending.bytes)
        }) => match never {},
    }
}

/// Kernel read-ahead on the mount, in KiB. FUSE offers only 128 KiB at init; a larger
/// window makes the kernel send 1 MiB reads, an eighth of the requests for the same data.
const KERNEL_READAHEAD_KB: u32 = 1024;

/// Raises the read-ahead of the mount's backing device (root only; best effort). The
/// device is found in mountinfo, since a stat of the mount point would need the
/// session that is not serving yet.
pub fn raise_kernel_readahead(mountpoint: &Path) {
    let Ok(mp) = std::fs::canonicalize(mountpoint) else {
        return;
    };
    let escaped = mp
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let device = info
        .lines()
        .rev()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == escaped)
        .map(|f| f[2].to_string());
    if let Some(device) = device {
        let path = format!("/sys/class/bdi/{device}/read_ahead_kb");
        if let Err(e) = std::fs::write(&path, KERNEL_READAHEAD_KB.to_string()) {
            log::debug!("could not raise the kernel read-ahead ({path}): {e}");
        }
    }
}

/// After the parent has exited, keep stderr only where it is a file or a socket
/// (journald); a pipe or terminal would block or break once its reader is gone.
fn detach_stdio() {
    let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") else {
        return;
    };
    let _ = dup2_stdin(&null);
    let _ = dup2_stdout(&null);
    let keep = fstat(std::io::stderr()).is_ok_and(|st| {
        let kind = st.st_mode & SFlag::S_IFMT.bits();
        kind == SFlag::S_IFREG.bits() || kind == SFlag::S_IFSOCK.bits()
    });
    if !keep {
        let _ = dup2_stderr(&null);
    }
}

/// Takes the mount away: our own mount(2), or fuser's (fusermount3).
enum Unmounter {
    Direct(DirectMount),
    Fuser(fuser::SessionUnmounter),
}

impl Unmounter {
    fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            Unmounter::Direct(m) => m.unmount(),
            Unmounter::Fuser(u) => u.unmount(),
        }
    }

    /// Our own mount, which a failed session must detach (fuser cleans up its own).
    fn direct(&self) -> Option<DirectMount> {
        match self {
            Unmounter::Direct(m) => Some(m.clone()),
            Unmounter::Fuser(_) => None,
        }
    }
}
