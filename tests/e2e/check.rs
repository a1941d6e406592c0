//! `s3mount check` through the real binary against the local Garage: a good
//! configuration passes and leaves the bucket as it was; a missing bucket, an endpoint
//! that refuses or never answers, and a key that may read but not write each fail within
//! seconds with a line that says what is wrong.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;

/// Runs `s3mount check ARGS` against the test server (path style), with `envs` added.
fn check(args: &[&str], envs: &[(&str, &str)]) -> (Output, String, Duration) {
    let env = S3Env::get();
    let mut cmd = Command::new(s3mount_bin());
    cmd.arg("check")
        .args(args)
        .arg("--force-path-style")
        .env("AWS_ENDPOINT_URL", &env.endpoint);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out, stdout, elapsed)
}

/// The verdict word of the line of `check` (`OK`, `WARN`, `FAIL`, `SKIP`).
fn verdict<'a>(stdout: &'a str, check: &str) -> &'a str {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{check} ")))
        .unwrap_or_else(|| panic!("no line for {check}:\n{stdout}"));
    line[15..].split_whitespace().next().unwrap()
}

const CHECKS: [&str; 8] = [
    "credentials",
    "endpoint",
    "bucket",
    "list",
    "put",
    "get",
    "delete",
    "object options",
];

#[test]
fn a_good_configuration_passes_and_leaves_the_bucket_as_it_was() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("check-good");
    bucket.put(&format!("{prefix}kept.txt"), b"kept");
    let outside = format!("{}outside", prefix.trim_end_matches('/'));
    bucket.put(&outside, b"outside");
    let source = format!("s3://{}/{prefix}", bucket.env.bucket);
    let (out, stdout, _) = check(&[&source], &[]);
    assert!(out.status.success(), "{stdout}");
    let names: Vec<&str> = stdout
        .lines()
        .take(CHECKS.len())
        .map(|l| l[..15].trim_end())
        .collect();
    assert_eq!(names, CHECKS, "{stdout}");
    for name in CHECKS {
        assert_eq!(verdict(&stdout, name), "OK", "{stdout}");
    }
    assert!(
        stdout.contains("environment variables (AWS_ACCESS_KEY_ID)"),
        "{stdout}"
    );
    assert!(stdout.contains("check passed"), "{stdout}");
    assert!(
        !stdout.contains(&bucket.env.secret_key),
        "the secret was printed"
    );
    assert_eq!(bucket.keys(&prefix), vec![format!("{prefix}kept.txt")]);
    assert_eq!(bucket.get(&outside).as_deref(), Some(&b"outside"[..]));

    // The same with the prefix given by --prefix, and the environment's S3_* names.
    let (out, stdout, _) = check(
        &[&bucket.env.bucket, "--prefix", &prefix],
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("S3_ACCESS_KEY_ID", &bucket.env.access_key),
            ("S3_SECRET_ACCESS_KEY", &bucket.env.secret_key),
        ],
    );
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("environment variables (S3_ACCESS_KEY_ID)"),
        "{stdout}"
    );
    assert_eq!(bucket.keys(&prefix), vec![format!("{prefix}kept.txt")]);
}

#[test]
fn a_missing_bucket_is_named() {
    let env = S3Env::get();
    let (out, stdout, elapsed) = check(&["s3://no-such-bucket-s3mount-check/docs/"], &[]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(verdict(&stdout, "bucket"), "FAIL", "{stdout}");
    assert!(
        stdout.contains("bucket no-such-bucket-s3mount-check does not exist at")
            && stdout.contains(&env.endpoint),
        "{stdout}"
    );
    assert_eq!(verdict(&stdout, "put"), "SKIP", "{stdout}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn the_trash_of_a_mount_is_checked_too() {
    let env = S3Env::get();
    let prefix = unique_prefix("check-trash");
    let source = format!("s3://{}/{prefix}", env.bucket);
    let (out, stdout, _) = check(&[&source, "--trash", "check-trash-bin/"], &[]);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(verdict(&stdout, "trash"), "OK", "{stdout}");
    let missing = "s3://no-such-trash-bucket-s3mount/deleted/";
    let (out, stdout, _) = check(&[&source, "--trash", missing], &[]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(verdict(&stdout, "trash"), "FAIL", "{stdout}");
    assert!(
        stdout.contains("trash bucket no-such-trash-bucket-s3mount does not exist"),
        "{stdout}"
    );
    // A trash inside the mount's own prefix is refused before anything is asked.
    let inside = format!("{prefix}deleted/");
    let (out, stdout, _) = check(&[&source, "--trash", &inside], &[]);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
}

#[test]
fn a_closed_port_fails_within_seconds() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let env = S3Env::get();
    let url = format!("http://127.0.0.1:{port}");
    let (out, stdout, elapsed) = check(&[&env.bucket, "--endpoint-url", &url], &[]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(verdict(&stdout, "endpoint"), "FAIL", "{stdout}");
    assert!(
        stdout.contains(&format!("nothing listens at 127.0.0.1:{port}")),
        "{stdout}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn an_endpoint_that_never_answers_fails_within_seconds() {
    // Connections are accepted (by the kernel, into the backlog) and never answered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let env = S3Env::get();
    let (out, stdout, elapsed) = check(&[&env.bucket, "--endpoint-url", &url], &[]);
    drop(listener);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(verdict(&stdout, "endpoint"), "OK", "{stdout}");
    assert_eq!(verdict(&stdout, "bucket"), "FAIL", "{stdout}");
    assert!(stdout.contains("no answer within"), "{stdout}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

/// A Garage key allowed to read the test bucket but not to write it: (id, secret).
fn read_only_key() -> (String, String) {
    let dir = std::env::var("S3MOUNT_TEST_GARAGE_DIR")
        .expect("S3MOUNT_TEST_GARAGE_DIR is not set: run the tests with scripts/test.sh");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let id = format!("GK{:024x}", nanos & ((1u128 << 96) - 1));
    let secret = format!("{nanos:032x}{:032x}", nanos.rotate_left(64));
    let name = format!("ro-{nanos:x}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-s3.sh");
    let bucket = S3Env::get().bucket;
    for args in [
        vec!["key", "import", "--yes", &id, &secret, "-n", &name],
        vec!["bucket", "allow", "--read", &bucket, "--key", &name],
    ] {
        let out = Command::new(script)
            .args(["garage", &dir])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "garage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (id, secret)
}

#[test]
fn a_key_that_may_read_but_not_write_is_refused_on_put() {
    let (id, secret) = read_only_key();
    let bucket = Bucket::new();
    let prefix = unique_prefix("check-ro");
    bucket.put(&format!("{prefix}a"), b"a");
    let source = format!("s3://{}/{prefix}", bucket.env.bucket);
    let (out, stdout, _) = check(
        &[&source],
        &[
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for ok in ["credentials", "endpoint", "bucket", "list"] {
        assert_eq!(verdict(&stdout, ok), "OK", "{stdout}");
    }
    assert_eq!(verdict(&stdout, "put"), "FAIL", "{stdout}");
    assert!(
        stdout.contains(&format!(
            "access denied on PutObject for {prefix}: the key needs s3:PutObject"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("check failed"), "{stdout}");
    assert_eq!(bucket.keys(&prefix), vec![format!("{prefix}a")]);

    // A wrong secret for the same key is told apart from a missing permission.
    let (out, stdout, _) = check(
        &[&source],
        &[
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SECRET_ACCESS_KEY", &"0".repeat(64)),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("the secret access key does not match the key id"),
        "{stdout}"
    );
}

#[test]
fn bad_options_are_refused_before_anything_is_asked() {
    let env = S3Env::get();
    for (args, option) in [
        (vec!["--sse", "aws:kms:dsse"], "--sse"),
        (vec!["--storage-class", "COLD"], "--storage-class"),
        (vec!["-o", "acl=world-writable"], "--acl"),
        (
            vec!["--sse", "AES256", "--sse-kms-key-id", "k"],
            "--sse-kms-key-id",
        ),
        (vec!["--endpoint-url", "ftp://x"], "--endpoint-url"),
    ] {
        let mut all = vec![env.bucket.as_str()];
        all.extend(&args);
        let (out, stdout, _) = check(&all, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
    }
}
