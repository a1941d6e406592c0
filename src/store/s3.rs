//! [`ObjectStore`] over aws-sdk-s3: client construction from the mount's settings
//! (endpoint, path style, profile, static or chained credentials), SDK retries and
//! timeouts, and the one place where SDK errors are classified into [`StoreError`].
//! Every failed request is logged with its key and error (for a response the SDK could
//! not parse, the whole chain of causes), never with credentials: every secret key and
//! session token in use is registered with [`crate::logging::add_secret`]. Listings ask for
//! URL-encoded keys (`encoding-type=url`) and decode them here, so keys holding
//! characters XML 1.0 cannot carry (control characters) list like any other.
//! A copy onto a key waits until this store's last write of the key is 1.5 ms old
//! (`s3/spacing.rs`: servers that stamp versions by the millisecond order them then).

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::future::ProvideCredentials as CredentialsFuture;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart as SdkPart, EncodingType, MetadataDirective,
    ObjectCannedAcl, ServerSideEncryption, StorageClass,
};
use bytes::Bytes;

use super::object_options::ObjectOptions;
use super::s3_answers::{classify, decode_listed, salvage_field};
use super::s3_attempts::LogFailedAttempts;
use super::s3_requests::RequestCounters;
use futures::{StreamExt, TryStreamExt};

use super::{
    Body, BodyMd5, ByteChunks, CompletedPart, ETag, ListPage, ListedObject, ObjectHeaders,
    ObjectMeta, ObjectStore, PendingUpload, StoreError, StoreResult, UploadId,
};

use super::part_copy::{COPY_PARALLEL, MAX_SINGLE_COPY, copy_in_parts, copy_ranges};
use super::s3_body::byte_stream;

mod endpoint;
mod probe;
mod spacing;

pub use probe::{CredentialsFound, Grant, StoredOptions};
use spacing::WriteSpacing;

/// How long a request may go without a byte from the server.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and as whom to connect; plain data filled from the command line.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub profile: Option<String>,
    pub static_credentials: Option<StaticCredentials>,
    /// Attempts per request, including the first.
    pub max_attempts: u32,
    /// Sent with every object written (PUT, multipart upload, copy).
    pub object_options: ObjectOptions,
    /// Bound on one request with all its retries (None: only the connect and read
    /// timeouts bound it); `check` sets it so that a silent endpoint fails fast.
    pub operation_timeout: Option<Duration>,
    /// Bound on one attempt of a quick request (everything but uploads and server-side
    /// copies, whose bodies or copies may take long): a silent server costs this, not
    /// the read timeout, per attempt. None: only the connect and read timeouts.
    pub request_timeout: Option<Duration>,
}

#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticCredentials(<redacted>)")
    }
}

/// The standard AWS credential chain (environment, profile files, web identity,
/// container and instance roles), built afresh whenever the SDK's credential cache asks:
/// temporary credentials are renewed before they expire, and keys without an expiry are
/// asked for again every 15 minutes, so keys rotated in the shared credentials file are
/// picked up without a remount.
#[derive(Debug)]
pub struct FreshChain {
    pub profile: Option<String>,
}

impl ProvideCredentials for FreshChain {
    fn provide_credentials<'a>(&'a self) -> CredentialsFuture<'a>
    where
        Self: 'a,
    {
        CredentialsFuture::new(async move {
            let mut builder = DefaultCredentialsChain::builder();
            if let Some(profile) = &self.profile {
                builder = builder.profile_name(profile);
            }
            let credentials = builder.build().await.provide_credentials().await;
            if let Ok(c) = &credentials {
                crate::logging::add_secret(c.secret_access_key());
                if let Some(token) = c.session_token() {
                    crate::logging::add_secret(token);
                }
            }
            credentials
        })
    }
}

pub struct S3Store {
    /// Quick requests: each attempt bounded by `request_timeout`.
    client: Client,
    /// Uploads (PUT, parts, completion) and server-side copies: bounded by
    /// [`READ_TIMEOUT`] of silence, as their bodies or copies may take long.
    transfers: Client,
    bucket: String,
    /// `ObjectOptions` in the SDK's types, sent with every object written.
    write_options: WriteOptions,
    /// The client's credential provider (the SDK's config does not give it back).
    credentials: SharedCredentialsProvider,
    requests: RequestCounters,
    /// When each key was last written, so a copy onto it is ordered after that write
    /// (`s3/spacing.rs`).
    spacing: WriteSpacing,
}

/// The object options as the SDK's request builders take them.
#[derive(Clone, Debug, Default)]
struct WriteOptions {
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    storage_class: Option<StorageClass>,
    acl: Option<ObjectCannedAcl>,
}

impl WriteOptions {
    fn from(options: &ObjectOptions) -> WriteOptions {
        WriteOptions {
            sse: options.sse().map(ServerSideEncryption::from),
            kms_key_id: options.kms_key_id().map(str::to_string),
            storage_class: options.storage_class.as_deref().map(StorageClass::from),
            acl: options.acl.as_deref().map(ObjectCannedAcl::from),
        }
    }
}

/// Sets the object options on a PutObject, CreateMultipartUpload or CopyObject request
/// (the three builders share these setters but no trait).
macro_rules! with_write_options {
    ($request:expr, $options:expr) => {
        $request
            .set_server_side_encryption($options.sse.clone())
            .set_ssekms_key_id($options.kms_key_id.clone())
            .set_storage_class($options.storage_class.clone())
            .set_acl($options.acl.clone())
    };
}

impl S3Store {
    pub async fn connect(settings: &S3Settings) -> S3Store {
        let timeouts = |attempt: Option<Duration>| {
            let mut timeouts = TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(READ_TIMEOUT);
            timeouts.set_operation_attempt_timeout(attempt);
            timeouts.set_operation_timeout(settings.operation_timeout);
            timeouts.build()
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(timeouts(None));
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let credentials = if let Some(c) = &settings.static_credentials {
            crate::logging::add_secret(&c.secret_access_key);
            if let Some(token) = &c.session_token {
                crate::logging::add_secret(token);
            }
            SharedCredentialsProvider::new(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "s3mount-environment",
            ))
        } else {
            SharedCredentialsProvider::new(FreshChain {
                profile: settings.profile.clone(),
            })
        };
        loader = loader.credentials_provider(credentials.clone());
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            // Checksums cost CPU on every byte and not every S3-compatible service knows
            // the newer trailers; S3's own integrity checks (Content-Length, TLS) remain.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .endpoint_resolver(endpoint::RememberedRules::default())
            .interceptor(LogFailedAttempts::new(
                &settings.bucket,
                settings.force_path_style,
            ));
        if shared.region().is_none() {
            conf = conf.region(Region::new("us-east-1"));
        }
        let requests = RequestCounters::default();
        conf = conf.interceptor(requests.interceptor());
        let transfers = Client::from_conf(conf.clone().build());
        let conf = conf.timeout_config(timeouts(settings.request_timeout));
        S3Store {
            client: Client::from_conf(conf.build()),
            transfers,
            bucket: settings.bucket.clone(),
            write_options: WriteOptions::from(&settings.object_options),
            credentials,
            requests,
            spacing: WriteSpacing::default(),
        }
    }

    /// What this client has sent so far (requests, errors, retries, latency, bytes).
    pub fn request_counters(&self) -> &RequestCounters {
        &self.requests
    }
}

fn etag(tag: Option<&str>) -> ETag {
    ETag(tag.unwrap_or_default().to_string())
}

fn system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `x-amz-meta-*` of a response: names lower-cased, sorted.
fn sorted_user_meta(meta: Option<&HashMap<String, String>>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = meta
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn user_metadata(headers: &ObjectHeaders) -> Option<HashMap<String, String>> {
    if headers.user_meta.is_empty() {
        None
    } else {
        Some(headers.user_meta.iter().cloned().collect())
    }
}

/// `bucket/key` as CopySource wants it: the key URL-encoded, `/` kept.
fn copy_source(bucket: &str, key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!(
        "{bucket}/{}",
        percent_encoding::utf8_percent_encode(key, KEEP)
    )
}

impl ObjectStore for S3Store {
    async fn check_bucket(&self) -> StoreResult<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(match classify("HeadBucket", &self.bucket, e) {
                StoreError::NotFound => StoreError::NoSuchBucket,
                other => other,
            }),
        }
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("HeadObject", key, e))?;
        Ok(ObjectMeta {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: etag(out.e_tag()),
            last_modified: system_time(out.last_modified()),
            user_meta: sorted_user_meta(out.metadata()),
            content_type: out.content_type().map(str::to_string),
        })
    }

    async fn head_and_start(&self, key: &str, limit: u64) -> StoreResult<(ObjectMeta, Bytes)> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes=0-{}", limit.max(1) - 1))
            .send()
            .await
            .map_err(|e| classify("GetObject", key, e))?;
        // `bytes 0-N/TOTAL`: the object's size, whatever part of it came.
        let size = out
            .content_range()
            .and_then(|r| r.rsplit_once('/'))
            .and_then(|(_, total)| total.parse().ok())
            .unwrap_or(out.content_length().unwrap_or(0).max(0) as u64);
        let meta = ObjectMeta {
            size,
            etag: etag(out.e_tag()),
            last_modified: system_time(out.last_modified()),
            user_meta: sorted_user_meta(out.metadata()),
            content_type: out.content_type().map(str::to_string),
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| {
                log::warn!("S3 GetObject {key:?} failed while reading the body: {e}");
                StoreError::Transient(format!("reading {key}: {e}"))
            })?
            .into_bytes();
        Ok((meta, body))
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ByteChunks> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(if_match.map(|e| e.0.clone()))
            .send()
            .await
            .map_err(|e| classify("GetObject", key, e))?;
        let key = key.to_string();
        let stream = futures::stream::unfold(Some(out.body), move |body| {
            let key = key.clone();
            async move {
                let mut body = body?;
                match body.try_next().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                    Ok(None) => None,
                    Err(e) => {
                        log::warn!("S3 GetObject {key} failed while reading the body: {e}");
                        Some((Err(StoreError::Transient(e.to_string())), None))
                    }
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.list_objects(prefix, delimited, token, max_keys, None)
            .await
    }

    async fn list_page_after(
        &self,
        prefix: &str,
        start_after: &str,
        max_keys: i32,
    ) -> StoreResult<ListPage> {
        self.list_objects(prefix, true, None, Some(max_keys), Some(start_after))
            .await
    }

    async fn put(
        &self,
        key: &str,
        body: impl Into<Body> + Send,
        headers: &ObjectHeaders,
    ) -> StoreResult<ETag> {
        self.put_object(key, body.into(), headers, None).await
    }

    async fn create_multipart(&self, key: &str, headers: &ObjectHeaders) -> StoreResult<UploadId> {
        let request =
            with_write_options!(self.client.create_multipart_upload(), self.write_options);
        let sent = request
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(user_metadata(headers))
            .set_content_type(headers.content_type.clone())
            .send()
            .await;
        let id = match sent {
            Ok(out) => out.upload_id().map(str::to_string),
            Err(e) => match salvage_field(&e, "UploadId") {
                Some(id) => Some(id),
                None => return Err(classify("CreateMultipartUpload", key, e)),
            },
        };
        id.map(UploadId)
            .ok_or_else(|| StoreError::Other("CreateMultipartUpload returned no upload id".into()))
    }

    async fn upload_part(
        &self,
        key: &str,
        id: &UploadId,
        number: u32,
        body: Body,
    ) -> StoreResult<ETag> {
        self.send_part((key, id, number), body, None).await
    }

    async fn upload_part_copy(
        &self,
        part: (&str, &UploadId, u32),
        from: &str,
        range: Range<u64>,
        if_match: &ETag,
    ) -> StoreResult<ETag> {
        self.part_copy(part, (&self.bucket, from), range, if_match)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        id: &UploadId,
        parts: &[CompletedPart],
    ) -> StoreResult<ETag> {
        let parts = parts
            .iter()
            .map(|p| {
                SdkPart::builder()
                    .part_number(p.number as i32)
                    .e_tag(&p.etag.0)
                    .build()
            })
            .collect();
        let out = self
            .transfers
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&id.0)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        self.spacing.written(key);
        match out {
            Ok(out) => Ok(etag(out.e_tag())),
            Err(e) => match salvage_field(&e, "ETag") {
                Some(tag) => Ok(ETag(tag)),
                None => Err(classify("CompleteMultipartUpload", key, e)),
            },
        }
    }

    async fn abort_multipart(&self, key: &str, id: &UploadId) -> StoreResult<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&id.0)
            .send()
            .await
            .map_err(|e| classify("AbortMultipartUpload", key, e))?;
        Ok(())
    }

    async fn copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        metadata: Option<&ObjectHeaders>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ETag> {
        if size <= MAX_SINGLE_COPY {
            // A copy is a new object: without the options it would fall back to the
            // bucket's defaults (no encryption, STANDARD, private), also when only the
            // metadata is replaced.
            let mut request = with_write_options!(self.transfers.copy_object(), self.write_options)
                .bucket(&self.bucket)
                .key(to)
                .copy_source(copy_source(&self.bucket, from))
                .set_copy_source_if_match(if_match.map(|e| e.0.clone()));
            if let Some(headers) = metadata {
                request = request
                    .metadata_directive(MetadataDirective::Replace)
                    .set_metadata(user_metadata(headers))
                    .set_content_type(headers.content_type.clone());
            }
            self.spacing.before_copy(to).await;
            let out = request.send().await;
            self.spacing.written(to);
            let out = out.map_err(|e| classify("CopyObject", from, e))?;
            return Ok(etag(out.copy_object_result().and_then(|r| r.e_tag())));
        }
        self.spacing.before_copy(to).await;
        self.multipart_copy(from, to, metadata, if_match).await
    }

    async fn presign_get(&self, key: &str, expires: std::time::Duration) -> StoreResult<String> {
        let config = PresigningConfig::expires_in(expires)
            .map_err(|e| StoreError::Other(format!("presigning: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| classify("presign GetObject", key, e))?;
        Ok(request.uri().to_string())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let out = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        self.spacing.written(key);
        match out {
            Ok(_) => Ok(()),
            Err(e) => match classify("DeleteObject", key, e) {
                StoreError::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn copy_from_bucket(
        &self,
        source_bucket: &str,
        from: &str,
        to: &str,
        size: u64,
        if_match: Option<&ETag>,
    ) -> StoreResult<ETag> {
        self.spacing.before_copy(to).await;
        if size > MAX_SINGLE_COPY {
            return self
                .multipart_copy_from(source_bucket, from, to, size, if_match)
                .await;
        }
        let request = with_write_options!(self.transfers.copy_object(), self.write_options);
        let out = request
            .bucket(&self.bucket)
            .key(to)
            .copy_source(copy_source(source_bucket, from))
            .set_copy_source_if_match(if_match.map(|e| e.0.clone()))
            .send()
            .await;
        self.spacing.written(to);
        let out = out.map_err(|e| classify("CopyObject", from, e))?;
        Ok(etag(out.copy_object_result().and_then(|r| r.e_tag())))
    }

    async fn put_verified(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
        md5: BodyMd5,
    ) -> StoreResult<ETag> {
        self.put_object(key, body.into(), headers, Some(md5)).await
    }

    async fn upload_part_verified(
        &self,
        key: &str,
        id: &UploadId,
        number: u32,
        body: Bytes,
        md5: BodyMd5,
    ) -> StoreResult<ETag> {
        self.send_part((key, id, number), body.into(), Some(md5))
            .await
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .encoding_type(EncodingType::Url)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| classify("ListMultipartUploads", prefix, e))?;
            let encoded = out.encoding_type() == Some(&EncodingType::Url);
            let key_of = |raw: &str| match encoded {
                true => decode_listed("ListMultipartUploads", prefix, raw),
                false => Ok(raw.to_string()),
            };
            for u in out.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                uploads.push(PendingUpload {
                    key: key_of(key)?,
                    id: UploadId(id.to_string()),
                    initiated: system_time(u.initiated()),
                });
            }
            if !out.is_truncated().unwrap_or(false) {
                return Ok(uploads);
            }
            key_marker = out.next_key_marker().map(key_of).transpose()?;
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(uploads); // a truncated page without markers: nothing to go on
            }
        }
    }
}

/// The Content-MD5 header's value: the digest in base64.
fn content_md5(md5: BodyMd5) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(md5.0)
}

impl S3Store {
    /// Copies an object above the single-copy limit part by part (in parallel),
    /// keeping its metadata.
    async fn multipart_copy(
        &self,
        from: &str,
        to: &str,
        metadata: Option<&ObjectHeaders>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ETag> {
        let source = self.head(from).await?;
        if if_match.is_some_and(|e| *e != source.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let headers = match metadata {
            Some(h) => h.clone(),
            None => ObjectHeaders {
                user_meta: source.user_meta.clone(),
                content_type: source.content_type.clone(),
            },
        };
        // The size HEAD saw goes with the ETag every part copy is conditional on.
        copy_in_parts(self, (from, &source.etag), to, source.size, &headers).await
    }
}

impl S3Store {
    /// Copies an object of another bucket above the single-copy limit part by part,
    /// keeping its metadata (read by a HEAD of the source).
    async fn multipart_copy_from(
        &self,
        source_bucket: &str,
        from: &str,
        to: &str,
        size: u64,
        if_match: Option<&ETag>,
    ) -> StoreResult<ETag> {
        let source = self
            .client
            .head_object()
            .bucket(source_bucket)
            .key(from)
            .send()
            .await
            .map_err(|e| classify("HeadObject", from, e))?;
        let source_etag = etag(source.e_tag());
        if if_match.is_some_and(|e| *e != source_etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let headers = ObjectHeaders {
            user_meta: sorted_user_meta(source.metadata()),
            content_type: source.content_type().map(str::to_string),
        };
        let id = self.create_multipart(to, &headers).await?;
        let result = async {
            let parts: Vec<CompletedPart> = futures::stream::iter(copy_ranges(size))
                .enumerate()
                .map(|(i, range)| {
                    let (id, number, source_etag) = (&id, i as u32 + 1, &source_etag);
                    async move {
                        let part = (to, id, number);
                        let etag =
                            (self.part_copy(part, (source_bucket, from), range, source_etag))
                                .await?;
                        Ok::<_, StoreError>(CompletedPart { number, etag })
                    }
                })
                .buffered(COPY_PARALLEL)
                .try_collect()
                .await?;
            self.complete_multipart(to, &id, &parts).await
        }
        .await;
        if result.is_err() {
            let _ = self.abort_multipart(to, &id).await;
        }
        result
    }

    /// A PutObject with the object options, and with a Content-MD5 when `md5` is given
    /// (S3 then refuses a body that arrives different).
    async fn put_object(
        &self,
        key: &str,
        body: Body,
        headers: &ObjectHeaders,
        md5: Option<BodyMd5>,
    ) -> StoreResult<ETag> {
        let request = with_write_options!(self.transfers.put_object(), self.write_options);
        let out = request
            .bucket(&self.bucket)
            .key(key)
            .content_length(body.len() as i64)
            .set_content_md5(md5.map(content_md5))
            .body(byte_stream(body))
            .set_metadata(user_metadata(headers))
            .set_content_type(headers.content_type.clone())
            .customize()
            .disable_payload_signing()
            .send()
            .await;
        self.spacing.written(key);
        let out = out.map_err(|e| classify("PutObject", key, e))?;
        Ok(etag(out.e_tag()))
    }

    /// An UploadPart, with a Content-MD5 when `md5` is given.
    async fn send_part(
        &self,
        (key, id, number): (&str, &UploadId, u32),
        body: Body,
        md5: Option<BodyMd5>,
    ) -> StoreResult<ETag> {
        let out = self
            .transfers
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&id.0)
            .part_number(number as i32)
            .content_length(body.len() as i64)
            .set_content_md5(md5.map(content_md5))
            .body(byte_stream(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| classify("UploadPart", key, e))?;
        Ok(etag(out.e_tag()))
    }

    /// One UploadPartCopy of `range` of `from` in `source_bucket`, if it is still
    /// `if_match`.
    async fn part_copy(
        &self,
        (key, id, number): (&str, &UploadId, u32),
        (source_bucket, from): (&str, &str),
        range: Range<u64>,
        if_match: &ETag,
    ) -> StoreResult<ETag> {
        let out = self
            .transfers
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&id.0)
            .part_number(number as i32)
            .copy_source(copy_source(source_bucket, from))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .copy_source_if_match(&if_match.0)
            .send()
            .await
            .map_err(|e| classify("UploadPartCopy", from, e))?;
        Ok(etag(out.copy_part_result().and_then(|r| r.e_tag())))
    }
}

impl S3Store {
    /// One ListObjectsV2 request: `prefix`, grouped by `/` when `delimited`, from
    /// `token` or after `start_after`, at most `max_keys` entries.
    async fn list_objects(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
        start_after: Option<&str>,
    ) -> StoreResult<ListPage> {
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .set_start_after(start_after.map(str::to_string))
            .set_max_keys(max_keys)
            .encoding_type(EncodingType::Url);
        if delimited {
            req = req.delimiter("/");
        }
        let out = req
            .send()
            .await
            .map_err(|e| classify("ListObjectsV2", prefix, e))?;
        // A service that ignores encoding-type says so by not echoing it: its keys are raw.
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        let key_of = |raw: &str| match encoded {
            true => decode_listed("ListObjectsV2", prefix, raw),
            false => Ok(raw.to_string()),
        };
        let mut objects = Vec::with_capacity(out.contents().len());
        for o in out.contents() {
            let Some(raw) = o.key() else { continue };
            objects.push(ListedObject {
                key: key_of(raw)?,
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: etag(o.e_tag()),
                last_modified: system_time(o.last_modified()),
            });
        }
        let prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix())
            .map(key_of)
            .collect::<StoreResult<Vec<String>>>()?;
        let next_token = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            prefixes,
            next_token,
        })
    }
}
