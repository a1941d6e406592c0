//! The mount's counters in Prometheus text format (0.0.4): the S3 client's (requests,
//! errors, retries, latency and bytes by operation, counted in `store::s3_requests`)
//! and the core's (pending uploads and their bytes, block cache hits and misses), read
//! afresh on every scrape. Served at `GET /metrics` on `--metrics-addr` by a small HTTP
//! listener, and handed to the core as the counters of the status document.
//!
//! Invariants: the listener is bound before the mount goes live (a bad or busy address
//! fails the mount, naming `--metrics-addr`); it answers only `GET`/`HEAD` of
//! `/metrics`, one request per connection, and drops a client that has not sent its
//! request within a few seconds; the collectors hold the core weakly, so they never
//! keep a finished mount alive.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

use crate::fs::S3Fs;
use crate::store::ObjectStore;
use crate::store::s3_requests::RequestCounters;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections answered at once.
const MAX_CONNECTIONS: usize = 16;

/// Every counter of one mount.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new<S: ObjectStore>(requests: &RequestCounters, fs: &Arc<S3Fs<S>>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CoreCounters(Arc::downgrade(fs))));
        registry.register_collector(Box::new(requests.clone()));
        Metrics { registry }
    }

    /// The Prometheus text of every counter, as of now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            log::error!("encoding the metrics failed: {e}");
        }
        out
    }

    /// Every sample as `name{labels}` → value, without the histograms' buckets (their
    /// `_sum` and `_count` stay): the counters of the status document.
    pub fn counters(&self) -> BTreeMap<String, f64> {
        self.render()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| !series.contains("_bucket{"))
            .filter_map(|(series, value)| Some((series.to_string(), value.parse().ok()?)))
            .collect()
    }
}

/// The core's side: pending uploads and the block cache.
struct CoreCounters<S: ObjectStore>(Weak<S3Fs<S>>);

impl<S: ObjectStore> std::fmt::Debug for CoreCounters<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreCounters")
    }
}

impl<S: ObjectStore> Collector for CoreCounters<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(fs) = self.0.upgrade() else {
            return Ok(());
        };
        let pending = fs.pending_totals();
        let (hits, misses) = fs.cache_hits_and_misses();
        for (name, help, value) in [
            (
                "s3mount_pending_uploads",
                "staged files not in S3 yet (queued, uploading, failed and retrying, or open for writing)",
                pending.files,
            ),
            (
                "s3mount_pending_upload_bytes",
                "bytes of the staged files not in S3 yet",
                pending.bytes,
            ),
            (
                "s3mount_failed_uploads",
                "staged files whose last upload failed (they are retried)",
                pending.failed,
            ),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        for (name, help, value) in [
            (
                "s3mount_cache_hits",
                "reads answered from the block cache or from read-ahead already under way",
                hits,
            ),
            (
                "s3mount_cache_misses",
                "reads that had to start a GET",
                misses,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}

/// Builds the mount's counters, gives them to the core for `s3mount status`, and if
/// `addr` is given, listens there (now, so a bad address fails before mounting) and
/// serves `/metrics` on `handle`.
pub fn start<S: ObjectStore>(
    addr: Option<SocketAddr>,
    requests: &RequestCounters,
    fs: &Arc<S3Fs<S>>,
    handle: &Handle,
) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new(requests, fs));
    let report = metrics.clone();
    fs.set_counter_report(Box::new(move || report.counters()));
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("--metrics-addr {addr}: cannot listen there: {e}"))?;
    let listener = {
        let _in_runtime = handle.enter();
        tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("--metrics-addr {addr}: {e}"))?
    };
    log::info!("metrics at http://{addr}/metrics");
    handle.spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::debug!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &metrics).await {
                    log::debug!("metrics request: {e}");
                }
                drop(slot);
            });
        }
    });
    Ok(())
}

/// The answer to one HTTP request: status line, content type and body.
fn respond(request_line: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            metrics.render(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            TEXT,
            "the counters are at /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            TEXT,
            "only GET /metrics is answered\n".into(),
        ),
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("no request within the timeout"))??;
    let request_line = head.lines().next().unwrap_or("");
    let (status, content_type, body) = respond(request_line, metrics);
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !request_line.starts_with("HEAD ") {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head (the blank line).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn metrics() -> (Metrics, Arc<S3Fs<MemoryStore>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::fs::FsConfig {
            prefix: String::new(),
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: Duration::from_secs(1),
            read_only: false,
            part_size: 5 << 20,
            max_parts: 10_000,
            upload_memory: 16 << 20,
            upload_concurrency: 2,
            cache_dir: dir.path().to_path_buf(),
            cache_size: 8 << 20,
            write_back: false,
            write_back_delay: Duration::ZERO,
            url_expiry: Duration::from_secs(60),
            fast_listing: false,
            metadata_index_entries: 0,
            shared_metadata_index: false,
        };
        let fs = Arc::new(S3Fs::new(Arc::new(MemoryStore::new()), cfg).unwrap());
        (Metrics::new(&RequestCounters::default(), &fs), fs, dir)
    }

    #[test]
    fn every_documented_series_is_there() {
        let (metrics, _fs, _dir) = metrics();
        let text = metrics.render();
        for name in [
            "s3mount_requests_total{op=\"PutObject\"} 0",
            "s3mount_request_errors_total{op=\"GetObject\"} 0",
            "s3mount_retries_total{op=\"HeadObject\"} 0",
            "s3mount_bytes_uploaded_total 0",
            "s3mount_bytes_downloaded_total 0",
            "s3mount_pending_uploads 0",
            "s3mount_pending_upload_bytes 0",
            "s3mount_failed_uploads 0",
            "s3mount_cache_hits_total 0",
            "s3mount_cache_misses_total 0",
            "# TYPE s3mount_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == name), "no {name} in\n{text}");
        }
        let counters = metrics.counters();
        assert_eq!(counters["s3mount_requests_total{op=\"PutObject\"}"], 0.0);
        assert_eq!(counters["s3mount_pending_uploads"], 0.0);
    }

    #[test]
    fn only_get_of_metrics_is_answered() {
        let (metrics, _fs, _dir) = metrics();
        let (status, kind, body) = respond("GET /metrics HTTP/1.1", &metrics);
        assert_eq!(status, "200 OK");
        assert!(kind.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("s3mount_pending_uploads 0"));
        assert_eq!(respond("GET /metrics?x=1 HTTP/1.1", &metrics).0, "200 OK");
        assert_eq!(respond("GET / HTTP/1.1", &metrics).0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1", &metrics).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("", &metrics).0, "405 Method Not Allowed");
    }
}
