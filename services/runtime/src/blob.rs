//! The blob store port: where artifact bytes and extracted texts live.
//! Locations are URLs. `file:///…` locations must lie under the configured
//! root (a path that escapes it is refused); other schemes are refused with a
//! message saying what this build supports.

use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob at that location (yet: stores can be eventually consistent).
    #[error("no blob at {0}")]
    NotFound(String),
    /// The location names a scheme this store does not serve.
    #[error(
        "unsupported storage location {0:?}: this store serves file:// locations under its root"
    )]
    UnsupportedScheme(String),
    /// The location escapes the store's root.
    #[error("storage location {location:?} is outside the storage root {root}")]
    OutsideRoot {
        /// The location.
        location: String,
        /// The root.
        root: String,
    },
    /// The blob is larger than allowed.
    #[error("blob at {location} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The location.
        location: String,
        /// The limit.
        limit: u64,
    },
    /// Reading or writing failed.
    #[error("I/O on {location}: {source}")]
    Io {
        /// The location.
        location: String,
        /// The error.
        source: std::io::Error,
    },
}

impl BlobError {
    /// Whether trying again later may help.
    pub fn is_retriable(&self) -> bool {
        matches!(self, BlobError::NotFound(_) | BlobError::Io { .. })
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

/// A blob store rooted at a `file://` directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// A store at `file:///absolute/root`.
    pub fn from_url(url: &str) -> Result<Self, BlobError> {
        let path = url
            .strip_prefix("file://")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| BlobError::UnsupportedScheme(url.to_owned()))?;
        Ok(BlobStore {
            root: normalize(Path::new(path)),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The location URL of a path relative to the root.
    pub fn location(&self, relative: &str) -> String {
        format!("file://{}", self.root.join(relative).display())
    }

    /// Resolves a location to a path under the root.
    pub fn resolve(&self, location: &str) -> Result<PathBuf, BlobError> {
        let raw = location
            .strip_prefix("file://")
            .ok_or_else(|| BlobError::UnsupportedScheme(location.to_owned()))?;
        let path = normalize(Path::new(raw));
        if !path.is_absolute() || !path.starts_with(&self.root) || path == self.root {
            return Err(BlobError::OutsideRoot {
                location: location.to_owned(),
                root: self.root.display().to_string(),
            });
        }
        Ok(path)
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
        let path = self.resolve(location)?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(Self::io(location))?;
        let mut buf = Vec::with_capacity(n.min(1 << 20));
        f.take(n as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(Self::io(location))?;
        Ok(buf)
    }

    /// Reads the whole blob, refusing blobs over `limit` bytes.
    pub async fn read_all(&self, location: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        let path = self.resolve(location)?;
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(Self::io(location))?;
        if meta.len() > limit {
            return Err(BlobError::TooLarge {
                location: location.to_owned(),
                limit,
            });
        }
        tokio::fs::read(&path).await.map_err(Self::io(location))
    }

    /// Streams the blob through SHA-256.
    pub async fn digest(&self, location: &str) -> Result<BlobDigest, BlobError> {
        let path = self.resolve(location)?;
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(Self::io(location))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).await.map_err(Self::io(location))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok(BlobDigest {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Writes a blob atomically (temporary file, then rename), replacing
    /// whatever was there: a replay overwrites instead of duplicating.
    pub async fn put(&self, location: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.resolve(location)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(Self::io(location))?;
        }
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(Self::io(location))?;
        f.write_all(bytes).await.map_err(Self::io(location))?;
        f.sync_all().await.map_err(Self::io(location))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(Self::io(location))
    }
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

    #[test]
    fn locations_outside_the_root_are_refused() {
        let (s, dir) = store();
        let inside = format!("file://{}/a/b.pdf", dir.display());
        assert!(s.resolve(&inside).is_ok());
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
            assert!(matches!(e, BlobError::UnsupportedScheme(_)), "{bad}");
            assert!(!e.is_retriable());
        }
    }

    #[tokio::test]
    async fn put_read_digest_round_trip() {
        let (s, _) = store();
        let loc = s.location("x/y/blob.txt");
        s.put(&loc, b"hello world").await.unwrap();
        s.put(&loc, b"hello world").await.unwrap(); // a replay overwrites
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
    }

    #[tokio::test]
    async fn a_missing_blob_is_retriable_not_found() {
        let (s, _) = store();
        let e = s.digest(&s.location("nope")).await.unwrap_err();
        assert!(matches!(e, BlobError::NotFound(_)) && e.is_retriable());
    }
}
