//! The options sent with every object the mount writes: server-side encryption, storage
//! class and canned ACL (`--sse`, `--sse-kms-key-id`, `--storage-class`, `--acl`), as plain
//! data checked against the values S3 knows. The store applies them to each PUT,
//! CreateMultipartUpload and CopyObject, so no caller has to know about them.
//!
//! Invariants: a value held here is one S3 accepts, in S3's own spelling; a KMS key id is
//! only ever held together with `aws:kms` (`--sse-kms-key-id` alone implies `--sse aws:kms`;
//! with `--sse AES256` it is refused).

/// The storage classes of S3's API (`x-amz-storage-class`).
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "OUTPOSTS",
    "SNOW",
    "EXPRESS_ONEZONE",
];

/// The canned ACLs S3 accepts on objects (`x-amz-acl`).
pub const CANNED_ACLS: &[&str] = &[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// The `--sse` values (`x-amz-server-side-encryption`).
pub const SSE_VALUES: &[&str] = &["AES256", "aws:kms"];

/// Server-side encryption of every object written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// `AES256`: keys managed by S3 (SSE-S3).
    S3Managed,
    /// `aws:kms`: SSE-KMS with the given key, or the account's default KMS key for S3.
    Kms { key_id: Option<String> },
}

/// What is sent with every object written; all `None`: nothing is sent, and the bucket's
/// defaults apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectOptions {
    pub encryption: Option<Encryption>,
    pub storage_class: Option<String>,
    pub acl: Option<String>,
}

/// `value` in S3's spelling if it is one of `allowed` (compared without regard to case).
fn one_of(option: &str, value: &str, allowed: &[&str]) -> Result<String, String> {
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value.trim()))
        .map(|a| a.to_string())
        .ok_or_else(|| {
            format!(
                "invalid value for {option}: '{value}'; use one of {}",
                allowed.join(", ")
            )
        })
}

impl ObjectOptions {
    /// Checks the four options as given on the command line; errors name the option.
    pub fn parse(
        sse: Option<&str>,
        sse_kms_key_id: Option<&str>,
        storage_class: Option<&str>,
        acl: Option<&str>,
    ) -> Result<ObjectOptions, String> {
        let sse = sse.map(|v| one_of("--sse", v, SSE_VALUES)).transpose()?;
        let key_id = match sse_kms_key_id.map(str::trim) {
            Some("") => return Err("invalid value for --sse-kms-key-id: it is empty".into()),
            Some(id) if id.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(format!(
                    "invalid value for --sse-kms-key-id: '{id}' holds a space or a control character"
                ));
            }
            other => other.map(str::to_string),
        };
        let encryption = match (sse.as_deref(), key_id) {
            (None, None) => None,
            (Some("AES256"), None) => Some(Encryption::S3Managed),
            (Some("AES256"), Some(_)) => {
                return Err(
                    "--sse-kms-key-id needs --sse aws:kms (or no --sse), not --sse AES256".into(),
                );
            }
            (_, key_id) => Some(Encryption::Kms { key_id }),
        };
        Ok(ObjectOptions {
            encryption,
            storage_class: storage_class
                .map(|v| one_of("--storage-class", v, STORAGE_CLASSES))
                .transpose()?,
            acl: acl.map(|v| one_of("--acl", v, CANNED_ACLS)).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == ObjectOptions::default()
    }

    /// The `x-amz-server-side-encryption` value.
    pub fn sse(&self) -> Option<&'static str> {
        match self.encryption {
            None => None,
            Some(Encryption::S3Managed) => Some("AES256"),
            Some(Encryption::Kms { .. }) => Some("aws:kms"),
        }
    }

    /// The `x-amz-server-side-encryption-aws-kms-key-id` value.
    pub fn kms_key_id(&self) -> Option<&str> {
        match &self.encryption {
            Some(Encryption::Kms { key_id }) => key_id.as_deref(),
            _ => None,
        }
    }

    /// The options as they would be typed: `--sse aws:kms --storage-class STANDARD_IA`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(sse) = self.sse() {
            parts.push(format!("--sse {sse}"));
        }
        if let Some(id) = self.kms_key_id() {
            parts.push(format!("--sse-kms-key-id {id}"));
        }
        if let Some(class) = &self.storage_class {
            parts.push(format!("--storage-class {class}"));
        }
        if let Some(acl) = &self.acl {
            parts.push(format!("--acl {acl}"));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        sse: Option<&str>,
        id: Option<&str>,
        class: Option<&str>,
        acl: Option<&str>,
    ) -> Result<ObjectOptions, String> {
        ObjectOptions::parse(sse, id, class, acl)
    }

    #[test]
    fn nothing_given_sends_nothing() {
        let o = parse(None, None, None, None).unwrap();
        assert!(o.is_empty());
        assert_eq!(o.sse(), None);
        assert_eq!(o.describe(), "");
    }

    #[test]
    fn values_take_s3_spelling() {
        let o = parse(Some("aes256"), None, Some("standard_ia"), Some("Private")).unwrap();
        assert_eq!(o.sse(), Some("AES256"));
        assert_eq!(o.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(o.acl.as_deref(), Some("private"));
        assert_eq!(
            o.describe(),
            "--sse AES256 --storage-class STANDARD_IA --acl private"
        );
    }

    #[test]
    fn a_kms_key_implies_kms_and_conflicts_with_aes256() {
        let o = parse(None, Some("arn:aws:kms:eu-west-1:1:key/k"), None, None).unwrap();
        assert_eq!(o.sse(), Some("aws:kms"));
        assert_eq!(o.kms_key_id(), Some("arn:aws:kms:eu-west-1:1:key/k"));
        let o = parse(Some("aws:kms"), None, None, None).unwrap();
        assert_eq!(o.encryption, Some(Encryption::Kms { key_id: None }));
        let err = parse(Some("AES256"), Some("k"), None, None).unwrap_err();
        assert!(err.contains("--sse-kms-key-id"), "{err}");
        let err = parse(None, Some(" "), None, None).unwrap_err();
        assert!(err.contains("--sse-kms-key-id"), "{err}");
        let err = parse(None, Some("a b"), None, None).unwrap_err();
        assert!(err.contains("--sse-kms-key-id"), "{err}");
    }

    #[test]
    fn bad_values_name_the_option_and_the_choices() {
        let err = parse(Some("aws:kms:dsse"), None, None, None).unwrap_err();
        assert!(
            err.contains("--sse") && err.contains("AES256, aws:kms"),
            "{err}"
        );
        let err = parse(None, None, Some("COLD"), None).unwrap_err();
        assert!(
            err.contains("--storage-class") && err.contains("GLACIER_IR"),
            "{err}"
        );
        let err = parse(None, None, None, Some("world-writable")).unwrap_err();
        assert!(
            err.contains("--acl") && err.contains("bucket-owner-full-control"),
            "{err}"
        );
    }
}
