//! `s3mount migrate LOCAL_DIR BUCKET --prefix P`: copies an existing folder into the
//! bucket with the keys and metadata a mount would have written (`layout`: `dir/`
//! markers, s3fs mode/owner/time headers, symlinks, `user.*` xattrs), so that mounting
//! the prefix shows the same tree. The walk (`walk`) feeds jobs that decide (`plan`) and
//! upload (`transfer`) in parallel while `progress` reports.
//!
//! Invariants: the source is only read unless `delete_source`, and then a source entry is
//! deleted only after its object was accepted with the MD5 of the bytes read (or was
//! found in the bucket with the same content) and the entry did not change since; a dry
//! run sends no write request; a rerun of an unchanged tree sends none either; multipart
//! uploads left under the prefix for keys of the tree (by a killed run) are aborted at
//! the end, when none of this run's own is still open.

mod plan;
mod progress;
mod read;
mod transfer;
mod walk;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::layout::Layout;
use crate::store::ObjectStore;
use crate::store::s3::{S3Settings, S3Store};
use plan::{Decision, RemoteIndex};
pub use progress::{Progress, Summary};
use transfer::Sender;
use walk::{Entry, Found};

/// The validated settings of one migration (plain data, no clap types).
#[derive(Clone, Debug)]
pub struct MigrateConfig {
    pub source: PathBuf,
    /// Normalized: empty, or ending in `/`.
    pub prefix: String,
    /// Files (and parts of large files) in flight.
    pub concurrency: usize,
    pub part_size: u64,
    pub dry_run: bool,
    pub delete_source: bool,
}

/// Runs a migration from the command line: connects, migrates, prints the summary as
/// the last line; exit 0 only if nothing failed.
pub fn run(s3: S3Settings, cfg: MigrateConfig, log_level: Option<&str>) -> ExitCode {
    let filters = match log_level {
        Some(l) => format!("warn,s3mount={l}"),
        None => std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    };
    let _ = env_logger::Builder::new()
        .parse_filters(&filters)
        .try_init();
    match std::fs::metadata(&cfg.source) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            eprintln!(
                "s3mount migrate: LOCAL_DIR {} is not a directory",
                cfg.source.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("s3mount migrate: LOCAL_DIR {}: {e}", cfg.source.display());
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3mount migrate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    use std::io::IsTerminal;
    let progress = Progress::new(std::io::stderr().is_terminal(), cfg.dry_run);
    let result = runtime.block_on(async {
        let store = Arc::new(S3Store::connect(&s3).await);
        migrate(store, &s3.bucket, cfg, progress).await
    });
    match result {
        Ok(summary) => {
            println!("{summary}");
            if summary.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("s3mount migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What every job shares.
struct Job<S> {
    cfg: MigrateConfig,
    layout: Layout,
    index: RemoteIndex,
    sender: Sender<S>,
    progress: Arc<Progress>,
    /// Source folders whose marker S3 has (candidates for removal after `delete_source`).
    dirs_done: std::sync::Mutex<Vec<PathBuf>>,
}

/// Migrates `cfg.source` into the store; fails only when nothing can be done at all
/// (no bucket, no listing, unreadable source folder). Each entry's problems are
/// reported by `progress` and counted in the summary.
pub async fn migrate<S: ObjectStore>(
    store: Arc<S>,
    bucket: &str,
    cfg: MigrateConfig,
    progress: Arc<Progress>,
) -> Result<Summary, String> {
    store.check_bucket().await.map_err(|e| match e {
        crate::store::StoreError::NoSuchBucket => format!("no such bucket '{bucket}'"),
        e => format!("bucket '{bucket}': {e}"),
    })?;
    let layout = Layout::new(&cfg.prefix);
    let index = RemoteIndex::load(&*store, layout.prefix())
        .await
        .map_err(|e| format!("cannot list s3://{bucket}/{}: {e}", layout.prefix()))?;
    log::info!(
        "{} objects under the prefix before the run",
        index.objects()
    );
    let job = Arc::new(Job {
        sender: Sender {
            store: store.clone(),
            layout: layout.clone(),
            part_size: cfg.part_size,
            bodies: Arc::new(Semaphore::new(cfg.concurrency)),
        },
        cfg: cfg.clone(),
        layout: layout.clone(),
        index,
        progress: progress.clone(),
        dirs_done: std::sync::Mutex::new(Vec::new()),
    });
    let reporter = progress.spawn_reporter();
    let (tx, mut rx) = mpsc::channel(1024);
    let (root, walk_layout) = (cfg.source.clone(), layout.clone());
    let walker = tokio::task::spawn_blocking(move || walk::walk(&root, &walk_layout, tx));
    // Jobs in flight: enough that deciding (HEADs) runs ahead of the uploads.
    let slots = Arc::new(Semaphore::new(cfg.concurrency * 4));
    let mut jobs = JoinSet::new();
    let mut keys = HashSet::new();
    while let Some(found) = rx.recv().await {
        match found {
            Found::Problem { local, why, dir } => progress.failed(dir, &local, &why),
            Found::Entry(entry) => {
                progress.found(&entry);
                keys.insert(key_of(&layout, &entry));
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let job = job.clone();
                jobs.spawn(async move {
                    job.run(entry).await;
                    drop(permit);
                });
                while jobs.try_join_next().is_some() {}
            }
        }
    }
    let walked = walker.await.map_err(|e| format!("the walk failed: {e}"))?;
    progress.walk_finished();
    while jobs.join_next().await.is_some() {}
    walked?;
    if !cfg.dry_run {
        abort_leftovers(&*store, &layout, &keys, &progress).await;
    }
    if cfg.delete_source && !cfg.dry_run {
        let dirs = std::mem::take(&mut *job.dirs_done.lock().unwrap());
        remove_empty_dirs(dirs, &progress);
    }
    reporter.abort();
    Ok(progress.summary())
}

fn key_of(layout: &Layout, entry: &Entry) -> String {
    match entry.is_dir() {
        true => layout.dir_prefix(&entry.path),
        false => layout.file_key(&entry.path),
    }
}

impl<S: ObjectStore> Job<S> {
    /// Decides, copies (unless a dry run) and deletes the source if asked; reports.
    async fn run(&self, entry: Entry) {
        let key = key_of(&self.layout, &entry);
        let verify = self.cfg.delete_source && !entry.is_dir();
        let decided = plan::decide(
            &*self.sender.store,
            &entry,
            &key,
            self.index.size(&key),
            verify,
        )
        .await;
        let outcome = match decided {
            Err(e) => Err(e),
            Ok(Decision::Skip { .. }) => {
                self.progress.skipped(&entry);
                Ok(())
            }
            Ok(Decision::Copy(reason)) if self.cfg.dry_run => {
                self.progress.would_copy(&entry, reason);
                self.progress.copied(&entry);
                return;
            }
            Ok(Decision::Copy(reason)) => {
                log::debug!("copying {} ({reason})", entry.path);
                match self.sender.send(&entry).await {
                    Ok(_) => {
                        self.progress.copied(&entry);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match outcome {
            Err(e) => self.progress.failed(entry.is_dir(), &entry.local, &e),
            Ok(()) if entry.is_dir() => self.dirs_done.lock().unwrap().push(entry.local.clone()),
            Ok(()) if self.cfg.delete_source && !self.cfg.dry_run => {
                self.delete_source(&entry).await
            }
            Ok(()) => {}
        }
    }

    /// Deletes a source entry whose object S3 has, unless it changed since it was read.
    async fn delete_source(&self, entry: &Entry) {
        let (local, stamp) = (entry.local.clone(), entry.stamp);
        let removed = tokio::task::spawn_blocking(move || {
            if !read::is_unchanged(&local, &stamp) {
                return Err("changed since it was copied: not deleted".to_string());
            }
            std::fs::remove_file(&local).map_err(|e| format!("cannot delete the source: {e}"))
        })
        .await
        .unwrap_or_else(|e| Err(format!("deleting task failed: {e}")));
        if let Err(e) = removed {
            self.progress
                .warn(&format!("{}: {e}", entry.local.display()));
        }
    }
}

/// Aborts the multipart uploads under the prefix whose keys belong to the tree: this
/// run's own are all finished, so these were left by an earlier run that was killed.
async fn abort_leftovers<S: ObjectStore>(
    store: &S,
    layout: &Layout,
    keys: &HashSet<String>,
    progress: &Progress,
) {
    let uploads = match store.list_uploads(layout.prefix()).await {
        Ok(u) => u,
        Err(e) => {
            progress.warn(&format!("cannot list unfinished multipart uploads: {e}"));
            return;
        }
    };
    let (mut aborted, mut others) = (0, 0);
    for upload in uploads {
        if !keys.contains(&upload.key) {
            others += 1;
            continue;
        }
        match store.abort_multipart(&upload.key, &upload.id).await {
            Ok(()) => aborted += 1,
            Err(e) => progress.warn(&format!(
                "cannot abort the unfinished upload of {}: {e}",
                upload.key
            )),
        }
    }
    if aborted > 0 {
        progress.warn(&format!(
            "aborted {aborted} unfinished multipart upload(s) an earlier run left"
        ));
    }
    if others > 0 {
        progress.warn(&format!(
            "{others} unfinished multipart upload(s) under the prefix are for keys not in LOCAL_DIR; left alone"
        ));
    }
}

/// After `--delete-source`: removes the source's folders that are empty now, deepest
/// first (LOCAL_DIR itself stays). A folder still holding something stays.
fn remove_empty_dirs(mut dirs: Vec<PathBuf>, progress: &Progress) {
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            Err(e) => progress.warn(&format!("{}: cannot remove the folder: {e}", dir.display())),
        }
    }
}
