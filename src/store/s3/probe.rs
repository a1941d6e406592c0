//! What `s3mount check` asks S3 beyond the mount's own operations, read into plain data:
//! where the credential chain found its keys (never the secret), and what S3 says it
//! stored for an object (encryption, storage class, ACL grants).

use std::time::SystemTime;

use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::error::DisplayErrorContext;

use super::S3Store;
use crate::store::StoreResult;
use crate::store::s3_answers::classify;

/// Keys the credential provider handed out, described without the secret.
#[derive(Clone, Debug)]
pub struct CredentialsFound {
    pub access_key_id: String,
    /// The sources of the chain that produced them, in words ("environment variables",
    /// "instance metadata (EC2 instance role)"); empty for keys s3mount read itself.
    pub sources: Vec<String>,
    pub expires: Option<SystemTime>,
    pub temporary: bool,
}

/// What HeadObject reports of the options an object was stored with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredOptions {
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub storage_class: Option<String>,
}

/// One grant of an object's ACL: the grantee (group URI, canonical id or e-mail) and
/// the permission (`READ`, `FULL_CONTROL`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub grantee: String,
    pub permission: String,
}

fn describe_feature(feature: &AwsCredentialFeature) -> String {
    use AwsCredentialFeature::*;
    match feature {
        CredentialsEnvVars => "environment variables (AWS_ACCESS_KEY_ID)".into(),
        CredentialsEnvVarsStsWebIdToken | CredentialsProfileStsWebIdToken => {
            "web identity token (AWS_WEB_IDENTITY_TOKEN_FILE), via STS".into()
        }
        CredentialsStsAssumeRole => "an assumed role (STS AssumeRole)".into(),
        CredentialsStsAssumeRoleWebId => "an assumed role with web identity (STS)".into(),
        CredentialsProfile => "the shared AWS config/credentials files".into(),
        CredentialsProfileSourceProfile => "a source_profile of the AWS config files".into(),
        CredentialsProfileNamedProvider => "a credential_source of the AWS config files".into(),
        CredentialsProfileSso | CredentialsSso => "AWS SSO (IAM Identity Center)".into(),
        CredentialsProfileProcess | CredentialsProcess => {
            "a credential_process of the AWS config files".into()
        }
        CredentialsHttp => "the container credentials endpoint (ECS/EKS task role)".into(),
        CredentialsImds => "instance metadata (EC2 instance role)".into(),
        CredentialsProfileLogin | CredentialsLogin => "aws login".into(),
        other => format!("{other:?}"),
    }
}

impl S3Store {
    /// Asks the client's credential provider for keys, as a request would.
    pub async fn credentials_found(&self) -> Result<CredentialsFound, String> {
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| format!("{}", DisplayErrorContext(&e)))?;
        let features = creds
            .get_property::<Vec<AwsCredentialFeature>>()
            .cloned()
            .unwrap_or_default();
        let mut sources: Vec<String> = Vec::new();
        for feature in &features {
            let text = describe_feature(feature);
            if !sources.contains(&text) && *feature != AwsCredentialFeature::ResolvedAccountId {
                sources.push(text);
            }
        }
        Ok(CredentialsFound {
            access_key_id: creds.access_key_id().to_string(),
            sources,
            expires: creds.expiry(),
            temporary: creds.session_token().is_some(),
        })
    }

    /// Encryption and storage class of `key` as HeadObject reports them.
    pub async fn stored_options(&self, key: &str) -> StoreResult<StoredOptions> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("HeadObject", key, e))?;
        Ok(StoredOptions {
            sse: out.server_side_encryption().map(|s| s.as_str().to_string()),
            kms_key_id: out.ssekms_key_id().map(str::to_string),
            storage_class: out.storage_class().map(|s| s.as_str().to_string()),
        })
    }

    /// The grants of `key`'s ACL (GetObjectAcl).
    pub async fn grants(&self, key: &str) -> StoreResult<Vec<Grant>> {
        let out = self
            .client
            .get_object_acl()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("GetObjectAcl", key, e))?;
        Ok(out
            .grants()
            .iter()
            .map(|g| {
                let grantee = g.grantee();
                Grant {
                    grantee: grantee
                        .and_then(|g| g.uri().or(g.id()).or(g.email_address()))
                        .unwrap_or_default()
                        .to_string(),
                    permission: g
                        .permission()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                }
            })
            .collect())
    }
}
