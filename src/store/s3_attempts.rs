//! An SDK interceptor that logs every failed attempt of an S3 request at debug, with the
//! operation and the key: throttling (429, 503 SlowDown), server errors (5xx), timeouts
//! and connection failures, whether the SDK retries them or not. The SDK's own retry
//! lines (target `aws_smithy_runtime`) say what it does next but not which request it
//! is; the final failure of a request is logged by `s3_answers::classify` (warn).
//! Invariant: a line names the operation, the key (from the request path, decoded) and
//! the attempt; never a header, a query string or a body.

use aws_sdk_s3::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

/// The key and attempt number of the attempt under way, noted before it is sent (the
/// SDK takes the request away to send it).
#[derive(Clone, Debug)]
struct Attempt {
    key: String,
    number: String,
}

impl Storable for Attempt {
    type Storer = StoreReplace<Self>;
}

#[derive(Debug)]
pub(super) struct LogFailedAttempts {
    /// `/bucket/` for path-style requests (not part of the key), `/` otherwise.
    path_start: String,
}

impl LogFailedAttempts {
    pub(super) fn new(bucket: &str, path_style: bool) -> LogFailedAttempts {
        let path_start = match path_style {
            true => format!("/{bucket}/"),
            false => "/".into(),
        };
        LogFailedAttempts { path_start }
    }

    /// The key of a request URI: its path without the query and the bucket (path
    /// style), percent-decoded.
    fn key_of(&self, uri: &str) -> String {
        let path = match uri.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => uri,
        };
        let path = path.split('?').next().unwrap_or_default();
        let key = path
            .strip_prefix(&self.path_start)
            .or_else(|| path.strip_prefix('/'))
            .unwrap_or(path);
        percent_encoding::percent_decode_str(key)
            .decode_utf8_lossy()
            .into_owned()
    }
}

impl Intercept for LogFailedAttempts {
    fn name(&self) -> &'static str {
        "LogFailedAttempts"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let number = request
            .headers()
            .get("amz-sdk-request")
            .and_then(|v| v.split(';').find_map(|p| p.trim().strip_prefix("attempt=")))
            .unwrap_or("?")
            .to_string();
        let key = self.key_of(request.uri());
        cfg.interceptor_state().store_put(Attempt { key, number });
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let failure = match (context.response(), context.output_or_error()) {
            (Some(response), _) => {
                let status = response.status().as_u16();
                (status == 429 || status >= 500).then(|| format!("HTTP {status}"))
            }
            (None, Some(Err(err))) => Some(format!("{}", DisplayErrorContext(err))),
            _ => None,
        };
        let Some(failure) = failure else {
            return Ok(());
        };
        let op = cfg.load::<Metadata>().map_or("request", |m| m.name());
        match cfg.load::<Attempt>() {
            Some(a) => log::debug!(
                "S3 {op} {:?}: attempt {} failed: {failure}",
                a.key,
                a.number
            ),
            None => log::debug!("S3 {op}: attempt failed before sending: {failure}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::LogFailedAttempts;

    #[test]
    fn keys_come_from_either_addressing_style() {
        let path_style = LogFailedAttempts::new("b", true);
        assert_eq!(
            path_style.key_of("http://127.0.0.1:3900/b/docs/a%20b.pdf?uploadId=1&partNumber=2"),
            "docs/a b.pdf"
        );
        assert_eq!(path_style.key_of("https://h/b/"), "");
        let virtual_host = LogFailedAttempts::new("b", false);
        assert_eq!(
            virtual_host.key_of("https://b.s3.eu-central-1.amazonaws.com/b/x.txt"),
            "b/x.txt"
        );
        assert_eq!(virtual_host.key_of("https://b.s3.amazonaws.com"), "");
    }
}
