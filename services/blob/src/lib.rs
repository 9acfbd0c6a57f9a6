//! The blob store port: where artifact bytes and extracted texts live.
//! Locations are URLs. A store is either
//!
//! - `file:///root`: `file://` locations must lie under the root (a path that
//!   escapes it is refused), or
//! - `s3://bucket/prefix` (through the `object_store` crate): `s3://` locations
//!   must name the same bucket and lie under the prefix. The endpoint, region
//!   and credentials come from the standard AWS environment variables
//!   (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, …).
//!
//! A location with the other scheme, or any other, is refused with a message
//! saying what the store serves. Reads and digests stream; uploads are written
//! in bounded pieces (multipart on S3), never held whole in memory.

mod config;
mod file;
mod s3;
mod sync;

pub use config::BlobStoreConfig;
pub use sync::failed_sync;

use bytes::Bytes;
use std::fmt;
use std::path::PathBuf;

/// A blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob at that location (yet: stores can be eventually consistent).
    #[error("no blob at {0}")]
    NotFound(String),
    /// The location names a scheme this store does not serve.
    #[error("unsupported storage location {location:?}: this store serves {serves}")]
    UnsupportedScheme {
        /// The location.
        location: String,
        /// What the store serves, e.g. `file:// locations under file:///data/blobs`.
        serves: String,
    },
    /// The location escapes the store's root (or names another bucket).
    #[error("storage location {location:?} is outside the storage root {root}")]
    OutsideRoot {
        /// The location.
        location: String,
        /// The root.
        root: String,
    },
    /// The location has the right scheme and root but cannot name a blob
    /// (an empty or control-character path segment).
    #[error("storage location {location:?} is not valid: {reason}")]
    InvalidLocation {
        /// The location.
        location: String,
        /// Why.
        reason: String,
    },
    /// The store URL or its settings cannot make a store.
    #[error("blob store {url:?} cannot be used: {reason}")]
    Config {
        /// The store URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The blob is larger than allowed.
    #[error("blob at {location} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The location.
        location: String,
        /// The limit.
        limit: u64,
    },
    /// Reading or writing a file failed.
    #[error("I/O on {location}: {source}")]
    Io {
        /// The location.
        location: String,
        /// The error.
        source: std::io::Error,
    },
    /// The object store refused the request or could not be reached.
    #[error("object store request for {location} failed: {message}")]
    Store {
        /// The location.
        location: String,
        /// The store's error.
        message: String,
        /// Whether trying again later may help (network, server, credentials
        /// errors) or not (a request the store does not support).
        retriable: bool,
    },
}

impl BlobError {
    /// Whether trying again later may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            // A location naming a directory stays one.
            BlobError::Io { source, .. } if source.kind() == std::io::ErrorKind::IsADirectory => {
                false
            }
            BlobError::NotFound(_) | BlobError::Io { .. } => true,
            BlobError::Store { retriable, .. } => *retriable,
            _ => false,
        }
    }
}

/// Size and digest of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDigest {
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// Where a location resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A file under the `file://` root.
    File(PathBuf),
    /// An object in the store's bucket, under its prefix.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
}

impl fmt::Display for Resolved {
    /// A file as its path, an object as `s3://bucket/key`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolved::File(p) => write!(f, "{}", p.display()),
            Resolved::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// A blob store: a `file://` root or an `s3://` bucket and prefix.
#[derive(Debug, Clone)]
pub struct BlobStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    File(file::FileStore),
    S3(s3::S3Store),
}

/// Runs the same expression on whichever backend `$store` has: both
/// backends have the same methods.
macro_rules! on_backend {
    ($store:expr, $b:ident => $e:expr) => {
        match &$store.backend {
            Backend::File($b) => $e,
            Backend::S3($b) => $e,
        }
    };
}

impl BlobStore {
    /// A store at `file:///absolute/root`, or at `s3://bucket[/prefix]` with
    /// the S3 settings from the `AWS_*` environment variables.
    pub fn from_url(url: &str) -> Result<Self, BlobError> {
        Self::from_url_with(url, &[])
    }

    /// Like [`BlobStore::from_url`], with S3 settings that take precedence
    /// over the environment's: `object_store` configuration keys such as
    /// `aws_endpoint`, `aws_region`, `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_allow_http`. Ignored for `file://`.
    pub fn from_url_with(url: &str, s3_settings: &[(&str, &str)]) -> Result<Self, BlobError> {
        let config = |reason: &str| BlobError::Config {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let backend = if let Some(path) = url.strip_prefix("file://") {
            Backend::File(file::FileStore::new(path).map_err(config)?)
        } else if let Some(rest) = url.strip_prefix("s3://") {
            Backend::S3(s3::S3Store::new(rest, s3_settings).map_err(|e| config(&e))?)
        } else {
            return Err(config(
                "expected file:///absolute/root or s3://bucket[/prefix]",
            ));
        };
        Ok(BlobStore { backend })
    }

    /// The store's root as a URL: `file:///root` or `s3://bucket[/prefix]`.
    pub fn root_url(&self) -> String {
        on_backend!(self, b => b.root_url())
    }

    /// The location URL of a path relative to the root.
    pub fn location(&self, relative: &str) -> String {
        on_backend!(self, b => b.location(relative))
    }

    /// Resolves a location to a path under the root or an object key under
    /// the prefix.
    pub fn resolve(&self, location: &str) -> Result<Resolved, BlobError> {
        on_backend!(self, b => b.resolve(location))
    }

    /// Reads at most the first `n` bytes.
    pub async fn read_prefix(&self, location: &str, n: usize) -> Result<Vec<u8>, BlobError> {
        on_backend!(self, b => b.read_prefix(location, n).await)
    }

    /// Reads the whole blob, refusing blobs over `limit` bytes.
    pub async fn read_all(&self, location: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        on_backend!(self, b => b.read_all(location, limit).await)
    }

    /// Streams the blob through SHA-256.
    pub async fn digest(&self, location: &str) -> Result<BlobDigest, BlobError> {
        on_backend!(self, b => b.digest(location).await)
    }

    /// Whether a blob exists at the location.
    pub async fn exists(&self, location: &str) -> Result<bool, BlobError> {
        on_backend!(self, b => b.exists(location).await)
    }

    /// Writes a blob atomically (a file: temporary file, then rename; an
    /// object: one PUT), replacing whatever was there: a replay overwrites
    /// instead of duplicating.
    pub async fn put(&self, location: &str, bytes: &[u8]) -> Result<(), BlobError> {
        on_backend!(self, b => b.put(location, bytes, true).await)
    }

    /// Like [`BlobStore::put`], but returns before a file blob is durable:
    /// the caller makes it durable with [`BlobStore::sync`] before anything
    /// names it. Many writes then share one wait for the disk instead of
    /// each holding its caller until its own sync is done. An object is
    /// durable when its PUT returns, as with `put`.
    pub async fn put_unsynced(&self, location: &str, bytes: &[u8]) -> Result<(), BlobError> {
        on_backend!(self, b => b.put(location, bytes, false).await)
    }

    /// Makes every file blob this process wrote under the store's root
    /// before the call durable; for an object store there is nothing to do.
    /// After a failed sync every later one fails too (see [`failed_sync`]).
    pub async fn sync(&self) -> Result<(), BlobError> {
        match &self.backend {
            Backend::File(f) => f.sync().await,
            Backend::S3(_) => Ok(()),
        }
    }

    /// Removes a blob; a missing one is not an error.
    pub async fn delete(&self, location: &str) -> Result<(), BlobError> {
        on_backend!(self, b => b.delete(location).await)
    }

    /// Starts writing a new blob at a fresh temporary location (`tmp/<uuid>`
    /// under the root), to be moved into place with
    /// [`BlobStore::move_if_absent`] once complete.
    pub async fn begin_staging(&self) -> Result<BlobWriter, BlobError> {
        let location = self.location(&format!("tmp/{}", uuid::Uuid::new_v4().simple()));
        let sink = match &self.backend {
            Backend::File(f) => Sink::File(f.begin_staging(&location)?),
            Backend::S3(s) => Sink::S3(s.begin_staging(&location).await?),
        };
        Ok(BlobWriter {
            location,
            sink: Some(sink),
        })
    }

    /// Moves the blob at `from` to `to` unless a blob is already at `to`.
    /// Returns whether it moved; if not, `from` is left as it was.
    ///
    /// On S3 the move is a server-side copy and a delete of `from`; the check
    /// and the copy are two requests, so two writers racing for one `to`
    /// both see it absent and the later copy wins.
    pub async fn move_if_absent(&self, from: &str, to: &str) -> Result<bool, BlobError> {
        on_backend!(self, b => b.move_if_absent(from, to).await)
    }
}

/// A blob being written piece by piece (see [`BlobStore::begin_staging`]).
/// Call [`BlobWriter::finish`] or [`BlobWriter::abort`]. Dropped unfinished
/// (say, with the request handler whose client went away), it aborts in a
/// task of its own when a Tokio runtime is there; only a killed process
/// leaves a file or an open S3 multipart upload behind.
pub struct BlobWriter {
    location: String,
    /// `None` once finished or aborted.
    sink: Option<Sink>,
}

enum Sink {
    File(file::FileSink),
    S3(s3::S3Sink),
}

impl Sink {
    /// Drops what was written (best effort).
    async fn abort(self, location: &str) {
        match self {
            Sink::File(f) => f.abort().await,
            Sink::S3(w) => w.abort(location).await,
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let Some(sink) = self.sink.take() else {
            return;
        };
        let location = std::mem::take(&mut self.location);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { sink.abort(&location).await });
            }
            Err(_) => {
                if let Sink::File(f) = sink {
                    f.remove();
                }
            }
        }
    }
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobWriter")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl BlobWriter {
    /// Where the blob is being written.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Appends a chunk. On S3 the chunks are gathered into parts; this waits
    /// while too many parts are in flight, so memory stays bounded.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        match self.sink.as_mut().expect("an unfinished writer") {
            Sink::File(f) => f.write(chunk, &self.location).await,
            Sink::S3(w) => w.write(chunk, &self.location).await,
        }
    }

    /// Completes the blob (file written, multipart upload completed) and
    /// returns its location. A file blob is on disk once
    /// [`BlobStore::move_if_absent`] has moved it into place: that move
    /// syncs.
    pub async fn finish(mut self) -> Result<String, BlobError> {
        let location = std::mem::take(&mut self.location);
        match self.sink.take().expect("an unfinished writer") {
            Sink::File(f) => f.finish(&location).await?,
            Sink::S3(w) => w.finish(&location).await?,
        }
        Ok(location)
    }

    /// Drops what was written (best effort).
    pub async fn abort(mut self) {
        if let Some(sink) = self.sink.take() {
            sink.abort(&self.location).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_checked() {
        for bad in [
            "file://relative",
            "ftp://x/y",
            "s3://",
            "s3:///prefix",
            "s3://bucket/a//b",
            "s3://bucket/../b",
        ] {
            assert!(
                matches!(BlobStore::from_url(bad), Err(BlobError::Config { .. })),
                "{bad}"
            );
        }
        let e = BlobStore::from_url_with("s3://b", &[("aws_no_such_setting", "1")]).unwrap_err();
        assert!(e.to_string().contains("aws_no_such_setting"), "{e}");
    }
}
