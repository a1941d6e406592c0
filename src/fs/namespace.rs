//! Names that come and go: mkdir, mknod, symlink (and readlink), unlink and rmdir, each
//! one request to S3 besides the lookups (and unlink's copy to the trash with
//! `--trash`, `trash.rs`); hard links are refused (S3 has none). unlink and rmdir need
//! only a name's existence and kind, never its metadata.

use bytes::Bytes;

use super::inodes::{Found, Remote};
use super::{Attr, Caller, Extras, FsError, FsResult, Kind, S3Fs, now};
use crate::layout::check_name;
use crate::store::ObjectStore;

impl<S: ObjectStore> S3Fs<S> {
    pub async fn unlink(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<()> {
        self.check_writable()?;
        let name = check_name(name)?;
        // Only existence and whether it is a directory matter here, which a listing
        // tells: no HEAD (or GET of a small file) for an entry known from one.
        let attr = self.find(parent, name).await?;
        if attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let (path, key, stage) = {
            let table = self.inodes.lock().unwrap();
            let path = table.path(attr.ino).ok_or(FsError::NotFound)?;
            let key = self.layout.file_key(&path);
            (path, key, table.stage(attr.ino))
        };
        match &stage {
            Some(stage) => {
                // Under the upload lock no upload can recreate the object after the
                // DELETE; the staged data is given up only once the DELETE succeeded, so a
                // failed unlink loses nothing. The trash copy is made under it too, so
                // it is of the newest content.
                let turn = stage.upload_turn().await;
                (self.keep_in_trash(attr.ino, &path, &key, Some((stage, &turn)))).await?;
                self.store.delete(&key).await?;
                if let Some(st) = stage.mark_deleted() {
                    self.uploader.abort_streaming(st);
                }
            }
            None => {
                self.keep_in_trash(attr.ino, &path, &key, None).await?;
                self.store.delete(&key).await?
            }
        }
        self.cache.invalidate(&key);
        let mut table = self.inodes.lock().unwrap();
        table.detach(attr.ino);
        Self::touch_dir(&mut table, parent, now());
        drop(table);
        self.drop_clean_stage(attr.ino);
        Ok(())
    }

    /// Hard links: S3 has no way to give one object two names.
    pub fn link(&self) -> FsResult<Attr> {
        Err(FsError::NotPermitted("hard links"))
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let attr = self.new_attr(Kind::Dir, mode, caller);
        self.create_object(parent, name, attr, Extras::default(), Bytes::new())
            .await
    }

    /// mknod: a FIFO, socket or device node is an empty object whose mode says what it
    /// is (as s3fs stores them); a regular file an empty file.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let kind = Kind::from_mode(mode);
        if matches!(kind, Kind::Dir | Kind::Symlink) {
            return Err(FsError::Invalid(
                "mknod makes files, FIFOs, sockets and devices",
            ));
        }
        let mut attr = self.new_attr(kind, mode, caller);
        if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
            attr.rdev = rdev;
        }
        self.create_object(parent, name, attr, Extras::default(), Bytes::new())
            .await
    }

    /// A symbolic link is an object holding the target, with mode `S_IFLNK | 0777`
    /// (as s3fs stores them).
    pub async fn symlink(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        target: &std::path::Path,
        caller: Caller,
    ) -> FsResult<Attr> {
        let target = target.to_str().ok_or(FsError::Invalid(
            "symlink targets must be UTF-8 to be stored",
        ))?;
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() >= libc::PATH_MAX as usize {
            return Err(FsError::NameTooLong);
        }
        let mut attr = self.new_attr(Kind::Symlink, 0o777, caller);
        attr.size = target.len() as u64;
        let extras = Extras {
            link: Some(target.to_string()),
            ..Extras::default()
        };
        let body = Bytes::copy_from_slice(target.as_bytes());
        self.create_object(parent, name, attr, extras, body).await
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<String> {
        let attr = self.ensure_meta(ino).await?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symbolic link"));
        }
        let (key, remote) = {
            let table = self.inodes.lock().unwrap();
            let inode = table.get(attr.ino).ok_or(FsError::NotFound)?;
            if let Some(link) = &inode.extras().link {
                return Ok(link.clone());
            }
            let path = table.path(attr.ino).ok_or(FsError::NotFound)?;
            let remote = inode.remote.clone().ok_or(FsError::NotFound)?;
            (self.layout.file_key(&path), remote)
        };
        let body =
            crate::store::get_bytes(&*self.store, &key, 0..remote.size, Some(&remote.etag)).await?;
        // s3fs trims the target it stores; so do readers.
        let link = String::from_utf8_lossy(&body).trim().to_string();
        let mut table = self.inodes.lock().unwrap();
        if let Some(inode) = table.get_mut(attr.ino) {
            inode.extras_mut().link = Some(link.clone());
        }
        Ok(link)
    }

    /// The attributes of a new inode of `kind` made by `caller`.
    fn new_attr(&self, kind: Kind, mode: u32, caller: Caller) -> Attr {
        let t = now();
        let mut attr = match kind {
            Kind::Dir => self.default_dir_attr(t),
            _ => self.file_attr(0, t),
        };
        attr.kind = kind;
        attr.nlink = if kind == Kind::Dir { 2 } else { 1 };
        attr.perm = (mode & 0o7777) as u16;
        attr.uid = caller.uid;
        attr.gid = caller.gid;
        attr
    }

    /// Creates `name` under `parent` as one object written at once (a directory marker,
    /// a symlink, a special file); EEXIST if the name is taken.
    async fn create_object(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        attr: Attr,
        extras: Extras,
        body: Bytes,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        let name = check_name(name)?;
        super::hidden::check_creatable(parent, name)?;
        match self.find(parent, name).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let path = {
            let table = self.inodes.lock().unwrap();
            table.child_path(parent, name).ok_or(FsError::NotFound)?
        };
        let dir = attr.kind == Kind::Dir;
        self.layout.check_path(&path, dir)?;
        let headers = Self::headers_of(&attr, &extras, true);
        let key = if dir {
            self.layout.dir_prefix(&path)
        } else {
            self.layout.file_key(&path)
        };
        let etag = self.store.put(&key, body.clone(), &headers).await?;
        let mut table = self.inodes.lock().unwrap();
        let until = self.valid_until();
        let remote = (!dir).then(|| Remote {
            etag,
            size: body.len() as u64,
            modified: None,
        });
        let t = attr.ctime;
        let ino =
            table.upsert_made_here(parent, name, Found::made_here(attr, remote, extras, until));
        table.mark_changed(ino);
        Self::touch_dir(&mut table, parent, t);
        if dir {
            table.mark_listed(ino, until, false); // created empty: every child is known
        }
        table.add_lookup(ino);
        Ok(Self::current_attr(&table, ino).expect("present"))
    }

    /// Is there anything under directory `ino`: in S3 besides an empty marker (keys the
    /// mount cannot show and a marker's content count), or staged here?
    pub(super) async fn dir_has_children(&self, ino: u64, path: &str) -> FsResult<bool> {
        if !self
            .inodes
            .lock()
            .unwrap()
            .local_only_children(ino)
            .is_empty()
        {
            return Ok(true);
        }
        let prefix = self.layout.dir_prefix(path);
        let page = self.store.list_page(&prefix, false, None, Some(2)).await?;
        Ok(page.objects.iter().any(|o| o.key != prefix || o.size > 0) || !page.prefixes.is_empty())
    }

    pub async fn rmdir(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<()> {
        self.check_writable()?;
        let name = check_name(name)?;
        let attr = self.find(parent, name).await?; // (as in unlink: the kind is enough)
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let path = {
            let table = self.inodes.lock().unwrap();
            table.path(attr.ino).ok_or(FsError::NotFound)?
        };
        if self.dir_has_children(attr.ino, &path).await? {
            return Err(FsError::NotEmpty);
        }
        self.store.delete(&self.layout.dir_prefix(&path)).await?;
        let mut table = self.inodes.lock().unwrap();
        table.detach(attr.ino);
        Self::touch_dir(&mut table, parent, now());
        Ok(())
    }
}
