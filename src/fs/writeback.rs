//! Background work: the write-back upload queue with retries and backoff, the retry of
//! uploads that failed at close, shutdown's drain, and recovery of an earlier run's
//! committed files before a mount serves. A queued file's upload starts once
//! `--write-back-delay` has passed since its close, so a rename, rewrite or delete soon
//! after costs no upload of its own. A stage nobody has open waits for its upload (or
//! its next try) with its stage file closed: a backlog holds no descriptors.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{FsResult, S3Fs};
use crate::stage::{Committed, Leftover};
use crate::store::{ObjectHeaders, ObjectStore, UploadId};

/// Files uploaded at once by the write-back queue.
const BACKGROUND_UPLOADS: usize = 16;
/// How often uploads that failed at close are tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// How often listed entries the kernel never looked up are dropped once stale: often
/// enough that listing a huge directory never holds much more than a few seconds of it.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// How long an unmount waits for shared metadata index objects being written.
const SHARED_WRITES_AT_UNMOUNT: Duration = Duration::from_secs(10);
/// Longest wait between two tries of a background upload.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What recovery found in the cache dir.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovery {
    /// Committed files uploaded now.
    pub uploaded: usize,
    pub bytes: u64,
    /// Committed files that could not be uploaded (they stay).
    pub failed: usize,
    /// Files whose close never returned, moved aside to `orphaned/`.
    pub orphaned: usize,
    /// Multipart uploads of an earlier run that were aborted.
    pub aborted: usize,
}

impl<S: ObjectStore> S3Fs<S> {
    /// Stops new writers, uploads every stage that S3 does not have yet and lets shared
    /// index objects being written finish (bounded). Returns the
    /// number of files that could not be uploaded (they stay staged).
    pub async fn shutdown(&self) -> usize {
        self.closing.store(true, Ordering::Relaxed);
        let dirty = self.inodes.lock().unwrap().dirty_stages();
        let mut failed = 0;
        for (ino, _) in dirty {
            if self.sync(ino).await.is_err() {
                failed += 1;
            }
        }
        // Staged files S3 now has are of no further use (the mount is going away, so
        // handles still listed will not be used again).
        let staged = self.inodes.lock().unwrap().staged();
        for (ino, stage) in staged {
            if !stage.is_dirty() || stage.broken().is_some() {
                self.inodes.lock().unwrap().set_stage(ino, None);
                stage.discard();
            }
        }
        // Index objects being written read the local index.
        self.shared_writes.finish(SHARED_WRITES_AT_UNMOUNT).await;
        self.index.close();
        failed
    }

    pub fn dirty_count(&self) -> usize {
        self.inodes.lock().unwrap().dirty_stages().len()
    }

    /// Forgets listed entries the kernel never looked up, once stale.
    pub fn sweep_inodes(&self) {
        self.inodes.lock().unwrap().sweep();
    }

    /// Starts the background work: the write-back upload queue, retries of failed
    /// uploads and the sweep of stale inodes. Call once, inside the runtime.
    pub fn start_background(self: &Arc<Self>) {
        let mut rx = self
            .pending_rx
            .lock()
            .unwrap()
            .take()
            .expect("background work starts once");
        let fs = self.clone();
        let delay = self.cfg.write_back_delay;
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(BACKGROUND_UPLOADS));
            while let Some((ino, queued_at)) = rx.recv().await {
                // Files come in the order they were queued, so each waits out at most
                // its own delay. Nothing waits once the mount is going away (shutdown
                // uploads every pending file itself).
                if !fs.closing.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(queued_at + delay).await;
                }
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                let fs = fs.clone();
                tokio::spawn(async move {
                    fs.upload_in_background(ino).await;
                    drop(permit);
                });
            }
        });
        let fs = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_INTERVAL).await;
                fs.retry_failed_uploads().await;
            }
        });
        let fs = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                fs.sweep_inodes();
            }
        });
    }

    /// Uploads a committed file, retrying with backoff until S3 has it or it is gone.
    async fn upload_in_background(&self, ino: u64) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.sync(ino).await {
                Ok(()) => {
                    self.drop_clean_stage(ino);
                    return;
                }
                Err(e) => {
                    let pending = self
                        .inodes
                        .lock()
                        .unwrap()
                        .stage(ino)
                        .is_some_and(|s| s.is_dirty());
                    if !pending {
                        return;
                    }
                    self.close_idle_stage_file(ino);
                    log::warn!("background upload failed ({e}); next try in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Before serving: uploads every file an earlier run committed (its close or
    /// fsync returned), aborts the multipart uploads it left, and moves the data of
    /// files whose close never returned to `orphaned/` in the cache dir.
    pub async fn recover(&self) -> Recovery {
        let mut report = Recovery::default();
        for leftover in self.stages.leftovers() {
            if let Some((key, id)) = &leftover.multipart {
                match self.store.abort_multipart(key, &UploadId(id.clone())).await {
                    Ok(()) => report.aborted += 1,
                    Err(e) => log::debug!("abort of an earlier upload of {key}: {e}"),
                }
            }
            let path = leftover.path.display();
            match &leftover.committed {
                Some(c) => match self.recover_committed(&leftover, c).await {
                    Ok(size) => {
                        log::info!("recovered {} ({size} bytes) from the cache dir", c.key);
                        report.uploaded += 1;
                        report.bytes += size;
                    }
                    Err(e) => {
                        log::error!(
                            "could not upload {} from the cache dir ({e}); it stays in {path}",
                            c.key
                        );
                        report.failed += 1;
                    }
                },
                None => match self.stages.set_aside(&leftover) {
                    Ok(()) => report.orphaned += 1,
                    Err(e) => log::warn!("could not move {path} aside: {e}"),
                },
            }
        }
        report
    }

    async fn recover_committed(&self, leftover: &Leftover, c: &Committed) -> FsResult<u64> {
        let stage = Arc::new(self.stages.adopt(&leftover.path)?);
        if stage.size() != c.size {
            log::warn!(
                "{}: the journal says {} bytes, the cache dir has {}; uploading what is there",
                c.key,
                c.size,
                stage.size()
            );
        }
        let headers = ObjectHeaders {
            user_meta: c.meta.clone(),
            content_type: Some("application/octet-stream".into()),
        };
        let (snapshot, _) = stage.upload_turn().await.prepare(&*self.store).await?;
        let target = (c.key.as_str(), &headers);
        (self.uploader)
            .upload(&stage, target, snapshot.size, None)
            .await?;
        stage.discard();
        Ok(snapshot.size)
    }

    /// Retries the uploads of stages nobody has open (their close already got EIO).
    /// With write-back, a committed file that has not failed is the queue's: it may be
    /// waiting out `--write-back-delay`, and uploading it here would defeat that.
    pub async fn retry_failed_uploads(&self) {
        let dirty = self.inodes.lock().unwrap().dirty_stages();
        for (ino, stage) in dirty {
            if self.cfg.write_back && stage.upload_failure().is_none() {
                continue;
            }
            let idle = self
                .inodes
                .lock()
                .unwrap()
                .get(ino)
                .is_some_and(|i| i.open_handles() == 0);
            if !idle {
                continue;
            }
            if self.sync(ino).await.is_ok() {
                log::info!("a staged file that had failed to upload is now in S3");
                self.drop_clean_stage(ino);
            } else {
                self.close_idle_stage_file(ino);
            }
        }
    }

    /// Closes the stage file of `ino` if nobody has the file open: it waits for its
    /// upload without a descriptor (the next operation on it opens it again).
    pub(super) fn close_idle_stage_file(&self, ino: u64) {
        let stage = {
            let table = self.inodes.lock().unwrap();
            match table.get(ino) {
                Some(inode) if inode.open_handles() == 0 => table.stage(ino),
                _ => None,
            }
        };
        if let Some(stage) = stage {
            stage.close_file();
        }
    }
}
