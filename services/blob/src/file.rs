//! The `file://` backend: blobs are files under the store's root. Writes go
//! to a temporary file renamed into place; what they change reaches the
//! disk through the root's group sync ([`crate::sync`]).

use crate::sync::RootSync;
use crate::{BlobDigest, BlobError, Resolved};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// Bytes a file blob gathers in memory before they are written.
pub(crate) const FILE_BUFFER_BYTES: usize = 1 << 20;

/// A store rooted at an absolute path.
#[derive(Debug, Clone)]
pub(crate) struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// The store rooted at `path` (the part of the URL after `file://`).
    pub fn new(path: &str) -> Result<Self, &'static str> {
        if !path.starts_with('/') {
            return Err("a file:// store needs an absolute path: file:///root");
        }
        Ok(FileStore {
            root: normalize(Path::new(path)),
        })
    }

    pub fn root_url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    pub fn location(&self, relative: &str) -> String {
        format!("file://{}", self.root.join(relative).display())
    }

    pub fn resolve(&self, location: &str) -> Result<Resolved, BlobError> {
        let raw = location
            .strip_prefix("file://")
            .ok_or_else(|| BlobError::UnsupportedScheme {
                location: location.to_owned(),
                serves: format!("file:// locations under {}", self.root_url()),
            })?;
        let path = normalize(Path::new(raw));
        if !path.is_absolute() || !path.starts_with(&self.root) || path == self.root {
            return Err(BlobError::OutsideRoot {
                location: location.to_owned(),
                root: self.root_url(),
            });
        }
        Ok(Resolved::File(path))
    }

    fn path(&self, location: &str) -> Result<PathBuf, BlobError> {
        match self.resolve(location)? {
            Resolved::File(p) => Ok(p),
            Resolved::S3 { .. } => unreachable!("a file store resolves to files"),
        }
    }

    pub async fn read_prefix(&self, location: &str, n: usize) -> Result<Vec<u8>, BlobError> {
        let path = self.path(location)?;
        on_disk(move || {
            let mut buf = Vec::with_capacity(n.min(1 << 20));
            std::fs::File::open(&path)?
                .take(n as u64)
                .read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
        .map_err(io(location))
    }

    pub async fn read_all(&self, location: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        let path = self.path(location)?;
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
        .map_err(io(location))?;
        bytes.ok_or_else(|| BlobError::TooLarge {
            location: location.to_owned(),
            limit,
        })
    }

    pub async fn digest(&self, location: &str) -> Result<BlobDigest, BlobError> {
        let path = self.path(location)?;
        let (hasher, size) = on_disk(move || {
            let mut f = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; 64 * 1024];
            let (mut hasher, mut size) = (Sha256::new(), 0u64);
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
        .map_err(io(location))?;
        Ok(BlobDigest {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    pub async fn exists(&self, location: &str) -> Result<bool, BlobError> {
        let path = self.path(location)?;
        tokio::fs::try_exists(&path).await.map_err(io(location))
    }

    /// Writes through a temporary file renamed into place; `sync` waits
    /// for the disk.
    pub async fn put(&self, location: &str, bytes: &[u8], sync: bool) -> Result<(), BlobError> {
        let path = self.path(location)?;
        let root = self.root.clone();
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
        .map_err(io(location))
    }

    pub async fn sync(&self) -> Result<(), BlobError> {
        let root = self.root.clone();
        on_disk(move || RootSync::of(&root)?.sync())
            .await
            .map_err(io(&self.root_url()))
    }

    pub async fn delete(&self, location: &str) -> Result<(), BlobError> {
        let path = self.path(location)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(location)(e)),
        }
    }

    /// A sink for a new blob at `location`. The file is created with the
    /// first spill or at the finish.
    pub fn begin_staging(&self, location: &str) -> Result<FileSink, BlobError> {
        Ok(FileSink {
            path: self.path(location)?,
            root: self.root.clone(),
            file: None,
            touched: false,
            buf: Vec::new(),
        })
    }

    pub async fn move_if_absent(&self, from: &str, to: &str) -> Result<bool, BlobError> {
        let (from_path, to_path) = (self.path(from)?, self.path(to)?);
        let root = self.root.clone();
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
        .map_err(io(to))
    }
}

/// A file being written: chunks gather in memory up to
/// [`FILE_BUFFER_BYTES`], then go to disk, so a small blob costs one trip to
/// the blocking pool (create, write) and a large one is never held whole.
/// Its bytes reach the disk with the sync of the move that puts it in place.
pub(crate) struct FileSink {
    pub(crate) path: PathBuf,
    /// The store's root, whose [`RootSync`] is opened before the file is.
    root: PathBuf,
    /// Created at the first spill.
    pub(crate) file: Option<std::fs::File>,
    /// Whether the file may exist: set as the first spill starts, and kept
    /// when a spill fails (its handle is then lost), so an abort removes
    /// whatever a failed write left.
    touched: bool,
    buf: Vec<u8>,
}

impl FileSink {
    pub async fn write(&mut self, chunk: Bytes, location: &str) -> Result<(), BlobError> {
        self.buf.extend_from_slice(&chunk);
        if self.buf.len() < FILE_BUFFER_BYTES {
            return Ok(());
        }
        self.spill().await.map_err(io(location))
    }

    pub async fn finish(mut self, location: &str) -> Result<(), BlobError> {
        if let Err(e) = self.spill().await {
            // The file may exist even if its handle was lost.
            let _ = on_disk(move || {
                self.remove();
                Ok(())
            })
            .await;
            return Err(io(location)(e));
        }
        Ok(())
    }

    /// Drops what was written (best effort).
    pub async fn abort(self) {
        if self.touched {
            let _ = on_disk(move || {
                self.remove();
                Ok(())
            })
            .await;
        }
    }

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
    pub fn remove(self) {
        if self.touched {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Maps an I/O error on `location`: a missing file is
/// [`BlobError::NotFound`].
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

/// Runs file-system work in one trip to Tokio's blocking pool (each
/// `tokio::fs` call is a trip of its own: a thread hand-off and a wake-up).
async fn on_disk<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("file task failed: {e}"))))
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
    use crate::{BlobStore, BlobWriter, Sink};
    use std::time::Duration;

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
        assert_eq!(
            root_sync.counts(),
            (0, 0),
            "the puts did not wait for a sync"
        );
        s.sync().await.unwrap();
        assert_eq!(root_sync.counts(), (1, 1), "one sync covered both");
        // Once a sync failed, no later one vouches for the writes.
        root_sync.fail("disk gone");
        let err = s.sync().await.unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
        RootSync::forget(&root);
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
