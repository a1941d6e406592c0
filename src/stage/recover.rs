//! What an earlier run left in the stage folder: data files whose upload did not finish,
//! each with its journal record if it had one. A committed one (its close or fsync
//! returned) must still reach S3; one whose close never returned was never promised and
//! is set aside in `orphaned/` for the operator, never uploaded; an empty one without a
//! record (a stage file created ahead and never used) is removed. Files of this run (by
//! their run id) are never leftovers.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use super::Record;
use super::journal::{self, State};
use super::{Stage, StageDir, StageResult};

/// A data file an earlier run left behind.
pub struct Leftover {
    pub path: PathBuf,
    /// The multipart upload it had started (key, upload id), to abort.
    pub multipart: Option<(String, String)>,
    /// Set when its close returned: the data must reach S3 as this says.
    pub committed: Option<Committed>,
}

/// Where and how a committed leftover goes.
pub struct Committed {
    pub key: String,
    /// The object's user metadata (`x-amz-meta-*` without the prefix).
    pub meta: Vec<(String, String)>,
    /// The size the record promised.
    pub size: u64,
}

impl StageDir {
    /// Staged data files left by an earlier run (not uploaded when it stopped), in
    /// name order, with what their journal records say.
    pub fn leftovers(&self) -> Vec<Leftover> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !journal::is_journal_file(p))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with(&self.run_id))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|path| {
                let record = self.inherited_record(&path);
                if record.is_none() && std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                    // Created ahead and never written: nothing to keep.
                    let _ = std::fs::remove_file(&path);
                    return None;
                }
                let multipart = record
                    .as_ref()
                    .and_then(|r| Some((r.key.clone(), r.upload_id.clone()?)));
                let committed = record
                    .filter(|r| r.state == State::Committed)
                    .map(|r| Committed {
                        key: r.key,
                        meta: r.meta,
                        size: r.size,
                    });
                Some(Leftover {
                    path,
                    multipart,
                    committed,
                })
            })
            .collect()
    }

    fn inherited_record(&self, path: &Path) -> Option<Record> {
        let name = path.file_name()?.to_str()?;
        self.inherited.get(name).cloned()
    }

    /// A stage over a data file an earlier run left, for recovery.
    pub fn adopt(&self, path: &Path) -> StageResult<Stage> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        let stage = self.stage(path.to_path_buf(), file, None, size);
        // The record it had stays its record (an upload noted in it keeps the promise).
        *stage.record.lock().unwrap() = self.inherited_record(path);
        Ok(stage)
    }

    /// Moves a leftover that was never promised to `orphaned/` in the cache dir, and
    /// drops its record.
    pub fn set_aside(&self, leftover: &Leftover) -> io::Result<()> {
        let aside = self
            .dir
            .parent()
            .map_or_else(|| self.dir.join("orphaned"), |d| d.join("orphaned"));
        std::fs::create_dir_all(&aside)?;
        let name = leftover.path.file_name().unwrap_or_default();
        std::fs::rename(&leftover.path, aside.join(name))?;
        let name = name.to_string_lossy();
        self.journal.remove(&name)
    }
}
