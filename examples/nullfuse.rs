//! The floor of any FUSE mount: a file system that moves bytes through the kernel's FUSE
//! device and does nothing else. `big` reads as SIZE zero bytes (answered at once, from one
//! static buffer, in the FUSE thread); whatever is written to `sink`, or to a file created
//! in the root (each a new, empty sink; the names are not kept), is dropped. It is
//! mounted the way s3mount mounts (2 FUSE threads with their own device fd, 1 MiB writes,
//! 1 MiB kernel read-ahead), so what `dd` through it costs — the daemon's and the kernel's
//! copies between the page cache, the device and `dd` — and what creating a small file
//! through it takes — the kernel's requests and their answers — is what every FUSE mount
//! pays on top of its S3 client. `scripts/bench-rounds.sh` measures it beside the raw client
//! and the mount.
//!
//! `nullfuse MOUNTPOINT SIZE_BYTES` (foreground; unmount with `fusermount3 -u`).

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const ROOT: u64 = 1;
const BIG: u64 = 2;
const SINK: u64 = 3;
const TTL: Duration = Duration::from_secs(60);
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

struct NullFs {
    size: u64,
    /// The next inode number of a created file (every number from SINK on is a sink).
    next: AtomicU64,
}

impl NullFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size) = match ino {
            ROOT => (FileType::Directory, 0o755, 0),
            BIG => (FileType::RegularFile, 0o444, self.size),
            ino if ino >= SINK && ino < self.next.load(Ordering::Relaxed) => {
                (FileType::RegularFile, 0o666, 0)
            }
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent.0, name.to_str()) {
            (ROOT, Some("big")) => BIG,
            (ROOT, Some("sink")) => SINK,
            _ => return reply.error(Errno::ENOENT),
        };
        reply.entry(&TTL, &self.attr(ino).unwrap(), Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // `dd of=sink` truncates it: the sink stays empty whatever is asked.
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if parent.0 != ROOT {
            return reply.error(Errno::ENOENT);
        }
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
        let attr = self.attr(ino).unwrap();
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(0),
            FopenFlags::empty(),
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = (size as u64)
            .min(self.size.saturating_sub(offset))
            .min(ZEROS.len() as u64);
        reply.data(&ZEROS[..len as usize]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (BIG, FileType::RegularFile, "big"),
            (SINK, FileType::RegularFile, "sink"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mountpoint), Some(size)) = (args.get(1), args.get(2).and_then(|s| s.parse().ok()))
    else {
        eprintln!("usage: nullfuse MOUNTPOINT SIZE_BYTES");
        std::process::exit(2);
    };
    let mut config = fuser::Config::default();
    config.n_threads = Some(2);
    config.clone_fd = true;
    config.mount_options = vec![fuser::MountOption::FSName("nullfuse".into())];
    let fs = NullFs {
        size,
        next: AtomicU64::new(SINK + 1),
    };
    let session = fuser::Session::new(fs, mountpoint, &config)?;
    // The kernel's read-ahead on the mount, raised as s3mount raises it (1 MiB reads).
    s3mount::daemon::raise_kernel_readahead(std::path::Path::new(mountpoint));
    session.run()
}
