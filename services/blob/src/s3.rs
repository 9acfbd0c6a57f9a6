//! The `s3://` backend, through the `object_store` crate: blobs are objects
//! in one bucket under a key prefix. The endpoint, region and credentials
//! come from the standard AWS environment variables or explicit settings.

use crate::{BlobDigest, BlobError, Resolved};
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Size of one part of a multipart upload to S3 (S3's minimum is 5 MiB).
const S3_PART_BYTES: usize = 5 << 20;
/// Parts of one upload in flight at once: an upload holds at most
/// `(S3_PARTS_IN_FLIGHT + 1) * S3_PART_BYTES` in memory.
const S3_PARTS_IN_FLIGHT: usize = 2;

/// A bucket and a key prefix.
#[derive(Clone)]
pub(crate) struct S3Store {
    bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the whole bucket.
    prefix: String,
    store: Arc<AmazonS3>,
}

impl fmt::Debug for S3Store {
    /// Bucket and prefix only: the client's settings hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// The store at `bucket[/prefix]` (the part of the URL after `s3://`),
    /// or why it cannot be made.
    pub fn new(rest: &str, settings: &[(&str, &str)]) -> Result<Self, String> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        {
            return Err("expected s3://bucket[/prefix] with a bucket name".into());
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            check_key(prefix).map_err(|e| format!("the prefix {e}"))?;
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // The stage runner retries failed records itself, with backoff and
            // a delivery limit: the client retries a little, briefly.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            });
        for (key, value) in settings {
            let key: AmazonS3ConfigKey = key.parse().map_err(|e| format!("setting {key}: {e}"))?;
            builder = builder.with_config(key, *value);
        }
        let store = builder.build().map_err(|e| e.to_string())?;
        Ok(S3Store {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            store: Arc::new(store),
        })
    }

    pub fn root_url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    pub fn location(&self, relative: &str) -> String {
        format!("{}/{relative}", self.root_url())
    }

    pub fn resolve(&self, location: &str) -> Result<Resolved, BlobError> {
        let rest = location
            .strip_prefix("s3://")
            .ok_or_else(|| BlobError::UnsupportedScheme {
                location: location.to_owned(),
                serves: format!("s3:// locations under {}", self.root_url()),
            })?;
        let outside = || BlobError::OutsideRoot {
            location: location.to_owned(),
            root: self.root_url(),
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket != self.bucket {
            return Err(outside());
        }
        match check_key(key) {
            Ok(()) => {}
            Err(KeyError::DotSegment) => return Err(outside()),
            Err(e) => {
                return Err(BlobError::InvalidLocation {
                    location: location.to_owned(),
                    reason: format!("the object key {e}"),
                });
            }
        }
        let under = self.prefix.is_empty()
            || key
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|r| r.starts_with('/'));
        if !under {
            return Err(outside());
        }
        Ok(Resolved::S3 {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
        })
    }

    fn object(&self, location: &str) -> Result<ObjectPath, BlobError> {
        match self.resolve(location)? {
            Resolved::S3 { key, .. } => Ok(ObjectPath::from(key.as_str())),
            Resolved::File(_) => unreachable!("an S3 store resolves to objects"),
        }
    }

    pub async fn read_prefix(&self, location: &str, n: usize) -> Result<Vec<u8>, BlobError> {
        let path = self.object(location)?;
        // A range past the end of an empty object is not satisfiable: ask
        // for the size first.
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(store_error(location))?;
        let end = meta.size.min(n as u64);
        if end == 0 {
            return Ok(Vec::new());
        }
        let bytes = self
            .store
            .get_range(&path, 0..end)
            .await
            .map_err(store_error(location))?;
        Ok(bytes.to_vec())
    }

    pub async fn read_all(&self, location: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        let path = self.object(location)?;
        let got = self.store.get(&path).await.map_err(store_error(location))?;
        if got.meta.size > limit {
            return Err(BlobError::TooLarge {
                location: location.to_owned(),
                limit,
            });
        }
        let mut out = Vec::with_capacity(got.meta.size as usize);
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(store_error(location))?);
        }
        Ok(out)
    }

    pub async fn digest(&self, location: &str) -> Result<BlobDigest, BlobError> {
        let path = self.object(location)?;
        let mut stream = self
            .store
            .get(&path)
            .await
            .map_err(store_error(location))?
            .into_stream();
        let (mut hasher, mut size) = (Sha256::new(), 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(store_error(location))?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(BlobDigest {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    pub async fn exists(&self, location: &str) -> Result<bool, BlobError> {
        let path = self.object(location)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(location)(e)),
        }
    }

    /// One PUT: an object is durable when it returns, `sync` or not.
    pub async fn put(&self, location: &str, bytes: &[u8], _sync: bool) -> Result<(), BlobError> {
        let path = self.object(location)?;
        self.store
            .put(&path, PutPayload::from(Bytes::copy_from_slice(bytes)))
            .await
            .map_err(store_error(location))?;
        Ok(())
    }

    pub async fn delete(&self, location: &str) -> Result<(), BlobError> {
        let path = self.object(location)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(location)(e)),
        }
    }

    /// A multipart upload to `location`.
    pub async fn begin_staging(&self, location: &str) -> Result<S3Sink, BlobError> {
        let path = self.object(location)?;
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(store_error(location))?;
        Ok(S3Sink(WriteMultipart::new_with_chunk_size(
            upload,
            S3_PART_BYTES,
        )))
    }

    pub async fn move_if_absent(&self, from: &str, to: &str) -> Result<bool, BlobError> {
        if self.exists(to).await? {
            return Ok(false);
        }
        let (from_path, to_path) = (self.object(from)?, self.object(to)?);
        self.store
            .copy(&from_path, &to_path)
            .await
            .map_err(store_error(to))?;
        // The blob is in place; a copy left under `from` is only litter.
        if let Err(e) = self.delete(from).await {
            tracing::warn!(location = %from, error = %e, "could not remove a moved blob's source");
        }
        Ok(true)
    }
}

/// A multipart upload being written.
pub(crate) struct S3Sink(WriteMultipart);

impl S3Sink {
    pub async fn write(&mut self, chunk: Bytes, location: &str) -> Result<(), BlobError> {
        self.0
            .wait_for_capacity(S3_PARTS_IN_FLIGHT)
            .await
            .map_err(store_error(location))?;
        self.0.put(chunk);
        Ok(())
    }

    /// Completes the upload; on failure it aborts the upload itself.
    pub async fn finish(self, location: &str) -> Result<(), BlobError> {
        self.0.finish().await.map_err(store_error(location))?;
        Ok(())
    }

    pub async fn abort(self, location: &str) {
        if let Err(e) = self.0.abort().await {
            tracing::warn!(%location, error = %e, "could not abort a multipart upload");
        }
    }
}

/// Maps an object store error: a missing object is [`BlobError::NotFound`];
/// requests the store cannot serve are permanent; the rest (network, server,
/// credentials) may pass.
fn store_error(location: &str) -> impl FnOnce(object_store::Error) -> BlobError + '_ {
    move |e| match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound(location.to_owned()),
        e => {
            let retriable = !matches!(
                e,
                object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            );
            BlobError::Store {
                location: location.to_owned(),
                message: e.to_string(),
                retriable,
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum KeyError {
    Empty,
    EmptySegment,
    DotSegment,
    Control,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::Empty => "is empty",
            KeyError::EmptySegment => "has an empty segment (`//`, or a leading or trailing `/`)",
            KeyError::DotSegment => "has a `.` or `..` segment",
            KeyError::Control => "has a control character",
        })
    }
}

/// An object key the store accepts: `/`-separated non-empty segments, none
/// of them `.` or `..`, no control characters.
fn check_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(KeyError::EmptySegment),
            "." | ".." => return Err(KeyError::DotSegment),
            s if s.chars().any(|c| c.is_control()) => return Err(KeyError::Control),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{BlobError, BlobStore, Resolved};

    /// An S3 store that is never contacted: resolving is local.
    fn s3(url: &str) -> BlobStore {
        BlobStore::from_url_with(
            url,
            &[
                ("aws_endpoint", "http://127.0.0.1:1"),
                ("aws_allow_http", "true"),
                ("aws_region", "us-east-1"),
                ("aws_access_key_id", "k"),
                ("aws_secret_access_key", "s"),
            ],
        )
        .unwrap()
    }

    #[test]
    fn s3_locations_must_be_in_the_bucket_under_the_prefix() {
        let s = s3("s3://artifacts/team/a/");
        assert_eq!(s.root_url(), "s3://artifacts/team/a");
        assert_eq!(s.location("uploads/x"), "s3://artifacts/team/a/uploads/x");
        assert_eq!(
            s.resolve("s3://artifacts/team/a/uploads/x").unwrap(),
            Resolved::S3 {
                bucket: "artifacts".into(),
                key: "team/a/uploads/x".into()
            }
        );
        assert_eq!(
            s.resolve("s3://artifacts/team/a/uploads/x")
                .unwrap()
                .to_string(),
            "s3://artifacts/team/a/uploads/x"
        );
        for bad in [
            "s3://other/team/a/uploads/x",
            "s3://artifacts/team/ab/x",
            "s3://artifacts/team/a",
            "s3://artifacts/team/a/",
            "s3://artifacts/team/a/../b/x",
            "s3://artifacts/team/a/./x",
            "s3://artifacts",
        ] {
            let e = s.resolve(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    BlobError::OutsideRoot { .. } | BlobError::InvalidLocation { .. }
                ),
                "{bad}: {e:?}"
            );
            assert!(!e.is_retriable());
        }
        assert!(matches!(
            s.resolve("s3://other/x").unwrap_err(),
            BlobError::OutsideRoot { .. }
        ));
        assert!(matches!(
            s.resolve("s3://artifacts/team/a/x//y").unwrap_err(),
            BlobError::InvalidLocation { .. }
        ));
        for bad in [
            "file:///data/blobs/x",
            "gs://artifacts/team/a/x",
            "artifacts/x",
        ] {
            let e = s.resolve(bad).unwrap_err();
            assert!(matches!(e, BlobError::UnsupportedScheme { .. }), "{bad}");
            assert!(
                e.to_string()
                    .contains("serves s3:// locations under s3://artifacts/team/a"),
                "{e}"
            );
        }
        let whole = s3("s3://artifacts");
        assert_eq!(whole.location("x/y"), "s3://artifacts/x/y");
        assert!(whole.resolve("s3://artifacts/x/y").is_ok());
        assert!(whole.resolve("s3://artifacts/").is_err());
    }
}
