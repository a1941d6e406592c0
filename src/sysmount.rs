//! mount(2) and umount2(2) for s3mount's own mounts (not to be confused with
//! [`crate::daemon::mount`], the whole mount lifecycle).
//!
//! Root mounts with mount(2) itself, so that the mount has the type `fuse.s3mount`
//! (fuser's own mount always says `fuse`): mount(8) then knows it is ours, fstab entries
//! of type `fuse.s3mount` match it, and `mount -o remount,ro` reaches [`remount`] instead
//! of a helper that cannot handle it. Others mount through fuser (fusermount3).
//! Invariants: every mount made here is `nosuid,nodev,default_permissions`; a remount
//! keeps `nosuid,nodev` (and `noexec` if the mount has it) and only switches read-only
//! on or off.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::SFlag;
use nix::unistd::{getgid, getuid};

pub const FS_TYPE: &str = "fuse.s3mount";

/// A mount made by [`mount`]; [`DirectMount::unmount`] takes it away.
#[derive(Clone, Debug)]
pub struct DirectMount {
    mountpoint: PathBuf,
}

/// Opens /dev/fuse and mounts it on `mountpoint` (nosuid, nodev, default_permissions).
/// Returns the device for the FUSE session. Fails with PermissionDenied when the caller
/// may not mount (then fusermount3 must do it).
pub fn mount(
    mountpoint: &Path,
    fsname: &str,
    read_only: bool,
    allow_other: bool,
    noexec: bool,
) -> io::Result<(OwnedFd, DirectMount)> {
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & SFlag::S_IFMT.bits();
    let fd = device.as_raw_fd();
    let (uid, gid) = (getuid(), getgid());
    let mut data =
        format!("fd={fd},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions");
    if allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    let source = fsname.replace('\0', "");
    nix::mount::mount(
        Some(source.as_str()),
        mountpoint,
        Some(FS_TYPE),
        flags,
        Some(data.as_str()),
    )?;
    Ok((
        OwnedFd::from(device),
        DirectMount {
            mountpoint: mountpoint.to_path_buf(),
        },
    ))
}

impl DirectMount {
    pub fn unmount(&self) -> io::Result<()> {
        nix::mount::umount2(&self.mountpoint, MntFlags::empty()).map_err(io::Error::from)
    }

    /// The last resort when serving ended with an error: detach the mount so that it does
    /// not stay behind as "transport endpoint is not connected".
    pub fn detach(&self) {
        let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
    }
}

/// How long a read-only remount waits for files still open for writing to be closed.
const REMOUNT_PATIENCE: Duration = Duration::from_secs(5);

/// `mount -o remount,ro|rw`: switches a live mount between read-only and read-write
/// (the kernel then refuses writes with EROFS itself). The kernel refuses a read-only
/// remount (EBUSY) while a file is open for writing; closes that are on their way are
/// waited for a few seconds.
pub fn remount(mountpoint: &Path, read_only: bool) -> io::Result<()> {
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let noexec = nix::sys::statvfs::statvfs(mountpoint)
        .is_ok_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC));
    if noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    let started = Instant::now();
    loop {
        let result = nix::mount::mount(None::<&str>, mountpoint, None::<&str>, flags, None::<&str>);
        match result {
            Err(Errno::EBUSY) if started.elapsed() < REMOUNT_PATIENCE => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other.map_err(io::Error::from),
        }
    }
}
