//! The workload of `scripts/many-writers.sh` (and its CI-sized test): many processes
//! writing files through a mount, appenders and readers of log files, and the check of
//! what S3 then holds, read through the S3 API (not through the mount).
//!
//! - `write DIR --procs P --files N`: P child processes create the files `w{P}/f{i}` of
//!   1–256 KiB (content and size derived from i and --seed), each with open, write, close;
//!   any failed call (close included) is reported and makes the command fail. Prints
//!   `files=N secs=S files/s=R`.
//! - `verify PREFIX --procs P --files N`: GETs every object PREFIX + `w{i % P}/f{i}` (16 at
//!   a time) and
//!   compares its MD5 with the content's. Prints `verified=N`.
//! - `logs DIR --writers W --appends A`: W processes append A lines each to their own log
//!   `DIR/log{w}` (open O_APPEND, one write, close), while W other processes read the logs
//!   again and again through the mount and check every complete line (a line carries its
//!   writer, sequence number and a CRC-32 of itself). Prints the lines the readers checked.
//! - `verify-logs PREFIX --writers W --appends A`: each log in S3 holds its A lines, each
//!   whole, in order.
//!
//! Endpoint, credentials and bucket come from the standard AWS environment and
//! `S3MOUNT_TEST_BUCKET`, as for `rawbench`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures::{StreamExt, stream};
use md5::{Digest, Md5};
use rand::{Rng, RngCore, SeedableRng, rngs::SmallRng};

#[derive(Parser)]
#[command(about = "Many writers through a mount, checked through the S3 API")]
struct Args {
    /// Seed of the contents
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create N files with P processes under DIR/w{P}/
    Write {
        dir: PathBuf,
        #[arg(long, default_value_t = 32)]
        procs: usize,
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        /// (internal) run as writer number K of the P processes
        #[arg(long)]
        worker: Option<usize>,
    },
    /// Check the N files written by P processes in S3 under PREFIX (through the S3 API)
    Verify {
        prefix: String,
        #[arg(long, default_value_t = 32)]
        procs: usize,
        #[arg(long, default_value_t = 10_000)]
        files: usize,
    },
    /// W appenders and W readers of W log files under DIR
    Logs {
        dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        writers: usize,
        #[arg(long, default_value_t = 200)]
        appends: usize,
        /// (internal) run as appender K
        #[arg(long)]
        appender: Option<usize>,
        /// (internal) run as reader K
        #[arg(long)]
        reader: Option<usize>,
    },
    /// Check the W logs in S3 under PREFIX
    VerifyLogs {
        prefix: String,
        #[arg(long, default_value_t = 8)]
        writers: usize,
        #[arg(long, default_value_t = 200)]
        appends: usize,
    },
}

/// The content of file `i`: 1–256 KiB of bytes from a PRNG seeded by `seed` and `i`.
fn content(seed: u64, i: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003) ^ i as u64);
    let len = rng.random_range(1024..=256 * 1024);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

fn file_name(i: usize) -> String {
    format!("f{i:05}")
}

/// Runs `procs` copies of this program with `extra` arguments plus `--FLAG k`, and waits
/// for all; fails if any failed.
fn fan_out(args: &[String], flag: &str, procs: usize) -> Result<Vec<std::process::Output>> {
    let exe = std::env::current_exe()?;
    let children = (0..procs)
        .map(|k| {
            Command::new(&exe)
                .args(args)
                .args([flag, &k.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("starting a worker")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut outs = Vec::new();
    let mut failed = 0;
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            failed += 1;
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        outs.push(out);
    }
    if failed > 0 {
        bail!("{failed} of {procs} workers failed");
    }
    Ok(outs)
}

fn write_files(seed: u64, dir: &Path, procs: usize, files: usize, worker: usize) -> Result<()> {
    let sub = dir.join(format!("w{worker}"));
    std::fs::create_dir_all(&sub).with_context(|| format!("mkdir {}", sub.display()))?;
    let mut errors = 0;
    for i in (worker..files).step_by(procs) {
        let path = sub.join(file_name(i));
        let data = content(seed, i);
        let result = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&data)?;
            close(f)
        });
        if let Err(e) = result {
            eprintln!("{}: {e}", path.display());
            errors += 1;
        }
    }
    if errors > 0 {
        bail!("writer {worker}: {errors} files failed");
    }
    Ok(())
}

/// close(2) with its result (dropping a File ignores it).
fn close(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken from a File, so it is open and owned here alone.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn client() -> aws_sdk_s3::Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(
            aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1"),
        )
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn get(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GET {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    Ok(out.body.collect().await?.into_bytes().to_vec())
}

fn bucket() -> Result<String> {
    std::env::var("S3MOUNT_TEST_BUCKET").context("S3MOUNT_TEST_BUCKET is not set")
}

async fn verify(seed: u64, prefix: &str, files: usize, procs: usize) -> Result<()> {
    let (c, b) = (client().await, bucket()?);
    let results = stream::iter(0..files)
        .map(|i| {
            let (c, b) = (c.clone(), b.clone());
            let key = format!("{prefix}w{}/{}", i % procs, file_name(i));
            async move {
                let want = Md5::digest(content(seed, i));
                match get(&c, &b, &key).await {
                    Ok(data) if Md5::digest(&data) == want => Ok(()),
                    Ok(data) => Err(format!("{key}: {} bytes, MD5 differs", data.len())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let bad: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
    for b in bad.iter().take(10) {
        eprintln!("{b}");
    }
    if !bad.is_empty() {
        bail!("{} of {files} objects are missing or differ", bad.len());
    }
    println!("verified={files}");
    Ok(())
}

/// Line `seq` of appender `w`: `w seq payload crc\n`, the CRC-32 over what precedes it.
fn log_line(seed: u64, w: usize, seq: usize) -> String {
    let mut rng = SmallRng::seed_from_u64(seed ^ ((w as u64) << 32) ^ seq as u64);
    let payload: String = (0..rng.random_range(20..200))
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    let body = format!("{w} {seq} {payload}");
    format!("{body} {:08x}\n", crc32(body.as_bytes()))
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (!(crc & 1)).wrapping_add(1));
        }
    }
    !crc
}

/// Checks every complete line of a log of appender `w`: whole, its own, in order from 0.
/// Returns the lines checked.
fn check_log(w: usize, data: &[u8]) -> Result<usize, String> {
    let complete = match data.iter().rposition(|&b| b == b'\n') {
        Some(end) => &data[..=end],
        None => return Ok(0),
    };
    let text = std::str::from_utf8(complete).map_err(|_| "not UTF-8 (torn bytes)".to_string())?;
    for (expected_seq, line) in text.lines().enumerate() {
        let (body, crc) = line
            .rsplit_once(' ')
            .ok_or(format!("line {expected_seq}: {line:?}"))?;
        if format!("{:08x}", crc32(body.as_bytes())) != crc {
            return Err(format!("line {expected_seq}: bad checksum: {line:?}"));
        }
        let mut fields = body.split(' ');
        let (lw, seq) = (fields.next(), fields.next());
        if lw != Some(&w.to_string()) || seq != Some(&expected_seq.to_string()) {
            return Err(format!("line {expected_seq}: out of order: {line:?}"));
        }
    }
    Ok(text.lines().count())
}

fn append_log(seed: u64, dir: &Path, w: usize, appends: usize) -> Result<()> {
    let path = dir.join(format!("log{w}"));
    let appended = (0..appends).try_for_each(|seq| -> Result<()> {
        let line = log_line(seed, w, seq);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        f.write_all(line.as_bytes())
            .with_context(|| format!("append to {}", path.display()))?;
        close(f).with_context(|| format!("close of {} after append {seq}", path.display()))
    });
    // Done either way, so that the readers stop.
    std::fs::write(dir.join(format!("done{w}")), b"")?;
    appended
}

fn read_logs(dir: &Path, writers: usize, reader: usize) -> Result<()> {
    let (mut checked, mut reads) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let finished = (0..writers).all(|w| dir.join(format!("done{w}")).exists());
        for k in 0..writers {
            let w = (k + reader) % writers;
            let mut data = Vec::new();
            match std::fs::File::open(dir.join(format!("log{w}"))) {
                Ok(mut f) => {
                    f.read_to_end(&mut data)
                        .with_context(|| format!("reading log{w}"))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => bail!("open log{w}: {e}"),
            }
            reads += 1;
            checked += check_log(w, &data).map_err(|e| anyhow::anyhow!("log{w}: {e}"))?;
        }
        if finished || Instant::now() > deadline {
            break;
        }
    }
    println!("reads={reads} lines={checked}");
    Ok(())
}

async fn verify_logs(seed: u64, prefix: &str, writers: usize, appends: usize) -> Result<()> {
    let (c, b) = (client().await, bucket()?);
    for w in 0..writers {
        let data = get(&c, &b, &format!("{prefix}log{w}")).await?;
        let want: String = (0..appends).map(|seq| log_line(seed, w, seq)).collect();
        if data != want.as_bytes() {
            let lines = check_log(w, &data).unwrap_or(0);
            bail!(
                "log{w} in S3: {} bytes ({lines} good lines), expected {} bytes",
                data.len(),
                want.len()
            );
        }
    }
    println!("logs={writers} lines={}", writers * appends);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let seed = args.seed;
    match &args.cmd {
        Cmd::Write {
            dir,
            procs,
            files,
            worker: Some(k),
        } => write_files(seed, dir, *procs, *files, *k),
        Cmd::Write {
            dir, procs, files, ..
        } => {
            let started = Instant::now();
            let argv = vec![
                "--seed".into(),
                seed.to_string(),
                "write".into(),
                dir.display().to_string(),
                "--procs".into(),
                procs.to_string(),
                "--files".into(),
                files.to_string(),
            ];
            fan_out(&argv, "--worker", *procs)?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "files={files} secs={secs:.3} files/s={:.1}",
                *files as f64 / secs
            );
            Ok(())
        }
        Cmd::Verify {
            prefix,
            procs,
            files,
        } => verify(seed, prefix, *files, *procs).await,
        Cmd::Logs {
            dir,
            appends,
            appender: Some(w),
            ..
        } => append_log(seed, dir, *w, *appends),
        Cmd::Logs {
            dir,
            writers,
            reader: Some(k),
            ..
        } => read_logs(dir, *writers, *k),
        Cmd::Logs {
            dir,
            writers,
            appends,
            ..
        } => {
            let argv = |_: ()| -> Vec<String> {
                vec![
                    "--seed".into(),
                    seed.to_string(),
                    "logs".into(),
                    dir.display().to_string(),
                    "--writers".into(),
                    writers.to_string(),
                    "--appends".into(),
                    appends.to_string(),
                ]
            };
            let (a, r) = (argv(()), argv(()));
            let n = *writers;
            let appenders = std::thread::spawn(move || fan_out(&a, "--appender", n));
            let readers = fan_out(&r, "--reader", n)?;
            appenders.join().expect("appenders thread")?;
            let lines: usize = readers
                .iter()
                .filter_map(|o| {
                    let s = String::from_utf8_lossy(&o.stdout);
                    s.split("lines=").nth(1)?.trim().parse::<usize>().ok()
                })
                .sum();
            println!(
                "appends={} lines_checked_by_readers={lines}",
                writers * appends
            );
            Ok(())
        }
        Cmd::VerifyLogs {
            prefix,
            writers,
            appends,
        } => verify_logs(seed, prefix, *writers, *appends).await,
    }
}
