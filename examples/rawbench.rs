//! The plain S3 client that `scripts/bench.sh` compares the mount against: aws-sdk-s3 used
//! directly, with the concurrency a good S3 client uses (by default 8 × 8 MiB parts or ranges in
//! flight, 8 small objects in flight). Every write sends fresh random data, generated before the clock
//! starts (Garage deduplicates identical blocks). Endpoint, credentials and region come from the
//! standard AWS environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …), the bucket from
//! `S3MOUNT_TEST_BUCKET`; addressing is path-style. Each command prints one `key=value` line.
//!
//! `cargo run --release --example rawbench -- put-big bench/big 1GiB`

use std::time::Instant;

use anyhow::{Context, Result, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt, stream};
use rand::{RngCore, SeedableRng, rngs::SmallRng};

#[derive(Parser)]
#[command(about = "Plain aws-sdk-s3 baseline for scripts/bench.sh")]
struct Args {
    /// Bucket (default: $S3MOUNT_TEST_BUCKET)
    #[arg(long, env = "S3MOUNT_TEST_BUCKET")]
    bucket: String,
    /// Part size of multipart uploads and ranged GETs
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    part_size: u64,
    /// Requests in flight at once
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Send PUT bodies with UNSIGNED-PAYLOAD instead of a SHA-256 in the signature (plain HTTP)
    #[arg(long)]
    unsigned_payload: bool,
    /// Send a CRC32 checksum with every PUT body (the SDK's default; off here)
    #[arg(long)]
    checksums: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upload SIZE bytes of fresh random data to KEY (parallel multipart above the part size)
    PutBig {
        key: String,
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Download KEY with parallel ranged GETs, discarding the data
    GetBig { key: String },
    /// Upload N objects PREFIX000000.. of SIZE fresh random bytes each, --jobs at a time
    PutMany {
        prefix: String,
        n: usize,
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Download the N objects PREFIX000000.., --jobs at a time
    GetMany { prefix: String, n: usize },
    /// List PREFIX with ListObjectsV2 and delimiter `/`, counting entries (not the `PREFIX` marker)
    List { prefix: String },
    /// Print the size and ETag of KEY
    Head { key: String },
    /// LIST PREFIX (as `list`), then HEAD every object listed, --jobs at a time: what a cold
    /// `ls -l` that honours per-object metadata costs a plain client
    ListHead { prefix: String },
    /// DELETE the N objects PREFIX000000.., --jobs at a time
    DeleteMany { prefix: String, n: usize },
    /// Poll (LIST every 50 ms, at most TIMEOUT seconds) until PREFIX holds N objects of SIZE
    /// bytes each; prints the Unix time at which it first did (how long a mount that uploads
    /// after close takes until the data is in S3)
    WaitFor {
        prefix: String,
        n: usize,
        #[arg(value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("K", 1 << 10),
        ("M", 1 << 20),
        ("G", 1 << 30),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

fn random_bytes(len: u64) -> Bytes {
    let mut buf = vec![0u8; usize::try_from(len).expect("size fits in memory")];
    SmallRng::from_rng(&mut rand::rng()).fill_bytes(&mut buf);
    Bytes::from(buf)
}

fn many_key(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:06}")
}

fn sdk<E: std::error::Error>(what: String) -> impl FnOnce(E) -> anyhow::Error {
    move |e| anyhow::anyhow!("{what}: {}", DisplayErrorContext(e))
}

async fn client(a: &Args) -> Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(
            aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1"),
        )
        // A server in trouble (Garage's sqlite answering "database is locked") must end
        // the benchmark with an error, not hang it.
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(std::time::Duration::from_secs(60))
                .operation_timeout(std::time::Duration::from_secs(300))
                .build(),
        )
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .request_checksum_calculation(if a.checksums {
            RequestChecksumCalculation::WhenSupported
        } else {
            RequestChecksumCalculation::WhenRequired
        })
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(conf)
}

/// Reads a whole GET body, returns its length; the data is dropped chunk by chunk.
async fn drain(c: &Client, bucket: &str, key: &str, range: Option<String>) -> Result<u64> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_range(range)
        .send()
        .await
        .map_err(sdk(format!("GET {key}")))?;
    let mut body = out.body;
    let mut n = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .with_context(|| format!("GET {key} body"))?
    {
        n += chunk.len() as u64;
    }
    Ok(n)
}

async fn put(a: &Args, c: &Client, bucket: &str, key: &str, body: Bytes) -> Result<()> {
    let req = c
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body));
    let res = if a.unsigned_payload {
        req.customize().disable_payload_signing().send().await
    } else {
        req.send().await
    };
    res.map_err(sdk(format!("PUT {key}")))?;
    Ok(())
}

async fn put_big(a: &Args, c: &Client, bucket: &str, key: &str, size: u64) -> Result<()> {
    let data = random_bytes(size);
    let busy = machine_busy_secs();
    let start = Instant::now();
    if size <= a.part_size {
        put(a, c, bucket, key, data).await?;
    } else {
        let up = c
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(sdk(format!("CreateMultipartUpload {key}")))?;
        let id = up.upload_id().context("no upload id")?.to_string();
        let parts = size.div_ceil(a.part_size);
        let mut done: Vec<CompletedPart> = stream::iter(0..parts)
            .map(|i| {
                let body = data
                    .slice((i * a.part_size) as usize..((i + 1) * a.part_size).min(size) as usize);
                let n = i as i32 + 1;
                let id = &id;
                async move {
                    let req = c
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(id)
                        .part_number(n)
                        .body(ByteStream::from(body));
                    let r = if a.unsigned_payload {
                        req.customize().disable_payload_signing().send().await
                    } else {
                        req.send().await
                    }
                    .map_err(sdk(format!("UploadPart {n} of {key}")))?;
                    Ok::<_, anyhow::Error>(
                        CompletedPart::builder()
                            .part_number(n)
                            .set_e_tag(r.e_tag)
                            .build(),
                    )
                }
            })
            .buffer_unordered(a.jobs)
            .try_collect()
            .await?;
        done.sort_by_key(|p| p.part_number());
        c.complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(sdk(format!("CompleteMultipartUpload {key}")))?;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = machine_busy_secs() - busy;
    println!(
        "put-big key={key} bytes={size} secs={secs:.3} MB/s={:.1} cpu={cpu:.2}",
        size as f64 / secs / 1e6
    );
    Ok(())
}

async fn get_big(a: &Args, c: &Client, bucket: &str, key: &str) -> Result<()> {
    let busy = machine_busy_secs();
    let start = Instant::now();
    let head = c
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(sdk(format!("HEAD {key}")))?;
    let size = head.content_length().unwrap_or(0).max(0) as u64;
    let got: u64 = stream::iter(0..size.div_ceil(a.part_size))
        .map(|i| {
            let range = format!(
                "bytes={}-{}",
                i * a.part_size,
                ((i + 1) * a.part_size).min(size) - 1
            );
            drain(c, bucket, key, Some(range))
        })
        .buffer_unordered(a.jobs)
        .try_fold(0, |acc, n| async move { Ok(acc + n) })
        .await?;
    if got != size {
        bail!("GET {key}: got {got} bytes, expected {size}");
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = machine_busy_secs() - busy;
    println!(
        "get-big key={key} bytes={size} secs={secs:.3} MB/s={:.1} cpu={cpu:.2}",
        size as f64 / secs / 1e6
    );
    Ok(())
}

/// CPU time all cores of the machine have spent busy so far (user, nice, system, irq and
/// softirq in `/proc/stat`), in seconds: the `cpu=` of put-big and get-big is its growth over
/// the timed part, the server's CPU included (0 where `/proc/stat` cannot be read).
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    // USER_HZ is 100 on every Linux architecture this builds for.
    busy as f64 / 100.0
}

async fn put_many(
    a: &Args,
    c: &Client,
    bucket: &str,
    prefix: &str,
    n: usize,
    size: u64,
) -> Result<()> {
    let data = random_bytes(size * n as u64);
    let start = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let body = data.slice(i * size as usize..(i + 1) * size as usize);
            let key = many_key(prefix, i);
            async move { put(a, c, bucket, &key, body).await }
        })
        .buffer_unordered(a.jobs)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "put-many prefix={prefix} files={n} bytes={size} secs={secs:.3} files/s={:.1}",
        n as f64 / secs
    );
    Ok(())
}

async fn get_many(a: &Args, c: &Client, bucket: &str, prefix: &str, n: usize) -> Result<()> {
    let start = Instant::now();
    let bytes: u64 = stream::iter(0..n)
        .map(|i| {
            let key = many_key(prefix, i);
            async move { drain(c, bucket, &key, None).await }
        })
        .buffer_unordered(a.jobs)
        .try_fold(0, |acc, n| async move { Ok(acc + n) })
        .await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "get-many prefix={prefix} files={n} total_bytes={bytes} secs={secs:.3} files/s={:.1}",
        n as f64 / secs
    );
    Ok(())
}

/// Every page of a LIST of PREFIX, in order (`/` as the delimiter if `delimited`).
async fn list_pages(
    c: &Client,
    bucket: &str,
    prefix: &str,
    delimited: bool,
) -> Result<Vec<ListObjectsV2Output>> {
    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let page = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_delimiter(delimited.then(|| "/".to_string()))
            .set_continuation_token(token)
            .send()
            .await
            .map_err(sdk(format!("LIST {prefix}")))?;
        token = page.next_continuation_token().map(str::to_string);
        pages.push(page);
        if token.is_none() {
            return Ok(pages);
        }
    }
}

/// The keys of a page's objects, without the folder's own marker (key == PREFIX).
fn page_keys<'p>(page: &'p ListObjectsV2Output, prefix: &'p str) -> impl Iterator<Item = &'p str> {
    page.contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(move |k| *k != prefix)
}

async fn list(c: &Client, bucket: &str, prefix: &str) -> Result<()> {
    let start = Instant::now();
    let pages = list_pages(c, bucket, prefix, true).await?;
    let entries: usize = pages
        .iter()
        .map(|p| page_keys(p, prefix).count() + p.common_prefixes().len())
        .sum();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "list prefix={prefix} entries={entries} pages={} secs={secs:.3} entries/s={:.0}",
        pages.len(),
        entries as f64 / secs
    );
    Ok(())
}

/// Every object whose key starts with PREFIX (no delimiter): (key, size) pairs.
async fn list_all(c: &Client, bucket: &str, prefix: &str) -> Result<Vec<(String, u64)>> {
    let pages = list_pages(c, bucket, prefix, false).await?;
    let objects = pages.iter().flat_map(|p| p.contents());
    Ok(objects
        .filter_map(|o| {
            let key = o.key()?;
            // a folder's own marker (key == PREFIX ending in `/`) is not one of its objects
            let marker = prefix.ends_with('/') && key == prefix;
            (!marker).then(|| (key.to_string(), o.size().unwrap_or(0).max(0) as u64))
        })
        .collect())
}

async fn list_head(a: &Args, c: &Client, bucket: &str, prefix: &str) -> Result<()> {
    let start = Instant::now();
    let pages = list_pages(c, bucket, prefix, true).await?;
    let keys: Vec<String> = pages
        .iter()
        .flat_map(|p| page_keys(p, prefix))
        .map(str::to_string)
        .collect();
    let list_secs = start.elapsed().as_secs_f64();
    stream::iter(&keys)
        .map(|key| async move {
            c.head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(sdk(format!("HEAD {key}")))
        })
        .buffer_unordered(a.jobs)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "list-head prefix={prefix} entries={} list_secs={list_secs:.3} secs={secs:.3}",
        keys.len()
    );
    Ok(())
}

async fn delete_many(a: &Args, c: &Client, bucket: &str, prefix: &str, n: usize) -> Result<()> {
    let start = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let key = many_key(prefix, i);
            async move {
                c.delete_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(sdk(format!("DELETE {key}")))
            }
        })
        .buffer_unordered(a.jobs)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "delete-many prefix={prefix} files={n} secs={secs:.3} files/s={:.1}",
        n as f64 / secs
    );
    Ok(())
}

async fn wait_for(
    c: &Client,
    bucket: &str,
    prefix: &str,
    (n, size): (usize, u64),
    timeout: u64,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let all = list_all(c, bucket, prefix).await?;
        let complete = all.iter().filter(|(_, s)| *s == size).count();
        if complete >= n {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs_f64();
            println!("wait-for prefix={prefix} objects={complete} at={at:.3}");
            return Ok(());
        }
        if start.elapsed().as_secs() >= timeout {
            bail!(
                "{prefix}: {complete} of {n} objects of {size} bytes after {timeout} s ({} listed)",
                all.len()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let c = client(&args).await;
    let b = args.bucket.as_str();
    match &args.cmd {
        Cmd::PutBig { key, size } => put_big(&args, &c, b, key, *size).await,
        Cmd::GetBig { key } => get_big(&args, &c, b, key).await,
        Cmd::PutMany { prefix, n, size } => put_many(&args, &c, b, prefix, *n, *size).await,
        Cmd::GetMany { prefix, n } => get_many(&args, &c, b, prefix, *n).await,
        Cmd::List { prefix } => list(&c, b, prefix).await,
        Cmd::ListHead { prefix } => list_head(&args, &c, b, prefix).await,
        Cmd::DeleteMany { prefix, n } => delete_many(&args, &c, b, prefix, *n).await,
        Cmd::WaitFor {
            prefix,
            n,
            size,
            timeout,
        } => wait_for(&c, b, prefix, (*n, *size), *timeout).await,
        Cmd::Head { key } => {
            let h = c
                .head_object()
                .bucket(b)
                .key(key)
                .send()
                .await
                .map_err(sdk(format!("HEAD {key}")))?;
            println!(
                "head key={key} bytes={} etag={}",
                h.content_length().unwrap_or(0),
                h.e_tag().unwrap_or("")
            );
            Ok(())
        }
    }
}
