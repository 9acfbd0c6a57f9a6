//! The API's routes, called in process (no port bound) on a file blob store,
//! with Kafka and the registry unreachable: every publish fails at once with
//! 503, which is what the upload tests below want.

use super::*;
use artifact_domain::ArtifactContext;
use artifact_kafka::config::ConnectionConfig;
use axum::body::{Body, Bytes};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Request as HttpRequest};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const TOKEN: &str = "unit-token";
/// Over the file store's 1 MiB buffer, so large uploads reach the disk.
const LIMIT: u64 = 3 << 19;

struct Api {
    app: Router,
    blobs: PathBuf,
    table: Arc<StatusTable>,
    store: BlobStore,
}

fn api(protect_reads: bool) -> Api {
    let a = loading_api(protect_reads);
    a.table.mark_restored();
    a
}

/// An API whose read model has not caught up with the status topic yet.
fn loading_api(protect_reads: bool) -> Api {
    let blobs = std::env::temp_dir().join(format!("api-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&blobs).unwrap();
    let store = BlobStore::from_url(&format!("file://{}", blobs.display())).unwrap();
    let table = Arc::new(StatusTable::create(&std::env::temp_dir()).unwrap());
    let state = AppState {
        names: TopicNames::from_config(&ConnectionConfig::local("unit")),
        codec: Arc::new(AvroCodec::new("http://127.0.0.1:1").unwrap()),
        producer: rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .unwrap(),
        blobs: store.clone(),
        table: table.clone(),
        tokens: Tokens::parse(TOKEN),
        protect_reads,
        max_upload_bytes: LIMIT,
        completions: Completions::default(),
    };
    Api {
        app: router(state),
        blobs,
        table,
        store,
    }
}

/// Calls a service once (axum's `ServiceExt` extends tower's `Service`,
/// whose `call` is reachable through the bound).
async fn call<S>(mut svc: S, req: Request) -> Response
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
