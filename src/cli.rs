//! The command line: clap arguments, environment fallbacks (including the `S3_*` names
//! document applications use), size suffixes, and validation into a [`MountConfig`].
//! The fstab form (`s3mount BUCKET DIR -o a=b,c`) is rewritten into these long options
//! beforehand by [`crate::mount_options`]. Invariant: bad values are refused here with a
//! message naming the option, before anything is mounted.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nix::unistd::{getgid, getuid};

use crate::check::CheckConfig;
use crate::config::{MountConfig, default_cache_dir};
use crate::fs::FsConfig;
use crate::layout::normalize_prefix;
use crate::migrate::MigrateConfig;
use crate::store::object_options::ObjectOptions;
use crate::store::s3::{S3Settings, StaticCredentials};
use crate::trash::TrashTarget;

#[derive(Parser, Debug)]
#[command(
    name = "s3mount",
    version,
    about = "Mount an S3 bucket prefix as a file system"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount BUCKET (or s3://BUCKET/PREFIX/) on MOUNTPOINT.
    Mount(MountArgs),
    /// Copy LOCAL_DIR into BUCKET (or s3://BUCKET/PREFIX/) as a mount would have written
    /// it; a rerun copies only what is missing or changed.
    Migrate(MigrateArgs),
    /// Check that BUCKET (or s3://BUCKET/PREFIX/) can be mounted with these options:
    /// credentials, endpoint, bucket, list, put, get, delete and the object options, one
    /// line each; exit 0 only if a mount would work.
    Check(CheckArgs),
    /// Pending and failed uploads and the counters of a running mount; exits 1 while
    /// uploads are failing, 2 if MOUNTPOINT is not an s3mount.
    Status(StatusArgs),
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The mount point of a running s3mount.
    pub mountpoint: PathBuf,
    /// Print the mount's status document (JSON) as it is.
    #[arg(long)]
    pub json: bool,
}

/// Seconds one attempt of a quick S3 request may take (`--request-timeout`).
const DEFAULT_REQUEST_TIMEOUT: f64 = 20.0;

/// Where and as whom to connect: shared by every subcommand that talks to S3.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// Key prefix under which the mount lives (`docs/`: file /a.pdf is key docs/a.pdf).
    #[arg(long, env = "S3_LOCATION")]
    pub prefix: Option<String>,
    /// S3-compatible endpoint (also AWS_ENDPOINT_URL, S3_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Region (also AWS_REGION).
    #[arg(long)]
    pub region: Option<String>,
    /// Path-style addressing (MinIO, Ceph, Garage, local servers).
    #[arg(long)]
    pub force_path_style: bool,
    /// Named profile of the AWS config files (also AWS_PROFILE, S3_SESSION_PROFILE).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Seconds one attempt of a quick S3 request (HEAD, LIST, DELETE, a GET until its
    /// first byte) may take before it is retried (0.5..=600, default 20). Uploads and
    /// server-side copies fail only after 60 s without a byte from the server.
    #[arg(long, value_name = "SECS")]
    pub request_timeout: Option<f64>,
}

/// Encryption, storage class and ACL of every object written, copies included.
#[derive(Args, Debug, Clone, Default)]
pub struct ObjectOptionArgs {
    /// Server-side encryption of every object written: AES256 or aws:kms.
    #[arg(long, value_name = "AES256|aws:kms", env = "S3MOUNT_SSE")]
    pub sse: Option<String>,
    /// KMS key (id, alias or ARN) for aws:kms; given alone, it implies --sse aws:kms.
    #[arg(long, value_name = "ID", env = "S3MOUNT_SSE_KMS_KEY_ID")]
    pub sse_kms_key_id: Option<String>,
    /// Storage class of every object written (STANDARD, STANDARD_IA, GLACIER_IR, ...).
    #[arg(long, value_name = "CLASS", env = "S3MOUNT_STORAGE_CLASS")]
    pub storage_class: Option<String>,
    /// Canned ACL of every object written (private, bucket-owner-full-control, ...).
    #[arg(long, value_name = "CANNED", env = "S3MOUNT_ACL")]
    pub acl: Option<String>,
}

impl ObjectOptionArgs {
    /// The options checked against what S3 accepts.
    pub fn validate(&self) -> Result<ObjectOptions, String> {
        ObjectOptions::parse(
            self.sse.as_deref(),
            self.sse_kms_key_id.as_deref(),
            self.storage_class.as_deref(),
            self.acl.as_deref(),
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// BUCKET, or s3://BUCKET/PREFIX/
    pub source: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub object_options: ObjectOptionArgs,
    /// The mount's recycle bin (as `mount --trash`): checked to exist and take objects.
    #[arg(long, value_name = "PREFIX|s3://BUCKET/PREFIX/", env = "S3MOUNT_TRASH")]
    pub trash: Option<String>,
}

impl CheckArgs {
    pub fn into_config(self) -> Result<CheckConfig, String> {
        let (bucket, prefix) = self.connection.bucket_and_prefix(&self.source)?;
        let mut s3 = self.connection.s3_settings(&bucket)?;
        s3.object_options = self.object_options.validate()?;
        let trash = (self.trash.as_deref())
            .map(|t| TrashTarget::parse(t, &bucket, &prefix))
            .transpose()?;
        Ok(CheckConfig {
            s3,
            bucket,
            prefix,
            trash,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// BUCKET, or s3://BUCKET/PREFIX/
    pub source: String,
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub object_options: ObjectOptionArgs,
    /// Local write-back cache directory.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the in-memory read cache (default 40MiB; reads in flight add at most as much).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Refuse all writes with EROFS.
    #[arg(long)]
    pub read_only: bool,
    /// close() returns once the data is durable in the cache dir; uploads continue in
    /// the background (default: close() returns once S3 has the object).
    #[arg(long)]
    pub write_back: bool,
    /// With --write-back, seconds a closed file waits before its upload starts (0 to
    /// 3600, default 1): a file renamed, rewritten or deleted within them is uploaded
    /// once under its last name, or not at all.
    #[arg(long, value_name = "SECS")]
    pub write_back_delay: Option<f64>,
    /// Owner of files without stored ownership (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permissions of files without stored mode, octal (default 0644).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub file_mode: Option<u16>,
    /// Permissions of directories without stored mode, octal (default 0755).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub dir_mode: Option<u16>,
    /// Let other users access the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Let root access the mount.
    #[arg(long)]
    pub allow_root: bool,
    /// Multipart upload part size (5MiB..5GiB, default 8MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub part_size: Option<u64>,
    /// Parts uploaded in parallel (1..=64, default 4).
    #[arg(long, value_name = "N")]
    pub upload_concurrency: Option<usize>,
    /// Parts per multipart upload the service takes (1..=10000, default 10000; Scaleway:
    /// 1000). Part sizes grow so that the largest object still fits.
    #[arg(long, value_name = "N")]
    pub max_parts: Option<u32>,
    /// Bytes of upload request bodies in memory at once, for all uploads together
    /// (at least 1MiB, default 16MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub upload_memory: Option<u64>,
    /// Seconds attributes and listings are trusted before S3 is asked again (default 1).
    #[arg(long, value_name = "SECS")]
    pub metadata_ttl: Option<f64>,
    /// Seconds the presigned URL in the `user.s3.url` attribute stays valid
    /// (1..=604800, default 3600).
    #[arg(long, value_name = "SECS")]
    pub url_expiry: Option<u64>,
    /// List directories without a HEAD per entry: `ls -l` of large directories as fast as
    /// LIST, but listed entries show the default mode and owner (and symlinks as files)
    /// until they are looked up by name.
    #[arg(long)]
    pub fast_listing: bool,
    /// Serve Prometheus counters at http://ADDR/metrics while mounted: HOST:PORT, or
    /// PORT alone for 127.0.0.1:PORT.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Entries of the persistent metadata index in the cache dir, which lets a listing
    /// skip the HEAD of every object unchanged since it was last read (default 500000,
    /// a few hundred bytes each; 0 turns it off).
    #[arg(long, value_name = "N")]
    pub metadata_index_entries: Option<u64>,
    /// Keep self-validating metadata index objects in the bucket, under the mount's
    /// hidden `.s3mount-index/` prefix, so that another host's first `ls -l` of a
    /// directory costs one GET instead of a HEAD per entry (also -o
    /// shared_metadata_index).
    #[arg(long)]
    pub shared_metadata_index: bool,
    /// Allow mounting over a non-empty directory.
    #[arg(long)]
    pub nonempty: bool,
    /// Stay in the foreground (do not daemonize).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// error, warn, info, debug or trace (also RUST_LOG).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Recycle bin: a deleted file is first copied (with its metadata) to PREFIX in
    /// the mount's bucket, or to s3://BUCKET/PREFIX/, at its path in the mount (also
    /// S3MOUNT_TRASH).
    #[arg(long, value_name = "PREFIX|s3://BUCKET/PREFIX/", env = "S3MOUNT_TRASH")]
    pub trash: Option<String>,
    /// Write the log to this file instead of stderr (reopened on SIGHUP, for logrotate).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Files on the mount cannot be executed (the fstab option `noexec`).
    #[arg(long)]
    pub noexec: bool,
    /// Mount options in fstab form: -o name=value,flag (every long option works here).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// `8MiB`, `1GiB`, `512k`, `100` (bytes); KB/MB/GB are decimal.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 8MiB, 1GiB, 65536)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB, GiB)")),
    };
    let bytes = num * mult as f64;
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes as u64)
}

/// `9100`, `:9100` (both 127.0.0.1:9100), `0.0.0.0:9100`, `[::1]:9100`, `localhost:9100`.
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let port_only = s.strip_prefix(':').unwrap_or(s);
    let addr = if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = port_only
            .parse()
            .map_err(|_| format!("'{s}': a port is 1 to 65535"))?;
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        s.to_socket_addrs()
            .map_err(|e| format!("'{s}' is not HOST:PORT ({e})"))?
            .next()
            .ok_or_else(|| format!("'{s}' names no address"))?
    };
    if addr.port() == 0 {
        return Err(format!("'{s}': give a port (1 to 65535)"));
    }
    Ok(addr)
}

pub fn parse_mode(s: &str) -> Result<u16, String> {
    let v = u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("'{s}' is not an octal mode (e.g. 0644)"))?;
    if v > 0o7777 {
        return Err(format!("'{s}' is larger than 07777"));
    }
    Ok(v)
}

fn env_any(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// Splits `s3://bucket/prefix/` or `bucket`.
fn parse_source(source: &str) -> Result<(String, Option<String>), String> {
    let rest = source.strip_prefix("s3://").unwrap_or(source);
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, Some(p.to_string()).filter(|p| !p.is_empty())),
        None => (rest, None),
    };
    if bucket.is_empty() {
        return Err(format!("'{source}' names no bucket"));
    }
    if source.starts_with("s3://") || prefix.is_none() {
        return Ok((bucket.to_string(), prefix));
    }
    Err(format!(
        "'{source}': give the bucket alone and the prefix with --prefix, or use s3://BUCKET/PREFIX/"
    ))
}

/// The numeric settings, checked against their ranges.
struct Limits {
    part_size: u64,
    upload_concurrency: usize,
    max_parts: u32,
    upload_memory: u64,
    cache_size: u64,
    metadata_ttl: f64,
    url_expiry: u64,
    write_back_delay: f64,
}

impl MountArgs {
    pub fn into_config(self) -> Result<MountConfig, String> {
        let (bucket, prefix) = self.connection.bucket_and_prefix(&self.source)?;
        let limits = self.limits()?;
        let mut s3 = self.connection.s3_settings(&bucket)?;
        s3.object_options = self.object_options.validate()?;
        let trash = (self.trash.as_deref())
            .map(|t| TrashTarget::parse(t, &bucket, &prefix))
            .transpose()?;
        let uid = self.uid.unwrap_or_else(|| getuid().as_raw());
        let gid = self.gid.unwrap_or_else(|| getgid().as_raw());
        let mountpoint = self.mountpoint;
        let cache_dir = self
            .cache_dir
            .unwrap_or_else(|| default_cache_dir(&bucket, &prefix, &mountpoint));
        Ok(MountConfig {
            s3,
            fs: FsConfig {
                prefix,
                uid,
                gid,
                file_mode: self.file_mode.unwrap_or(0o644),
                dir_mode: self.dir_mode.unwrap_or(0o755),
                metadata_ttl: Duration::from_secs_f64(limits.metadata_ttl),
                read_only: self.read_only,
                part_size: limits.part_size,
                upload_concurrency: limits.upload_concurrency,
                max_parts: limits.max_parts,
                upload_memory: limits.upload_memory,
                cache_dir,
                cache_size: limits.cache_size as usize,
                write_back: self.write_back,
                write_back_delay: Duration::from_secs_f64(limits.write_back_delay),
                url_expiry: Duration::from_secs(limits.url_expiry),
                fast_listing: self.fast_listing,
                metadata_index_entries: self
                    .metadata_index_entries
                    .unwrap_or(crate::meta_index::DEFAULT_MAX_ENTRIES),
                shared_metadata_index: self.shared_metadata_index,
            },
            bucket,
            mountpoint,
            allow_other: self.allow_other,
            allow_root: self.allow_root,
            nonempty: self.nonempty,
            metrics_addr: self.metrics_addr,
            foreground: self.foreground,
            log_level: self.log_level,
            trash,
            log_file: self.log_file,
            noexec: self.noexec,
        })
    }

    /// The numeric settings with their defaults, and the log level, checked.
    fn limits(&self) -> Result<Limits, String> {
        let part_size = self.part_size.unwrap_or(8 << 20);
        if !(5 << 20..=5 << 30).contains(&part_size) {
            return Err(format!(
                "invalid value for --part-size: {part_size} bytes; S3 needs 5MiB to 5GiB"
            ));
        }
        let upload_concurrency = self.upload_concurrency.unwrap_or(4);
        if !(1..=64).contains(&upload_concurrency) {
            return Err(format!(
                "invalid value for --upload-concurrency: {upload_concurrency}; use 1 to 64"
            ));
        }
        let max_parts = self.max_parts.unwrap_or(10_000);
        if !(1..=10_000).contains(&max_parts) {
            return Err(format!(
                "invalid value for --max-parts: {max_parts}; S3 takes 1 to 10000 parts"
            ));
        }
        let upload_memory = self.upload_memory.unwrap_or(16 << 20);
        if upload_memory < 1 << 20 {
            return Err(format!(
                "invalid value for --upload-memory: {upload_memory} bytes; use at least 1MiB"
            ));
        }
        let cache_size = self.cache_size.unwrap_or(40 << 20);
        if cache_size < 4 << 20 {
            return Err("invalid value for --cache-size: use at least 4MiB".into());
        }
        let ttl = self.metadata_ttl.unwrap_or(1.0);
        if !(0.0..=86_400.0).contains(&ttl) {
            return Err(format!(
                "invalid value for --metadata-ttl: {ttl}; use 0 to 86400 seconds"
            ));
        }
        let url_expiry = self.url_expiry.unwrap_or(3600);
        if !(1..=604_800).contains(&url_expiry) {
            return Err(format!(
                "invalid value for --url-expiry: {url_expiry}; use 1 to 604800 seconds (7 days)"
            ));
        }
        let write_back_delay = self.write_back_delay.unwrap_or(1.0);
        if !(0.0..=3600.0).contains(&write_back_delay) {
            return Err(format!(
                "invalid value for --write-back-delay: {write_back_delay}; use 0 to 3600 seconds"
            ));
        }
        if let Some(level) = &self.log_level
            && level.parse::<log::LevelFilter>().is_err()
        {
            return Err(format!(
                "invalid value for --log-level: '{level}'; use error, warn, info, debug or trace"
            ));
        }
        Ok(Limits {
            part_size,
            upload_concurrency,
            max_parts,
            upload_memory,
            cache_size,
            metadata_ttl: ttl,
            url_expiry,
            write_back_delay,
        })
    }
}

impl ConnectionArgs {
    /// The bucket and the normalized prefix, from `source` (BUCKET or
    /// s3://BUCKET/PREFIX/) and `--prefix`.
    pub fn bucket_and_prefix(&self, source: &str) -> Result<(String, String), String> {
        let (bucket, source_prefix) = parse_source(source)?;
        let prefix = match (source_prefix, self.prefix.clone()) {
            (Some(a), Some(b)) if normalize_prefix(&a) != normalize_prefix(&b) => {
                return Err(format!(
                    "the prefix is given twice and differs: '{a}' in the source, '{b}' by --prefix"
                ));
            }
            (a, b) => normalize_prefix(&a.or(b).unwrap_or_default()),
        };
        Ok((bucket, prefix))
    }

    /// Endpoint, region, profile and static credentials, from the options or the
    /// environment.
    pub fn s3_settings(&self, bucket: &str) -> Result<S3Settings, String> {
        let endpoint_url = self
            .endpoint_url
            .clone()
            .or_else(|| env_any(&["AWS_ENDPOINT_URL", "S3_ENDPOINT_URL"]));
        if let Some(url) = &endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "invalid value for --endpoint-url: '{url}' must start with http:// or https://"
            ));
        }
        let profile = self
            .profile
            .clone()
            .or_else(|| env_any(&["AWS_PROFILE", "S3_SESSION_PROFILE"]));
        let static_credentials = match (
            env_any(&["AWS_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID"]),
            env_any(&["AWS_SECRET_ACCESS_KEY", "S3_SECRET_ACCESS_KEY"]),
        ) {
            (Some(id), Some(secret)) if profile.is_none() => Some(StaticCredentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env_any(&["AWS_SESSION_TOKEN", "S3_SESSION_TOKEN"]),
            }),
            _ => None,
        };
        let request_timeout = self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if !(0.5..=600.0).contains(&request_timeout) {
            return Err(format!(
                "invalid value for --request-timeout: {request_timeout}; use 0.5 to 600 seconds"
            ));
        }
        Ok(S3Settings {
            bucket: bucket.to_string(),
            endpoint_url,
            request_timeout: Some(Duration::from_secs_f64(request_timeout)),
            region: self.region.clone().or_else(|| env_any(&["AWS_REGION"])),
            force_path_style: self.force_path_style,
            profile,
            static_credentials,
            max_attempts: 4,
            ..S3Settings::default()
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// The folder to copy; it is only read (unless --delete-source).
    pub local_dir: PathBuf,
    /// BUCKET, or s3://BUCKET/PREFIX/
    pub target: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub object_options: ObjectOptionArgs,
    /// Files, and parts of large files, uploaded in parallel (1..=256, default 16).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Files larger than this are uploaded in parts of this size (5MiB..5GiB, default
    /// 8MiB, as the mount).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub part_size: Option<u64>,
    /// List what would be copied; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete each source file once S3 has verified its object, then the folders left
    /// empty (LOCAL_DIR itself stays).
    #[arg(long)]
    pub delete_source: bool,
    /// error, warn, info, debug or trace (also RUST_LOG).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

impl MigrateArgs {
    /// The S3 settings, the migration's own and the log level, checked.
    pub fn into_job(self) -> Result<(S3Settings, MigrateConfig, Option<String>), String> {
        let (bucket, prefix) = self.connection.bucket_and_prefix(&self.target)?;
        let mut s3 = self.connection.s3_settings(&bucket)?;
        s3.object_options = self.object_options.validate()?;
        let concurrency = self.concurrency.unwrap_or(16);
        if !(1..=256).contains(&concurrency) {
            return Err(format!(
                "invalid value for --concurrency: {concurrency}; use 1 to 256"
            ));
        }
        let part_size = self.part_size.unwrap_or(8 << 20);
        if !(5 << 20..=5 << 30).contains(&part_size) {
            return Err(format!(
                "invalid value for --part-size: {part_size} bytes; S3 needs 5MiB to 5GiB"
            ));
        }
        if let Some(level) = &self.log_level
            && level.parse::<log::LevelFilter>().is_err()
        {
            return Err(format!(
                "invalid value for --log-level: '{level}'; use error, warn, info, debug or trace"
            ));
        }
        if self.dry_run && self.delete_source {
            return Err("--dry-run and --delete-source exclude each other".into());
        }
        Ok((
            s3,
            MigrateConfig {
                source: self.local_dir,
                prefix,
                concurrency,
                part_size,
                dry_run: self.dry_run,
                delete_source: self.delete_source,
            },
            self.log_level,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("8XB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(parse_source("b"), Ok(("b".into(), None)));
        assert_eq!(
            parse_source("s3://b/docs/x/"),
            Ok(("b".into(), Some("docs/x/".into())))
        );
        assert_eq!(parse_source("s3://b"), Ok(("b".into(), None)));
        assert!(parse_source("b/docs").is_err());
    }

    #[test]
    fn bad_values_name_the_option() {
        let cli = Cli::try_parse_from(args(&[
            "s3mount",
            "mount",
            "b",
            "/m",
            "--part-size",
            "1MiB",
        ]))
        .unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("parsed as mount")
        };
        let err = m.into_config().unwrap_err();
        assert!(err.contains("--part-size"), "{err}");
        let err = Cli::try_parse_from(args(&["s3mount", "mount", "b", "/m", "--file-mode", "999"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--file-mode"), "{err}");
        for bad in ["nine", "70000", "0", ":0", "9100:x"] {
            let err = Cli::try_parse_from(args(&[
                "s3mount",
                "mount",
                "b",
                "/m",
                "--metrics-addr",
                bad,
            ]))
            .unwrap_err()
            .to_string();
            assert!(err.contains("--metrics-addr"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_metrics_port_alone_listens_on_localhost() {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(parse_metrics_addr("9100"), Ok(local(9100)));
        assert_eq!(parse_metrics_addr(":9101"), Ok(local(9101)));
        assert_eq!(parse_metrics_addr("127.0.0.1:9102"), Ok(local(9102)));
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9103"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 9103)))
        );
        assert_eq!(
            parse_metrics_addr("[::1]:9104").map(|a| a.is_ipv6()),
            Ok(true)
        );
    }
}
