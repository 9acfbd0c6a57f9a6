//! Where a binary's blob store is: `BLOB_STORE_URL`, flattened into each
//! binary's clap struct.

use crate::BlobError;
use clap::Args;

/// Where artifact bytes and extracted texts live.
#[derive(Debug, Clone, Args)]
pub struct BlobStoreConfig {
    /// Blob store root: `file:///absolute/path` (default: `./data/blobs`
    /// under the working directory), or `s3://bucket[/prefix]` with the
    /// endpoint, region and credentials from the standard `AWS_*` variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, ...).
    #[arg(long, env = "BLOB_STORE_URL")]
    pub blob_store_url: Option<String>,
}

impl BlobStoreConfig {
    /// The configured URL, or the default `file://` root.
    pub fn url(&self) -> Result<String, BlobError> {
        match &self.blob_store_url {
            Some(u) if u.starts_with("file:///") => Ok(u.clone()),
            Some(u) if u.strip_prefix("s3://").is_some_and(|r| !r.is_empty()) => Ok(u.clone()),
            Some(u) => Err(BlobError::Config {
                url: u.clone(),
                reason: "BLOB_STORE_URL must be a file:/// URL with an absolute path or an \
                         s3://bucket[/prefix] URL"
                    .into(),
            }),
            None => {
                let cwd = std::env::current_dir().map_err(|source| BlobError::Io {
                    location: "the working directory".into(),
                    source,
                })?;
                Ok(format!("file://{}/data/blobs", cwd.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_store_accepts_file_and_s3_urls_only() {
        for ok in [
            "file:///tmp/blobs",
            "s3://artifacts",
            "s3://artifacts/team/a",
        ] {
            let cfg = BlobStoreConfig {
                blob_store_url: Some(ok.into()),
            };
            assert_eq!(cfg.url().unwrap(), ok);
        }
        for bad in ["ftp://x", "s3://", "file://relative", "/data/blobs"] {
            let cfg = BlobStoreConfig {
                blob_store_url: Some(bad.into()),
            };
            let err = cfg.url().unwrap_err().to_string();
            assert!(
                err.contains("BLOB_STORE_URL") && err.contains("s3://"),
                "{bad}: {err}"
            );
        }
        let default = BlobStoreConfig {
            blob_store_url: None,
        };
        assert!(default.url().unwrap().ends_with("/data/blobs"));
    }
}
