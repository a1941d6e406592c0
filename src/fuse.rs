//! The FUSE adapter: a thin translation between fuser's `Filesystem` and the core.
//! Every request takes its arguments as owned values, runs the core's method on the
//! tokio runtime, and replies from that task, so no FUSE thread ever waits on S3. What
//! needs no S3 answer (a lookup the table knows, create, a close or release with nothing
//! to upload) is answered in the FUSE thread itself; a `--write-back` close waits there
//! for its local syncs only.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::{
    Attr, Caller, FsError, FsResult, Kind, OpenMode, S3Fs, SetAttr, XattrAnswer, creation_mode,
    xattr_answer, xattr_list, xattr_name_to_read, xattr_name_to_write,
};
use crate::store::ObjectStore;

/// The open flag by which the kernel marks an open for `execve` (its `__FMODE_EXEC`,
/// passed to FUSE in the open's flags).
const FMODE_EXEC: i32 = 0o40;

pub struct FuseAdapter<S: ObjectStore> {
    fs: Arc<S3Fs<S>>,
    runtime: Handle,
}

impl<S: ObjectStore> FuseAdapter<S> {
    pub fn new(fs: Arc<S3Fs<S>>, runtime: Handle) -> Self {
        FuseAdapter { fs, runtime }
    }

    /// Runs `call` on the runtime and answers with `ok` on success, with the errno the
    /// core chose otherwise.
    fn spawn<T, R>(
        &self,
        op: &'static str,
        reply: R,
        call: impl Future<Output = FsResult<T>> + Send + 'static,
        ok: impl FnOnce(R, T) + Send + 'static,
    ) where
        T: Send + 'static,
        R: Fail + Send + 'static,
    {
        self.runtime.spawn(async move {
            match call.await {
                Ok(value) => ok(reply, value),
                Err(e) => reply.fail(errno(op, &e)),
            }
        });
    }
}

/// Answers at once, in the FUSE thread, what the core could answer without waiting
/// (`known`): no hand-over to the runtime for what the inode table knows. Hands `reply`
/// back when S3 must be asked.
fn answer_now<T, R: Fail>(
    op: &str,
    reply: R,
    known: Option<FsResult<T>>,
    ok: impl FnOnce(R, T),
) -> Option<R> {
    match known {
        None => Some(reply),
        Some(Ok(value)) => {
            ok(reply, value);
            None
        }
        Some(Err(e)) => {
            reply.fail(errno(op, &e));
            None
        }
    }
}

/// The error answer every fuser reply type has.
trait Fail {
    fn fail(self, errno: Errno);
}

macro_rules! fail_with_error {
    ($($reply:ty),*) => {$(
        impl Fail for $reply {
            fn fail(self, errno: Errno) {
                self.error(errno)
            }
        }
    )*};
}

fail_with_error!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyLseek,
    ReplyOpen,
    ReplyWrite,
    ReplyXattr
);

/// Answers with the attributes of a new or found entry.
fn entry(reply: ReplyEntry, (ttl, attr): (Duration, Attr)) {
    reply.entry(&ttl, &to_fuse_attr(&attr), Generation(0))
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn to_fuse_attr(attr: &Attr) -> FileAttr {
    let kind = file_type(attr.kind);
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.ctime,
        kind,
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(op: &str, err: &FsError) -> Errno {
    if err.is_expected() {
        log::debug!("{op}: {err}");
    } else {
        log::warn!("{op} failed: {err}");
    }
    Errno::from_i32(err.errno())
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl<S: ObjectStore> Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each one alone: a kernel that lacks one must not cost the others.
        for wanted in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ] {
            if let Err(missing) = config.add_capabilities(wanted) {
                log::info!("the kernel does not offer {missing:?}; going on without it");
            }
        }
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let known =
            (self.fs.lookup_known(parent.0, name)).map(|r| r.map(|a| (self.fs.ttl_of(a.ino), a)));
        let Some(reply) = answer_now("lookup", reply, known, entry) else {
            return;
        };
        let (fs, name) = (self.fs.clone(), name.to_owned());
        let call = async move {
            let attr = fs.lookup(parent.0, &name).await?;
            Ok((fs.ttl_of(attr.ino), attr))
        };
        self.spawn("lookup", reply, call, entry);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let known = (self.fs.getattr_known(ino.0)).map(|r| r.map(|a| (self.fs.ttl_of(ino.0), a)));
        let Some(reply) = answer_now("getattr", reply, known, attr) else {
            return;
        };
        let fs = self.fs.clone();
        let call = async move {
            let attr = fs.getattr(ino.0).await?;
            Ok((fs.ttl_of(ino.0), attr))
        };
        self.spawn("getattr", reply, call, attr);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        let fs = self.fs.clone();
        let call = async move { Ok((fs.ttl(), fs.setattr(ino.0, change).await?)) };
        self.spawn("setattr", reply, call, attr);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (fs, name, who) = (self.fs.clone(), name.to_owned(), caller(req));
        let mode = creation_mode(mode, umask);
        let call = async move { Ok((fs.ttl(), fs.mkdir(parent.0, &name, mode, who).await?)) };
        self.spawn("mkdir", reply, call, entry);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        let call = async move { fs.unlink(parent.0, &name).await };
        self.spawn("unlink", reply, call, done);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        let call = async move { fs.rmdir(parent.0, &name).await };
        self.spawn("rmdir", reply, call, done);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (fs, name, newname) = (self.fs.clone(), name.to_owned(), newname.to_owned());
        let call = async move {
            let no_replace = S3Fs::<S>::rename_no_replace(flags.bits())?;
            (fs.rename(parent.0, &name, newparent.0, &newname, no_replace)).await
        };
        self.spawn("rename", reply, call, done);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link() {
            Ok(attr) => entry(reply, (self.fs.ttl(), attr)),
            Err(e) => reply.error(errno("link", &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = OpenMode {
            write: flags.acc_mode() != OpenAccMode::O_RDONLY,
            truncate: flags.0 & libc::O_TRUNC != 0,
            exec: flags.0 & FMODE_EXEC != 0,
        };
        let fs = self.fs.clone();
        let call = async move { fs.open(ino.0, mode).await };
        self.spawn("open", reply, call, |reply, (fh, keep_cache)| {
            let flags = match keep_cache {
                true => FopenFlags::FOPEN_KEEP_CACHE,
                false => FopenFlags::empty(),
            };
            reply.opened(FileHandle(fh), flags)
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (fs, name, who) = (self.fs.clone(), name.to_owned(), caller(req));
        let mode = creation_mode(mode, umask);
        let ttl = fs.ttl();
        // A create asks S3 for nothing (the kernel looked the name up before): it runs
        // here rather than on a worker and back.
        let created = self.runtime.block_on(fs.create(parent.0, &name, mode, who));
        answer_now("create", reply, Some(created), move |reply, (attr, fh)| {
            let (attr, fh) = (to_fuse_attr(&attr), FileHandle(fh));
            reply.created(&ttl, &attr, Generation(0), fh, FopenFlags::empty())
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let call = async move { fs.read(fh.0, offset, size).await };
        self.spawn("read", reply, call, |reply, data| reply.data(&data));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _in_runtime = self.runtime.enter();
        match self.fs.try_write_now(fh.0, offset, data) {
            Some(Ok(n)) => return reply.written(n),
            Some(Err(e)) => return reply.error(errno("write", &e)),
            None => {}
        }
        let (fs, data) = (self.fs.clone(), data.to_vec());
        let call = async move { fs.write(fh.0, offset, &data).await };
        self.spawn("write", reply, call, |reply, n| reply.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some(reply) = answer_now("close", reply, self.fs.flush_now(fh.0), done) else {
            return;
        };
        let fs = self.fs.clone();
        self.spawn("close", reply, async move { fs.flush(fh.0).await }, done);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel sends a release in the background and never reads its answer, and
        // an unmount ends the requests still unanswered: answer first, so that a slow
        // release (a large stage file removed, an upload after writes through mmap) is
        // not answered into a mount that is gone (fuser logs that as an error).
        reply.ok();
        let fs = self.fs.clone();
        if fs.release_is_local(fh.0) {
            // Nothing to wait for: run it here rather than hand it to a worker and back.
            if let Err(e) = self.runtime.block_on(fs.release(fh.0)) {
                errno("release", &e);
            }
            return;
        }
        self.runtime.spawn(async move {
            if let Err(e) = fs.release(fh.0).await {
                errno("release", &e);
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.spawn("fsync", reply, async move { fs.fsync(fh.0).await }, done);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let call = async move { fs.fallocate(fh.0, offset, length, mode).await };
        self.spawn("fallocate", reply, call, done);
    }

    /// Only SEEK_DATA and SEEK_HOLE come here; the kernel does the other kinds itself.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let fs = self.fs.clone();
        let call = async move { fs.seek(fh.0, offset, whence).await };
        // The core returns offsets of the stage file, which fit an off_t.
        self.spawn("lseek", reply, call, |reply, at| {
            reply.offset(i64::try_from(at).unwrap_or(i64::MAX))
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let fs = self.fs.clone();
        let (from, to) = ((fh_in.0, offset_in), (fh_out.0, offset_out));
        let call = async move { fs.copy_range(from, to, len).await };
        self.spawn("copy_file_range", reply, call, |reply, n| reply.written(n));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let call = async move { fs.opendir(ino.0).await };
        self.spawn("opendir", reply, call, |reply, fh| {
            reply.opened(FileHandle(fh), FopenFlags::empty())
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        let call = async move { fs.readdir(fh.0, offset).await };
        self.spawn("readdir", reply, call, |mut reply, entries| {
            for e in entries {
                let kind = file_type(e.attr.kind);
                if reply.add(INodeNo(e.attr.ino), e.offset, kind, &e.name) {
                    break;
                }
            }
            reply.ok()
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        let call = {
            let fs = fs.clone();
            async move { fs.readdir(fh.0, offset).await }
        };
        self.spawn("readdirplus", reply, call, move |mut reply, entries| {
            let mut sent = Vec::with_capacity(entries.len());
            for e in entries {
                let (ino, attr) = (INodeNo(e.attr.ino), to_fuse_attr(&e.attr));
                let ttl = fs.ttl_of(e.attr.ino);
                if reply.add(ino, e.offset, &e.name, &ttl, &attr, Generation(0)) {
                    break;
                }
                // The kernel counts a lookup for every entry but `.` and `..`.
                if e.name != "." && e.name != ".." {
                    sent.push(e.attr.ino);
                }
            }
            fs.add_lookups(&sent);
            reply.ok()
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_avail,
            s.files,
            s.files_free,
            s.block_size,
            s.max_name,
            s.fragment_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = match xattr_name_to_read(name) {
            Ok(name) => name.to_string(),
            Err(e) => return reply.error(errno("getxattr", &e)),
        };
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            let value = fs.getxattr(ino.0, &name).await;
            reply_xattr(reply, "getxattr", value, size)
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if let Some(names) = self.fs.known_xattr_names(ino.0) {
            return reply_xattr(reply, "listxattr", Ok(xattr_list(&names)), size);
        }
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            let list = fs.listxattr(ino.0).await.map(|names| xattr_list(&names));
            reply_xattr(reply, "listxattr", list, size)
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = match xattr_name_to_write(name) {
            Ok(name) => name.to_string(),
            Err(e) => return reply.error(errno("setxattr", &e)),
        };
        let (fs, value) = (self.fs.clone(), value.to_vec());
        let call = async move { fs.setxattr(ino.0, &name, &value, flags).await };
        self.spawn("setxattr", reply, call, done);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match xattr_name_to_read(name) {
            Ok(name) => name.to_string(),
            Err(e) => return reply.error(errno("removexattr", &e)),
        };
        let fs = self.fs.clone();
        let call = async move { fs.removexattr(ino.0, &name).await };
        self.spawn("removexattr", reply, call, done);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (fs, name, who) = (self.fs.clone(), link_name.to_owned(), caller(req));
        let target = target.to_owned();
        let call = async move { Ok((fs.ttl(), fs.symlink(parent.0, &name, &target, who).await?)) };
        self.spawn("symlink", reply, call, entry);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        let call = async move { fs.readlink(ino.0).await };
        self.spawn("readlink", reply, call, |reply, target| {
            reply.data(target.as_bytes())
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (fs, name, who) = (self.fs.clone(), name.to_owned(), caller(req));
        let mode = creation_mode(mode, umask);
        let call = async move { Ok((fs.ttl(), fs.mknod(parent.0, &name, mode, rdev, who).await?)) };
        self.spawn("mknod", reply, call, entry);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions).
        reply.ok();
    }
}

/// Answers with the attributes of an inode.
fn attr(reply: ReplyAttr, (ttl, attr): (Duration, Attr)) {
    reply.attr(&ttl, &to_fuse_attr(&attr))
}

/// Answers a request that returns nothing.
fn done(reply: ReplyEmpty, (): ()) {
    reply.ok()
}

/// Answers a getxattr or listxattr with `value` as the core says it fits `size`.
fn reply_xattr(reply: ReplyXattr, op: &str, value: FsResult<Vec<u8>>, size: u32) {
    match value
        .as_deref()
        .map_err(FsError::clone)
        .and_then(|v| xattr_answer(v, size))
    {
        Ok(XattrAnswer::Size(n)) => reply.size(n),
        Ok(XattrAnswer::Value(v)) => reply.data(v),
        Err(e) => reply.error(errno(op, &e)),
    }
}
