//! The local stack's S3 server (S3Proxy, started by `deploy/local/stack up`)
//! for tests of `s3://` blob stores: its settings from the variables
//! `stack env` prints, with the stack's defaults when unset, and a fresh
//! prefix of its bucket per test.

use artifact_blob::BlobStore;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The stack's S3 settings as environment variables for a service process.
pub fn env_vars() -> Vec<(&'static str, String)> {
    vec![
        (
            "AWS_ENDPOINT_URL",
            var("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ),
        ("AWS_ALLOW_HTTP", var("AWS_ALLOW_HTTP", "true")),
        ("AWS_REGION", var("AWS_REGION", "us-east-1")),
        ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "local-stack")),
        (
            "AWS_SECRET_ACCESS_KEY",
            var("AWS_SECRET_ACCESS_KEY", "local-stack-secret"),
        ),
    ]
}

/// The same settings as `object_store` configuration keys.
fn settings() -> Vec<(&'static str, String)> {
    env_vars()
        .into_iter()
        .map(|(k, v)| {
            let key = match k {
                "AWS_ENDPOINT_URL" => "aws_endpoint",
                "AWS_ALLOW_HTTP" => "aws_allow_http",
                "AWS_REGION" => "aws_region",
                "AWS_ACCESS_KEY_ID" => "aws_access_key_id",
                _ => "aws_secret_access_key",
            };
            (key, v)
        })
        .collect()
}

/// `s3://bucket` of the stack.
pub fn bucket_url() -> String {
    var("S3_BUCKET_URL", "s3://artifacts")
}

/// A fresh prefix of the stack's bucket, with a store on it.
pub struct S3Prefix {
    /// `s3://bucket/<prefix>`: the value of `BLOB_STORE_URL`.
    pub url: String,
    /// A store on that URL, as the services make it.
    pub store: BlobStore,
}

impl S3Prefix {
    /// A prefix named after `what` and a random suffix.
    pub fn fresh(what: &str) -> Self {
        let url = format!("{}/{what}-{}", bucket_url(), uuid::Uuid::new_v4().simple());
        let settings = settings();
        let refs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let store = BlobStore::from_url_with(&url, &refs).expect("an s3 store on the stack");
        S3Prefix { url, store }
    }

    /// `BLOB_STORE_URL` and the `AWS_*` variables for a service process.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![("BLOB_STORE_URL", self.url.clone())];
        vars.extend(env_vars());
        vars
    }

    /// The locations of every object under `<prefix>/<sub>/`.
    pub async fn list(&self, sub: &str) -> anyhow::Result<Vec<String>> {
        let rest = self.url.trim_start_matches("s3://");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
        for (k, v) in settings() {
            builder = builder.with_config(k.parse::<AmazonS3ConfigKey>()?, v);
        }
        let client = builder.build()?;
        let under = ObjectPath::from(format!("{prefix}/{sub}"));
        let metas: Vec<_> = client.list(Some(&under)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| format!("s3://{bucket}/{}", m.location))
            .collect())
    }
}
