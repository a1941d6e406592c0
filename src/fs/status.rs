//! What the mount tells about its uploads: the state of one file (the read-only
//! attribute `user.s3.state`: `uploaded`, `pending` or `failed: REASON`), the list of
//! staged files S3 does not have yet, and the status document of the whole mount that
//! the mount root answers as the hidden attribute `user.s3mount.status` (read by
//! `s3mount status`). Counters from outside the core (the S3 client's) come in through
//! [`S3Fs::set_counter_report`]; the core itself knows no metrics format.
//!
//! Invariants: a file is `pending` or `failed` exactly while it has a staged version S3
//! does not have (so `uploaded` means S3 has every byte written through this mount); a
//! failure stays reported until an upload of the file succeeds; the status document
//! never exceeds [`MAX_STATUS_BYTES`] (a getxattr value must fit in 64 KiB), listing the
//! failed and the oldest uploads first and counting the rest in `more`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{FsError, S3Fs};
use crate::store::{ObjectStore, StoreError};

/// The hidden attribute of the mount root that holds the status document.
pub const XATTR_STATUS: &str = "user.s3mount.status";
/// Largest status document: below the 64 KiB limit of an attribute value.
pub const MAX_STATUS_BYTES: usize = 60 * 1024;
/// Longest failure reason kept (the SDK's errors can be long debug dumps).
const MAX_REASON: usize = 300;

/// A function that reports counters as `name{labels}` → value.
pub type CounterReport = Box<dyn Fn() -> BTreeMap<String, f64> + Send + Sync>;

/// Where a file's data is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadState {
    /// S3 has everything written to the file through this mount.
    Uploaded,
    /// Staged in the cache dir; its upload is queued or running (or it is still open
    /// for writing).
    Pending,
    /// Staged; the last upload failed for this reason and is tried again.
    Failed(String),
}

impl fmt::Display for UploadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadState::Uploaded => f.write_str("uploaded"),
            UploadState::Pending => f.write_str("pending"),
            UploadState::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// Counts of the staged files S3 does not have yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingTotals {
    pub files: u64,
    pub bytes: u64,
    pub failed: u64,
}

/// One staged file S3 does not have yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    /// Path from the mount root, starting with `/`.
    pub path: String,
    pub size: u64,
    /// Since when S3 lacks this data, in seconds since the Unix epoch.
    pub since: u64,
    /// Why the last upload failed, if it did.
    pub error: Option<String>,
}

/// The mount's state as `s3mount status` reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub prefix: String,
    pub write_back: bool,
    /// `--write-back-delay`, in milliseconds (absent from older daemons' documents).
    #[serde(default)]
    pub write_back_delay_ms: u64,
    pub cache_dir: String,
    /// Staged files S3 does not have yet, failed ones included.
    pub pending_uploads: u64,
    pub pending_bytes: u64,
    /// Of those, the ones whose last upload failed.
    pub failed_uploads: u64,
    /// Failed uploads first, then the oldest; at most what fits.
    pub uploads: Vec<PendingUpload>,
    /// Uploads left out of `uploads` for size.
    pub more: u64,
    /// Counters of the mount, by Prometheus series name.
    pub counters: BTreeMap<String, f64>,
}

/// A failure in words an operator can act on, short enough for a status line.
pub fn failure_in_words(e: &FsError) -> String {
    let text = match e {
        FsError::Store(StoreError::Unreachable(detail)) => {
            format!("S3 endpoint unreachable ({})", network_cause(detail))
        }
        FsError::Store(StoreError::Transient(detail)) if detail.contains("dispatch") => {
            format!(
                "S3 did not answer ({}), after retries",
                network_cause(detail)
            )
        }
        FsError::Store(StoreError::Transient(detail)) => {
            format!("S3 failed after retries: {detail}")
        }
        FsError::Store(StoreError::Throttled(detail)) => {
            format!("S3 kept throttling the upload: {detail}")
        }
        FsError::Store(StoreError::AccessDenied(detail)) => {
            format!("access denied by S3 (the key needs s3:PutObject): {detail}")
        }
        FsError::Store(StoreError::NoSuchBucket) => "the bucket no longer exists".into(),
        FsError::NoSpace => "no space left in the cache directory".into(),
        other => other.to_string(),
    };
    shorten(&text, MAX_REASON)
}

/// The gist of a network failure described by the SDK (a debug dump of its causes).
fn network_cause(detail: &str) -> &'static str {
    let lower = detail.to_ascii_lowercase();
    [
        ("connection refused", "connection refused"),
        ("connection reset", "connection reset"),
        ("broken pipe", "connection broken"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("dns", "name not resolved"),
        ("failed to lookup address", "name not resolved"),
        ("unreachable", "network unreachable"),
        ("incompletemessage", "connection closed before the answer"),
        ("connection closed", "connection closed before the answer"),
    ]
    .into_iter()
    .find(|(needle, _)| lower.contains(needle))
    .map_or("network error", |(_, words)| words)
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl<S: ObjectStore> S3Fs<S> {
    /// Where the data of `ino` is (`user.s3.state`).
    pub fn upload_state(&self, ino: u64) -> UploadState {
        let Some(stage) = self.inodes.lock().unwrap().stage(ino) else {
            return UploadState::Uploaded;
        };
        if !stage.is_dirty() {
            return UploadState::Uploaded;
        }
        if let Some(e) = stage.broken() {
            return UploadState::Failed(format!(
                "a write to the cache directory failed ({e}); this version is not uploaded"
            ));
        }
        match stage.upload_failure() {
            Some(reason) => UploadState::Failed(reason),
            None => UploadState::Pending,
        }
    }

    /// Every staged file S3 does not have yet: failed ones first, then the oldest.
    pub fn pending_uploads(&self) -> Vec<PendingUpload> {
        let table = self.inodes.lock().unwrap();
        let mut pending: Vec<PendingUpload> = table
            .staged()
            .into_iter()
            .filter_map(|(ino, stage)| {
                let since = stage.pending_since()?;
                let error = match stage.broken() {
                    Some(e) => Some(format!("a write to the cache directory failed ({e})")),
                    None => stage.upload_failure(),
                };
                Some(PendingUpload {
                    path: format!("/{}", table.path(ino)?),
                    size: stage.size(),
                    since: unix_seconds(since),
                    error,
                })
            })
            .collect();
        drop(table);
        pending.sort_by(|a, b| {
            (a.error.is_none(), a.since, &a.path).cmp(&(b.error.is_none(), b.since, &b.path))
        });
        pending
    }

    /// How many staged files S3 does not have yet, their bytes, and how many of them
    /// failed their last upload (no paths built: cheap enough for every scrape).
    pub fn pending_totals(&self) -> PendingTotals {
        let staged = self.inodes.lock().unwrap().staged();
        let mut totals = PendingTotals::default();
        for (_, stage) in staged {
            if stage.pending_since().is_none() {
                continue;
            }
            totals.files += 1;
            totals.bytes += stage.size();
            if stage.broken().is_some() || stage.upload_failure().is_some() {
                totals.failed += 1;
            }
        }
        totals
    }

    /// Reads answered by the block cache, and reads that needed a GET.
    pub fn cache_hits_and_misses(&self) -> (u64, u64) {
        self.cache.hits_and_misses()
    }

    /// Counters from outside the core, for the status document (set once).
    pub fn set_counter_report(&self, report: CounterReport) {
        if self.counter_report.set(report).is_err() {
            log::warn!("the counter report of the status document was set twice");
        }
    }

    /// The status document (JSON) of the mount root's `user.s3mount.status`.
    pub fn status_document(&self) -> Vec<u8> {
        let all = self.pending_uploads();
        let mut report = StatusReport {
            prefix: self.cfg.prefix.clone(),
            write_back: self.cfg.write_back,
            write_back_delay_ms: self.cfg.write_back_delay.as_millis() as u64,
            cache_dir: self.cfg.cache_dir.display().to_string(),
            pending_uploads: all.len() as u64,
            pending_bytes: all.iter().map(|u| u.size).sum(),
            failed_uploads: all.iter().filter(|u| u.error.is_some()).count() as u64,
            uploads: Vec::new(),
            more: all.len() as u64,
            counters: self.counter_report.get().map(|r| r()).unwrap_or_default(),
        };
        // Room for the largest `more` there can be, so that the total stays in bounds.
        let mut used = serde_json::to_vec(&report).map_or(0, |v| v.len()) + 20;
        for upload in all {
            let len = serde_json::to_vec(&upload).map_or(usize::MAX, |v| v.len()) + 1;
            if used.saturating_add(len) > MAX_STATUS_BYTES {
                break;
            }
            used += len;
            report.uploads.push(upload);
            report.more -= 1;
        }
        serde_json::to_vec(&report).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_documented() {
        assert_eq!(UploadState::Uploaded.to_string(), "uploaded");
        assert_eq!(UploadState::Pending.to_string(), "pending");
        assert_eq!(
            UploadState::Failed("S3 endpoint unreachable (connection refused)".into()).to_string(),
            "failed: S3 endpoint unreachable (connection refused)"
        );
    }

    #[test]
    fn failures_are_put_in_short_words() {
        let refused = FsError::Store(StoreError::Unreachable(
            "DispatchFailure { source: ConnectorError { kind: Io, source: hyper::Error(Connect, ConnectError(\"tcp connect error\", Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" })) } }".into(),
        ));
        assert_eq!(
            failure_in_words(&refused),
            "S3 endpoint unreachable (connection refused)"
        );
        assert_eq!(
            failure_in_words(&FsError::NoSpace),
            "no space left in the cache directory"
        );
        let long = FsError::Io("x".repeat(1000));
        assert!(failure_in_words(&long).len() <= MAX_REASON + "…".len());
    }
}
