//! What the operator sees while a migration runs and after: on a terminal an `indicatif`
//! bar (bytes, rate, ETA, files), otherwise a line on stderr every few seconds; problems
//! one line each, naming the path; and at the end one summary line on stdout, always the
//! last: files (regular files, symbolic links and special files) copied, skipped and
//! failed, directories apart, bytes copied, time and rates. Counters only grow.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::walk::Entry;

/// How often a line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    files_found: AtomicU64,
    bytes_found: AtomicU64,
    files_copied: AtomicU64,
    files_skipped: AtomicU64,
    files_failed: AtomicU64,
    dirs_copied: AtomicU64,
    dirs_skipped: AtomicU64,
    dirs_failed: AtomicU64,
    bytes_copied: AtomicU64,
    /// Bytes of files copied or skipped: how far the run is.
    bytes_done: AtomicU64,
}

pub struct Progress {
    started: Instant,
    dry_run: bool,
    counters: Counters,
    walk_done: AtomicBool,
    bar: Option<ProgressBar>,
    /// Serializes the lines written to stdout and stderr.
    out: Mutex<()>,
}

/// The figures of a finished run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub dry_run: bool,
    pub files_copied: u64,
    pub files_skipped: u64,
    pub files_failed: u64,
    pub dirs_copied: u64,
    pub dirs_skipped: u64,
    pub dirs_failed: u64,
    pub bytes_copied: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn failed(&self) -> u64 {
        self.files_failed + self.dirs_failed
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(0.001);
        let verb = if self.dry_run { "to copy" } else { "copied" };
        write!(
            f,
            "{}files: {} {verb}, {} skipped, {} failed; directories: {} {verb}, {} skipped, {} failed; \
             bytes {verb}: {} ({}) in {:.1} s ({:.0} files/s, {:.1} MiB/s)",
            if self.dry_run {
                "dry run, nothing written: "
            } else {
                ""
            },
            self.files_copied,
            self.files_skipped,
            self.files_failed,
            self.dirs_copied,
            self.dirs_skipped,
            self.dirs_failed,
            self.bytes_copied,
            human_bytes(self.bytes_copied),
            secs,
            self.files_copied as f64 / secs,
            self.bytes_copied as f64 / secs / (1 << 20) as f64,
        )
    }
}

impl Progress {
    /// A bar when `terminal`, periodic lines otherwise.
    pub fn new(terminal: bool, dry_run: bool) -> Arc<Progress> {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Arc::new(Progress {
            started: Instant::now(),
            dry_run,
            counters: Counters::default(),
            walk_done: AtomicBool::new(false),
            bar,
            out: Mutex::new(()),
        })
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn found(&self, entry: &Entry) {
        if !entry.is_dir() {
            Self::add(&self.counters.files_found, 1);
            Self::add(&self.counters.bytes_found, entry.size);
        }
    }

    pub fn walk_finished(&self) {
        self.walk_done.store(true, Ordering::Relaxed);
    }

    pub fn copied(&self, entry: &Entry) {
        let c = &self.counters;
        if entry.is_dir() {
            Self::add(&c.dirs_copied, 1);
        } else {
            Self::add(&c.files_copied, 1);
            Self::add(&c.bytes_copied, entry.size);
            Self::add(&c.bytes_done, entry.size);
        }
    }

    pub fn skipped(&self, entry: &Entry) {
        let c = &self.counters;
        if entry.is_dir() {
            Self::add(&c.dirs_skipped, 1);
        } else {
            Self::add(&c.files_skipped, 1);
            Self::add(&c.bytes_done, entry.size);
        }
    }

    /// A path that was not copied, and why (one line on stderr).
    pub fn failed(&self, dir: bool, path: &std::path::Path, why: &str) {
        let c = &self.counters;
        Self::add(if dir { &c.dirs_failed } else { &c.files_failed }, 1);
        self.warn(&format!("{}: {why}", path.display()));
    }

    /// A line on stderr, above the bar.
    pub fn warn(&self, text: &str) {
        self.line(&format!("s3mount migrate: {text}"), false);
    }

    /// What a dry run would copy, on stdout.
    pub fn would_copy(&self, entry: &Entry, reason: &str) {
        let what = match entry.is_dir() {
            true => format!("{}/", entry.path),
            false => entry.path.clone(),
        };
        self.line(&format!("would copy {what} ({reason})"), true);
    }

    fn line(&self, text: &str, stdout: bool) {
        let _serial = self.out.lock().unwrap();
        let write = || {
            if stdout {
                let _ = writeln!(std::io::stdout().lock(), "{text}");
            } else {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// Keeps the bar (or the periodic lines) up to date until the returned task is aborted.
    pub fn spawn_reporter(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let every = if me.bar.is_some() {
                Duration::from_millis(200)
            } else {
                LINE_EVERY
            };
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.report();
            }
        })
    }

    fn report(&self) {
        let c = &self.counters;
        let files_done =
            Self::get(&c.files_copied) + Self::get(&c.files_skipped) + Self::get(&c.files_failed);
        let files_found = Self::get(&c.files_found);
        let (done, total) = (Self::get(&c.bytes_done), Self::get(&c.bytes_found));
        let so_far = if self.walk_done.load(Ordering::Relaxed) {
            ""
        } else {
            " found so far"
        };
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!("files {files_done}/{files_found}{so_far}"));
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = Self::get(&c.bytes_copied) as f64 / secs;
        let eta = if done > 0 && !so_far.is_empty() {
            String::new()
        } else if done > 0 {
            let per_byte = secs / done as f64;
            format!(
                ", ETA {:.0} s",
                per_byte * total.saturating_sub(done) as f64
            )
        } else {
            String::new()
        };
        self.line(
            &format!(
                "s3mount migrate: {files_done}/{files_found} files{so_far}, {} of {}, {}/s{eta}",
                human_bytes(done),
                human_bytes(total),
                human_bytes(rate as u64),
            ),
            false,
        );
    }

    pub fn summary(&self) -> Summary {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let c = &self.counters;
        Summary {
            dry_run: self.dry_run,
            files_copied: Self::get(&c.files_copied),
            files_skipped: Self::get(&c.files_skipped),
            files_failed: Self::get(&c.files_failed),
            dirs_copied: Self::get(&c.dirs_copied),
            dirs_skipped: Self::get(&c.dirs_skipped),
            dirs_failed: Self::get(&c.dirs_failed),
            bytes_copied: Self::get(&c.bytes_copied),
            elapsed: self.started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_names_every_count() {
        let s = Summary {
            dry_run: false,
            files_copied: 3,
            files_skipped: 57,
            files_failed: 1,
            dirs_copied: 2,
            dirs_skipped: 9,
            dirs_failed: 0,
            bytes_copied: 3 << 20,
            elapsed: Duration::from_secs(2),
        };
        let line = s.to_string();
        assert!(line.starts_with("files: 3 copied, 57 skipped, 1 failed; directories: 2 copied, 9 skipped, 0 failed; bytes copied: 3145728 (3.0 MiB)"), "{line}");
        assert_eq!(s.failed(), 1);
    }
}
