//! `s3mount status MOUNTPOINT`: asks a running mount for its pending and failed uploads
//! and its counters, and prints them for an operator. The mount answers with its status
//! document (JSON, see `fs::StatusReport`) as the hidden attribute `user.s3mount.status`
//! of its root, so no socket has to be found: the mount point is the address.
//!
//! Exit status: 0 when no upload is failing (pending ones are normal), 1 while uploads
//! are failing, 2 when MOUNTPOINT is not a live s3mount or cannot be asked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fs::{PendingUpload, StatusReport, XATTR_STATUS};

/// File-system type of an s3mount in the mount table.
const FS_TYPE: &str = "fuse.s3mount";

pub fn run(mountpoint: &Path, json: bool) -> ExitCode {
    match read_status(mountpoint) {
        Err(e) => {
            eprintln!("s3mount status: {e}");
            ExitCode::from(2)
        }
        Ok((mount, raw, report)) => {
            if json {
                println!("{}", String::from_utf8_lossy(&raw));
            } else {
                print!("{}", describe(&mount, &report, SystemTime::now()));
            }
            if report.failed_uploads > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// A mount table entry.
#[derive(Debug, PartialEq)]
pub struct MountEntry {
    pub dir: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undoes the octal escapes of mountinfo (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The entry mounted last on `dir` in a mountinfo table.
pub fn mount_entry(mountinfo: &str, dir: &Path) -> Option<MountEntry> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_dir = unescape(before.split(' ').nth(4)?);
            let mut after = after.split(' ');
            let fs_type = after.next()?.to_string();
            let source = unescape(after.next()?);
            Some(MountEntry {
                dir: PathBuf::from(mount_dir),
                fs_type,
                source,
            })
        })
        .rfind(|e| e.dir == dir)
}

/// The mount's entry, its raw status document and the document read.
fn read_status(mountpoint: &Path) -> Result<(MountEntry, Vec<u8>, StatusReport), String> {
    let shown = mountpoint.display();
    let dir = std::fs::canonicalize(mountpoint).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTCONN) => format!(
            "{shown}: the s3mount process of this mount is gone; unmount it with fusermount3 -u {shown}"
        ),
        Some(libc::EACCES) => format!(
            "{shown}: {e} (a mount without --allow-other answers only the user who mounted it)"
        ),
        _ => format!("{shown}: {e}"),
    })?;
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read the mount table: {e}"))?;
    let entry = match mount_entry(&table, &dir) {
        // Mounted through fusermount3 by another user than root, the type may be `fuse`.
        Some(e) if e.fs_type == FS_TYPE || e.source.starts_with("s3mount:") => e,
        Some(e) => {
            return Err(format!(
                "{} is not an s3mount (it is a {} mount of {})",
                dir.display(),
                e.fs_type,
                e.source
            ));
        }
        None => {
            return Err(format!(
                "{} is not an s3mount (nothing is mounted there)",
                dir.display()
            ));
        }
    };
    let raw = match xattr::get(&dir, XATTR_STATUS) {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            return Err(format!(
                "{}: this s3mount does not report its status (an older version?)",
                dir.display()
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
                "{}: the s3mount process of this mount is gone; unmount it with fusermount3 -u {}",
                dir.display(),
                dir.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(format!(
                "{}: {e} (a mount without --allow-other answers only the user who mounted it)",
                dir.display()
            ));
        }
        Err(e) => return Err(format!("{}: reading the status: {e}", dir.display())),
    };
    let report = serde_json::from_slice(&raw)
        .map_err(|e| format!("{}: unreadable status document: {e}", dir.display()))?;
    Ok((entry, raw, report))
}

/// `1.5 MiB`, `512 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `45s`, `3m05s`, `2h10m`, `3d4h`.
pub fn human_age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The `op` label of a series such as `s3mount_requests_total{op="PutObject"}`.
fn op_of<'a>(series: &'a str, metric: &str) -> Option<&'a str> {
    series
        .strip_prefix(metric)?
        .strip_prefix("{op=\"")?
        .strip_suffix("\"}")
}

/// Counter values by operation for one metric.
fn by_op(counters: &BTreeMap<String, f64>, metric: &str) -> BTreeMap<String, u64> {
    counters
        .iter()
        .filter_map(|(series, v)| Some((op_of(series, metric)?.to_string(), *v as u64)))
        .collect()
}

/// The report as an operator reads it; ages are counted up to `now`.
pub fn describe(mount: &MountEntry, report: &StatusReport, now: SystemTime) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let source = mount
        .source
        .strip_prefix("s3mount:")
        .unwrap_or(&mount.source);
    let mode = match (report.write_back, report.write_back_delay_ms) {
        (false, _) => "close waits for S3".to_string(),
        (true, 0) => "write-back".to_string(),
        (true, ms) => format!("write-back, uploads {} s after close", ms as f64 / 1000.0),
    };
    let _ = writeln!(
        out,
        "s3mount on {}: s3://{source} ({mode}; cache {})",
        mount.dir.display(),
        report.cache_dir
    );
    let _ = writeln!(
        out,
        "uploads: {} pending ({}), {} failing",
        report.pending_uploads,
        human_size(report.pending_bytes),
        report.failed_uploads
    );
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if !report.uploads.is_empty() {
        let _ = writeln!(out, "  {:<8} {:>10} {:>7}  PATH", "STATE", "SIZE", "AGE");
    }
    for PendingUpload {
        path,
        size,
        since,
        error,
    } in &report.uploads
    {
        let state = if error.is_some() { "failed" } else { "pending" };
        let _ = writeln!(
            out,
            "  {state:<8} {:>10} {:>7}  {}",
            human_size(*size),
            human_age(now.saturating_sub(*since)),
            mount.dir.join(path.trim_start_matches('/')).display()
        );
        if let Some(error) = error {
            let _ = writeln!(out, "           last error: {error}");
        }
    }
    if report.more > 0 {
        let _ = writeln!(out, "  … and {} more", report.more);
    }
    let c = &report.counters;
    let requests = by_op(c, "s3mount_requests_total");
    let errors = by_op(c, "s3mount_request_errors_total");
    let retries = by_op(c, "s3mount_retries_total");
    let _ = writeln!(out, "S3 requests since the mount:");
    let mut any = false;
    for (op, n) in requests.iter().filter(|(_, n)| **n > 0) {
        any = true;
        let mut line = format!("  {op:<24} {n:>8}");
        let (e, r) = (
            errors.get(op).copied().unwrap_or(0),
            retries.get(op).copied().unwrap_or(0),
        );
        if e > 0 || r > 0 {
            let _ = write!(line, "  ({e} failed, {r} retries)");
        }
        let _ = writeln!(out, "{line}");
    }
    if !any {
        let _ = writeln!(out, "  none");
    }
    let value = |name: &str| c.get(name).copied().unwrap_or(0.0) as u64;
    let _ = writeln!(
        out,
        "bytes: {} uploaded, {} downloaded",
        human_size(value("s3mount_bytes_uploaded_total")),
        human_size(value("s3mount_bytes_downloaded_total"))
    );
    let _ = writeln!(
        out,
        "read cache: {} hits, {} misses",
        value("s3mount_cache_hits_total"),
        value("s3mount_cache_misses_total")
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_entry_of_a_mount_point_is_found_with_escapes_undone() {
        let table = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
95 22 0:50 / /mnt/my\\040docs rw,nosuid,nodev - fuse.s3mount s3mount:bucket/docs/ rw,user_id=0
96 22 0:51 / /mnt/other rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_entry(table, Path::new("/mnt/my docs")),
            Some(MountEntry {
                dir: PathBuf::from("/mnt/my docs"),
                fs_type: "fuse.s3mount".into(),
                source: "s3mount:bucket/docs/".into(),
            })
        );
        assert_eq!(
            mount_entry(table, Path::new("/mnt/other")).map(|e| e.fs_type),
            Some("tmpfs".into())
        );
        assert_eq!(mount_entry(table, Path::new("/mnt")), None);
    }

    #[test]
    fn the_report_names_each_upload_its_age_and_error_and_the_busy_operations() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mount = MountEntry {
            dir: PathBuf::from("/mnt/docs"),
            fs_type: FS_TYPE.into(),
            source: "s3mount:bucket/docs/".into(),
        };
        let mut counters = BTreeMap::new();
        counters.insert("s3mount_requests_total{op=\"PutObject\"}".to_string(), 7.0);
        counters.insert("s3mount_requests_total{op=\"HeadBucket\"}".to_string(), 0.0);
        counters.insert(
            "s3mount_request_errors_total{op=\"PutObject\"}".to_string(),
            2.0,
        );
        counters.insert("s3mount_bytes_uploaded_total".to_string(), 3.0 * 1048576.0);
        let report = StatusReport {
            prefix: "docs/".into(),
            write_back: true,
            write_back_delay_ms: 0,
            cache_dir: "/var/cache/s3mount/x".into(),
            pending_uploads: 3,
            pending_bytes: 1536,
            failed_uploads: 1,
            uploads: vec![
                PendingUpload {
                    path: "/a.pdf".into(),
                    size: 1024,
                    since: 1_000_000 - 125,
                    error: Some("S3 endpoint unreachable (connection refused)".into()),
                },
                PendingUpload {
                    path: "/sub/b.pdf".into(),
                    size: 512,
                    since: 1_000_000 - 3,
                    error: None,
                },
            ],
            more: 1,
            counters,
        };
        let delayed = StatusReport {
            write_back_delay_ms: 1500,
            ..report.clone()
        };
        assert!(
            describe(&mount, &delayed, now).starts_with(
                "s3mount on /mnt/docs: s3://bucket/docs/ \
                 (write-back, uploads 1.5 s after close; cache /var/cache/s3mount/x)\n"
            ),
            "{}",
            describe(&mount, &delayed, now)
        );
        let text = describe(&mount, &report, now);
        for expected in [
            "s3mount on /mnt/docs: s3://bucket/docs/ (write-back; cache /var/cache/s3mount/x)",
            "uploads: 3 pending (1.5 KiB), 1 failing",
            "  failed      1.0 KiB   2m05s  /mnt/docs/a.pdf",
            "           last error: S3 endpoint unreachable (connection refused)",
            "  pending       512 B      3s  /mnt/docs/sub/b.pdf",
            "  … and 1 more",
            "  PutObject                       7  (2 failed, 0 retries)",
            "bytes: 3.0 MiB uploaded, 0 B downloaded",
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "no line {expected:?} in\n{text}"
            );
        }
        assert!(!text.contains("HeadBucket"), "idle operations are left out");
    }

    #[test]
    fn sizes_and_ages_read_naturally() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(3600 + 120), "1h02m");
        assert_eq!(human_age(2 * 86_400 + 7200), "2d2h");
    }
}
