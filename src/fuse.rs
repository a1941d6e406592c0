//! The FUSE adapter: a thin translation between fuser's `Filesystem` and the core.
//! Every request takes its arguments as owned values, runs the core's method on the
//! tokio runtime, and replies from that task, so no FUSE thread ever waits on S3.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::{
    Attr, Caller, FsError, FsResult, Kind, OpenMode, S3Fs, SetAttr, XattrAnswer, creation_mode,
    xattr_answer, xattr_list, xattr_name_to_read, xattr_name_to_write,
};
use crate::store::ObjectStore;

pub struct FuseAdapter<S: ObjectStore> {
    fs: Arc<S3Fs<S>>,
    runtime: Handle,
}

impl<S: ObjectStore> FuseAdapter<S> {
    pub fn new(fs: Arc<S3Fs<S>>, runtime: Handle) -> Self {
        FuseAdapter { fs, runtime }
    }
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
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_ATOMIC_O_TRUNC,
        );
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        self.runtime.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&fs.ttl(), &to_fuse_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("lookup", &e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(attr) => reply.attr(&fs.ttl(), &to_fuse_attr(&attr)),
                Err(e) => reply.error(errno("getattr", &e)),
            }
        });
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
        let fs = self.fs.clone();
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        self.runtime.spawn(async move {
            match fs.setattr(ino.0, change).await {
                Ok(attr) => reply.attr(&fs.ttl(), &to_fuse_attr(&attr)),
                Err(e) => reply.error(errno("setattr", &e)),
            }
        });
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
        self.runtime.spawn(async move {
            match fs
                .mkdir(parent.0, &name, creation_mode(mode, umask), who)
                .await
            {
                Ok(attr) => reply.entry(&fs.ttl(), &to_fuse_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("mkdir", &e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        self.runtime.spawn(async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("unlink", &e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        self.runtime.spawn(async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("rmdir", &e)),
            }
        });
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
        let no_replace = match S3Fs::<S>::rename_no_replace(flags.bits()) {
            Ok(no_replace) => no_replace,
            Err(e) => return reply.error(errno("rename", &e)),
        };
        let (fs, name, newname) = (self.fs.clone(), name.to_owned(), newname.to_owned());
        self.runtime.spawn(async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, no_replace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("rename", &e)),
            }
        });
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
            Ok(attr) => reply.entry(&self.fs.ttl(), &to_fuse_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno("link", &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = OpenMode {
            write: flags.acc_mode() != OpenAccMode::O_RDONLY,
            truncate: flags.0 & libc::O_TRUNC != 0,
        };
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.open(ino.0, mode).await {
                Ok((fh, keep_cache)) => {
                    let flags = if keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(errno("open", &e)),
            }
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
        self.runtime.spawn(async move {
            match fs
                .create(parent.0, &name, creation_mode(mode, umask), who)
                .await
            {
                Ok((attr, fh)) => reply.created(
                    &fs.ttl(),
                    &to_fuse_attr(&attr),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno("create", &e)),
            }
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
        self.runtime.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
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
        self.runtime.spawn(async move {
            match fs.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.flush(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("close", &e)),
            }
        });
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
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("release", &e)),
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
        self.runtime.spawn(async move {
            match fs.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("fsync", &e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.readdir(fh.0, offset).await {
                Ok(entries) => {
                    for e in entries {
                        let kind = file_type(e.attr.kind);
                        if reply.add(INodeNo(e.attr.ino), e.offset, kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno("readdir", &e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.readdir(fh.0, offset).await {
                Ok(entries) => {
                    let ttl = fs.ttl();
                    let mut sent = Vec::with_capacity(entries.len());
                    for e in entries {
                        let attr = to_fuse_attr(&e.attr);
                        if reply.add(
                            INodeNo(e.attr.ino),
                            e.offset,
                            &e.name,
                            &ttl,
                            &attr,
                            Generation(0),
                        ) {
                            break;
                        }
                        // The kernel counts a lookup for every entry but `.` and `..`.
                        if e.name != "." && e.name != ".." {
                            sent.push(e.attr.ino);
                        }
                    }
                    fs.add_lookups(&sent);
                    reply.ok()
                }
                Err(e) => reply.error(errno("readdirplus", &e)),
            }
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
        let (blocks, files) = (s.blocks, s.files);
        reply.statfs(
            blocks,
            blocks,
            blocks,
            files,
            files,
            s.block_size,
            s.max_name,
            s.block_size,
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
        self.runtime.spawn(async move {
            match fs.setxattr(ino.0, &name, &value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("setxattr", &e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match xattr_name_to_read(name) {
            Ok(name) => name.to_string(),
            Err(e) => return reply.error(errno("removexattr", &e)),
        };
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.removexattr(ino.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("removexattr", &e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (fs, name, target, who) = (
            self.fs.clone(),
            link_name.to_owned(),
            target.to_owned(),
            caller(req),
        );
        self.runtime.spawn(async move {
            match fs.symlink(parent.0, &name, &target, who).await {
                Ok(attr) => reply.entry(&fs.ttl(), &to_fuse_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("symlink", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(errno("readlink", &e)),
            }
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
        self.runtime.spawn(async move {
            match fs.mknod(parent.0, &name, mode, rdev, who).await {
                Ok(attr) => reply.entry(&fs.ttl(), &to_fuse_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("mknod", &e)),
            }
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions).
        reply.ok();
    }
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
