//! The blob store's `s3://` adapter against a real S3-compatible server: the
//! local stack's S3Proxy (`deploy/local/stack up` starts it and creates the
//! bucket). Its endpoint, credentials and bucket come from the variables
//! `stack env` prints, with the stack's defaults when unset. Every test works
//! under a fresh prefix of the bucket.

use artifact_blob::{BlobError, BlobStore, Resolved};
use bytes::Bytes;
use sha2::{Digest, Sha256};

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The S3 settings of the local stack.
fn settings() -> Vec<(&'static str, String)> {
    vec![
        (
            "aws_endpoint",
            var("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ),
        ("aws_allow_http", var("AWS_ALLOW_HTTP", "true")),
        ("aws_region", var("AWS_REGION", "us-east-1")),
        ("aws_access_key_id", var("AWS_ACCESS_KEY_ID", "local-stack")),
        (
            "aws_secret_access_key",
            var("AWS_SECRET_ACCESS_KEY", "local-stack-secret"),
        ),
    ]
}

fn bucket_url() -> String {
    var("S3_BUCKET_URL", "s3://artifacts")
}

fn store_at(url: &str, overrides: &[(&'static str, String)]) -> BlobStore {
    let mut all = settings();
    all.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
    all.extend(overrides.iter().cloned());
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    BlobStore::from_url_with(url, &refs).expect("an s3 store")
}

/// A store under a fresh prefix of the stack's bucket.
fn fresh() -> BlobStore {
    store_at(
        &format!(
            "{}/runtime-test-{}",
            bucket_url(),
            uuid::Uuid::new_v4().simple()
        ),
        &[],
    )
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn put_read_digest_and_delete() {
    artifact_pipeline_tests::needs_stack!();
    let s = fresh();
    let loc = s.location("texts/a/1.txt");
    assert!(
        !s.exists(&loc)
            .await
            .expect("S3 answers (is the stack up? deploy/local/stack up)")
    );
    s.put(&loc, b"hello world").await.unwrap();
    s.put(&loc, b"hello world").await.unwrap(); // a replay overwrites
    assert!(s.exists(&loc).await.unwrap());
    assert_eq!(s.read_prefix(&loc, 5).await.unwrap(), b"hello");
    assert_eq!(s.read_prefix(&loc, 1000).await.unwrap(), b"hello world");
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

    let empty = s.location("empty");
    s.put(&empty, b"").await.unwrap();
    assert_eq!(s.read_prefix(&empty, 8192).await.unwrap(), b"");
    assert_eq!(s.digest(&empty).await.unwrap().size, 0);

    s.delete(&loc).await.unwrap();
    s.delete(&loc).await.unwrap(); // already gone: not an error
    assert!(!s.exists(&loc).await.unwrap());
}

#[tokio::test]
async fn a_missing_object_is_retriable_not_found() {
    artifact_pipeline_tests::needs_stack!();
    let s = fresh();
    let loc = s.location("uploads/never-written");
    for e in [
        s.digest(&loc).await.unwrap_err(),
        s.read_all(&loc, 100).await.unwrap_err(),
        s.read_prefix(&loc, 100).await.unwrap_err(),
    ] {
        assert!(matches!(e, BlobError::NotFound(_)), "{e:?}");
        assert!(e.is_retriable());
    }
}

#[tokio::test]
async fn objects_outside_the_prefix_or_bucket_are_refused() {
    artifact_pipeline_tests::needs_stack!();
    let a = fresh();
    let b = fresh();
    // An object that exists, under another prefix of the same bucket.
    let theirs = b.location("uploads/x");
    b.put(&theirs, b"not yours").await.unwrap();
    for e in [
        a.resolve(&theirs).unwrap_err(),
        a.digest(&theirs).await.unwrap_err(),
        a.read_all(&theirs, 100).await.unwrap_err(),
    ] {
        assert!(matches!(e, BlobError::OutsideRoot { .. }), "{e:?}");
        assert!(!e.is_retriable());
    }
    let root = a.root_url();
    let their_prefix = b.root_url().rsplit('/').next().unwrap().to_owned();
    for bad in [
        format!("{root}/../{their_prefix}/uploads/x"),
        format!("{root}/uploads/../../x"),
        "s3://some-other-bucket/uploads/x".to_owned(),
    ] {
        let e = a.digest(&bad).await.unwrap_err();
        assert!(matches!(e, BlobError::OutsideRoot { .. }), "{bad}: {e:?}");
    }
    // Another scheme: refused, saying what the store serves.
    let e = a.digest("file:///etc/hostname").await.unwrap_err();
    assert!(matches!(e, BlobError::UnsupportedScheme { .. }), "{e:?}");
    assert!(!e.is_retriable());
    assert!(
        e.to_string()
            .contains(&format!("serves s3:// locations under {root}")),
        "{e}"
    );
    let Resolved::S3 { key, .. } = a.resolve(&a.location("uploads/y")).unwrap() else {
        panic!("an s3 store resolves to objects")
    };
    assert!(key.ends_with("/uploads/y"), "{key}");
}

#[tokio::test]
async fn staged_uploads_stream_in_parts_and_move_into_place_once() {
    artifact_pipeline_tests::needs_stack!();
    let s = fresh();
    // 12 MiB in 64 KiB chunks: three parts of a multipart upload.
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let chunks = 12 * 16;
    let mut whole = Sha256::new();
    let mut w = s.begin_staging().await.unwrap();
    assert!(w.location().starts_with(&s.location("tmp/")));
    for _ in 0..chunks {
        whole.update(&chunk);
        w.write(Bytes::from(chunk.clone())).await.unwrap();
    }
    let staged = w.finish().await.unwrap();
    let d = s.digest(&staged).await.unwrap();
    assert_eq!(d.size, (chunk.len() * chunks) as u64);
    assert_eq!(d.sha256, hex::encode(whole.finalize()));

    let target = s.location("uploads/artifact");
    assert!(s.move_if_absent(&staged, &target).await.unwrap());
    assert!(!s.exists(&staged).await.unwrap(), "the staged copy is gone");
    assert_eq!(s.digest(&target).await.unwrap(), d);

    // A second blob for the same place does not replace the first.
    let mut w = s.begin_staging().await.unwrap();
    w.write(Bytes::from_static(b"other bytes")).await.unwrap();
    let second = w.finish().await.unwrap();
    assert!(!s.move_if_absent(&second, &target).await.unwrap());
    assert_eq!(s.digest(&target).await.unwrap(), d);
    assert_eq!(
        s.digest(&second).await.unwrap().sha256,
        sha256(b"other bytes")
    );
    s.delete(&second).await.unwrap();

    // An aborted upload leaves nothing.
    let mut w = s.begin_staging().await.unwrap();
    w.write(Bytes::from(vec![7u8; 6 << 20])).await.unwrap();
    let aborted = w.location().to_owned();
    w.abort().await;
    assert!(!s.exists(&aborted).await.unwrap());

    // An empty upload is an empty blob.
    let w = s.begin_staging().await.unwrap();
    let empty = w.finish().await.unwrap();
    assert_eq!(s.digest(&empty).await.unwrap().size, 0);
}

#[tokio::test]
async fn unreachable_or_refusing_stores_are_retriable_errors() {
    artifact_pipeline_tests::needs_stack!();
    let url = format!("{}/runtime-test-x", bucket_url());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let down = store_at(
        &url,
        &[("aws_endpoint", format!("http://127.0.0.1:{port}"))],
    );
    let e = down.digest(&down.location("x")).await.unwrap_err();
    assert!(matches!(e, BlobError::Store { .. }), "{e:?}");
    assert!(e.is_retriable(), "{e}");

    let wrong = store_at(
        &url,
        &[("aws_secret_access_key", "not-the-secret".to_owned())],
    );
    let e = wrong.digest(&wrong.location("x")).await.unwrap_err();
    assert!(matches!(e, BlobError::Store { .. }), "{e:?}");
    assert!(e.is_retriable(), "{e}");
}
