//! The binary's failures: one clear line naming the cause, a non-zero exit, and nothing
//! left mounted or running.

use std::process::Command;

use crate::common::*;

fn mount_fails(source: &str, mountpoint: &str, extra: &[&str], envs: &[(&str, &str)]) -> String {
    let env = S3Env::get();
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(s3mount_bin());
    cmd.args([
        "mount",
        source,
        mountpoint,
        "--force-path-style",
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ])
    .args(extra)
    .env("AWS_ENDPOINT_URL", &env.endpoint);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "mount should have failed");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if std::path::Path::new(mountpoint).is_dir() {
        assert!(
            !is_mounted(std::path::Path::new(mountpoint)),
            "left mounted"
        );
    }
    wait_daemon_gone(cache.path());
    stderr
}

#[test]
fn no_such_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let err = mount_fails(
        "s3://no-such-bucket-s3mount/",
        dir.path().to_str().unwrap(),
        &[],
        &[],
    );
    assert!(err.contains("no such bucket"), "{err}");
}

#[test]
fn access_denied() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = S3Env::get().bucket;
    let err = mount_fails(
        &bucket,
        dir.path().to_str().unwrap(),
        &[],
        &[(
            "AWS_SECRET_ACCESS_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        )],
    );
    assert!(err.contains("access denied"), "{err}");
}

#[test]
fn endpoint_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = S3Env::get().bucket;
    let err = mount_fails(
        &bucket,
        dir.path().to_str().unwrap(),
        &["--endpoint-url", "http://127.0.0.1:9"],
        &[],
    );
    assert!(err.contains("endpoint unreachable"), "{err}");
}

#[test]
fn mountpoint_missing_or_not_a_directory() {
    let bucket = S3Env::get().bucket;
    let err = mount_fails(&bucket, "/nonexistent/s3mount-mnt", &[], &[]);
    assert!(err.contains("does not exist"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = mount_fails(&bucket, file.path().to_str().unwrap(), &[], &[]);
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn bad_option_values_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = S3Env::get().bucket;
    for (args, option) in [
        (vec!["--part-size", "1MiB"], "--part-size"),
        (vec!["--part-size", "lots"], "--part-size"),
        (vec!["-o", "upload_concurrency=0"], "--upload-concurrency"),
        (vec!["--file-mode", "999"], "--file-mode"),
        (vec!["-o", "endpoint_url=ftp://x"], "--endpoint-url"),
        (vec!["--request-timeout", "0"], "--request-timeout"),
        (vec!["-o", "request_timeout=1e9"], "--request-timeout"),
    ] {
        let err = mount_fails(&bucket, dir.path().to_str().unwrap(), &args, &[]);
        assert!(err.contains(option), "{args:?}: {err}");
    }
}

#[test]
fn fstab_form_and_s3_environment_names_mount() {
    let env = S3Env::get();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("fstab");
    // As mount(8) runs it for type fuse.s3mount: no subcommand, options in -o.
    let out = Command::new(s3mount_bin())
        .args([
            &env.bucket,
            dir.path().to_str().unwrap(),
            "-o",
            &format!(
                "rw,_netdev,force_path_style,cache_dir={},read_only",
                cache.path().display()
            ),
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .env("S3_ACCESS_KEY_ID", &env.access_key)
        .env("S3_SECRET_ACCESS_KEY", &env.secret_key)
        .env("S3_ENDPOINT_URL", &env.endpoint)
        .env("S3_LOCATION", &prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = std::fs::write(dir.path().join("x"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    fuse_unmount(dir.path()).unwrap();
    wait_daemon_gone(cache.path());
}

#[test]
fn two_mounts_cannot_share_a_cache_dir() {
    let prefix = unique_prefix("lock");
    let first = TestMount::new(&prefix, &[]);
    let dir = tempfile::tempdir().unwrap();
    let env = S3Env::get();
    let out = Command::new(s3mount_bin())
        .args([
            "mount",
            &format!("s3://{}/{prefix}", env.bucket),
            dir.path().to_str().unwrap(),
            "--force-path-style",
            "--cache-dir",
            first.cache.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another s3mount"), "{err}");
    assert!(!is_mounted(dir.path()));
    std::fs::write(first.path("still.txt"), b"served").unwrap();
}
