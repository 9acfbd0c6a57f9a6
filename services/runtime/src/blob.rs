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

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Size of one part of a multipart upload to S3 (S3's minimum is 5 MiB).
const S3_PART_BYTES: usize = 5 << 20;
/// Parts of one upload in flight at once: an upload holds at most
/// `(S3_PARTS_IN_FLIGHT + 1) * S3_PART_BYTES` in memory.
const S3_PARTS_IN_FLIGHT: usize = 2;

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
    File { root: PathBuf },
    S3(S3Backend),
}

#[derive(Clone)]
struct S3Backend {
    bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the whole bucket.
    prefix: String,
    store: Arc<AmazonS3>,
}

impl fmt::Debug for S3Backend {
    /// Bucket and prefix only: the client's settings hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
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
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(config(
                    "a file:// store needs an absolute path: file:///root",
                ));
            }
            return Ok(BlobStore {
                backend: Backend::File {
                    root: normalize(Path::new(path)),
                },
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(config(
                "expected file:///absolute/root or s3://bucket[/prefix]",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        {
            return Err(config("expected s3://bucket[/prefix] with a bucket name"));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            check_key(prefix).map_err(|e| config(&format!("the prefix {e}")))?;
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
        for (key, value) in s3_settings {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|e| config(&format!("setting {key}: {e}")))?;
            builder = builder.with_config(key, *value);
        }
        let store = builder.build().map_err(|e| config(&e.to_string()))?;
        Ok(BlobStore {
            backend: Backend::S3(S3Backend {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                store: Arc::new(store),
            }),
        })
    }

    /// The store's root as a URL: `file:///root` or `s3://bucket[/prefix]`.
    pub fn root_url(&self) -> String {
        match &self.backend {
            Backend::File { root } => format!("file://{}", root.display()),
            Backend::S3(s) if s.prefix.is_empty() => format!("s3://{}", s.bucket),
            Backend::S3(s) => format!("s3://{}/{}", s.bucket, s.prefix),
        }
    }

    /// What this store serves, for messages.
    fn serves(&self) -> String {
        match &self.backend {
            Backend::File { .. } => format!("file:// locations under {}", self.root_url()),
            Backend::S3(_) => format!("s3:// locations under {}", self.root_url()),
        }
    }

    /// The location URL of a path relative to the root.
    pub fn location(&self, relative: &str) -> String {
        match &self.backend {
            Backend::File { root } => format!("file://{}", root.join(relative).display()),
            Backend::S3(_) => format!("{}/{relative}", self.root_url()),
        }
    }

    /// Resolves a location to a path under the root or an object key under
    /// the prefix.
    pub fn resolve(&self, location: &str) -> Result<Resolved, BlobError> {
        match &self.backend {
            Backend::File { root } => {
                let raw = location.strip_prefix("file://").ok_or_else(|| {
                    BlobError::UnsupportedScheme {
                        location: location.to_owned(),
                        serves: self.serves(),
                    }
                })?;
                let path = normalize(Path::new(raw));
                if !path.is_absolute() || !path.starts_with(root) || &path == root {
                    return Err(BlobError::OutsideRoot {
                        location: location.to_owned(),
                        root: self.root_url(),
                    });
                }
                Ok(Resolved::File(path))
            }
            Backend::S3(s) => {
                let rest =
                    location
                        .strip_prefix("s3://")
                        .ok_or_else(|| BlobError::UnsupportedScheme {
                            location: location.to_owned(),
                            serves: self.serves(),
                        })?;
                let outside = || BlobError::OutsideRoot {
                    location: location.to_owned(),
                    root: self.root_url(),
                };
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket != s.bucket {
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
                let under = s.prefix.is_empty()
                    || key
                        .strip_prefix(s.prefix.as_str())
                        .is_some_and(|r| r.starts_with('/'));
                if !under {
                    return Err(outside());
                }
                Ok(Resolved::S3 {
                    bucket: s.bucket.clone(),
                    key: key.to_owned(),
                })
            }
        }
    }

    /// The root of a file store.
    fn file_root(&self) -> &Path {
        match &self.backend {
            Backend::File { root } => root,
            Backend::S3(_) => unreachable!("only a file store has a root"),
        }
    }

    fn file_path(&self, location: &str) -> Result<PathBuf, BlobError> {
        match self.resolve(location)? {
            Resolved::File(p) => Ok(p),
            Resolved::S3 { .. } => unreachable!("a file store resolves to files"),
        }
    }

    fn object(&self, location: &str) -> Result<(&S3Backend, ObjectPath), BlobError> {
        match (&self.backend, self.resolve(location)?) {
            (Backend::S3(s), Resolved::S3 { key, .. }) => Ok((s, ObjectPath::from(key.as_str()))),
            _ => unreachable!("an S3 store resolves to objects"),
        }
    }

    fn io(location: &str) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
        move |source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BlobError::NotFound(location.to_owned())
            } else {
                BlobError::Io {
                    location: location.to_owned(),
                    source,
                }
            }
        }
    }

    /// Reads at most the first `n` bytes.
    pub async fn read_prefix(&self, location: &str, n: usize) -> Result<Vec<u8>, BlobError> {
        if let Backend::S3(_) = &self.backend {
            let (s, path) = self.object(location)?;
            // A range past the end of an empty object is not satisfiable:
            // ask for the size first.
            let meta = s.store.head(&path).await.map_err(store_error(location))?;
            let end = meta.size.min(n as u64);
            if end == 0 {
                return Ok(Vec::new());
            }
            let bytes = s
                .store
                .get_range(&path, 0..end)
                .await
                .map_err(store_error(location))?;
            return Ok(bytes.to_vec());
        }
        let path = self.file_path(location)?;
        on_disk(move || {
            let mut buf = Vec::with_capacity(n.min(1 << 20));
            std::fs::File::open(&path)?
                .take(n as u64)
                .read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
        .map_err(Self::io(location))
    }

    /// Reads the whole blob, refusing blobs over `limit` bytes.
    pub async fn read_all(&self, location: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        if let Backend::S3(_) = &self.backend {
            let (s, path) = self.object(location)?;
            let got = s.store.get(&path).await.map_err(store_error(location))?;
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
            return Ok(out);
        }
        let path = self.file_path(location)?;
        // `None`: over the limit.
        let bytes = on_disk(move || {
            let f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            if len > limit {
                return Ok(None);
            }
            // A file that grows while being read is still cut at the limit.
            let mut buf = Vec::with_capacity(len as usize);
            f.take(limit + 1).read_to_end(&mut buf)?;
            Ok((buf.len() as u64 <= limit).then_some(buf))
        })
        .await
        .map_err(Self::io(location))?;
        bytes.ok_or_else(|| BlobError::TooLarge {
            location: location.to_owned(),
            limit,
        })
    }

    /// Streams the blob through SHA-256.
    pub async fn digest(&self, location: &str) -> Result<BlobDigest, BlobError> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        if let Backend::S3(_) = &self.backend {
            let (s, path) = self.object(location)?;
            let mut stream = s
                .store
                .get(&path)
                .await
                .map_err(store_error(location))?
                .into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(store_error(location))?;
                size += chunk.len() as u64;
                hasher.update(&chunk);
            }
        } else {
            let path = self.file_path(location)?;
            (hasher, size) = on_disk(move || {
                let mut f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        return Ok((hasher, size));
                    }
                    size += n as u64;
                    hasher.update(&buf[..n]);
                }
            })
            .await
            .map_err(Self::io(location))?;
        }
        Ok(BlobDigest {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Whether a blob exists at the location.
    pub async fn exists(&self, location: &str) -> Result<bool, BlobError> {
        if let Backend::S3(_) = &self.backend {
            let (s, path) = self.object(location)?;
            return match s.store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(store_error(location)(e)),
            };
        }
        let path = self.file_path(location)?;
        tokio::fs::try_exists(&path)
            .await
            .map_err(Self::io(location))
    }

    /// Writes a blob atomically (a file: temporary file, then rename; an
    /// object: one PUT), replacing whatever was there: a replay overwrites
    /// instead of duplicating.
    pub async fn put(&self, location: &str, bytes: &[u8]) -> Result<(), BlobError> {
        self.write_blob(location, bytes, true).await
    }

    async fn write_blob(&self, location: &str, bytes: &[u8], sync: bool) -> Result<(), BlobError> {
        if let Backend::S3(_) = &self.backend {
            let (s, path) = self.object(location)?;
            s.store
                .put(&path, PutPayload::from(Bytes::copy_from_slice(bytes)))
                .await
                .map_err(store_error(location))?;
            return Ok(());
        }
        let path = self.file_path(location)?;
        let root = self.file_root().to_owned();
        let bytes = bytes.to_vec();
        on_disk(move || {
            let syncs = RootSync::of(&root)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
            let written = (|| {
                std::fs::File::create(&tmp)?.write_all(&bytes)?;
                std::fs::rename(&tmp, &path)?;
                if sync { syncs.sync() } else { Ok(()) }
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written
        })
        .await
        .map_err(Self::io(location))
    }

    /// Like [`BlobStore::put`], but returns before a file blob is durable:
    /// the caller makes it durable with [`BlobStore::sync`] before anything
    /// names it. Many writes then share one wait for the disk instead of
    /// each holding its caller until its own sync is done. An object is
    /// durable when its PUT returns, as with `put`.
    pub async fn put_unsynced(&self, location: &str, bytes: &[u8]) -> Result<(), BlobError> {
        self.write_blob(location, bytes, false).await
    }

    /// Makes every file blob this process wrote under the store's root
    /// before the call durable; for an object store there is nothing to do.
    /// After a failed sync every later one fails too (see [`failed_sync`]).
    pub async fn sync(&self) -> Result<(), BlobError> {
        if let Backend::S3(_) = &self.backend {
            return Ok(());
        }
        let root = self.file_root().to_owned();
        let location = self.root_url();
        on_disk(move || RootSync::of(&root)?.sync())
            .await
            .map_err(Self::io(&location))
    }

    /// Removes a blob; a missing one is not an error.
    pub async fn delete(&self, location: &str) -> Result<(), BlobError> {
        if let Backend::S3(_) = &self.backend {
            let (s, path) = self.object(location)?;
            return match s.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(store_error(location)(e)),
            };
        }
        let path = self.file_path(location)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io(location)(e)),
        }
    }

    /// Starts writing a new blob at a fresh temporary location (`tmp/<uuid>`
    /// under the root), to be moved into place with
    /// [`BlobStore::move_if_absent`] once complete.
    pub async fn begin_staging(&self) -> Result<BlobWriter, BlobError> {
        let location = self.location(&format!("tmp/{}", uuid::Uuid::new_v4().simple()));
        let sink = match &self.backend {
            Backend::S3(_) => {
                let (s, path) = self.object(&location)?;
                let upload = s
                    .store
                    .put_multipart(&path)
                    .await
                    .map_err(store_error(&location))?;
                Sink::S3(WriteMultipart::new_with_chunk_size(upload, S3_PART_BYTES))
            }
            // The file is created with the first spill or at the finish.
            Backend::File { root } => Sink::File(FileSink {
                path: self.file_path(&location)?,
                root: root.clone(),
                file: None,
                touched: false,
                buf: Vec::new(),
            }),
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
        if let Backend::S3(_) = &self.backend {
            if self.exists(to).await? {
                return Ok(false);
            }
            let (s, from_path) = self.object(from)?;
            let (_, to_path) = self.object(to)?;
            s.store
                .copy(&from_path, &to_path)
                .await
                .map_err(store_error(to))?;
            // The blob is in place; a copy left under `from` is only litter.
            if let Err(e) = self.delete(from).await {
                tracing::warn!(location = %from, error = %e, "could not remove a moved blob's source");
            }
            return Ok(true);
        }
        let (from_path, to_path) = (self.file_path(from)?, self.file_path(to)?);
        let root = self.file_root().to_owned();
        on_disk(move || {
            let syncs = RootSync::of(&root)?;
            if to_path.try_exists()? {
                return Ok(false);
            }
            if let Some(dir) = to_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::rename(&from_path, &to_path)?;
            syncs.sync()?;
            Ok(true)
        })
        .await
        .map_err(Self::io(to))
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
    File(FileSink),
    S3(WriteMultipart),
}

/// A file being written: chunks gather in memory up to
/// [`FILE_BUFFER_BYTES`], then go to disk, so a small blob costs one trip to
/// the blocking pool (create, write) and a large one is never held whole.
/// Its bytes reach the disk with the sync of the move that puts it in place.
struct FileSink {
    path: PathBuf,
    /// The store's root, whose [`RootSync`] is opened before the file is.
    root: PathBuf,
    /// Created at the first spill.
    file: Option<std::fs::File>,
    /// Whether the file may exist: set as the first spill starts, and kept
    /// when a spill fails (its handle is then lost), so an abort removes
    /// whatever a failed write left.
    touched: bool,
    buf: Vec<u8>,
}

/// Bytes a file blob gathers in memory before they are written.
const FILE_BUFFER_BYTES: usize = 1 << 20;

impl FileSink {
    /// Writes the gathered bytes, creating the file first if needed.
    async fn spill(&mut self) -> std::io::Result<()> {
        let (path, root) = (self.path.clone(), self.root.clone());
        let file = self.file.take();
        self.touched = true;
        let mut buf = std::mem::take(&mut self.buf);
        let (file, buf) = on_disk(move || {
            let mut f = match file {
                Some(f) => f,
                None => {
                    RootSync::of(&root)?;
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::File::create(&path)?
                }
            };
            f.write_all(&buf)?;
            buf.clear();
            Ok((f, buf))
        })
        .await?;
        self.file = Some(file);
        self.buf = buf;
        Ok(())
    }

    /// Removes the file if it may have been created.
    fn remove(self) {
        if self.touched {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Sink {
    /// Drops what was written (best effort).
    async fn abort(self, location: &str) {
        match self {
            Sink::File(f) => {
                if f.touched {
                    let _ = on_disk(move || {
                        f.remove();
                        Ok(())
                    })
                    .await;
                }
            }
            Sink::S3(w) => {
                if let Err(e) = w.abort().await {
                    tracing::warn!(%location, error = %e, "could not abort a multipart upload");
                }
            }
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
            Sink::File(f) => {
                f.buf.extend_from_slice(&chunk);
                if f.buf.len() < FILE_BUFFER_BYTES {
                    return Ok(());
                }
                f.spill().await.map_err(BlobStore::io(&self.location))
            }
            Sink::S3(w) => {
                w.wait_for_capacity(S3_PARTS_IN_FLIGHT)
                    .await
                    .map_err(store_error(&self.location))?;
                w.put(chunk);
                Ok(())
            }
        }
    }

    /// Completes the blob (file written, multipart upload completed) and
    /// returns its location. A file blob is on disk once
    /// [`BlobStore::move_if_absent`] has moved it into place: that move
    /// syncs.
    pub async fn finish(mut self) -> Result<String, BlobError> {
        let location = std::mem::take(&mut self.location);
        match self.sink.take().expect("an unfinished writer") {
            Sink::File(mut f) => {
                if let Err(e) = f.spill().await {
                    // The file may exist even if its handle was lost.
                    let _ = on_disk(move || {
                        f.remove();
                        Ok(())
                    })
                    .await;
                    return Err(BlobStore::io(&location)(e));
                }
            }
            // On failure `finish` aborts the upload itself.
            Sink::S3(w) => {
                w.finish().await.map_err(store_error(&location))?;
            }
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

/// The sync of a file store's root: one `syncfs` of its file system makes
/// every file written, renamed and created under the root before it started
/// durable (data, inodes, directory entries), where a file's own `fsync`
/// covers neither the entry naming it nor any other file. On this machine a
/// `syncfs` shared by 8 files cost about a third of the CPU of a file and
/// directory `fsync` each (see docs/BENCHMARKS.md, "File blob store").
///
/// The root stays open for the life of the process and is opened before
/// the first write a sync covers: a `syncfs` reports the write-back errors
/// of the whole file system since the descriptor's previous report, so an
/// error is never lost to a descriptor opened after it.
struct RootSync {
    dir: std::fs::File,
    group: GroupSync,
}

static ROOT_SYNCS: std::sync::LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<RootSync>>>> =
    std::sync::LazyLock::new(Default::default);

impl RootSync {
    /// The sync of the store rooted at `root` (created, with the root, at
    /// the first call for it).
    fn of(root: &Path) -> std::io::Result<Arc<RootSync>> {
        let mut syncs = ROOT_SYNCS.lock().expect("root syncs lock");
        if let Some(s) = syncs.get(root) {
            return Ok(s.clone());
        }
        std::fs::create_dir_all(root)?;
        let s = Arc::new(RootSync {
            dir: std::fs::File::open(root)?,
            group: GroupSync::default(),
        });
        syncs.insert(root.to_owned(), s.clone());
        Ok(s)
    }

    /// Returns once a sync that started after this call has finished.
    fn sync(&self) -> std::io::Result<()> {
        self.group.sync(|| syncfs(&self.dir))
    }
}

/// Why a sync of a file store failed in this process, if one has: the
/// process can no longer vouch for what it wrote, and `/healthz` says so
/// until it is restarted.
pub fn failed_sync() -> Option<String> {
    let syncs = ROOT_SYNCS.lock().expect("root syncs lock");
    syncs.iter().find_map(|(root, s)| {
        s.group
            .failure()
            .map(|reason| format!("syncing the blob store at {}: {reason}", root.display()))
    })
}

/// Flushes the whole file system holding `dir` to disk and waits for it.
fn syncfs(dir: &std::fs::File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `syncfs` only reads the descriptor, which `dir` keeps open.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Elsewhere: the directory only (file bytes are then not covered).
        dir.sync_all()
    }
}

/// Group commit: a sync covers every change made before it started, so a
/// caller whose change came while a sync was under way waits for the next
/// one, which one caller runs for all that wait. After a failed sync every
/// caller fails, from then on: a sync that reported an error may have lost
/// any change made before it, and a later sync would not report it again.
#[derive(Default)]
struct GroupSync {
    state: std::sync::Mutex<GroupState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Callers so far; a caller's ticket is the count including itself.
    requested: u64,
    /// Every ticket up to this one is covered by a finished sync.
    synced: u64,
    running: bool,
    /// Why a sync failed, once one has.
    failed: Option<String>,
}

impl GroupSync {
    /// Why a sync failed, once one has.
    fn failure(&self) -> Option<String> {
        self.state.lock().expect("group sync lock").failed.clone()
    }

    /// Returns once a sync that started after this call finished
    /// (`sync_once` runs it), or with the error of a failed sync.
    fn sync(&self, mut sync_once: impl FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("group sync lock");
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if let Some(reason) = &state.failed {
                return Err(std::io::Error::other(format!(
                    "a sync of the blob store failed ({reason}): what was written since the \
                     process started may not be on disk; restart it once the disk is sound"
                )));
            }
            if state.synced >= ticket {
                return Ok(());
            }
            if state.running {
                state = self.done.wait(state).expect("group sync lock");
                continue;
            }
            state.running = true;
            let covers = state.requested;
            drop(state);
            let result = sync_once();
            state = self.state.lock().expect("group sync lock");
            state.running = false;
            match result {
                Ok(()) => state.synced = state.synced.max(covers),
                Err(e) => state.failed = Some(e.to_string()),
            }
            self.done.notify_all();
        }
    }
}

/// Runs file-system work in one trip to Tokio's blocking pool (each
/// `tokio::fs` call is a trip of its own: a thread hand-off and a wake-up).
async fn on_disk<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("file task failed: {e}"))))
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

/// Lexically normalizes a path: drops `.`, resolves `..` against earlier
/// components (never above the root).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (BlobStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("blobs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        (
            BlobStore::from_url(&format!("file://{}", dir.display())).unwrap(),
            dir,
        )
    }

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
    fn locations_outside_the_root_are_refused() {
        let (s, dir) = store();
        let inside = format!("file://{}/a/b.pdf", dir.display());
        assert_eq!(
            s.resolve(&inside).unwrap(),
            Resolved::File(dir.join("a/b.pdf"))
        );
        for bad in [
            format!("file://{}/../etc/passwd", dir.display()),
            "file:///etc/passwd".to_owned(),
            format!("file://{}", dir.display()),
            "file://relative/path".to_owned(),
        ] {
            assert!(
                matches!(s.resolve(&bad), Err(BlobError::OutsideRoot { .. })),
                "{bad}"
            );
        }
        for bad in ["s3://bucket/key", "http://x/y", "/plain/path"] {
            let e = s.resolve(bad).unwrap_err();
            assert!(matches!(e, BlobError::UnsupportedScheme { .. }), "{bad}");
            assert!(!e.is_retriable());
            assert!(
                e.to_string().contains(&format!(
                    "serves file:// locations under file://{}",
                    dir.display()
                )),
                "{e}"
            );
        }
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

    #[test]
    fn a_sync_covers_every_change_made_before_it_started() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let syncs = Arc::new(GroupSync::default());
        let changes = Arc::new(AtomicU64::new(0));
        let covered = Arc::new(AtomicU64::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (syncs, changes, covered, count) = (
                    syncs.clone(),
                    changes.clone(),
                    covered.clone(),
                    count.clone(),
                );
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mine = changes.fetch_add(1, Ordering::SeqCst) + 1;
                        syncs
                            .sync(|| {
                                count.fetch_add(1, Ordering::SeqCst);
                                covered.fetch_max(changes.load(Ordering::SeqCst), Ordering::SeqCst);
                                std::thread::yield_now();
                                Ok(())
                            })
                            .unwrap();
                        assert!(covered.load(Ordering::SeqCst) >= mine);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(count.load(Ordering::SeqCst) <= 400);
        let state = syncs.state.lock().unwrap();
        assert_eq!((state.requested, state.synced), (400, 400));
    }

    #[test]
    fn callers_waiting_on_a_running_sync_share_the_next_one() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let syncs = Arc::new(GroupSync::default());
        let count = Arc::new(AtomicU64::new(0));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(std::sync::Mutex::new(released));
        let caller = |syncs: Arc<GroupSync>| {
            let (count, released) = (count.clone(), released.clone());
            std::thread::spawn(move || {
                syncs.sync(|| {
                    // The first sync waits to be released; later ones do not.
                    if count.fetch_add(1, Ordering::SeqCst) == 0 {
                        released.lock().unwrap().recv().unwrap();
                    }
                    Ok(())
                })
            })
        };
        let requested = |syncs: &GroupSync| syncs.state.lock().unwrap().requested;
        let wait_for = |n: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while requested(&syncs) < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "callers did not arrive"
                );
                std::thread::yield_now();
            }
        };
        let first = caller(syncs.clone());
        wait_for(1);
        let later: Vec<_> = (0..3).map(|_| caller(syncs.clone())).collect();
        wait_for(4);
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        for t in later {
            t.join().unwrap().unwrap();
        }
        // The first caller's sync, then one for the three that waited.
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn after_a_failed_sync_every_caller_fails_without_syncing() {
        let syncs = GroupSync::default();
        let err = syncs
            .sync(|| Err(std::io::Error::other("disk gone")))
            .unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
        // A later sync would report nothing: the error was reported once.
        let mut ran = false;
        let err = syncs
            .sync(|| {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert!(!ran);
        assert!(err.to_string().contains("disk gone"), "{err}");
        assert!(err.to_string().contains("restart"), "{err}");
    }

    #[test]
    fn a_failed_sync_of_a_store_is_reported_for_the_health_check() {
        let root = std::env::temp_dir().join(format!("blobs-{}", uuid::Uuid::new_v4().simple()));
        let sync = RootSync::of(&root).unwrap();
        assert!(
            failed_sync().is_none_or(|r| !r.contains(&root.display().to_string())),
            "a fresh store has not failed"
        );
        let _ = sync.group.sync(|| Err(std::io::Error::other("disk gone")));
        let reason = failed_sync().expect("the failure is reported");
        assert!(reason.contains("disk gone"), "{reason}");
        assert!(reason.contains(&root.display().to_string()), "{reason}");
        ROOT_SYNCS.lock().unwrap().remove(&root);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_store_creates_its_root_and_syncs_into_new_directories() {
        let root = std::env::temp_dir()
            .join(format!("blobs-{}", uuid::Uuid::new_v4().simple()))
            .join("nested");
        let s = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
        let loc = s.location("a/b/c/blob.txt");
        s.put(&loc, b"deep").await.unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c/blob.txt")).unwrap(), b"deep");
        // Nothing but the blob is left: no temporary file beside it.
        let names: Vec<_> = std::fs::read_dir(root.join("a/b/c"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("blob.txt")]);
        // A file where a directory belongs is an error, not a directory.
        std::fs::write(root.join("file"), b"x").unwrap();
        assert!(s.put(&s.location("file/below"), b"y").await.is_err());
        std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn unsynced_puts_are_made_durable_by_the_next_sync() {
        let (s, root) = store();
        let loc = s.location("t/ab/blob.txt");
        s.put_unsynced(&loc, b"text").await.unwrap();
        s.put_unsynced(&loc, b"text 2").await.unwrap(); // a replay overwrites
        assert_eq!(s.read_all(&loc, 100).await.unwrap(), b"text 2");
        let names: Vec<_> = std::fs::read_dir(root.join("t/ab"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("blob.txt")]);
        let root_sync = RootSync::of(&root).unwrap();
        let counts = || {
            let st = root_sync.group.state.lock().unwrap();
            (st.requested, st.synced)
        };
        assert_eq!(counts(), (0, 0), "the puts did not wait for a sync");
        s.sync().await.unwrap();
        assert_eq!(counts(), (1, 1), "one sync covered both");
        // Once a sync failed, no later one vouches for the writes.
        let _ = root_sync
            .group
            .sync(|| Err(std::io::Error::other("disk gone")));
        let err = s.sync().await.unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
        ROOT_SYNCS.lock().unwrap().remove(&root);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn put_read_digest_round_trip() {
        let (s, _) = store();
        let loc = s.location("x/y/blob.txt");
        assert!(!s.exists(&loc).await.unwrap());
        s.put(&loc, b"hello world").await.unwrap();
        s.put(&loc, b"hello world").await.unwrap(); // a replay overwrites
        assert!(s.exists(&loc).await.unwrap());
        assert_eq!(s.read_prefix(&loc, 5).await.unwrap(), b"hello");
        assert_eq!(s.read_all(&loc, 100).await.unwrap(), b"hello world");
        assert!(matches!(
            s.read_all(&loc, 3).await,
            Err(BlobError::TooLarge { .. })
        ));
        let d = s.digest(&loc).await.unwrap();
        assert_eq!(d.size, 11);
        assert_eq!(
            d.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        s.delete(&loc).await.unwrap();
        s.delete(&loc).await.unwrap();
        assert!(!s.exists(&loc).await.unwrap());
    }

    #[tokio::test]
    async fn staged_blobs_move_into_place_only_once() {
        let (s, dir) = store();
        let mut w = s.begin_staging().await.unwrap();
        assert!(w.location().starts_with(&s.location("tmp/")));
        w.write(Bytes::from_static(b"first ")).await.unwrap();
        w.write(Bytes::from_static(b"bytes")).await.unwrap();
        let staged = w.finish().await.unwrap();
        let target = s.location("uploads/a");
        assert!(s.move_if_absent(&staged, &target).await.unwrap());
        assert_eq!(s.read_all(&target, 100).await.unwrap(), b"first bytes");
        assert!(!s.exists(&staged).await.unwrap());

        let mut w = s.begin_staging().await.unwrap();
        w.write(Bytes::from_static(b"other")).await.unwrap();
        let staged = w.finish().await.unwrap();
        assert!(!s.move_if_absent(&staged, &target).await.unwrap());
        assert_eq!(s.read_all(&target, 100).await.unwrap(), b"first bytes");
        assert_eq!(s.read_all(&staged, 100).await.unwrap(), b"other");

        let mut w = s.begin_staging().await.unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        let loc = w.location().to_owned();
        w.abort().await;
        assert!(!s.exists(&loc).await.unwrap());
        assert!(dir.join("uploads/a").exists());

        // A small blob stays in memory until the finish: nothing on disk.
        let mut w = s.begin_staging().await.unwrap();
        w.write(Bytes::from_static(b"cut off")).await.unwrap();
        let loc = w.location().to_owned();
        assert!(!s.exists(&loc).await.unwrap());
        drop(w);

        // A large one is written as it comes, and comes back whole.
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut w = s.begin_staging().await.unwrap();
        for _ in 0..40 {
            w.write(Bytes::from(chunk.clone())).await.unwrap();
        }
        assert!(s.exists(w.location()).await.unwrap(), "spilled to disk");
        let staged = w.finish().await.unwrap();
        let back = s.read_all(&staged, 10 << 20).await.unwrap();
        assert_eq!(back.len(), 40 * chunk.len());
        assert!(back.chunks(chunk.len()).all(|c| c == chunk.as_slice()));

        // Dropped unfinished (a handler whose client went away): removed by
        // a task of its own.
        let mut w = s.begin_staging().await.unwrap();
        w.write(Bytes::from(vec![7u8; FILE_BUFFER_BYTES + 1]))
            .await
            .unwrap();
        let loc = w.location().to_owned();
        assert!(s.exists(&loc).await.unwrap());
        drop(w);
        removed_within_10_s(&s, &loc, "a dropped writer's file is still there").await;
    }

    /// Waits until the blob at `loc` is gone (a dropped writer removes its
    /// file from a task of its own), failing with `what` after 10 s.
    async fn removed_within_10_s(s: &BlobStore, loc: &str, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.exists(loc).await.unwrap() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A writer whose next spill fails after its file was created and
    /// partly written: the handle only reads, as if the disk refused.
    async fn failing_writer(s: &BlobStore) -> BlobWriter {
        let mut w = s.begin_staging().await.unwrap();
        w.write(Bytes::from(vec![1u8; FILE_BUFFER_BYTES]))
            .await
            .unwrap();
        assert!(s.exists(w.location()).await.unwrap(), "spilled to disk");
        let Some(Sink::File(f)) = &mut w.sink else {
            unreachable!("a file store writes files")
        };
        f.file = Some(std::fs::File::open(&f.path).unwrap());
        let e = w
            .write(Bytes::from(vec![2u8; FILE_BUFFER_BYTES]))
            .await
            .unwrap_err();
        assert!(matches!(e, BlobError::Io { .. }), "{e}");
        w
    }

    #[tokio::test]
    async fn a_failed_write_leaves_no_partial_file() {
        let (s, _) = store();
        let w = failing_writer(&s).await;
        let loc = w.location().to_owned();
        w.abort().await;
        assert!(
            !s.exists(&loc).await.unwrap(),
            "aborted after a failed write"
        );

        // Dropped after a failed write: removed by a task of its own.
        let w = failing_writer(&s).await;
        let loc = w.location().to_owned();
        drop(w);
        removed_within_10_s(
            &s,
            &loc,
            "a writer dropped after a failed write left its file",
        )
        .await;
    }

    #[tokio::test]
    async fn a_directory_is_not_a_blob_and_never_becomes_one() {
        let (s, _) = store();
        s.put(&s.location("uploads/a/b.bin"), b"x").await.unwrap();
        // The blob's directory, named as a location.
        let dir = s.location("uploads/a");
        let e = s.digest(&dir).await.unwrap_err();
        assert!(
            matches!(&e, BlobError::Io { source, .. } if source.kind() == std::io::ErrorKind::IsADirectory),
            "{e:?}"
        );
        assert!(!e.is_retriable(), "{e}");
        let e = s.read_all(&dir, 1 << 20).await.unwrap_err();
        assert!(!e.is_retriable(), "{e}");
    }

    #[tokio::test]
    async fn a_missing_blob_is_retriable_not_found() {
        let (s, _) = store();
        let e = s.digest(&s.location("nope")).await.unwrap_err();
        assert!(matches!(e, BlobError::NotFound(_)) && e.is_retriable());
    }
}
