//! The mount's lifecycle: local checks, daemonizing (fork before any thread exists),
//! the S3 preflight, mounting (the mount is live when `Session::new` returns), telling
//! the waiting parent (exit 0) or systemd (READY=1), then serving until unmounted or
//! signalled, and finishing every pending upload before the process exits.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use fuser::{MountOption, SessionACL};

use crate::config::MountConfig;
use crate::fs::S3Fs;
use crate::fuse::FuseAdapter;
use crate::store::s3::S3Store;
use crate::store::{ObjectStore, StoreError};

pub fn mount(cfg: MountConfig) -> ExitCode {
    init_logging(cfg.log_level.as_deref());
    if let Err(e) = local_checks(&cfg) {
        eprintln!("s3mount: {e}");
        return ExitCode::from(1);
    }
    if cfg.foreground {
        return serve(cfg, None);
    }
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!(
            "s3mount: cannot create a pipe: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    // SAFETY: both fds were just returned by pipe(2) and are owned by nobody else.
    let (mut reader, writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (the runtime and FUSE threads start in the
    // child), so the child may continue normally after fork.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("s3mount: cannot fork: {}", std::io::Error::last_os_error());
            ExitCode::from(1)
        }
        0 => {
            drop(reader);
            // SAFETY: setsid has no memory-safety preconditions; failure is harmless.
            unsafe { libc::setsid() };
            serve(cfg, Some(writer))
        }
        _child => {
            drop(writer);
            let mut answer = String::new();
            let _ = reader.read_to_string(&mut answer);
            if answer.starts_with("OK") {
                ExitCode::SUCCESS
            } else {
                let msg = answer.trim();
                if msg.is_empty() {
                    eprintln!("s3mount: the mount process ended before the mount was ready");
                } else {
                    eprintln!("s3mount: {msg}");
                }
                ExitCode::from(1)
            }
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filters = match level {
        Some(l) => format!("warn,fuser=error,s3mount={l}"),
        None => {
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,fuser=error,s3mount=info".into())
        }
    };
    let _ = env_logger::Builder::new()
        .parse_filters(&filters)
        .format_timestamp_millis()
        .try_init();
}

/// Checks that need no network: mount point, FUSE device, cache directory.
fn local_checks(cfg: &MountConfig) -> Result<(), String> {
    let mp = &cfg.mountpoint;
    match std::fs::metadata(mp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("mount point {} does not exist", mp.display()));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
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
    // SAFETY: the fd is valid for the lifetime of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
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

/// Large buffers (parts, read blocks) come and go all the time; a fixed mmap threshold
/// returns them to the system at once instead of letting glibc's adaptive threshold
/// keep them in per-thread arenas, which would let the resident size creep up.
fn limit_heap_growth() {
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Blocks the termination signals in this thread and every thread it starts; a
/// dedicated thread receives them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` was initialised by block_signals and `sig` is a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Runs the mount in this process; `ready` is the daemonizing parent's pipe.
fn serve(cfg: MountConfig, ready: Option<File>) -> ExitCode {
    let mut ready = ready;
    let fail = |ready: &mut Option<File>, msg: String| {
        match ready.take() {
            Some(mut pipe) => {
                let _ = writeln!(pipe, "{msg}");
            }
            None => eprintln!("s3mount: {msg}"),
        }
        log::error!("{msg}");
        ExitCode::from(1)
    };
    let _lock = match lock_cache_dir(&cfg.fs.cache_dir) {
        Ok(l) => l,
        Err(e) => return fail(&mut ready, e),
    };
    limit_heap_growth();
    let signals = block_signals();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3mount-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&mut ready, format!("cannot start the runtime: {e}")),
    };
    let store = Arc::new(runtime.block_on(S3Store::connect(&cfg.s3)));
    let preflight = runtime.block_on(async {
        store.check_bucket().await?;
        store
            .list_page(&cfg.fs.prefix, true, None, Some(1))
            .await
            .map(|_| ())
    });
    if let Err(e) = preflight {
        return fail(&mut ready, describe(&cfg, &e));
    }
    let fs = match S3Fs::new(store, cfg.fs.clone()) {
        Ok(fs) => Arc::new(fs),
        Err(e) => {
            let dir = cfg.fs.cache_dir.display();
            return fail(&mut ready, format!("cache directory {dir}: {e}"));
        }
    };
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
        return fail(
            &mut ready,
            format!(
                "{} file(s) saved before the last stop could not be uploaded yet; they stay in {} (mount again when S3 is reachable)",
                recovery.failed,
                cfg.fs.cache_dir.join("stage").display()
            ),
        );
    }
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
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
    let allow_other = cfg.allow_other || cfg.allow_root;
    // SAFETY: geteuid has no preconditions.
    let direct = if unsafe { libc::geteuid() } == 0 {
        match crate::mount::mount(&cfg.mountpoint, &fsname, cfg.fs.read_only, allow_other) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
            Err(e) => {
                let mp = cfg.mountpoint.display();
                return fail(&mut ready, format!("cannot mount on {mp}: {e}"));
            }
        }
    } else {
        None
    };
    let (session, mut unmounter) = match direct {
        Some((device, mount)) => {
            let acl = fuse_config.acl;
            match fuser::Session::from_fd(adapter, device, acl, fuse_config) {
                Ok(s) => (s, Unmounter::Direct(mount)),
                Err(e) => {
                    mount.detach();
                    let mp = cfg.mountpoint.display();
                    return fail(&mut ready, format!("cannot mount on {mp}: {e}"));
                }
            }
        }
        None => {
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
            fuse_config.mount_options = options;
            match fuser::Session::new(adapter, &cfg.mountpoint, &fuse_config) {
                Ok(mut s) => {
                    let unmounter = Unmounter::Fuser(s.unmount_callable());
                    (s, unmounter)
                }
                Err(e) => {
                    let mp = cfg.mountpoint.display();
                    return fail(&mut ready, format!("cannot mount on {mp}: {e}"));
                }
            }
        }
    };
    log::info!(
        "mounted s3://{}/{} on {} (cache {})",
        cfg.bucket,
        cfg.fs.prefix,
        cfg.mountpoint.display(),
        cfg.fs.cache_dir.display()
    );
    raise_kernel_readahead(&cfg.mountpoint);
    if let Some(mut pipe) = ready.take() {
        let _ = writeln!(pipe, "OK");
        detach_stdio();
    }
    notify_systemd("READY=1");

    let on_error = match &unmounter {
        Unmounter::Direct(m) => Some(m.clone()),
        Unmounter::Fuser(_) => None,
    };
    let signal_fs = fs.clone();
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("s3mount-signals".into())
        .spawn(move || {
            let sig = wait_signal(&signals);
            log::info!(
                "signal {sig}: finishing {} pending upload(s), then unmounting",
                signal_fs.dirty_count()
            );
            notify_systemd("STOPPING=1");
            handle.block_on(signal_fs.shutdown());
            if let Err(e) = unmounter.unmount() {
                log::error!("unmount failed: {e}");
            }
        })
        .expect("spawning the signal thread");
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
    let failed = runtime.block_on(fs.shutdown());
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

/// Kernel read-ahead on the mount, in KiB. FUSE offers only 128 KiB at init; a larger
/// window makes the kernel send 1 MiB reads, an eighth of the requests for the same data.
const KERNEL_READAHEAD_KB: u32 = 1024;

/// Raises the read-ahead of the mount's backing device (root only; best effort). The
/// device is found in mountinfo, since a stat of the mount point would need the
/// session that is not serving yet.
fn raise_kernel_readahead(mountpoint: &Path) {
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
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let fd = null.as_raw_fd();
    // SAFETY: fstat writes into a zeroed stat struct; dup2 targets the standard fds,
    // which stay valid; `null` outlives the calls.
    unsafe {
        libc::dup2(fd, 0);
        libc::dup2(fd, 1);
        let mut st: libc::stat = std::mem::zeroed();
        let keep = libc::fstat(2, &mut st) == 0
            && matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFSOCK);
        if !keep {
            libc::dup2(fd, 2);
        }
    }
}

/// Sends a state line to systemd when run as a `Type=notify` service.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().to_string();
    let result = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).and_then(
            |addr| {
                let sock = std::os::unix::net::UnixDatagram::unbound()?;
                sock.send_to_addr(state.as_bytes(), &addr)
            },
        )
    } else {
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|sock| sock.send_to(state.as_bytes(), &path))
    };
    if let Err(e) = result {
        log::warn!("could not notify systemd: {e}");
    }
}

/// Takes the mount away: our own mount(2), or fuser's (fusermount3).
enum Unmounter {
    Direct(crate::mount::DirectMount),
    Fuser(fuser::SessionUnmounter),
}

impl Unmounter {
    fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            Unmounter::Direct(m) => m.unmount(),
            Unmounter::Fuser(u) => u.unmount(),
        }
    }
}
