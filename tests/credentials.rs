//! Rotated keys in the shared credentials file are picked up again (the chain is built
//! afresh each time the SDK's credential cache asks), without a remount.

use aws_credential_types::provider::ProvideCredentials;
use s3mount::store::s3::FreshChain;

#[tokio::test]
async fn rotated_keys_in_the_credentials_file_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    let config = dir.path().join("config");
    std::fs::write(&config, "").unwrap();
    // SAFETY: this test binary has this one test; nothing else reads the environment.
    unsafe {
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            std::env::remove_var(var);
        }
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &creds);
        std::env::set_var("AWS_CONFIG_FILE", &config);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let chain = FreshChain {
        profile: Some("docs".into()),
    };
    std::fs::write(
        &creds,
        "[docs]\naws_access_key_id = OLDKEY\naws_secret_access_key = oldsecret\n",
    )
    .unwrap();
    let first = chain.provide_credentials().await.unwrap();
    assert_eq!(first.access_key_id(), "OLDKEY");
    std::fs::write(
        &creds,
        "[docs]\naws_access_key_id = NEWKEY\naws_secret_access_key = newsecret\n",
    )
    .unwrap();
    let second = chain.provide_credentials().await.unwrap();
    assert_eq!(second.access_key_id(), "NEWKEY");
}
