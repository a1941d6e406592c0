//! How the answers of S3 are read, apart from the requests themselves: an SDK failure
//! classified as a `StoreError` (and logged with the operation, the key and every cause),
//! keys of `encoding-type=url` listings decoded, and the one field the mount needs read
//! from a successful answer the SDK could not parse.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response as HttpResponse;

use super::{StoreError, StoreResult};

/// The text of element `tag` in a successful answer the SDK could not parse. Some
/// servers (Garage) echo the key raw in CreateMultipartUpload and CompleteMultipartUpload
/// answers, and a key with a character XML 1.0 cannot carry (a control character) makes
/// the whole answer unreadable; the one field the mount needs is still there.
pub(super) fn salvage_field<E>(err: &SdkError<E, HttpResponse>, tag: &str) -> Option<String> {
    let SdkError::ServiceError(se) = err else {
        return None;
    };
    let raw = se.raw();
    if raw.status().as_u16() != 200 {
        return None;
    }
    let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
    if body.contains("<Error>") {
        return None;
    }
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&close)?;
    let value = unescape_xml(&body[start..end]);
    log::debug!("read {tag} {value:?} from an answer the SDK could not parse");
    Some(value)
}

/// Undoes XML's escapes of `&`, `<`, `>`, `"` and `'` (all a salvaged field can hold).
fn unescape_xml(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

/// Maps an SDK failure to what the caller can do about it, and logs it.
pub(super) fn classify<E, R>(op: &str, key: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    let classified = match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status_code();
            let code = se.err().code().unwrap_or("");
            let message = se.err().message().unwrap_or("");
            let text = if !code.is_empty() {
                format!("HTTP {status} {code}: {message}")
            } else if (200..300).contains(&status) {
                // A success whose body the SDK could not parse: say why, cause by cause.
                format!(
                    "HTTP {status}, but the response could not be parsed: {}",
                    causes(se.err())
                )
            } else {
                format!("HTTP {status}: {}", causes(se.err()))
            };
            match (status, code) {
                (_, "NoSuchBucket") => StoreError::NoSuchBucket,
                (404, _) => StoreError::NotFound,
                (412, _) => StoreError::PreconditionFailed,
                (403, _) | (_, "AccessDenied") | (_, "InvalidAccessKeyId") => {
                    StoreError::AccessDenied(text)
                }
                (503, _) | (_, "SlowDown") | (429, _) => StoreError::Throttled(text),
                (s, _) if s >= 500 => StoreError::Transient(text),
                _ => StoreError::Other(text),
            }
        }
        SdkError::DispatchFailure(df) => {
            let text = format!("{:?}", df);
            if df.is_timeout() {
                StoreError::Transient(format!("timeout: {text}"))
            } else if df.is_io() {
                StoreError::Unreachable(text)
            } else {
                StoreError::Other(text)
            }
        }
        SdkError::TimeoutError(_) => StoreError::Transient("request timed out".into()),
        SdkError::ResponseError(_) => {
            StoreError::Transient(format!("bad response: {}", DisplayErrorContext(&err)))
        }
        other => StoreError::Other(format!("{}", DisplayErrorContext(other))),
    };
    match classified {
        // Keys are quoted with their control characters escaped: one request, one line.
        StoreError::NotFound | StoreError::PreconditionFailed => {
            log::debug!("S3 {op} {key:?}: {classified}")
        }
        _ => log::warn!("S3 {op} {key:?} failed: {classified}"),
    }
    classified
}

/// An error and its sources, each cause's own message joined by `: ` (the SDK's parse
/// errors hide what went wrong in their sources).
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A key or prefix of a listing answered with `encoding-type=url`: percent-decoded, and
/// `+` read as a space as S3 writes it (a literal `+` comes as `%2B`), as botocore's
/// `unquote_plus` reads it.
pub(super) fn decode_listed(op: &str, prefix: &str, raw: &str) -> StoreResult<String> {
    let spaced = raw.replace('+', " ");
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(key) => Ok(key.into_owned()),
        Err(e) => {
            let text = format!("listed key {raw:?} is not URL-encoded UTF-8: {e}");
            log::warn!("S3 {op} {prefix:?} failed: {text}");
            Err(StoreError::Other(text))
        }
    }
}

/// The status of a raw HTTP response, whatever the SDK's response type.
pub(super) trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::decode_listed;

    #[test]
    fn listed_keys_are_url_decoded() {
        let d = |raw| decode_listed("test", "p/", raw).unwrap();
        assert_eq!(d("p%2Fctrl%01.txt"), "p/ctrl\u{1}.txt");
        assert_eq!(d("p%2Fa%2Bb+c%20d"), "p/a+b c d");
        assert_eq!(d("p%2Fpct%2541"), "p/pct%41");
        assert_eq!(d("p/%C3%A9%09%0A%5C"), "p/é\t\n\\");
        assert!(decode_listed("test", "p/", "p/%FF").is_err());
    }
}
