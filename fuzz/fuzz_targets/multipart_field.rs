//! The API's multipart reader (`stage_file_field`) on arbitrary bodies:
//! it stages the `file` field or answers a problem, never panics, and
//! never stages more than its limit. Input: the boundary up to the first
//! line feed, then the body, sent in chunks of up to 1000 bytes to a file
//! blob store in a temporary directory.
#![no_main]

use artifact_api::multipart::stage_file_field;
use artifact_runtime::blob::BlobStore;
use axum::body::Body;
use axum::extract::Request;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The largest file staged.
const LIMIT: u64 = 4096;

struct Upload {
    runtime: tokio::runtime::Runtime,
    blobs: BlobStore,
}

fn upload() -> &'static Upload {
    static UPLOAD: OnceLock<Upload> = OnceLock::new();
    UPLOAD.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("fuzz-multipart-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("a blob root");
        Upload {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            blobs: BlobStore::from_url(&format!("file://{}", root.display())).expect("a store"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (boundary, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(boundary) = std::str::from_utf8(boundary) else {
        return;
    };
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let Ok(request) = Request::builder()
        .method("POST")
        .uri("/v1/artifacts")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from_stream(futures::stream::iter(chunks)))
    else {
        return;
    };
    let u = upload();
    u.runtime.block_on(async {
        if let Ok(field) = stage_file_field(&u.blobs, request, LIMIT).await {
            assert!(
                field.staged.size <= LIMIT,
                "staged {} bytes",
                field.staged.size
            );
            field.staged.discard().await;
        }
    });
});
