//! rename: a file by server-side copy then delete (or by re-keying its stage), a
//! directory by moving every key under its prefix — refused, before anything moves, if
//! a key under it cannot be shown in the mount.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{Attr, Extras, FsError, FsResult, Kind, S3Fs, now};
use crate::layout::{MAX_KEY, check_name};
use crate::stage::Stage;
use crate::store::{ListedObject, ObjectStore};

impl<S: ObjectStore> S3Fs<S> {
    /// What renameat2's `flags` ask for: whether the target must not exist
    /// (RENAME_NOREPLACE). RENAME_EXCHANGE and RENAME_WHITEOUT are not supported.
    pub fn rename_no_replace(flags: u32) -> FsResult<bool> {
        if flags & (libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT) != 0 {
            return Err(FsError::Invalid("RENAME_EXCHANGE and RENAME_WHITEOUT"));
        }
        Ok(flags & libc::RENAME_NOREPLACE != 0)
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        new_parent: u64,
        new_name: &std::ffi::OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        self.check_writable()?;
        let name = check_name(name)?;
        let new_name = check_name(new_name)?;
        super::hidden::check_creatable(new_parent, new_name)?;
        let source = self.resolve(parent, name).await?;
        let target = match self.resolve(new_parent, new_name).await {
            Ok(t) => Some(t),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if target.as_ref().is_some_and(|t| t.ino == source.ino) {
            return Ok(());
        }
        if no_replace && target.is_some() {
            return Err(FsError::Exists);
        }
        let (old_path, new_path) = {
            let table = self.inodes.lock().unwrap();
            (
                table.path(source.ino).ok_or(FsError::NotFound)?,
                table
                    .child_path(new_parent, new_name)
                    .ok_or(FsError::NotFound)?,
            )
        };
        let mut upload_now = false;
        match source.kind {
            Kind::Dir => {
                if let Some(t) = &target {
                    if t.kind != Kind::Dir {
                        return Err(FsError::NotDir);
                    }
                    if self.dir_has_children(t.ino, &new_path).await? {
                        return Err(FsError::NotEmpty);
                    }
                }
                self.layout.check_path(&new_path, true)?;
                self.rename_dir(&old_path, &new_path, target.is_some())
                    .await?;
            }
            _ => {
                if let Some(t) = &target
                    && t.kind == Kind::Dir
                {
                    return Err(FsError::IsDir);
                }
                self.layout.check_path(&new_path, false)?;
                upload_now = self
                    .rename_file(source.ino, &old_path, &new_path, target.as_ref())
                    .await?;
            }
        }
        {
            let mut table = self.inodes.lock().unwrap();
            if let Some(t) = &target {
                table.detach(t.ino);
            }
            table.rename(source.ino, new_parent, new_name);
            table.mark_changed(source.ino);
            if let Some(inode) = table.get_mut(source.ino) {
                inode.valid_until = self.valid_until();
                inode.attr.ctime = now();
            }
            Self::touch_dir(&mut table, parent, now());
            Self::touch_dir(&mut table, new_parent, now());
        }
        self.rekey_journal(&new_path)?;
        if upload_now && self.cfg.write_back {
            // Committed (its close returned): the queue uploads it under the new name.
            self.queue_if_dirty(source.ino);
        } else if upload_now {
            self.sync(source.ino).await?;
            self.drop_clean_stage(source.ino);
        }
        Ok(())
    }

    /// After a rename to `new_path`: journal records of staged files at or under it
    /// name their new keys, so a recovery uploads them where they now are.
    fn rekey_journal(&self, new_path: &str) -> FsResult<()> {
        let moved: Vec<(String, Arc<Stage>)> = {
            let table = self.inodes.lock().unwrap();
            table
                .staged()
                .into_iter()
                .filter_map(|(ino, stage)| {
                    let path = table.path(ino)?;
                    let under = path == new_path || path.starts_with(&format!("{new_path}/"));
                    under.then(|| (self.layout.file_key(&path), stage))
                })
                .collect()
        };
        for (key, stage) in moved {
            stage.rekey(&key)?;
        }
        Ok(())
    }

    async fn rename_file(
        &self,
        ino: u64,
        old_path: &str,
        new_path: &str,
        target: Option<&Attr>,
    ) -> FsResult<bool> {
        let old_key = self.layout.file_key(old_path);
        let new_key = self.layout.file_key(new_path);
        if let Some(t) = target {
            // A replaced file's pending upload must not overwrite what moves in.
            let replaced = self.inodes.lock().unwrap().stage(t.ino);
            if let Some(stage) = replaced {
                if let Some(st) = stage.mark_deleted() {
                    self.uploader.abort_streaming(st);
                }
                drop(stage.upload_turn().await);
            }
        }
        let (stage, remote, headers) = {
            let mut table = self.inodes.lock().unwrap();
            let stage = table.stage(ino);
            let inode = table.get_mut(ino).ok_or(FsError::NotFound)?;
            // A rename changes the file's ctime; the copy carries it when the metadata
            // is known whole (otherwise the copy keeps what the object has).
            inode.attr.ctime = now();
            let headers = inode
                .meta_known
                .then(|| Self::headers_of(&inode.attr, inode.extras(), true));
            (stage, inode.remote.clone(), headers)
        };
        let turn = match &stage {
            Some(stage) => Some(stage.upload_turn().await),
            None => None,
        };
        match (&stage, &remote) {
            (Some(stage), _) if stage.is_dirty() => {
                // The stage holds the newest content and goes to the new key at its next
                // upload; the old object must not outlive the rename.
                stage.fill(&*self.store).await?;
                if let Some(st) = stage.take_streaming() {
                    self.uploader.abort_streaming(st);
                }
                if remote.is_some() {
                    self.store.delete(&old_key).await?;
                }
            }
            (_, Some(remote)) => {
                self.store
                    .copy(
                        &old_key,
                        &new_key,
                        remote.size,
                        headers.as_ref(),
                        Some(&remote.etag),
                    )
                    .await?;
                self.store.delete(&old_key).await?;
            }
            (_, None) => {
                let meta = self.store.head(&old_key).await?;
                self.store
                    .copy(&old_key, &new_key, meta.size, None, None)
                    .await?;
                self.store.delete(&old_key).await?;
            }
        }
        self.cache.invalidate(&old_key);
        self.cache.invalidate(&new_key);
        // Nobody will close a dirty stage that no writer holds: it must be uploaded
        // under the new name once the rename is recorded.
        let upload_now =
            stage.as_ref().is_some_and(|s| s.is_dirty()) && !self.handles.has_writer(ino);
        drop(turn);
        Ok(upload_now)
    }

    /// Moves every key under the old directory prefix to the new one, each by copy then
    /// delete, so a failure part way leaves each file in its old or its new place. The
    /// keys are listed whole first: if one of them cannot be shown in the mount, nothing
    /// moves ([`S3Fs::dir_keys_to_move`]).
    async fn rename_dir(&self, old_path: &str, new_path: &str, replace: bool) -> FsResult<()> {
        let old_prefix = self.layout.dir_prefix(old_path);
        let new_prefix = self.layout.dir_prefix(new_path);
        let objects = self.dir_keys_to_move(&old_prefix, &new_prefix).await?;
        if replace {
            self.store.delete(&new_prefix).await?;
        }
        let (old_prefix, new_prefix) = (&old_prefix, &new_prefix);
        let moves = futures::stream::iter(objects.into_iter().map(|o| {
            let rest = o.key.strip_prefix(old_prefix.as_str()).unwrap_or_default();
            let to = format!("{new_prefix}{rest}");
            async move {
                self.store.copy(&o.key, &to, o.size, None, None).await?;
                self.store.delete(&o.key).await?;
                self.cache.invalidate(&o.key);
                Ok::<bool, FsError>(o.key == *old_prefix)
            }
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        let mut moved_marker = false;
        for m in moves {
            moved_marker |= m?;
        }
        if !moved_marker {
            // Keep the directory itself, even if it existed only as a prefix.
            let headers = Self::headers_of(&self.default_dir_attr(now()), &Extras::default(), true);
            self.store.put(new_prefix, Bytes::new(), &headers).await?;
        }
        Ok(())
    }

    /// Every key under `old_prefix`, all pages, once it is known that each can move to
    /// `new_prefix`: EPERM if one of them cannot be shown in the mount (such keys are
    /// never renamed, and moving the rest would leave them behind in a folder that seems
    /// gone), ENAMETOOLONG if one would outgrow S3's key limit.
    async fn dir_keys_to_move(
        &self,
        old_prefix: &str,
        new_prefix: &str,
    ) -> FsResult<Vec<ListedObject>> {
        let mut objects = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .store
                .list_page(old_prefix, false, token.take(), None)
                .await?;
            objects.extend(
                page.objects
                    .into_iter()
                    .filter(|o| o.key.starts_with(old_prefix)),
            );
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let dirs: HashSet<&str> = objects
            .iter()
            .flat_map(|o| {
                // Every directory the key lies in, as `old_prefix` + `a/b`, without the `/`.
                o.key
                    .match_indices('/')
                    .filter(|(i, _)| *i >= old_prefix.len())
                    .filter_map(|(i, _)| o.key.get(..i))
            })
            .collect();
        let hidden = objects.iter().find_map(|o| {
            let why = self.layout.key_problem(old_prefix, &o.key).or_else(|| {
                (!o.key.ends_with('/') && dirs.contains(o.key.as_str()))
                    .then_some("a directory of the same name hides it")
            })?;
            Some((o.key.as_str(), why))
        });
        if let Some((key, why)) = hidden {
            log::warn!(
                "refusing to rename directory {old_prefix:?}: key {key:?} under it cannot be \
                 shown in the mount ({why}), and such keys are never renamed"
            );
            return Err(FsError::NotPermitted(
                "the directory holds keys the mount cannot show",
            ));
        }
        let longest = objects.iter().map(|o| o.key.len()).max().unwrap_or(0);
        if longest.saturating_sub(old_prefix.len()) + new_prefix.len() > MAX_KEY {
            return Err(FsError::NameTooLong);
        }
        Ok(objects)
    }
}
