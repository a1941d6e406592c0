//! Encryption, storage class and ACL (`--sse`, `--sse-kms-key-id`, `--storage-class`,
//! `--acl`) on every object the mount writes: a small PUT, a multipart upload, and the
//! server-side copies behind chmod, rename and setxattr, read back with HeadObject and
//! GetObjectAcl. Garage ignores all three, so these mounts run against moto 5.2.5, which
//! stores and returns them (and, like S3, drops them on a copy that does not repeat
//! them); `scripts/test.sh` starts it and sets S3MOUNT_TEST_MOTO_URL.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::common::*;

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

/// A bucket of its own on the moto server, and a client for it.
struct Moto {
    url: String,
    bucket: String,
    client: Client,
    rt: tokio::runtime::Runtime,
    /// Cache dirs of the mounts made, removed when the test ends (after its mounts).
    caches: std::cell::RefCell<Vec<tempfile::TempDir>>,
}

/// What HeadObject and GetObjectAcl say of one object.
#[derive(Debug, PartialEq)]
struct Stored {
    sse: Option<String>,
    kms_key_id: Option<String>,
    storage_class: Option<String>,
    /// (grantee URI or id, permission) of the group grants.
    group_grants: Vec<(String, String)>,
}

impl Moto {
    fn new(test: &str) -> Moto {
        let url = std::env::var("S3MOUNT_TEST_MOTO_URL").expect(
            "S3MOUNT_TEST_MOTO_URL is not set: run the tests with scripts/test.sh, which starts moto",
        );
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&url)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .force_path_style(true)
            .build();
        let client = Client::from_conf(conf);
        let rt = runtime();
        let bucket = unique_prefix(test)
            .trim_end_matches('/')
            .to_ascii_lowercase()
            .replace('_', "-");
        rt.block_on(client.create_bucket().bucket(&bucket).send())
            .unwrap();
        Moto {
            url,
            bucket,
            client,
            rt,
            caches: Default::default(),
        }
    }

    /// Mounts the bucket's `prefix` on moto with `extra` options.
    fn mount(&self, prefix: &str, extra: &[&str]) -> TestMount {
        let cache = tempfile::tempdir().unwrap();
        let mount = TestMount::of_bucket(
            &self.bucket,
            prefix,
            &cache.path().join("cache"),
            extra,
            Some(&self.url),
        );
        self.caches.borrow_mut().push(cache);
        mount
    }

    fn stored(&self, key: &str) -> Stored {
        self.rt.block_on(async {
            let head = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("HEAD {key}: {e:?}"));
            let acl = self
                .client
                .get_object_acl()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let mut group_grants: Vec<(String, String)> = acl
                .grants()
                .iter()
                .filter_map(|g| {
                    let uri = g.grantee()?.uri()?;
                    Some((uri.to_string(), g.permission()?.as_str().to_string()))
                })
                .collect();
            group_grants.sort();
            Stored {
                sse: head.server_side_encryption().map(|s| s.as_str().into()),
                kms_key_id: head.ssekms_key_id().map(String::from),
                storage_class: head.storage_class().map(|s| s.as_str().into()),
                group_grants,
            }
        })
    }

    fn meta(&self, key: &str, name: &str) -> Option<String> {
        self.rt.block_on(async {
            let head = (self.client.head_object())
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            head.metadata().and_then(|m| m.get(name).cloned())
        })
    }

    /// The ETag of `key`: `"…-N"` for an object uploaded in N parts.
    fn etag(&self, key: &str) -> String {
        self.rt.block_on(async {
            let head = (self.client.head_object())
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            head.e_tag().unwrap_or_default().to_string()
        })
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut data = vec![0u8; n];
    rand::rng().fill_bytes(&mut data);
    data
}

#[test]
fn kms_storage_class_and_acl_on_put_multipart_chmod_rename_and_xattr() {
    let moto = Moto::new("objopts-kms");
    let key_id = "arn:aws:kms:us-east-1:123456789012:key/s3mount-test";
    let m = moto.mount(
        "docs/",
        &[
            "--part-size",
            "5MiB",
            "-o",
            &format!(
                "sse=aws:kms,sse_kms_key_id={key_id},storage_class=STANDARD_IA,acl=public-read"
            ),
        ],
    );
    let want = Stored {
        sse: Some("aws:kms".into()),
        kms_key_id: Some(key_id.into()),
        storage_class: Some("STANDARD_IA".into()),
        group_grants: vec![(ALL_USERS.into(), "READ".into())],
    };

    std::fs::write(m.path("small.txt"), b"small").unwrap();
    assert_eq!(moto.stored("docs/small.txt"), want, "small PUT");

    let big = random_bytes(12 * MIB);
    std::fs::write(m.path("big.bin"), &big).unwrap();
    let etag = moto.etag("docs/big.bin");
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "not a multipart upload: {etag}"
    );
    assert_eq!(moto.stored("docs/big.bin"), want, "multipart upload");

    // chmod: the object is copied onto itself with new metadata.
    std::fs::set_permissions(m.path("small.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        moto.meta("docs/small.txt", "mode").as_deref(),
        Some("33152"),
        "chmod did not reach S3"
    );
    assert_eq!(moto.stored("docs/small.txt"), want, "chmod (metadata copy)");

    // rename: copied to the new key, the old one deleted.
    std::fs::rename(m.path("big.bin"), m.path("moved.bin")).unwrap();
    assert_eq!(moto.stored("docs/moved.bin"), want, "rename (copy)");

    // setxattr: another metadata copy.
    let out = Command::new("setfattr")
        .args(["-n", "user.kind", "-v", "invoice"])
        .arg(m.path("moved.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        moto.meta("docs/moved.bin", "xattr").is_some(),
        "setxattr did not reach S3"
    );
    assert_eq!(
        moto.stored("docs/moved.bin"),
        want,
        "setxattr (metadata copy)"
    );
    assert_eq!(std::fs::read(m.path("moved.bin")).unwrap(), big);
}

#[test]
fn aes256_and_another_class_and_acl_as_long_options() {
    let moto = Moto::new("objopts-aes");
    let m = moto.mount(
        "p/",
        &[
            "--sse",
            "AES256",
            "--storage-class",
            "GLACIER_IR",
            "--acl",
            "authenticated-read",
        ],
    );
    let want = Stored {
        sse: Some("AES256".into()),
        kms_key_id: None,
        storage_class: Some("GLACIER_IR".into()),
        group_grants: vec![(
            "http://acs.amazonaws.com/groups/global/AuthenticatedUsers".into(),
            "READ".into(),
        )],
    };
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::write(m.path("dir/a.txt"), b"a").unwrap();
    assert_eq!(moto.stored("p/dir/"), want, "directory marker");
    assert_eq!(moto.stored("p/dir/a.txt"), want, "small PUT");
    std::fs::rename(m.path("dir/a.txt"), m.path("b.txt")).unwrap();
    assert_eq!(moto.stored("p/b.txt"), want, "rename (copy)");
}

#[test]
fn check_confirms_options_given_in_the_environment() {
    let moto = Moto::new("objopts-check");
    let out = Command::new(s3mount_bin())
        .args(["check", &format!("s3://{}/docs/", moto.bucket)])
        .args(["--endpoint-url", &moto.url, "--force-path-style"])
        .env("S3MOUNT_SSE", "aws:kms")
        .env("S3MOUNT_SSE_KMS_KEY_ID", "check-key")
        .env("S3MOUNT_STORAGE_CLASS", "ONEZONE_IA")
        .env("S3MOUNT_ACL", "public-read")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "object options  OK    --sse aws:kms --sse-kms-key-id check-key --storage-class ONEZONE_IA --acl public-read: accepted and stored"
        ),
        "{stdout}"
    );
    let keys = moto.rt.block_on(async {
        let out = (moto.client.list_objects_v2())
            .bucket(&moto.bucket)
            .send()
            .await
            .unwrap();
        out.contents().len()
    });
    assert_eq!(keys, 0, "the probe was left behind");
}

#[test]
fn bad_values_are_refused_before_mounting() {
    let env = S3Env::get();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for (args, envs, option) in [
        (vec!["--sse", "aes128"], vec![], "--sse"),
        (vec!["-o", "storage_class=COLD"], vec![], "--storage-class"),
        (vec!["--acl", "everyone"], vec![], "--acl"),
        (
            vec!["--sse", "AES256", "--sse-kms-key-id", "k"],
            vec![],
            "--sse-kms-key-id",
        ),
        (vec![], vec![("S3MOUNT_ACL", "nobody")], "--acl"),
    ] {
        let out = Command::new(s3mount_bin())
            .args(["mount", &env.bucket, dir.path().to_str().unwrap()])
            .args(["--force-path-style", "--endpoint-url", &env.endpoint])
            .args(["--cache-dir", cache.path().to_str().unwrap()])
            .args(&args)
            .envs(envs)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
        assert!(!is_mounted(dir.path()), "{args:?}: mounted");
    }
}

/// The shared metadata index objects (`--shared-metadata-index`) are written with the
/// mount's encryption, storage class and ACL too.
#[test]
fn shared_index_objects_carry_the_options() {
    let moto = Moto::new("objopts-shared");
    moto.rt.block_on(async {
        for i in 0..20 {
            let put = moto.client.put_object().bucket(&moto.bucket);
            put.key(format!("p/f{i:02}"))
                .metadata("mode", "33152")
                .body(b"doc".to_vec().into())
                .send()
                .await
                .unwrap();
        }
    });
    // Objects are indexed once their Last-Modified is settled.
    std::thread::sleep(s3mount::meta_index::SETTLED + std::time::Duration::from_secs(1));
    let m = moto.mount(
        "p/",
        &[
            "--shared-metadata-index",
            "--sse",
            "AES256",
            "--storage-class",
            "STANDARD_IA",
            "--acl",
            "public-read",
        ],
    );
    assert_eq!(std::fs::read_dir(m.mountpoint()).unwrap().count(), 20);
    let key =
        s3mount::layout::Layout::new("p/").shared_index_key("", s3mount::shared_index::FORMAT);
    let written = eventually(std::time::Duration::from_secs(10), || {
        moto.rt
            .block_on(
                moto.client
                    .head_object()
                    .bucket(&moto.bucket)
                    .key(&key)
                    .send(),
            )
            .is_ok()
    });
    assert!(written, "the index object {key} was not written");
    let want = Stored {
        sse: Some("AES256".into()),
        kms_key_id: None,
        storage_class: Some("STANDARD_IA".into()),
        group_grants: vec![(ALL_USERS.into(), "READ".into())],
    };
    assert_eq!(moto.stored(&key), want);
}
