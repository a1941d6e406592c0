//! Mounting with mount(2) ourselves when we may (root), so that the mount has the type
//! `fuse.s3mount` (fuser's own mount always says `fuse`): mount(8) then knows it is ours,
//! fstab entries of type `fuse.s3mount` match it, and `mount -o remount,ro` reaches
//! [`remount`] instead of a helper that cannot handle it. Others mount through fuser
//! (fusermount3).

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const FS_TYPE: &str = "fuse.s3mount";

/// A mount made by [`mount`]; [`DirectMount::unmount`] takes it away.
#[derive(Clone, Debug)]
pub struct DirectMount {
    mountpoint: PathBuf,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens /dev/fuse and mounts it on `mountpoint` (nosuid, nodev, default_permissions).
/// Returns the device for the FUSE session. Fails with PermissionDenied when the caller
/// may not mount (then fusermount3 must do it).
pub fn mount(
    mountpoint: &Path,
    fsname: &str,
    read_only: bool,
    allow_other: bool,
) -> io::Result<(OwnedFd, DirectMount)> {
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&device);
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data =
        format!("fd={fd},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions");
    if allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let source = CString::new(fsname.replace('\0', ""))?;
    let target = c_path(mountpoint)?;
    let fstype = CString::new(FS_TYPE).expect("no NUL");
    let data = CString::new(data).expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok((
        OwnedFd::from(device),
        DirectMount {
            mountpoint: mountpoint.to_path_buf(),
        },
    ))
}

impl DirectMount {
    pub fn unmount(&self) -> io::Result<()> {
        let target = c_path(&self.mountpoint)?;
        // SAFETY: target is a valid NUL-terminated path.
        check(unsafe { libc::umount2(target.as_ptr(), 0) })
    }

    /// The last resort when serving ended with an error: detach the mount so that it does
    /// not stay behind as "transport endpoint is not connected".
    pub fn detach(&self) {
        if let Ok(target) = c_path(&self.mountpoint) {
            // SAFETY: target is a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// How long a read-only remount waits for files still open for writing to be closed.
const REMOUNT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// `mount -o remount,ro|rw`: switches a live mount between read-only and read-write
/// (the kernel then refuses writes with EROFS itself). The kernel refuses a read-only
/// remount (EBUSY) while a file is open for writing; closes that are on their way are
/// waited for a few seconds.
pub fn remount(mountpoint: &Path, read_only: bool) -> io::Result<()> {
    let target = c_path(mountpoint)?;
    let mut flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let started = std::time::Instant::now();
    loop {
        // SAFETY: target is a valid NUL-terminated path; the other pointers may be null
        // for a remount.
        let result = check(unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        });
        match result {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && started.elapsed() < REMOUNT_PATIENCE =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
