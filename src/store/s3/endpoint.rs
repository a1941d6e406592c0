//! The SDK's S3 endpoint rules, evaluated once per client configuration and bucket rather
//! than once per request. The SDK's resolver keeps a one-entry cache keyed by all its
//! parameters, the object key among them, so every request for a new key ran the whole
//! rule set twice (once for the endpoint, once for the auth scheme): about a tenth of the
//! client's CPU per DELETE or HEAD. Invariant: the rules of the SDK version in use do not
//! look at the key, prefix or copy source (a test compares the answers with the SDK's own
//! resolver for many keys), so an answer depends only on [`Scope`].

use std::sync::Mutex;

use aws_sdk_s3::config::endpoint::{DefaultResolver, Endpoint, Params, ResolveEndpoint};
use aws_smithy_runtime_api::client::endpoint::EndpointFuture;

/// Every endpoint parameter but the object's key, prefix and copy source.
#[derive(Clone, Debug, PartialEq)]
struct Scope {
    bucket: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    flags: [Option<bool>; 11],
}

impl Scope {
    fn of(p: &Params) -> Scope {
        Scope {
            bucket: p.bucket().map(str::to_string),
            region: p.region().map(str::to_string),
            endpoint: p.endpoint().map(str::to_string),
            flags: [
                p.use_fips(),
                p.use_dual_stack(),
                p.force_path_style(),
                p.accelerate(),
                p.use_global_endpoint(),
                p.use_object_lambda_endpoint(),
                p.disable_access_points(),
                p.disable_multi_region_access_points(),
                p.use_arn_region(),
                p.use_s3_express_control_endpoint(),
                p.disable_s3_express_session_auth(),
            ],
        }
    }
}

/// How many scopes are remembered: the mount's bucket, a trash bucket, a few more.
const KEPT: usize = 8;

#[derive(Debug, Default)]
pub(super) struct RememberedRules {
    rules: DefaultResolver,
    known: Mutex<Vec<(Scope, Endpoint)>>,
}

impl RememberedRules {
    fn resolve(
        &self,
        params: &Params,
    ) -> Result<Endpoint, aws_smithy_runtime_api::box_error::BoxError> {
        let scope = Scope::of(params);
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, endpoint)) = known.iter().find(|(s, _)| *s == scope) {
            return Ok(endpoint.clone());
        }
        drop(known);
        let endpoint =
            futures::executor::block_on(ResolveEndpoint::resolve_endpoint(&self.rules, params))?;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KEPT {
            known.remove(0);
        }
        known.push((scope, endpoint.clone()));
        Ok(endpoint)
    }
}

impl ResolveEndpoint for RememberedRules {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        EndpointFuture::ready(self.resolve(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(bucket: &str, endpoint: Option<&str>, path_style: bool, key: &str) -> Params {
        Params::builder()
            .bucket(bucket)
            .region("eu-central-1")
            .set_endpoint(endpoint.map(str::to_string))
            .force_path_style(path_style)
            .use_fips(false)
            .use_dual_stack(false)
            .accelerate(false)
            .key(key)
            .prefix(key)
            .build()
            .unwrap()
    }

    fn sdk(p: &Params) -> Result<Endpoint, aws_smithy_runtime_api::box_error::BoxError> {
        futures::executor::block_on(ResolveEndpoint::resolve_endpoint(
            &DefaultResolver::new(),
            p,
        ))
    }

    #[test]
    fn answers_as_the_sdk_rules_for_every_key_bucket_and_addressing() {
        let remembered = RememberedRules::default();
        let keys = ["a", "docs/x y.pdf", "", "dir/", "ü/%2F/..", "k--x-s3"];
        for endpoint in [
            None,
            Some("http://127.0.0.1:3900"),
            Some("https://minio.example:9000/base"),
        ] {
            for path_style in [false, true] {
                for bucket in ["docs", "other.bucket", "b--use1-az4--x-s3"] {
                    for key in keys {
                        let p = params(bucket, endpoint, path_style, key);
                        let want = sdk(&p);
                        match (remembered.resolve(&p), want) {
                            (Ok(got), Ok(want)) => assert_eq!(got, want, "{p:?}"),
                            (Err(_), Err(_)) => {}
                            (got, want) => panic!("{p:?}: {got:?} against {want:?}"),
                        }
                    }
                }
            }
        }
        assert!(remembered.known.lock().unwrap().len() <= KEPT);
    }

    #[test]
    fn the_key_never_changes_the_endpoint() {
        let a = params("docs", Some("http://127.0.0.1:3900"), true, "a");
        let b = params("docs", Some("http://127.0.0.1:3900"), true, "b/c");
        assert_eq!(sdk(&a).unwrap(), sdk(&b).unwrap());
        assert_eq!(Scope::of(&a), Scope::of(&b));
        let other_bucket = params("logs", Some("http://127.0.0.1:3900"), true, "a");
        assert_ne!(Scope::of(&a), Scope::of(&other_bucket));
    }
}
