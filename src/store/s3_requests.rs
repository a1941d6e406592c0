//! Counting what the S3 client does: an SDK interceptor that sees every operation (and
//! every attempt of it) of the client `s3.rs` builds, and the counters it feeds —
//! requests, errors, retries and latency by S3 operation name, bytes sent and received.
//! Nothing here changes a request; a hook never fails.
//!
//! Invariants: a request counts once per operation, when it ends (so a retried request
//! is one request, and its extra attempts are retries); a request that was never sent
//! (presigning) does not count; an operation "failed" when no HTTP answer came or the
//! answer was 4xx/5xx, except a 404 to HeadObject/GetObject, which is how a lookup of a
//! name that does not exist ends. Bytes count only for operations that succeeded:
//! uploaded = the body of PutObject/UploadPart, downloaded = the Content-Length of
//! GetObject's answer. Latency is from the start of the operation to its answer's
//! headers (a GET's body streams afterwards), retries and backoff included.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use aws_sdk_s3::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::histogram::Histogram;

/// The operations s3mount sends, shown (at 0) before their first use so that a rate
/// over them exists from the start.
pub const KNOWN_OPS: &[&str] = &[
    "AbortMultipartUpload",
    "CompleteMultipartUpload",
    "CopyObject",
    "CreateMultipartUpload",
    "DeleteObject",
    "GetObject",
    "HeadBucket",
    "HeadObject",
    "ListObjectsV2",
    "PutObject",
    "UploadPart",
    "UploadPartCopy",
];

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The counters of one S3 operation.
#[derive(Debug)]
struct OpCounters {
    requests: Counter,
    errors: Counter,
    retries: Counter,
    latency: Histogram,
}

impl OpCounters {
    fn new() -> OpCounters {
        OpCounters {
            requests: Counter::default(),
            errors: Counter::default(),
            retries: Counter::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// By operation name, sorted so that the text output is stable.
    ops: RwLock<BTreeMap<String, Arc<OpCounters>>>,
    bytes_uploaded: AtomicU64,
    bytes_downloaded: AtomicU64,
}

/// What the S3 client has done so far; cheap to clone (one shared set of counters).
#[derive(Clone, Debug)]
pub struct RequestCounters(Arc<Counters>);

impl Default for RequestCounters {
    fn default() -> Self {
        let counters = RequestCounters(Arc::default());
        for op in KNOWN_OPS {
            counters.op(op);
        }
        counters
    }
}

/// Totals of one operation, for reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpTotals {
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
}

impl RequestCounters {
    fn op(&self, name: &str) -> Arc<OpCounters> {
        if let Some(op) = self.0.ops.read().unwrap().get(name) {
            return op.clone();
        }
        self.0
            .ops
            .write()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(OpCounters::new()))
            .clone()
    }

    /// The interceptor that feeds these counters, for the client's configuration.
    pub fn interceptor(&self) -> CountRequests {
        CountRequests(self.clone())
    }

    /// Requests, errors and retries by operation name.
    pub fn totals(&self) -> BTreeMap<String, OpTotals> {
        self.0
            .ops
            .read()
            .unwrap()
            .iter()
            .map(|(name, op)| {
                let totals = OpTotals {
                    requests: op.requests.get(),
                    errors: op.errors.get(),
                    retries: op.retries.get(),
                };
                (name.clone(), totals)
            })
            .collect()
    }

    pub fn bytes_uploaded(&self) -> u64 {
        self.0.bytes_uploaded.load(Ordering::Relaxed)
    }

    pub fn bytes_downloaded(&self) -> u64 {
        self.0.bytes_downloaded.load(Ordering::Relaxed)
    }

    /// Records one ended operation.
    fn record(&self, op: &str, outcome: &Outcome) {
        let counters = self.op(op);
        counters.requests.inc();
        if outcome.failed {
            counters.errors.inc();
        }
        if let Some(seconds) = outcome.seconds {
            counters.latency.observe(seconds);
        }
        if !outcome.failed {
            match op {
                "PutObject" | "UploadPart" => {
                    let sent = outcome.sent_bytes.unwrap_or(0);
                    self.0.bytes_uploaded.fetch_add(sent, Ordering::Relaxed);
                }
                "GetObject" => {
                    let received = outcome.received_bytes.unwrap_or(0);
                    self.0
                        .bytes_downloaded
                        .fetch_add(received, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

/// How an operation ended, as the interceptor saw it.
#[derive(Debug, Default)]
struct Outcome {
    failed: bool,
    seconds: Option<f64>,
    sent_bytes: Option<u64>,
    received_bytes: Option<u64>,
}

/// Did an operation that got `status` (None: no HTTP answer at all) fail?
fn is_failure(op: &str, status: Option<u16>, ok: bool) -> bool {
    match status {
        None => !ok,
        Some(404) if matches!(op, "HeadObject" | "GetObject") => false,
        // A 2xx the SDK could not parse is salvaged by s3.rs (keys with control
        // characters); the server did what was asked.
        Some(s) => s >= 400,
    }
}

impl Collector for RequestCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "s3mount_bytes_uploaded",
                "bytes of object data sent to S3 (PutObject and UploadPart that succeeded)",
                self.bytes_uploaded(),
            ),
            (
                "s3mount_bytes_downloaded",
                "bytes of object data S3 answered with (GetObject)",
                self.bytes_downloaded(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let ops = self.0.ops.read().unwrap();
        type Pick = fn(&OpCounters) -> &Counter;
        let per_op: [(&str, &str, Pick); 3] = [
            (
                "s3mount_requests",
                "S3 requests by operation (a retried request counts once)",
                |c| &c.requests,
            ),
            (
                "s3mount_request_errors",
                "S3 requests that failed after their retries (no answer, or 4xx/5xx; not a 404 to a lookup)",
                |c| &c.errors,
            ),
            (
                "s3mount_retries",
                "extra attempts of S3 requests (after a network error, a timeout, 5xx or throttling)",
                |c| &c.retries,
            ),
        ];
        for (name, help, pick) in per_op {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (op, counters) in ops.iter() {
                let labels = [("op", op.as_str())];
                pick(counters).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "s3mount_request_duration_seconds",
            "latency of S3 requests by operation, to the answer's headers, retries included",
            None,
            MetricType::Histogram,
        )?;
        for (op, counters) in ops.iter() {
            if counters.requests.get() == 0 {
                continue; // no empty histograms for operations never sent
            }
            let labels = [("op", op.as_str())];
            counters.latency.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// When the operation started (kept in the operation's config bag).
#[derive(Clone, Debug)]
struct Started(Instant);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

/// The body size of the latest attempt's request.
#[derive(Clone, Debug)]
struct SentBytes(u64);

impl Storable for SentBytes {
    type Storer = StoreReplace<Self>;
}

/// The interceptor of [`RequestCounters`].
#[derive(Debug)]
pub struct CountRequests(RequestCounters);

fn op_name(cfg: &ConfigBag) -> &str {
    cfg.load::<Metadata>().map_or("unknown", |m| m.name())
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "s3mount::CountRequests"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started(Instant::now()));
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        if attempt > 1 {
            self.0.op(op_name(cfg)).retries.inc();
        }
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let size = request
            .headers()
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .or_else(|| request.body().content_length());
        if let Some(size) = size {
            cfg.interceptor_state().store_put(SentBytes(size));
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Neither an answer nor an error: stopped before sending (a presigned URL).
        let Some(result) = context.output_or_error() else {
            return Ok(());
        };
        let op = op_name(cfg);
        let status = context.response().map(|r| r.status().as_u16());
        let outcome = Outcome {
            failed: is_failure(op, status, result.is_ok()),
            seconds: cfg.load::<Started>().map(|s| s.0.elapsed().as_secs_f64()),
            sent_bytes: cfg.load::<SentBytes>().map(|s| s.0),
            received_bytes: context
                .response()
                .and_then(|r| r.headers().get("content-length"))
                .and_then(|v| v.parse().ok()),
        };
        self.0.record(op, &outcome);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(counters: &RequestCounters) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(counters.clone()));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn failures_are_answers_of_4xx_5xx_or_none_but_not_a_lookups_404() {
        assert!(!is_failure("PutObject", Some(200), true));
        assert!(!is_failure("HeadObject", Some(404), false));
        assert!(!is_failure("GetObject", Some(404), false));
        assert!(is_failure("ListObjectsV2", Some(404), false));
        assert!(is_failure("PutObject", Some(503), false));
        assert!(is_failure("GetObject", Some(412), false));
        assert!(is_failure("PutObject", None, false));
        assert!(!is_failure("CreateMultipartUpload", Some(200), false));
    }

    #[test]
    fn counts_render_as_prometheus_text_with_the_documented_names() {
        let counters = RequestCounters::default();
        let ok = |sent, received, seconds| Outcome {
            failed: false,
            seconds: Some(seconds),
            sent_bytes: sent,
            received_bytes: received,
        };
        counters.record("PutObject", &ok(Some(1000), None, 0.02));
        counters.record("PutObject", &ok(Some(24), None, 0.2));
        counters.record("GetObject", &ok(None, Some(4096), 0.003));
        counters.record(
            "PutObject",
            &Outcome {
                failed: true,
                sent_bytes: Some(5),
                ..Outcome::default()
            },
        );
        counters.op("PutObject").retries.inc();
        let out = text(&counters);
        for line in [
            "s3mount_requests_total{op=\"PutObject\"} 3",
            "s3mount_requests_total{op=\"GetObject\"} 1",
            "s3mount_requests_total{op=\"HeadBucket\"} 0",
            "s3mount_request_errors_total{op=\"PutObject\"} 1",
            "s3mount_retries_total{op=\"PutObject\"} 1",
            "s3mount_bytes_uploaded_total 1024",
            "s3mount_bytes_downloaded_total 4096",
            "s3mount_request_duration_seconds_bucket{op=\"GetObject\",le=\"0.005\"} 1",
            "s3mount_request_duration_seconds_bucket{op=\"PutObject\",le=\"0.025\"} 1",
            "s3mount_request_duration_seconds_count{op=\"PutObject\"} 2",
            "# TYPE s3mount_request_duration_seconds histogram",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line} in\n{out}");
        }
        assert!(
            !out.contains("s3mount_request_duration_seconds_count{op=\"HeadBucket\"}"),
            "an operation never sent has no histogram"
        );
        let totals = counters.totals();
        assert_eq!(
            totals["PutObject"],
            OpTotals {
                requests: 3,
                errors: 1,
                retries: 1
            }
        );
    }
}
