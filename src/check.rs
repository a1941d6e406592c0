//! `s3mount check`: can this configuration mount? One line per check, in order —
//! credentials, endpoint, bucket, list, put, get, delete, object options (and the trash
//! of `--trash`, as the mount checks it) — each `OK` or
//! what is wrong in words an operator can act on. [`probe_writable`] (put, get, delete of a
//! probe object) is usable on its own, for any destination a feature writes to.
//!
//! Invariants: nothing outside the prefix is read or written; the only object written is
//! the probe, under the prefix, and it is deleted again before the check ends (a failed
//! delete is reported with the key to remove); no secret is ever printed; every network
//! step is bounded in time (TCP connect [`CONNECT_TIMEOUT`], each S3 request
//! [`REQUEST_TIMEOUT`] with all its retries), so the check never hangs.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::store::object_options::ObjectOptions;
use crate::store::s3::{S3Settings, S3Store, StoredOptions};
use crate::store::{ObjectStore, StoreError, get_bytes};
use crate::trash::{TrashTarget, check_trash_destination};

/// Bound on the TCP connect of the endpoint check and on name resolution.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one S3 request of the check, retries included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What `check` checks: validated like a mount's settings.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    pub s3: S3Settings,
    pub bucket: String,
    /// Normalized (empty, or ending in `/`).
    pub prefix: String,
    /// `--trash`: the recycle bin a mount would keep deleted files in.
    pub trash: Option<TrashTarget>,
}

/// A check that failed, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailure(pub String);

/// Outcome of one line.
enum Verdict {
    Ok(String),
    /// Passed, with something the operator should know.
    Warn(String),
    Fail(String),
    Skipped(&'static str),
}

/// Prints the lines and remembers whether any failed.
struct Report<'a, W: Write> {
    out: &'a mut W,
    failed: bool,
}

impl<W: Write> Report<'_, W> {
    fn line(&mut self, check: &str, verdict: Verdict) -> bool {
        let (word, text) = match &verdict {
            Verdict::Ok(t) => ("OK", t.as_str()),
            Verdict::Warn(t) => ("WARN", t.as_str()),
            Verdict::Fail(t) => ("FAIL", t.as_str()),
            Verdict::Skipped(why) => ("SKIP", *why),
        };
        let _ = writeln!(self.out, "{check:<15} {word:<4}  {text}");
        let _ = self.out.flush();
        let passed = matches!(verdict, Verdict::Ok(_) | Verdict::Warn(_));
        self.failed |= matches!(verdict, Verdict::Fail(_));
        passed
    }

    fn from(&mut self, check: &str, result: Result<String, CheckFailure>) -> bool {
        match result {
            Ok(text) => self.line(check, Verdict::Ok(text)),
            Err(CheckFailure(text)) => self.line(check, Verdict::Fail(text)),
        }
    }
}

/// The words for a failed S3 request `op` on `target`: what is wrong and what to do.
/// `permission` is the IAM action the request needs.
pub fn explain(op: &str, target: &str, permission: &str, err: &StoreError) -> CheckFailure {
    let text = match err {
        // AWS says InvalidAccessKeyId / SignatureDoesNotMatch; Garage says it in words.
        StoreError::AccessDenied(detail)
            if detail.contains("InvalidAccessKeyId") || detail.contains("No such key") =>
        {
            format!("{op} for {target}: the server does not know this access key id ({detail})")
        }
        StoreError::AccessDenied(detail)
            if detail.contains("SignatureDoesNotMatch") || detail.contains("Invalid signature") =>
        {
            format!("{op} for {target}: the secret access key does not match the key id ({detail})")
        }
        StoreError::AccessDenied(detail) => {
            format!("access denied on {op} for {target}: the key needs {permission} ({detail})")
        }
        StoreError::NoSuchBucket => format!("{op} for {target}: the bucket does not exist"),
        StoreError::NotFound => format!("{op} for {target}: not found"),
        StoreError::PreconditionFailed => {
            format!("{op} for {target}: the object changed meanwhile (another client?)")
        }
        StoreError::Unreachable(detail) => {
            format!("{op} for {target}: the endpoint cannot be reached ({detail})")
        }
        StoreError::Transient(detail)
            if detail.contains("timed out") || detail.contains("timeout") =>
        {
            format!(
                "{op} for {target}: no answer within {} s (is the endpoint an S3 server, and the port right?)",
                REQUEST_TIMEOUT.as_secs()
            )
        }
        StoreError::Throttled(detail) => {
            format!("{op} for {target}: the server asks to slow down ({detail})")
        }
        StoreError::Transient(detail) | StoreError::Other(detail) => {
            format!("{op} for {target} failed: {detail}")
        }
    };
    CheckFailure(text)
}

/// The key of a probe object under `prefix`: hidden (a dot name), and unique per run.
fn probe_key(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}.s3mount-check-{}-{nanos:x}", std::process::id())
}

/// Where a probe is shown: the prefix, or the bucket's root.
fn shown(prefix: &str) -> String {
    if prefix.is_empty() {
        "the bucket's root".into()
    } else {
        prefix.to_string()
    }
}

/// A probe object: written, read back and deleted under a prefix.
struct Probe {
    key: String,
    body: Bytes,
    target: String,
}

impl Probe {
    fn new(prefix: &str) -> Probe {
        let key = probe_key(prefix);
        let body = Bytes::from(format!("s3mount check probe {key}\n"));
        Probe {
            key,
            body,
            target: shown(prefix),
        }
    }

    async fn put<S: ObjectStore>(&self, store: &S) -> Result<String, CheckFailure> {
        let headers = crate::store::ObjectHeaders {
            user_meta: Vec::new(),
            content_type: Some("text/plain".into()),
        };
        store
            .put(&self.key, self.body.clone(), &headers)
            .await
            .map_err(|e| explain("PutObject", &self.target, "s3:PutObject", &e))?;
        Ok(format!("wrote {} ({} bytes)", self.key, self.body.len()))
    }

    async fn get<S: ObjectStore>(&self, store: &S) -> Result<String, CheckFailure> {
        let len = self.body.len() as u64;
        let got = get_bytes(store, &self.key, 0..len, None)
            .await
            .map_err(|e| explain("GetObject", &self.target, "s3:GetObject", &e))?;
        if got != self.body {
            return Err(CheckFailure(format!(
                "GetObject for {}: read back {} bytes that differ from the {len} written",
                self.target,
                got.len()
            )));
        }
        Ok(format!("read back the same {len} bytes"))
    }

    async fn delete<S: ObjectStore>(&self, store: &S) -> Result<String, CheckFailure> {
        let left = |e: CheckFailure| {
            CheckFailure(format!("{e}; the probe {} is left in the bucket", self.key))
        };
        store
            .delete(&self.key)
            .await
            .map_err(|e| left(explain("DeleteObject", &self.target, "s3:DeleteObject", &e)))?;
        match store.head(&self.key).await {
            Err(StoreError::NotFound) => Ok("removed the probe again".into()),
            Ok(_) => Err(left(CheckFailure(format!(
                "DeleteObject for {} answered OK but the object is still there",
                self.target
            )))),
            Err(e) => Err(left(explain(
                "HeadObject",
                &self.target,
                "s3:GetObject",
                &e,
            ))),
        }
    }
}

/// Is `prefix` of `store`'s bucket writable? Writes a probe object under it, reads it back
/// and deletes it again; the bucket then holds what it held before. Nothing outside the
/// prefix is touched. The probe is deleted even when reading it back failed.
pub async fn probe_writable<S: ObjectStore>(store: &S, prefix: &str) -> Result<(), CheckFailure> {
    let probe = Probe::new(prefix);
    probe.put(store).await?;
    let read = probe.get(store).await;
    let deleted = probe.delete(store).await;
    read?;
    deleted?;
    Ok(())
}

/// `host:port` of the endpoint, from `--endpoint-url` or the AWS endpoint of the region.
fn endpoint_address(settings: &S3Settings) -> Result<(String, u16), String> {
    let Some(url) = &settings.endpoint_url else {
        let region = settings.region.as_deref().unwrap_or("us-east-1");
        return Ok((format!("s3.{region}.amazonaws.com"), 443));
    };
    let (default_port, rest) = match url.split_once("://") {
        Some(("https", rest)) => (443, rest),
        Some(("http", rest)) => (80, rest),
        _ => return Err(format!("'{url}' is not an http:// or https:// URL")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("'{url}': unclosed [ in the host"))?;
        (host.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("'{url}' names no host"));
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p
            .parse()
            .map_err(|_| format!("'{url}': '{p}' is not a port number"))?,
    };
    Ok((host, port))
}

/// TCP connect to the endpoint, bounded by [`CONNECT_TIMEOUT`].
async fn endpoint_reachable(settings: &S3Settings) -> Result<String, CheckFailure> {
    let (host, port) = endpoint_address(settings).map_err(CheckFailure)?;
    let shown = format!("{host}:{port}");
    let resolved = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(&shown)).await;
    let addrs: Vec<SocketAddr> = match resolved {
        Err(_) => {
            return Err(CheckFailure(format!(
                "cannot resolve {host} within {} s (DNS)",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(CheckFailure(format!("cannot resolve {host}: {e}"))),
        Ok(Ok(a)) => a.collect(),
    };
    let Some(addr) = addrs.first() else {
        return Err(CheckFailure(format!("{host} resolves to no address")));
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(format!("{shown} accepts connections ({addr})")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(CheckFailure(format!(
                "nothing listens at {shown} ({addr}: connection refused): is the server running and --endpoint-url right?"
            )))
        }
        Ok(Err(e)) => Err(CheckFailure(format!(
            "cannot connect to {shown} ({addr}): {e}"
        ))),
        Err(_) => Err(CheckFailure(format!(
            "no TCP answer from {shown} ({addr}) within {} s: a firewall, or a wrong address",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Which credentials a request would use, described without the secret.
async fn credentials(store: &S3Store, settings: &S3Settings) -> Result<String, CheckFailure> {
    let found = tokio::time::timeout(REQUEST_TIMEOUT * 2, store.credentials_found())
        .await
        .map_err(|_| {
            CheckFailure(format!(
                "the credential chain found nothing within {} s",
                (REQUEST_TIMEOUT * 2).as_secs()
            ))
        })?
        .map_err(|e| {
            CheckFailure(format!(
                "no credentials: {e}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, give --profile NAME, or run where an instance or task role is available"
            ))
        })?;
    let id = &found.access_key_id;
    let tail: String = id
        .chars()
        .skip(id.chars().count().saturating_sub(4))
        .collect();
    let source = if settings.static_credentials.is_some() {
        let name = if std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty()) {
            "AWS_ACCESS_KEY_ID"
        } else {
            "S3_ACCESS_KEY_ID"
        };
        format!("environment variables ({name})")
    } else if found.sources.is_empty() {
        "the AWS credential chain".into()
    } else {
        found.sources.join(", via ")
    };
    let profile = match &settings.profile {
        Some(p) => format!(", profile {p}"),
        None => String::new(),
    };
    let lifetime = match found.expires {
        Some(t) => {
            let left = t
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            format!(", temporary, valid {} more minutes", left / 60)
        }
        None if found.temporary => ", temporary (session token)".into(),
        None => String::new(),
    };
    Ok(format!("key ****{tail} from {source}{profile}{lifetime}"))
}

/// The bucket exists and may be used (HeadBucket).
async fn bucket_exists(store: &S3Store, cfg: &CheckConfig) -> Result<String, CheckFailure> {
    let endpoint = endpoint_name(&cfg.s3);
    match store.check_bucket().await {
        Ok(()) => Ok(format!("bucket {} exists at {endpoint}", cfg.bucket)),
        Err(StoreError::NoSuchBucket) | Err(StoreError::NotFound) => Err(CheckFailure(format!(
            "bucket {} does not exist at {endpoint}: check the name (and --region / --endpoint-url)",
            cfg.bucket
        ))),
        Err(e) => {
            let target = format!("bucket {} at {endpoint}", cfg.bucket);
            // A HEAD answer has no body, so no error code: a LIST tells a wrong key
            // (InvalidAccessKeyId, SignatureDoesNotMatch) from a missing permission.
            if let StoreError::AccessDenied(_) = e
                && let Err(listed @ StoreError::AccessDenied(_)) =
                    store.list_page(&cfg.prefix, true, None, Some(1)).await
            {
                return Err(explain("ListObjectsV2", &target, "s3:ListBucket", &listed));
            }
            Err(explain("HeadBucket", &target, "s3:ListBucket", &e))
        }
    }
}

fn endpoint_name(settings: &S3Settings) -> String {
    settings
        .endpoint_url
        .clone()
        .unwrap_or_else(|| match endpoint_address(settings) {
            Ok((host, _)) => format!("https://{host}"),
            Err(e) => e,
        })
}

/// One page of the listing under the prefix.
async fn list(store: &S3Store, prefix: &str) -> Result<String, CheckFailure> {
    let page = store
        .list_page(prefix, true, None, Some(100))
        .await
        .map_err(|e| explain("ListObjectsV2", &shown(prefix), "s3:ListBucket", &e))?;
    let entries = page.objects.len() + page.prefixes.len();
    let more = if page.next_token.is_some() {
        " or more"
    } else {
        ""
    };
    Ok(format!("{} lists {entries}{more} entries", shown(prefix)))
}

/// Did S3 store the probe with the object options? Not echoing them (Garage) passes with
/// a warning; a different value fails.
async fn object_options(store: &S3Store, options: &ObjectOptions, key: &str) -> Verdict {
    if options.is_empty() {
        return Verdict::Ok("none given (--sse, --sse-kms-key-id, --storage-class, --acl): the bucket's defaults apply".into());
    }
    let stored = match store.stored_options(key).await {
        Ok(s) => s,
        Err(e) => return Verdict::Fail(explain("HeadObject", key, "s3:GetObject", &e).0),
    };
    let mut wrong = Vec::new();
    let mut unconfirmed = Vec::new();
    compare_stored(options, &stored, &mut wrong, &mut unconfirmed);
    if let Some(acl) = &options.acl {
        match store.grants(key).await {
            Ok(grants) => {
                let groups: Vec<(String, String)> = grants
                    .into_iter()
                    .filter(|g| g.grantee.contains("acs.amazonaws.com/groups/global/"))
                    .map(|g| {
                        let group = g.grantee.rsplit('/').next().unwrap_or_default().to_string();
                        (group, g.permission)
                    })
                    .collect();
                let mut want = expected_group_grants(acl);
                let mut have: Vec<(&str, &str)> = groups
                    .iter()
                    .map(|(g, p)| (g.as_str(), p.as_str()))
                    .collect();
                want.sort();
                have.sort();
                if want != have {
                    wrong.push(format!(
                        "ACL {acl}: the object's group grants are {have:?}, expected {want:?}"
                    ));
                }
            }
            Err(e) => unconfirmed.push(format!("--acl (GetObjectAcl: {})", detail(&e))),
        }
    }
    if !wrong.is_empty() {
        return Verdict::Fail(format!(
            "the server stored the probe differently: {}",
            wrong.join("; ")
        ));
    }
    let given = options.describe();
    if unconfirmed.is_empty() {
        Verdict::Ok(format!("{given}: accepted and stored"))
    } else {
        Verdict::Warn(format!(
            "{given}: accepted, but the server did not echo back {} (Garage and some other S3-compatible servers ignore them), so they are not confirmed",
            unconfirmed.join(", ")
        ))
    }
}

/// The server's own words in a failure, without our classification.
fn detail(e: &StoreError) -> String {
    match e {
        StoreError::AccessDenied(d)
        | StoreError::Throttled(d)
        | StoreError::Transient(d)
        | StoreError::Unreachable(d)
        | StoreError::Other(d) => d.clone(),
        other => other.to_string(),
    }
}

/// The AllUsers / AuthenticatedUsers grants a canned ACL makes.
fn expected_group_grants(acl: &str) -> Vec<(&'static str, &'static str)> {
    match acl {
        "public-read" => vec![("AllUsers", "READ")],
        "public-read-write" => vec![("AllUsers", "READ"), ("AllUsers", "WRITE")],
        "authenticated-read" => vec![("AuthenticatedUsers", "READ")],
        _ => vec![],
    }
}

/// Sorts the encryption and storage class HeadObject reported into wrong and unconfirmed.
fn compare_stored(
    options: &ObjectOptions,
    stored: &StoredOptions,
    wrong: &mut Vec<String>,
    unconfirmed: &mut Vec<String>,
) {
    if let Some(sse) = options.sse() {
        match stored.sse.as_deref() {
            None => unconfirmed.push("--sse".into()),
            Some(s) if s == sse => {}
            Some(other) => wrong.push(format!("encryption {other} instead of {sse}")),
        }
    }
    if let Some(want) = options.kms_key_id() {
        match stored.kms_key_id.as_deref() {
            None => unconfirmed.push("--sse-kms-key-id".into()),
            // S3 answers with the key's ARN also when given its id or alias.
            Some(have) if have == want || have.ends_with(&format!("/{want}")) => {}
            Some(have) if want.starts_with("alias/") => {
                unconfirmed.push(format!("--sse-kms-key-id (the server names key {have})"))
            }
            Some(have) => wrong.push(format!("KMS key {have} instead of {want}")),
        }
    }
    if let Some(class) = &options.storage_class {
        match stored.storage_class.as_deref() {
            // S3 leaves out the header for STANDARD.
            None if class == "STANDARD" => {}
            None => unconfirmed.push("--storage-class".into()),
            Some(s) if s == class => {}
            Some(other) => wrong.push(format!("storage class {other} instead of {class}")),
        }
    }
}

/// Runs every check, printing one line each to `out`; true if a mount would work.
pub async fn run<W: Write>(cfg: &CheckConfig, out: &mut W) -> bool {
    let mut settings = cfg.s3.clone();
    settings.operation_timeout = Some(REQUEST_TIMEOUT);
    settings.max_attempts = settings.max_attempts.clamp(1, 2);
    let store = S3Store::connect(&settings).await;
    let mut report = Report { out, failed: false };
    const SKIP: &str = "skipped: an earlier check failed";

    let has_credentials = report.from("credentials", credentials(&store, &settings).await);
    let reachable = report.from("endpoint", endpoint_reachable(&settings).await);
    let bucket = if has_credentials && reachable {
        report.from("bucket", bucket_exists(&store, cfg).await)
    } else {
        report.line("bucket", Verdict::Skipped(SKIP))
    };
    if !bucket {
        for check in ["list", "put", "get", "delete", "object options"] {
            report.line(check, Verdict::Skipped(SKIP));
        }
        return summary(&mut report, cfg);
    }
    report.from("list", list(&store, &cfg.prefix).await);
    let probe = Probe::new(&cfg.prefix);
    let put = report.from(
        "put",
        probe
            .put(&store)
            .await
            .map_err(|e| with_options_hint(e, &cfg.s3.object_options)),
    );
    if put {
        report.from("get", probe.get(&store).await);
        let options = object_options(&store, &cfg.s3.object_options, &probe.key).await;
        let deleted = probe.delete(&store).await;
        report.from("delete", deleted);
        report.line("object options", options);
    } else {
        for check in ["get", "delete", "object options"] {
            report.line(check, Verdict::Skipped("skipped: nothing was written"));
        }
    }
    if let Some(target) = &cfg.trash {
        report.from("trash", trash(&store, &settings, target).await);
    }
    summary(&mut report, cfg)
}

/// The recycle bin of `--trash` exists and takes objects, as the mount checks it.
async fn trash(
    store: &S3Store,
    settings: &S3Settings,
    target: &TrashTarget,
) -> Result<String, CheckFailure> {
    let checked = if target.other_bucket {
        let trash_store = S3Store::connect(&target.store_settings(settings)).await;
        check_trash_destination(&trash_store, target).await
    } else {
        check_trash_destination(store, target).await
    };
    checked
        .map(|()| format!("{} exists and takes objects", target.url()))
        .map_err(CheckFailure)
}

/// `s3mount check`: runs the checks on a runtime of its own and prints them on stdout;
/// exit 0 only if a mount would work.
pub fn main(cfg: &CheckConfig) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3mount: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let passed = runtime.block_on(run(cfg, &mut std::io::stdout()));
    if passed {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

/// A refused PUT with object options may be refused for them: say which ones.
fn with_options_hint(e: CheckFailure, options: &ObjectOptions) -> CheckFailure {
    if options.is_empty() {
        return e;
    }
    let mut text = e.0;
    if text.contains("AccessControlListNotSupported") {
        text.push_str(": the bucket does not accept ACLs (Object Ownership \"bucket owner enforced\"): drop --acl or use --acl bucket-owner-full-control");
    } else if text.starts_with("access denied") {
        if options.acl.is_some() {
            text.push_str("; with --acl it also needs s3:PutObjectAcl");
        }
        if options.sse() == Some("aws:kms") {
            text.push_str("; with --sse aws:kms also kms:GenerateDataKey on the KMS key");
        }
    } else {
        text.push_str(&format!(
            " (the request carried {}: is each of them supported by this server?)",
            options.describe()
        ));
    }
    CheckFailure(text)
}

fn summary<W: Write>(report: &mut Report<'_, W>, cfg: &CheckConfig) -> bool {
    let what = format!(
        "s3://{}/{} at {}",
        cfg.bucket,
        cfg.prefix,
        endpoint_name(&cfg.s3)
    );
    if report.failed {
        let _ = writeln!(
            report.out,
            "check failed: {what} cannot be mounted as configured"
        );
        false
    } else {
        let _ = writeln!(report.out, "check passed: {what} can be mounted");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{MemoryStore, Op};

    fn settings(url: Option<&str>) -> S3Settings {
        S3Settings {
            endpoint_url: url.map(String::from),
            region: Some("eu-west-1".into()),
            ..S3Settings::default()
        }
    }

    #[test]
    fn endpoint_addresses() {
        let a = |u| endpoint_address(&settings(u));
        assert_eq!(
            a(Some("http://127.0.0.1:3900")),
            Ok(("127.0.0.1".into(), 3900))
        );
        assert_eq!(
            a(Some("https://s3.example.com/")),
            Ok(("s3.example.com".into(), 443))
        );
        assert_eq!(a(Some("http://h")), Ok(("h".into(), 80)));
        assert_eq!(a(Some("http://[::1]:9000/x")), Ok(("::1".into(), 9000)));
        assert_eq!(a(None), Ok(("s3.eu-west-1.amazonaws.com".into(), 443)));
        assert!(a(Some("http://h:port")).is_err());
        assert!(a(Some("ftp://h")).is_err());
    }

    #[tokio::test]
    async fn a_probe_leaves_the_store_as_it_was() {
        let store = MemoryStore::new();
        store.insert("docs/a", b"a");
        store.insert("other", b"o");
        probe_writable(&store, "docs/").await.unwrap();
        assert_eq!(
            store.keys(),
            vec!["docs/a".to_string(), "other".to_string()]
        );
        assert_eq!(store.count(Op::Put), 1);
        assert_eq!(store.count(Op::Delete), 1);
    }

    #[tokio::test]
    async fn a_denied_put_names_the_permission() {
        let store = MemoryStore::new();
        store.fail_next(
            Op::Put,
            1,
            StoreError::AccessDenied("HTTP 403 AccessDenied".into()),
        );
        let err = probe_writable(&store, "docs/").await.unwrap_err();
        assert!(
            err.0
                .starts_with("access denied on PutObject for docs/: the key needs s3:PutObject"),
            "{err}"
        );
        assert!(store.keys().is_empty());
    }

    #[tokio::test]
    async fn the_probe_is_deleted_even_when_reading_it_back_fails() {
        let store = MemoryStore::new();
        store.fail_next(
            Op::Get,
            1,
            StoreError::AccessDenied("HTTP 403 AccessDenied".into()),
        );
        let err = probe_writable(&store, "").await.unwrap_err();
        assert!(err.0.contains("s3:GetObject"), "{err}");
        assert!(store.keys().is_empty());
        let store = MemoryStore::new();
        store.fail_next(
            Op::Delete,
            1,
            StoreError::AccessDenied("HTTP 403 AccessDenied".into()),
        );
        let err = probe_writable(&store, "p/").await.unwrap_err();
        assert!(
            err.0.contains("s3:DeleteObject") && err.0.contains("is left in the bucket"),
            "{err}"
        );
    }

    #[test]
    fn stored_options_are_compared() {
        let opts =
            ObjectOptions::parse(Some("aws:kms"), Some("k1"), Some("STANDARD_IA"), None).unwrap();
        let (mut wrong, mut unconfirmed) = (vec![], vec![]);
        let stored = StoredOptions {
            sse: Some("aws:kms".into()),
            kms_key_id: Some("arn:aws:kms:eu-west-1:1:key/k1".into()),
            storage_class: Some("STANDARD_IA".into()),
        };
        compare_stored(&opts, &stored, &mut wrong, &mut unconfirmed);
        assert!(
            wrong.is_empty() && unconfirmed.is_empty(),
            "{wrong:?} {unconfirmed:?}"
        );
        compare_stored(
            &opts,
            &StoredOptions::default(),
            &mut wrong,
            &mut unconfirmed,
        );
        assert!(wrong.is_empty());
        assert_eq!(
            unconfirmed,
            ["--sse", "--sse-kms-key-id", "--storage-class"]
        );
        let stored = StoredOptions {
            sse: Some("AES256".into()),
            kms_key_id: None,
            storage_class: Some("STANDARD".into()),
        };
        let mut wrong = vec![];
        compare_stored(&opts, &stored, &mut wrong, &mut vec![]);
        assert_eq!(wrong.len(), 2, "{wrong:?}");
    }
}
