//! The API's routes, called in process (no port bound) on a file blob store,
//! with Kafka and the registry unreachable: every publish fails at once with
//! 503, which is what the upload tests below want.

use super::*;
use crate::http::auth::Tokens;
use crate::http::uploads::{IDEMPOTENCY_NAMESPACE, idempotent_id};
use artifact_domain::{ArtifactContext, ArtifactState, Generation, StatusView};
use artifact_kafka::config::ConnectionConfig;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Request as HttpRequest};
use axum::response::Response;
use futures::StreamExt;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub(crate) const TOKEN: &str = "unit-token";
const OTHER_TOKEN: &str = "other-unit-token";
/// A registry nothing answers at.
const REGISTRY: &str = "http://127.0.0.1:1";
/// Over the file store's 1 MiB buffer, so large uploads reach the disk.
const LIMIT: u64 = 3 << 19;

pub(crate) struct Api {
    pub(crate) app: Router,
    blobs: PathBuf,
    pub(crate) table: Arc<StatusTable>,
    store: BlobStore,
    pub(crate) state: AppState,
}

pub(crate) fn api(protect_reads: bool) -> Api {
    api_with(Some(protect_reads), Limits::for_tests(LIMIT))
}

/// A restored API with reads protected or not (`None`: the default) and
/// these limits.
fn api_with(protect_reads: Option<bool>, limits: Limits) -> Api {
    let a = build(protect_reads, limits);
    a.table.mark_restored();
    a
}

/// An API whose read model has not caught up with the status topic yet.
fn loading_api(protect_reads: bool) -> Api {
    build(Some(protect_reads), Limits::for_tests(LIMIT))
}

fn build(protect_reads: Option<bool>, limits: Limits) -> Api {
    let blobs = std::env::temp_dir().join(format!("api-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&blobs).unwrap();
    let store = BlobStore::from_url(&format!("file://{}", blobs.display())).unwrap();
    let table = Arc::new(StatusTable::create(&std::env::temp_dir()).unwrap());
    let tokens = Tokens::parse(&format!("{TOKEN},{OTHER_TOKEN}"));
    let access = Access::new(tokens, false, protect_reads).unwrap();
    let state = AppState {
        names: TopicNames::from_config(&ConnectionConfig::local("unit")),
        codec: Arc::new(AvroCodec::new(REGISTRY).unwrap()),
        producer: rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .unwrap(),
        blobs: store.clone(),
        table: table.clone(),
        access,
        uploads: UploadSlots::new(limits.concurrent_uploads),
        streams: crate::http::events::StreamSlots::new(limits.event_streams),
        limits,
        completions: Completions::default(),
        controls: artifact_runtime::control::ArtifactControls::none(),
        operations: crate::reprocess::Operations::default(),
        pipeline: Arc::new(crate::ui::stages::PipelineView::new(
            unreachable_kafka(),
            String::new(),
            std::time::Duration::from_millis(300),
        )),
        webhooks: crate::webhooks::Webhooks::default(),
    };
    Api {
        app: router(state.clone()),
        blobs,
        table,
        store,
        state,
    }
}

/// Connection settings of a broker and registry nobody answers at.
pub(crate) fn unreachable_kafka() -> ConnectionConfig {
    let mut conn = ConnectionConfig::local("unit");
    conn.kafka_bootstrap_servers = "127.0.0.1:1".into();
    conn.schema_registry_url = REGISTRY.into();
    conn
}

/// Calls a service once (axum's `ServiceExt` extends tower's `Service`,
/// whose `call` is reachable through the bound).
pub(crate) async fn call<S>(mut svc: S, req: Request) -> Response
where
    S: axum::ServiceExt<Request, Response = Response, Error = Infallible>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .unwrap_or_else(|e| match e {});
    svc.call(req).await.unwrap_or_else(|e| match e {})
}

/// The status and problem+json body of an error answer.
async fn problem(resp: Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()[CONTENT_TYPE],
        "application/problem+json",
        "status {status}"
    );
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

fn detail(p: &serde_json::Value) -> &str {
    p["detail"].as_str().unwrap()
}

fn reprocess_request(id: ArtifactId) -> Request {
    HttpRequest::post(format!("/v1/artifacts/{id}/reprocess"))
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap()
}

fn upload(content_type: &str, key: Option<&[u8]>, body: Body) -> Request {
    let mut req = HttpRequest::post("/v1/artifacts?filename=a.txt")
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("idempotency-key", HeaderValue::from_bytes(k).unwrap());
    }
    req
}

/// A body that starts with `head` and goes on with `fill` bytes, far past
/// anything the API should read (32 MiB), counting what was taken from it in
/// `taken`. Each chunk yields to the runtime first, as a socket would.
fn endless(head: &'static [u8], fill: u8, taken: Arc<AtomicU64>) -> Body {
    let chunk = Bytes::from(vec![fill; 8 * 1024]);
    let rest = futures::stream::repeat(chunk).take(4 * 1024);
    let chunks = futures::stream::once(async move { Bytes::from_static(head) })
        .chain(rest)
        .then(move |c| {
            let taken = taken.clone();
            async move {
                tokio::task::yield_now().await;
                taken.fetch_add(c.len() as u64, Ordering::Relaxed);
                Ok::<_, Infallible>(c)
            }
        });
    Body::from_stream(chunks)
}

fn files_in(dir: &std::path::Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until `dir` holds no file (staged blobs are removed by tasks of
/// their own when dropped).
async fn wait_empty(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !files_in(dir).is_empty() {
        assert!(Instant::now() < deadline, "{:?} still there", files_in(dir));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_multipart_body_that_never_reaches_its_file_ends_with_413() {
    let a = api(false);
    let cases: [(&str, &'static [u8], u8); 3] = [
        ("no boundary ever", b"", b'x'),
        (
            "a field header without end",
            b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nX-Padding: ",
            b'a',
        ),
        (
            "an endless field before the file",
            b"--XYZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n",
            b'n',
        ),
    ];
    for (what, head, fill) in cases {
        let taken = Arc::new(AtomicU64::new(0));
        let req = upload(
            "multipart/form-data; boundary=XYZ",
            None,
            endless(head, fill, taken.clone()),
        );
        let resp = tokio::time::timeout(Duration::from_secs(30), call(a.app.clone(), req))
            .await
            .unwrap_or_else(|_| panic!("{what}: still reading after 30 s"));
        let taken = taken.load(Ordering::Relaxed);
        let (status, p) = problem(resp).await;
        assert_eq!(status, 413, "{what} ({taken} bytes read): {p}");
        assert!(detail(&p).contains("MAX_UPLOAD_BYTES"), "{what}: {p}");
        assert!(
            taken <= multipart::ENVELOPE_BYTES + 64 * 1024,
            "{what}: {taken} bytes read"
        );
    }
    wait_empty(&a.blobs.join("tmp")).await;
    assert!(files_in(&a.blobs.join("uploads")).is_empty());
}

#[tokio::test]
async fn an_endless_multipart_file_ends_with_413_and_leaves_no_blob() {
    let a = api(false);
    let taken = Arc::new(AtomicU64::new(0));
    let head = b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n";
    let req = upload(
        "multipart/form-data; boundary=XYZ",
        None,
        endless(head, b'f', taken.clone()),
    );
    let resp = tokio::time::timeout(Duration::from_secs(30), call(a.app.clone(), req))
        .await
        .expect("answered");
    let (status, p) = problem(resp).await;
    assert_eq!(status, 413, "{p}");
    assert!(detail(&p).contains("MAX_UPLOAD_BYTES"), "{p}");
    assert!(taken.load(Ordering::Relaxed) <= LIMIT + multipart::ENVELOPE_BYTES + 64 * 1024);
    wait_empty(&a.blobs.join("tmp")).await;
}

#[tokio::test]
async fn a_multipart_content_type_in_any_case_is_multipart() {
    let a = api(false);
    let body = "--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
                Content-Type: text/plain\r\n\r\nhello\r\n--XYZ--\r\n";
    let req = upload(
        "Multipart/Form-Data; boundary=XYZ",
        Some(b"case-key"),
        Body::from(body),
    );
    // Kafka is unreachable: 503, and with a key the bytes stay in place.
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 503, "{p}");
    let stored = files_in(&a.blobs.join("uploads"));
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        std::fs::read(&stored[0]).unwrap(),
        b"hello",
        "the file field only"
    );
}

#[tokio::test]
async fn an_upload_that_cannot_be_published_is_kept_only_with_a_key() {
    let a = api(false);
    let uploads = a.blobs.join("uploads");

    let req = upload("text/plain", None, Body::from("no key"));
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 503, "{p}");
    assert!(detail(&p).contains("retry the upload"), "{p}");
    assert!(detail(&p).contains("Idempotency-Key"), "{p}");
    assert!(files_in(&uploads).is_empty(), "{:?}", files_in(&uploads));
    assert!(files_in(&a.blobs.join("tmp")).is_empty());

    // A UTF-8 key, twice: one blob kept, under the id the key names.
    let key = "clé d'envoi ✓".as_bytes();
    for _ in 0..2 {
        let req = upload("text/plain", Some(key), Body::from("with a key"));
        let (status, p) = problem(call(a.app.clone(), req).await).await;
        assert_eq!(status, 503, "{p}");
        assert!(
            detail(&p).contains("retry with the same Idempotency-Key"),
            "{p}"
        );
    }
    let id = ArtifactId::from_uuid(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key));
    assert_eq!(files_in(&uploads), vec![uploads.join(id.to_string())]);
    assert!(files_in(&a.blobs.join("tmp")).is_empty());
}

#[tokio::test]
async fn generation_dependent_writes_wait_for_the_read_model() {
    let a = loading_api(false);
    let req = upload("text/plain", Some(b"key-9"), Body::from("with a key"));
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 503, "{p}");
    assert!(detail(&p).contains("still loading"), "{p}");
    assert!(files_in(&a.blobs.join("uploads")).is_empty());
    let id = ArtifactId::new_random();
    let req = reprocess_request(id);
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 503, "{p}");
    assert!(detail(&p).contains("still loading"), "{p}");
    // Without a key an upload needs no generation: it goes ahead (and
    // fails here only because the registry is unreachable).
    let req = upload("text/plain", None, Body::from("no key"));
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 503, "{p}");
    assert!(detail(&p).contains("retry the upload"), "{p}");
}

#[test]
fn idempotency_keys_name_artifacts_by_their_bytes() {
    fn id_of(key: &[u8]) -> Option<ArtifactId> {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", HeaderValue::from_bytes(key).unwrap());
        idempotent_id(&h)
    }
    let v5 = |k: &[u8]| ArtifactId::from_uuid(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, k));
    // ASCII keys name the artifacts they always did.
    assert_eq!(id_of(b"key-1"), Some(v5(b"key-1")));
    assert_eq!(id_of(b" key-1\t"), Some(v5(b"key-1")));
    // Non-ASCII keys are keys too, by their bytes.
    let utf8 = "clé-1".as_bytes();
    assert_eq!(id_of(utf8), Some(v5(utf8)));
    assert_ne!(id_of(utf8), id_of("clé-2".as_bytes()));
    assert_eq!(id_of(b"\xff\xfe"), Some(v5(b"\xff\xfe")));
    assert_eq!(id_of(b"  "), None);
    assert_eq!(idempotent_id(&HeaderMap::new()), None);
}

#[tokio::test]
async fn query_errors_are_problems_answered_after_the_auth_check() {
    let a = api(true);
    let list = |auth: bool| {
        let mut b = HttpRequest::get("/v1/artifacts?limit=abc");
        if auth {
            b = b.header(AUTHORIZATION, format!("bearer {TOKEN}"));
        }
        b.body(Body::empty()).unwrap()
    };
    let (status, _) = problem(call(a.app.clone(), list(false)).await).await;
    assert_eq!(status, 401);
    let (status, p) = problem(call(a.app.clone(), list(true)).await).await;
    assert_eq!(status, 400);
    assert!(detail(&p).contains("limit"), "{p}");

    let post = HttpRequest::post("/v1/artifacts?filename=a&filename=b")
        .body(Body::from("x"))
        .unwrap();
    let (status, _) = problem(call(a.app.clone(), post).await).await;
    assert_eq!(status, 401);
}

fn artifact(a: &Api, text_location: Option<String>) -> ArtifactId {
    let id = ArtifactId::new_random();
    let view = StatusView {
        artifact_id: id,
        generation: Generation::FIRST,
        state: ArtifactState::Completed,
        current_stage: None,
        failed_stage: None,
        failure_reason: None,
        context: ArtifactContext {
            storage_location: a.store.location(&format!("uploads/{id}")),
            text_location,
            ..ArtifactContext::default()
        },
        page_count: None,
        word_count: None,
        summary: None,
        summary_method: None,
        timeline: Vec::new(),
        created_at: Some(1),
        updated_at: 2,
        cancelled_at: None,
        next_retry_at: None,
        dead_letters: Vec::new(),
        history: Vec::new(),
    };
    a.table.upsert(&[view]).unwrap();
    id
}

#[tokio::test]
async fn a_text_missing_from_the_store_is_not_found() {
    let a = api(false);
    let id = artifact(&a, Some(a.store.location("texts/gone.txt")));
    let req = HttpRequest::get(format!("/v1/artifacts/{id}/text"))
        .body(Body::empty())
        .unwrap();
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 404, "{p}");
    assert!(detail(&p).contains("reprocess"), "{p}");
}

#[tokio::test]
async fn a_pages_text_is_served_and_a_missing_or_bad_page_is_refused() {
    let a = api(false);
    let location = a.store.location("texts/doc.txt");
    let page = artifact_domain::page_text_location(&location, 2);
    a.store.put(&page, b"second page").await.unwrap();
    let id = artifact(&a, Some(location));
    let resp = call(
        a.app.clone(),
        get(&format!("/v1/artifacts/{id}/pages/2/text"), None),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(&body[..], b"second page");
    let missing = get(&format!("/v1/artifacts/{id}/pages/3/text"), None);
    let (status, p) = problem(call(a.app.clone(), missing).await).await;
    assert_eq!(status, 404, "{p}");
    assert!(detail(&p).contains("page 3"), "{p}");
    for bad in ["0", "x", "-1", "99999999999"] {
        let req = get(&format!("/v1/artifacts/{id}/pages/{bad}/text"), None);
        let (status, p) = problem(call(a.app.clone(), req).await).await;
        assert_eq!(status, 400, "{bad}: {p}");
    }

    // Reads protected: a page's text, like the whole text, needs a token.
    let a = api(true);
    let location = a.store.location("texts/doc.txt");
    let id = artifact(&a, Some(location));
    let req = get(&format!("/v1/artifacts/{id}/pages/1/text"), None);
    let (status, _) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_reprocess_that_cannot_be_published_says_to_retry_it() {
    let a = api(false);
    let id = artifact(&a, None);
    let req = reprocess_request(id);
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 503, "{p}");
    assert!(detail(&p).contains("retry the reprocess"), "{p}");
    assert!(!detail(&p).contains("Idempotency-Key"), "{p}");
    assert!(!detail(&p).contains("upload"), "{p}");
}

fn get(path: &str, token: Option<&str>) -> Request {
    let mut b = HttpRequest::get(path);
    if let Some(t) = token {
        b = b.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn reads_need_a_token_unless_opened() {
    let protected = api_with(None, Limits::for_tests(LIMIT));
    let id = artifact(&protected, None);
    let (status, _) = problem(
        call(
            protected.app.clone(),
            get(&format!("/v1/artifacts/{id}"), None),
        )
        .await,
    )
    .await;
    assert_eq!(status, 401, "reads are protected by default");
    let resp = call(
        protected.app.clone(),
        get(&format!("/v1/artifacts/{id}"), Some(TOKEN)),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let open = api(false);
    let id = artifact(&open, None);
    let resp = call(open.app.clone(), get(&format!("/v1/artifacts/{id}"), None)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn error_bodies_carry_a_request_id_not_internal_locations() {
    let a = api(false);
    let req = upload("text/plain", None, Body::from("no key"));
    let resp = call(a.app.clone(), req).await;
    let header_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (status, p) = problem(resp).await;
    assert_eq!(status, 503, "{p}");
    assert_eq!(p["request_id"], header_id.as_str(), "{p}");
    let body = p.to_string();
    let blob_dir = a.blobs.display().to_string();
    for secret in ["127.0.0.1", "http://", &blob_dir] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }

    // A text missing from the store: its location stays in the log.
    let id = artifact(&a, Some(a.store.location("texts/gone.txt")));
    let resp = call(
        a.app.clone(),
        get(&format!("/v1/artifacts/{id}/text"), None),
    )
    .await;
    let (status, p) = problem(resp).await;
    assert_eq!(status, 404, "{p}");
    assert!(p["request_id"].is_string(), "{p}");
    let body = p.to_string();
    assert!(
        !body.contains(&blob_dir) && !body.contains("file://"),
        "{body}"
    );
}

#[tokio::test]
async fn declared_content_types_are_bounded() {
    let a = api(false);
    let long = format!(
        "text/plain; x={}",
        "y".repeat(upload::MAX_DECLARED_TYPE_BYTES)
    );
    let (status, p) = problem(
        call(
            a.app.clone(),
            upload(&long, Some(b"k-long"), Body::from("x")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400, "{p}");
    assert!(detail(&p).contains("content type"), "{p}");
    let body = format!(
        "--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
         Content-Type: {long}\r\n\r\nhello\r\n--XYZ--\r\n"
    );
    let req = upload(
        "multipart/form-data; boundary=XYZ",
        Some(b"k-long-2"),
        Body::from(body),
    );
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 400, "{p}");
    assert!(files_in(&a.blobs.join("uploads")).is_empty());
    wait_empty(&a.blobs.join("tmp")).await;
}

#[tokio::test]
async fn a_text_over_256_mib_is_streamed_whole() {
    let a = api(false);
    let location = a.store.location("texts/big.txt");
    let path = a.blobs.join("texts/big.txt");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Sparse: 257 MiB that take no disk.
    let size = 257u64 << 20;
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let id = artifact(&a, Some(location));
    let resp = call(
        a.app.clone(),
        get(&format!("/v1/artifacts/{id}/text"), None),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut chunks = resp.into_body().into_data_stream();
    let (mut total, mut largest) = (0u64, 0usize);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        largest = largest.max(chunk.len());
        total += chunk.len() as u64;
    }
    assert_eq!(total, size);
    assert!(largest <= 1 << 20, "a chunk of {largest} bytes");
    std::fs::remove_file(&path).unwrap();
}

/// A body whose chunks come from a channel: it stalls until a chunk is sent.
fn fed_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok::<_, Infallible>(c), rx))
    });
    (tx, Body::from_stream(chunks))
}

#[tokio::test]
async fn uploads_over_the_concurrency_limit_are_refused_with_retry_after() {
    let mut limits = Limits::for_tests(LIMIT);
    limits.concurrent_uploads = 1;
    let a = api_with(Some(false), limits);
    let (tx, body) = fed_body();
    let first = tokio::spawn(call(
        a.app.clone(),
        upload("text/plain", Some(b"held"), body),
    ));
    // Past the file store's 1 MiB buffer: the staged blob shows on disk
    // once the first upload holds the only slot.
    tx.send(Bytes::from(vec![b'h'; (1 << 20) + 1]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while files_in(&a.blobs.join("tmp")).is_empty() {
        assert!(Instant::now() < deadline, "the first upload never staged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = call(
        a.app.clone(),
        upload("text/plain", None, Body::from("second")),
    )
    .await;
    assert_eq!(resp.headers()["retry-after"], "1");
    let (status, p) = problem(resp).await;
    assert_eq!(status, 503, "{p}");
    assert!(detail(&p).contains("API_MAX_CONCURRENT_UPLOADS"), "{p}");
    drop(tx);
    let (status, p) = problem(first.await.unwrap()).await;
    assert_eq!(status, 503, "the first one ends (Kafka is unreachable)");
    assert!(detail(&p).contains("Idempotency-Key"), "{p}");
    // The slot is free again.
    let resp = call(
        a.app.clone(),
        upload("text/plain", Some(b"after"), Body::from("third")),
    )
    .await;
    let (status, p) = problem(resp).await;
    assert!(
        detail(&p).contains("Idempotency-Key") && status == 503,
        "{p}"
    );
}

#[tokio::test]
async fn a_stalled_or_endless_upload_ends_with_408_and_leaves_nothing() {
    let mut limits = Limits::for_tests(LIMIT);
    limits.body_idle_timeout = Duration::from_millis(200);
    limits.upload_deadline = Duration::from_millis(600);
    let a = api_with(Some(false), limits);
    // Stalled: one chunk, then nothing.
    let (tx, body) = fed_body();
    tx.send(Bytes::from_static(b"first and last"))
        .await
        .unwrap();
    let (status, p) = problem(call(a.app.clone(), upload("text/plain", None, body)).await).await;
    assert_eq!(status, 408, "{p}");
    assert!(detail(&p).contains("API_BODY_IDLE_TIMEOUT_MS"), "{p}");
    drop(tx);
    // A trickle that never ends: past the total deadline.
    let trickle = futures::stream::unfold(
        tokio::time::interval(Duration::from_millis(20)),
        |mut every| async move {
            every.tick().await;
            Some((Ok::<_, Infallible>(Bytes::from_static(b"x")), every))
        },
    );
    let req = upload("text/plain", None, Body::from_stream(trickle));
    let (status, p) = problem(call(a.app.clone(), req).await).await;
    assert_eq!(status, 408, "{p}");
    assert!(detail(&p).contains("API_UPLOAD_DEADLINE_MS"), "{p}");
    wait_empty(&a.blobs.join("tmp")).await;
    assert!(files_in(&a.blobs.join("uploads")).is_empty());
}

#[tokio::test]
async fn each_token_has_its_own_rate_and_the_excess_gets_429() {
    let mut limits = Limits::for_tests(LIMIT);
    limits.rate_per_second = 1;
    limits.rate_burst = 2;
    let a = api_with(Some(true), limits);
    let list = |t| get("/v1/artifacts", Some(t));
    for _ in 0..2 {
        assert_eq!(call(a.app.clone(), list(TOKEN)).await.status(), 200);
    }
    let resp = call(a.app.clone(), list(TOKEN)).await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let (status, p) = problem(resp).await;
    assert_eq!(status, 429, "{p}");
    // Another token is not held back by the first one's requests.
    assert_eq!(call(a.app.clone(), list(OTHER_TOKEN)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_uploads_with_one_key_and_other_bytes_one_wins() {
    // Kafka is unreachable: the winner's bytes stay in place with a 503
    // (a retry with its key completes it), the loser gets 409.
    let a = api(false);
    for round in 0..20 {
        let key = format!("race-{round}");
        let requests = (0..4).map(|i| {
            let req = upload(
                "text/plain",
                Some(key.as_bytes()),
                Body::from(format!("writer {i}")),
            );
            tokio::spawn(call(a.app.clone(), req))
        });
        let mut statuses = Vec::new();
        for r in futures::future::join_all(requests).await {
            statuses.push(r.unwrap().status().as_u16());
        }
        statuses.sort_unstable();
        assert_eq!(statuses, vec![409, 409, 409, 503], "round {round}");
    }
}

/// Serves `a` on a loopback port with the real server; returns its address.
async fn serve_on_loopback(a: &Api, header_timeout: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = a.app.clone();
    tokio::spawn(server::serve(
        listener,
        app,
        header_timeout,
        std::future::pending(),
    ));
    addr
}

/// Sends a request head and `body_len` bytes of body (ignoring a write the
/// server refused), then reads the whole answer.
async fn send_and_read(
    addr: std::net::SocketAddr,
    head: String,
    body_len: usize,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(head.as_bytes()).await?;
    let chunk = vec![b'p'; 16 * 1024];
    let mut sent = 0;
    while sent < body_len {
        let n = chunk.len().min(body_len - sent);
        if conn.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_uploads_are_answered_not_reset() {
    let a = api(false);
    let addr = serve_on_loopback(&a, Duration::from_secs(10)).await;
    let body_len = 190 * 1024;
    let head = format!(
        "POST /v1/artifacts?filename=a.pdf HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/pdf\r\n\
         Content-Length: {body_len}\r\n\r\n"
    );
    let clients = (0..60).map(|_| tokio::spawn(send_and_read(addr, head.clone(), body_len)));
    for (i, c) in futures::future::join_all(clients)
        .await
        .into_iter()
        .enumerate()
    {
        let answer = c
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e} instead of the answer"));
        assert!(answer.starts_with("HTTP/1.1 401"), "client {i}: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_headers_stall_is_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = api(false);
    let addr = serve_on_loopback(&a, Duration::from_millis(300)).await;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /v1/artifacts HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Closed by the server: the read ends (an answer to the timeout, if
    // any, then the end of the stream), well before this test's deadline.
    let read = tokio::time::timeout(server::LINGER * 4, conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open after {:?}", server::LINGER * 4);
    // An idle kept-alive connection is closed the same way.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let read = tokio::time::timeout(server::LINGER * 4, conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "an idle connection still open");
}

pub(crate) fn snapshot(id: ArtifactId, state: ArtifactState, updated_at: i64) -> StatusView {
    StatusView {
        artifact_id: id,
        generation: Generation::FIRST,
        state,
        current_stage: None,
        failed_stage: None,
        failure_reason: None,
        context: ArtifactContext::default(),
        page_count: None,
        word_count: None,
        summary: None,
        summary_method: None,
        timeline: Vec::new(),
        created_at: Some(1),
        updated_at,
        cancelled_at: None,
        next_retry_at: None,
        dead_letters: Vec::new(),
        history: Vec::new(),
    }
}

/// The `event:` names and parsed `data:` of a server-sent-events body read
/// to its end.
async fn sse_events(resp: Response) -> Vec<(String, serde_json::Value)> {
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_owned)
            };
            Some((
                field("event: ")?,
                serde_json::from_str(&field("data: ")?).ok()?,
            ))
        })
        .collect()
}

#[tokio::test]
async fn an_artifacts_event_stream_shows_each_change_and_ends_once_final() {
    let a = api(true);
    let id = ArtifactId::new_random();
    let other = ArtifactId::new_random();
    a.table
        .upsert(&[snapshot(id, ArtifactState::Pending, 1)])
        .unwrap();
    let req = HttpRequest::get(format!("/v1/artifacts/{id}/events"))
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = call(a.app.clone(), req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/event-stream");
    let table = a.table.clone();
    let writer = tokio::spawn(async move {
        // After the stream has subscribed (the response exists).
        table
            .upsert(&[snapshot(other, ArtifactState::Completed, 2)])
            .unwrap();
        table
            .upsert(&[snapshot(id, ArtifactState::InProgress, 3)])
            .unwrap();
        table
            .upsert(&[snapshot(id, ArtifactState::Completed, 4)])
            .unwrap();
        // Past the final state: not sent.
        table
            .upsert(&[snapshot(id, ArtifactState::Completed, 5)])
            .unwrap();
    });
    let events = tokio::time::timeout(Duration::from_secs(10), sse_events(resp))
        .await
        .expect("the stream ends once the artifact is final");
    writer.await.unwrap();
    let states: Vec<_> = events
        .iter()
        .map(|(name, v)| {
            assert_eq!(name, "status");
            assert_eq!(v["artifact_id"], id.to_string());
            v["state"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(states, ["PENDING", "IN_PROGRESS", "COMPLETED"]);
}

#[tokio::test]
async fn an_erased_artifacts_event_stream_ends_with_an_erased_event() {
    let a = api(true);
    let (id, other) = (ArtifactId::new_random(), ArtifactId::new_random());
    a.table
        .upsert(&[
            snapshot(id, ArtifactState::InProgress, 1),
            snapshot(other, ArtifactState::InProgress, 1),
        ])
        .unwrap();
    let req = HttpRequest::get(format!("/v1/artifacts/{id}/events"))
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = call(a.app.clone(), req).await;
    assert_eq!(resp.status(), 200);
    let table = a.table.clone();
    let eraser = tokio::spawn(async move {
        // Another artifact's erasure does not end the stream.
        assert!(table.remove(other));
        assert!(table.remove(id));
    });
    let events = tokio::time::timeout(Duration::from_secs(10), sse_events(resp))
        .await
        .expect("the stream ends once the artifact is erased");
    eraser.await.unwrap();
    let names: Vec<_> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["status", "erased"]);
    assert_eq!(events[1].1["artifact_id"], id.to_string());
}

#[tokio::test]
async fn event_streams_need_a_reader_and_are_bounded() {
    let a = api(true);
    let id = artifact(&a, None);
    let anonymous = HttpRequest::get("/v1/events").body(Body::empty()).unwrap();
    let (status, _) = problem(call(a.app.clone(), anonymous).await).await;
    assert_eq!(status, 401);
    let bad = HttpRequest::get("/v1/events?state=DONE")
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let (status, _) = problem(call(a.app.clone(), bad).await).await;
    assert_eq!(status, 400);
    // Limits::for_tests allows 8 at once: the open ones hold their slots.
    let open = |path: String| {
        HttpRequest::get(path)
            .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..8 {
        let resp = call(a.app.clone(), open("/v1/events?state=failed".into())).await;
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    let (status, p) =
        problem(call(a.app.clone(), open(format!("/v1/artifacts/{id}/events"))).await).await;
    assert_eq!(status, 503, "{p}");
    assert!(detail(&p).contains("API_MAX_EVENT_STREAMS"), "{p}");
    drop(held);
    let resp = call(a.app.clone(), open(format!("/v1/artifacts/{id}/events"))).await;
    assert_eq!(resp.status(), 200, "a slot is free again");
}

fn bulk_reprocess(body: serde_json::Value) -> Request {
    HttpRequest::post("/v1/reprocess")
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_bulk_reprocess_checks_its_selector_and_a_dry_run_only_counts() {
    use artifact_domain::{Outcome, Stage, StageRecord};
    let a = api(false);
    let record = |stage, outcome| StageRecord {
        stage,
        outcome,
        processed_at: 2,
        attempts: None,
        last_error: None,
        next_retry_at: None,
    };
    let mut at_summary = snapshot(ArtifactId::new_random(), ArtifactState::Failed, 2);
    at_summary.failed_stage = Some(Stage::Summarizer);
    at_summary.timeline = vec![
        record(Stage::MimeDetector, Outcome::Succeeded),
        record(Stage::LocationLogger, Outcome::Succeeded),
        record(Stage::PdfParser, Outcome::Succeeded),
        record(Stage::Summarizer, Outcome::permanent("no")),
    ];
    let mut at_parse = snapshot(ArtifactId::new_random(), ArtifactState::Failed, 2);
    at_parse.failed_stage = Some(Stage::PdfParser);
    at_parse.timeline = at_summary.timeline[..2].to_vec();
    at_parse
        .timeline
        .push(record(Stage::PdfParser, Outcome::permanent("corrupt")));
    let done = snapshot(ArtifactId::new_random(), ArtifactState::Completed, 2);
    a.table
        .upsert(&[at_summary.clone(), at_parse.clone(), done])
        .unwrap();

    let json = |resp: Response| async move {
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    };
    let dry = serde_json::json!({"state": "failed", "from": "summarizer", "dry_run": true});
    let (status, v) = json(call(a.app.clone(), bulk_reprocess(dry)).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["selected"].as_u64(), v["refused"].as_u64()),
        (Some(1), Some(1))
    );
    let why = v["refused_examples"][0].as_str().unwrap();
    assert!(why.starts_with(&at_parse.artifact_id.to_string()), "{why}");
    let dry = serde_json::json!({"failed_stage": "pdf-parser", "dry_run": true});
    let (_, v) = json(call(a.app.clone(), bulk_reprocess(dry)).await).await;
    assert_eq!(
        v["selected"], 1,
        "from the first stage needs nothing earlier"
    );

    for (body, status, says) in [
        (
            serde_json::json!({"from": "summarizer"}),
            400,
            "at least one of",
        ),
        (
            serde_json::json!({"state": "FAILED", "from": "ocr"}),
            400,
            "unknown stage",
        ),
        (serde_json::json!({"state": "DONE"}), 400, "is not one of"),
        (
            serde_json::json!({"state": "FAILED", "colour": "red"}),
            400,
            "colour",
        ),
        (
            serde_json::json!({"state": "FAILED", "from": "summarizer"}),
            422,
            "pdf-parser did not succeed",
        ),
        (
            serde_json::json!({"ids": [ArtifactId::new_random().to_string()]}),
            422,
            "not artifacts the read model holds",
        ),
    ] {
        let (got, p) = problem(call(a.app.clone(), bulk_reprocess(body.clone())).await).await;
        assert_eq!(got, status, "{body}: {p}");
        assert!(detail(&p).contains(says), "{body}: {p}");
    }
    // Kafka unreachable: nothing recorded, and the answer says so.
    let body =
        serde_json::json!({"state": "FAILED", "failed_stage": "summarizer", "from": "summarizer"});
    let (got, p) = problem(call(a.app.clone(), bulk_reprocess(body)).await).await;
    assert_eq!(got, 503, "{p}");
    assert!(detail(&p).contains("nothing was started"), "{p}");
    let get = HttpRequest::get("/v1/reprocess/no-such-op")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(a.app.clone(), get).await.status(), 404);
}
