//! The validated settings of one mount, as plain data (no clap types), with defaults.
//! Invariant: the default cache directory differs for every bucket, prefix and mount
//! point, so that two mounts never share one by default.

use std::path::{Path, PathBuf};

use crate::fs::FsConfig;
use crate::store::s3::S3Settings;

#[derive(Clone, Debug)]
pub struct MountConfig {
    pub bucket: String,
    pub mountpoint: PathBuf,
    pub s3: S3Settings,
    pub fs: FsConfig,
    pub allow_other: bool,
    pub allow_root: bool,
    pub nonempty: bool,
    /// Where to serve Prometheus counters (`/metrics`), if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub foreground: bool,
    pub log_level: Option<String>,
    /// `--trash`: where deleted files are kept.
    pub trash: Option<crate::trash::TrashTarget>,
    /// Where the log goes instead of stderr; reopened on SIGHUP.
    pub log_file: Option<PathBuf>,
    /// Mounted `noexec`.
    pub noexec: bool,
}

/// A cache directory of its own for each bucket, prefix and mount point:
/// `/var/cache/s3mount/…` for root, `$XDG_CACHE_HOME/s3mount/…` (or `~/.cache`) otherwise.
pub fn default_cache_dir(bucket: &str, prefix: &str, mountpoint: &Path) -> PathBuf {
    let base = if std::env::var_os("XDG_CACHE_HOME").is_some() {
        PathBuf::from(std::env::var_os("XDG_CACHE_HOME").unwrap_or_default()).join("s3mount")
    } else if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/cache/s3mount")
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/s3mount")
    };
    let mount = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let name = format!("{bucket}/{prefix}{}", mount.display());
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.join(safe)
}
