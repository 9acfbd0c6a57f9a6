//! An OpenAI-compatible chat-completions server in the test process, on
//! 127.0.0.1. It stands in for the external API: it records every request
//! (headers, JSON body, arrival time) and answers what each test tells it
//! to, so the tests check what really goes over the wire and how each kind
//! of answer is handled.
#![allow(dead_code)] // each test binary uses part of it

use artifact_domain::{
    ArtifactContext, ArtifactId, Generation, Outcome, ParseResult, Parsed, StageEvent,
};
use artifact_runtime::stage::RecordContext;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What the server answers to one request.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    /// A chat completion whose first choice says `content`.
    pub fn completion(content: &str) -> Reply {
        Reply::json(
            200,
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "served-model",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
            }),
        )
    }

    /// An OpenAI-style error body with `status`.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"error": {"message": message, "type": "test_error", "code": null}}),
        )
    }

    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// This reply with a `Retry-After` header of `value`.
    pub fn retry_after(mut self, value: impl Into<String>) -> Reply {
        self.headers.push(("retry-after", value.into()));
        self
    }
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Call {
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
    /// When it arrived, on the monotonic and on the wall clock.
    pub received: Instant,
    pub received_at: SystemTime,
}

impl Call {
    pub fn user_prompt(&self) -> &str {
        self.body["messages"][1]["content"].as_str().unwrap_or("")
    }
}

type Responder = dyn Fn(usize, &Call) -> Reply + Send + Sync;

struct ServerState {
    calls: Mutex<Vec<Call>>,
    respond: Box<Responder>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// An OpenAI-compatible chat-completions server on 127.0.0.1.
pub struct ChatServer {
    /// The base URL, `http://127.0.0.1:<port>/v1`.
    pub base_url: String,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl ChatServer {
    /// Starts a server that answers request number `n` (from 0) with
    /// `respond(n, call)`.
    pub async fn start(respond: impl Fn(usize, &Call) -> Reply + Send + Sync + 'static) -> Self {
        let state = Arc::new(ServerState {
            calls: Mutex::new(vec![]),
            respond: Box::new(respond),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ChatServer {
            base_url: format!("http://{addr}/v1"),
            state,
            task,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the request body is not JSON").into_response();
    };
    let call = Call {
        authorization: header("authorization"),
        content_type: header("content-type"),
        body,
        received: Instant::now(),
        received_at: SystemTime::now(),
    };
    let reply = {
        let mut calls = state.calls.lock().unwrap();
        let n = calls.len();
        calls.push(call.clone());
        (state.respond)(n, &call)
    };
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(reply.delay).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (k, v) in reply.headers {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

/// pdf-parser's outcome for a text at `text_location` (none: no text).
pub fn parsed(text_location: Option<String>) -> Parsed {
    StageEvent {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        context: ArtifactContext {
            storage_location: "file:///nowhere".into(),
            text_location: text_location.clone(),
            ..ArtifactContext::default()
        },
        outcome: Outcome::Succeeded,
        result: text_location.map(|text_location| ParseResult::text_only(text_location, 1, 1)),
        processed_at: 0,
    }
}

/// The record a test processes.
pub fn record() -> RecordContext {
    RecordContext {
        topic: "parsed".into(),
        partition: 0,
        offset: 0,
        attempt: 1,
        traceparent: String::new(),
    }
}
