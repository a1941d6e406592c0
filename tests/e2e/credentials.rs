//! Rotated keys in the shared credentials file are picked up again (the chain is built
//! afresh each time the SDK's credential cache asks), without a remount.
//!
//! The SDK's credential chain reads the process environment, and every test of this
//! binary shares one process: removing the test's S3 keys from it would break the tests
//! running next to this one. So the test starts this binary again for itself alone, with
//! the environment the check needs, and the child does the check.

use std::process::Command;

use aws_credential_types::provider::ProvideCredentials;
use s3mount::store::s3::FreshChain;

/// Set (to the folder of the credential files) in the child that does the check.
const CHILD: &str = "S3MOUNT_TEST_CREDENTIALS_DIR";

#[test]
fn rotated_keys_in_the_credentials_file_are_read_again() {
    if let Some(dir) = std::env::var_os(CHILD) {
        return check(std::path::Path::new(&dir));
    }
    // The test's name as libtest knows it: its module path without the crate name.
    let name = format!(
        "{}::rotated_keys_in_the_credentials_file_are_read_again",
        module_path!().split_once("::").unwrap().1
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child.args([&name, "--exact", "--test-threads=1"]);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        child.env_remove(var);
    }
    let out = child
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("credentials"),
        )
        .env("AWS_CONFIG_FILE", dir.path().join("config"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the check in a child process failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In the child: its environment names `dir`'s files and holds no keys.
fn check(dir: &std::path::Path) {
    let creds = dir.join("credentials");
    std::fs::write(dir.join("config"), "").unwrap();
    let chain = FreshChain {
        profile: Some("docs".into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::fs::write(
        &creds,
        "[docs]\naws_access_key_id = OLDKEY\naws_secret_access_key = oldsecret\n",
    )
    .unwrap();
    let first = rt.block_on(chain.provide_credentials()).unwrap();
    assert_eq!(first.access_key_id(), "OLDKEY");
    std::fs::write(
        &creds,
        "[docs]\naws_access_key_id = NEWKEY\naws_secret_access_key = newsecret\n",
    )
    .unwrap();
    let second = rt.block_on(chain.provide_credentials()).unwrap();
    assert_eq!(second.access_key_id(), "NEWKEY");
}
