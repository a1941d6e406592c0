//! The daemon's log: the `log` records of s3mount and, through tracing's `log` feature,
//! the `tracing` events of the AWS SDK (retries, throttling, timeouts at debug; requests
//! and responses at trace), written to stderr or to a log file that [`reopen`] (SIGHUP)
//! opens anew after a log rotation.
//!
//! Invariant: every line passes [`redact`] before it is written, so that no line carries
//! a registered secret (the static secret key and session token, and every key the
//! credential chain resolved: [`add_secret`]), a request signature (`Signature=…`,
//! `X-Amz-Signature=…`) or a security token (`X-Amz-Security-Token…`), at any level.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// What a redacted value is replaced with.
const REDACTED: &str = "<redacted>";
/// Names after which a value is a secret: a signature (of an Authorization header or a
/// presigned URL) or a session token (header or query parameter). Lower case.
const SECRET_NAMES: &[&str] = &["signature", "x-amz-security-token"];
/// The shortest value taken for a secret after one of [`SECRET_NAMES`]: signatures are
/// 64 hex digits and tokens longer, while prose ("the signature you provided") has
/// short words there.
const MIN_SECRET_VALUE: usize = 16;
/// Secrets shorter than this are not registered (they would blank ordinary words).
const MIN_SECRET_LEN: usize = 8;
/// Registered secrets kept (the oldest go first; keys rotate rarely).
const MAX_SECRETS: usize = 64;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

/// Starts logging at `level` for s3mount and the SDK (None: `RUST_LOG`, or info), to
/// `file` if given (appended to, created mode 0640) or else to stderr. Fails, naming the
/// option, when the file cannot be opened.
pub fn init(level: Option<&str>, file: Option<&Path>) -> Result<(), String> {
    let filters = match level {
        Some(l) => {
            // The SDK logs retries and timeouts at debug and every request at trace.
            let sdk = if matches!(l, "debug" | "trace") {
                l
            } else {
                "warn"
            };
            format!("warn,fuser=error,s3mount={l},aws={sdk}")
        }
        None => {
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,fuser=error,s3mount=info".into())
        }
    };
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&filters).format(|buf, record| {
        let text = record.args().to_string();
        writeln!(
            buf,
            "[{} {:<5} {}] {}",
            buf.timestamp_millis(),
            record.level(),
            record.target(),
            redact(&text)
        )
    });
    if let Some(path) = file {
        let log = LogFile::open(path)
            .map_err(|e| format!("invalid value for --log-file: {}: {e}", path.display()))?;
        let log = Arc::new(log);
        let _ = LOG_FILE.set(log.clone());
        builder.target(env_logger::Target::Pipe(Box::new(SharedLog(log))));
    }
    let _ = builder.try_init();
    Ok(())
}

/// Opens the log file anew (after logrotate moved it away). None without a log file.
pub fn reopen() -> Option<io::Result<()>> {
    LOG_FILE.get().map(|log| log.reopen())
}

/// Whether the log goes to a file of its own (not stderr).
pub fn has_log_file() -> bool {
    LOG_FILE.get().is_some()
}

/// Registers a secret (a secret key or session token) that no log line may show.
pub fn add_secret(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if secrets.iter().any(|s| s == secret) {
        return;
    }
    if secrets.len() >= MAX_SECRETS {
        secrets.remove(0);
    }
    secrets.push(secret.to_string());
}

/// `line` with every registered secret, signature and security token replaced by
/// `<redacted>`.
pub fn redact(line: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(line);
    {
        let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
            }
        }
    }
    for name in SECRET_NAMES {
        if out.to_ascii_lowercase().contains(name) {
            out = Cow::Owned(redact_values_after(&out, name));
        }
    }
    out
}

/// Replaces the value that follows each (case-insensitive) `name`, after separators
/// such as `=`, `: ` or `": "`, when it looks like a secret (long enough).
fn redact_values_after(line: &str, name: &str) -> String {
    let lower = line.to_ascii_lowercase();
    let mut out = String::with_capacity(line.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(name) {
        let after_name = pos + found + name.len();
        let value_start = after_name
            + line[after_name..]
                .bytes()
                .take_while(|b| matches!(b, b'"' | b'\'' | b':' | b'=' | b' ' | b'\\'))
                .count();
        let value_len = line[value_start..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || b"+/=%_.~-".contains(b))
            .count();
        out.push_str(&line[pos..value_start]);
        if value_len >= MIN_SECRET_VALUE {
            out.push_str(REDACTED);
        } else {
            out.push_str(&line[value_start..value_start + value_len]);
        }
        pos = value_start + value_len;
    }
    out.push_str(&line[pos..]);
    out
}

/// The log file and its path, to open it again.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(Self::open_file(path)?),
        })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
    }

    fn reopen(&self) -> io::Result<()> {
        let fresh = Self::open_file(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// The writer env_logger writes each formatted line to (one `write_all` per line).
struct SharedLog(Arc<LogFile>);

impl Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_and_tokens_are_redacted() {
        let sig = "a".repeat(64);
        let url = format!(
            "http://h/b/k?X-Amz-Credential=AK%2F2026&X-Amz-Security-Token=IQoJb3JpZ2luX2VjE%2B%2F&X-Amz-Signature={sig}&x=1"
        );
        let out = redact(&url);
        assert!(!out.contains(&sig), "{out}");
        assert!(!out.contains("IQoJb3JpZ2luX2VjE"), "{out}");
        assert!(out.contains("X-Amz-Signature=<redacted>&x=1"), "{out}");
        let header = format!(
            "{{\"authorization\": \"AWS4-HMAC-SHA256 Credential=AK/2026, SignedHeaders=host, Signature={sig}\", \"x-amz-security-token\": \"FwoGZXIvYXdzEJr//////////wEaDE\"}}"
        );
        let out = redact(&header);
        assert!(
            !out.contains(&sig) && !out.contains("FwoGZXIvYXdzEJr"),
            "{out}"
        );
        assert!(out.contains("Signature=<redacted>\""), "{out}");
    }

    #[test]
    fn prose_about_signatures_is_kept() {
        let text = "HTTP 403 SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided";
        assert_eq!(redact(text), text);
        assert_eq!(redact("no secrets here"), "no secrets here");
    }

    #[test]
    fn registered_secrets_are_redacted_and_short_ones_ignored() {
        add_secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        add_secret("short");
        let out = redact("key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY in a short line");
        assert_eq!(out, "key <redacted> in a short line");
    }
}
