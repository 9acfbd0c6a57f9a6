//! The optional LLM backend: summaries written by an OpenAI-compatible
//! `POST <base URL>/chat/completions` endpoint.
//!
//! A text that fits in one chunk ([`LlmConfig::chunk_chars`]) is summarized
//! in one request. A longer one is summarized map-reduce style: each chunk
//! separately (at most [`LlmConfig::concurrency`] requests at once), then the
//! partial summaries together; when the partial summaries are themselves
//! longer than a chunk, they are grouped into chunks and combined again,
//! round after round, until they fit in one request. Every answer is bounded
//! to [`LlmConfig::max_summary_chars`] like an extractive summary.
//!
//! Spend is bounded: one processing attempt (one call of
//! [`LlmSummarizer::summarize`]) has a budget of time and requests
//! ([`crate::budget`]), and every request of the process passes one
//! [`crate::gate`]: a rate limit shared by the records processed at once,
//! and the pause an endpoint asks for with `Retry-After`.
//!
//! Errors: a connection failure, a timeout, 408, 429 and 5xx are retriable.
//! With a `Retry-After` the request is sent again after the wait when the
//! wait ends within the attempt's budget; otherwise the runner retries with
//! backoff. Any other non-success status is permanent, with the server's
//! error message.

use crate::budget::{AttemptBudget, BudgetLimits};
use crate::gate::{RequestGate, retry_after};
use crate::{bound_summary, chunk, llm_metrics};
use artifact_runtime::otel;
use artifact_runtime::stage::StageError;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

/// Largest response body read; more is a misbehaving server (a summary is
/// bounded by `max_tokens`).
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Longest server error message quoted in a failure reason.
const MAX_ERROR_CHARS: usize = 500;

/// The instructions sent as the system message of every request.
const SYSTEM_PROMPT: &str = "You write summaries of documents. Reply with the summary only: \
    plain prose in one paragraph, in the language of the text, without a title, list, \
    preamble or comment.";

/// Settings of the LLM backend, validated (see `crate::config`).
#[derive(Clone)]
pub struct LlmConfig {
    /// The API's base URL including its version path, without a trailing
    /// slash (`https://api.openai.com/v1`); requests go to
    /// `<base>/chat/completions`.
    pub base_url: Url,
    /// The model name sent with every request; the method is `llm:<model>`.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>` when present.
    pub api_key: Option<String>,
    /// Time limit of one request, from sending to the last byte of the answer.
    pub timeout: Duration,
    /// Largest chunk of text sent in one request, in characters.
    pub chunk_chars: usize,
    /// Most chunks a text may have; a longer text is a permanent failure.
    pub max_chunks: usize,
    /// Requests of one artifact under way at once.
    pub concurrency: usize,
    /// `max_tokens` of every request; `None` omits it.
    pub max_tokens: Option<u32>,
    /// `temperature` of every request; `None` omits it.
    pub temperature: Option<f32>,
    /// Longest summary (and partial summary), in characters.
    pub max_summary_chars: usize,
    /// The budget of one processing attempt.
    pub attempt: BudgetLimits,
    /// Requests per second of the whole process, shared by its records.
    pub rate_per_second: f64,
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("chunk_chars", &self.chunk_chars)
            .field("max_chunks", &self.max_chunks)
            .field("concurrency", &self.concurrency)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("max_summary_chars", &self.max_summary_chars)
            .field("attempt", &self.attempt)
            .field("rate_per_second", &self.rate_per_second)
            .finish()
    }
}

/// The request body of `POST /chat/completions`.
#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Debug, Serialize)]
struct ChatMessage {
    role: &'static str,
    content: String,
}

/// The parts of a chat completion this backend reads.
#[derive(Debug, Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    /// Some proxies answer 200 with an error object.
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ResponseMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

/// What one request asks for.
#[derive(Debug, Clone, Copy)]
enum Prompt<'a> {
    /// A text that fits in one request.
    Whole(&'a str),
    /// Map: one chunk of a longer text.
    Part {
        index: usize,
        of: usize,
        text: &'a str,
    },
    /// An intermediate reduce round: a group of partial summaries.
    CombineGroup {
        index: usize,
        of: usize,
        text: &'a str,
    },
    /// The final reduce: all partial summaries.
    Combine(&'a str),
}

impl Prompt<'_> {
    fn user_message(&self, max_chars: usize) -> String {
        match self {
            Prompt::Whole(text) => {
                format!("Summarize the following text in at most {max_chars} characters.\n\n{text}")
            }
            Prompt::Part { index, of, text } => format!(
                "The following is part {index} of {of} of a longer text. Summarize this part \
                 in at most {max_chars} characters.\n\n{text}"
            ),
            Prompt::CombineGroup { index, of, text } => format!(
                "The following are summaries of consecutive parts of a longer text, in order \
                 (group {index} of {of}). Combine them into one summary in at most {max_chars} \
                 characters.\n\n{text}"
            ),
            Prompt::Combine(text) => format!(
                "The following are summaries of consecutive parts of one text, in order. \
                 Combine them into one summary of the whole text in at most {max_chars} \
                 characters.\n\n{text}"
            ),
        }
    }
}

/// A client of one OpenAI-compatible endpoint and model. Clones share one
/// [`RequestGate`]: create one per process and clone it.
#[derive(Debug, Clone)]
pub struct LlmSummarizer {
    client: reqwest::Client,
    endpoint: Url,
    cfg: LlmConfig,
    gate: Arc<RequestGate>,
}

/// How one sent request ended.
enum Sent {
    /// An answer, or a failure not worth sending again in this attempt.
    Done(Result<String, StageError>),
    /// A retriable status with a `Retry-After` of `wait`.
    RetryAfter { wait: Duration, error: String },
}

impl LlmSummarizer {
    /// A summarizer with these settings; fails if the HTTP client cannot be
    /// built (TLS initialisation) or the rate is not usable.
    pub fn new(cfg: LlmConfig) -> Result<Self, String> {
        let endpoint = endpoint(&cfg.base_url)?;
        let gate = Arc::new(RequestGate::new(cfg.rate_per_second)?);
        let client = reqwest::Client::builder()
            .user_agent(concat!(
                "artifact-pipeline-summarizer/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))?;
        Ok(LlmSummarizer {
            client,
            endpoint,
            cfg,
            gate,
        })
    }

    /// The `method` recorded in outcomes: `llm:<model>`.
    pub fn method(&self) -> String {
        format!("llm:{}", self.cfg.model)
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Summarizes `text`, or `None` when it has no letters or digits; one
    /// processing attempt, with a budget of its own.
    pub async fn summarize(&self, text: &str) -> Result<Option<String>, StageError> {
        if !text.chars().any(char::is_alphanumeric) {
            return Ok(None);
        }
        let budget = AttemptBudget::start(self.cfg.attempt);
        let size = self.cfg.chunk_chars;
        let Ok(chunks) = chunk::chunks_at_most(text, size, self.cfg.max_chunks) else {
            return Err(StageError::Permanent(format!(
                "the text is too long for the LLM backend: more than LLM_MAX_CHUNKS={} chunks \
                 of at most {size} characters (LLM_CHUNK_CHARS)",
                self.cfg.max_chunks
            )));
        };
        if let [only] = chunks.as_slice() {
            return self.complete(Prompt::Whole(only), &budget).await.map(Some);
        }
        let of = chunks.len();
        tracing::debug!(chunks = of, "summarizing in parts");
        let mut partials = self
            .complete_all(
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, text)| Prompt::Part {
                        index: i + 1,
                        of,
                        text,
                    })
                    .collect(),
                &budget,
            )
            .await?;
        loop {
            let joined = partials.join("\n\n");
            if joined.chars().count() <= size {
                return self
                    .complete(Prompt::Combine(&joined), &budget)
                    .await
                    .map(Some);
            }
            // Each partial summary is at most `max_summary_chars` and one
            // paragraph, and a chunk holds at least two of them (validated:
            // chunk_chars >= 2 * max_summary_chars + 2): every group but the
            // last has two or more, so each round has fewer and this ends.
            let groups = chunk::chunks(&joined, size);
            let of = groups.len();
            tracing::debug!(
                partials = partials.len(),
                groups = of,
                "combining in groups"
            );
            let prompts = groups
                .iter()
                .enumerate()
                .map(|(i, text)| Prompt::CombineGroup {
                    index: i + 1,
                    of,
                    text,
                })
                .collect();
            partials = self.complete_all(prompts, &budget).await?;
        }
    }

    /// Runs `prompts` with at most `concurrency` requests at once; answers
    /// in the prompts' order. The first error cancels the rest.
    async fn complete_all(
        &self,
        prompts: Vec<Prompt<'_>>,
        budget: &AttemptBudget,
    ) -> Result<Vec<String>, StageError> {
        let mut out = Vec::with_capacity(prompts.len());
        let mut waiting = prompts.into_iter();
        let mut running = FuturesOrdered::new();
        loop {
            while running.len() < self.cfg.concurrency.max(1) {
                match waiting.next() {
                    Some(prompt) => running.push_back(self.complete(prompt, budget)),
                    None => break,
                }
            }
            match running.next().await {
                Some(answer) => out.push(answer?),
                None => return Ok(out),
            }
        }
    }

    fn request(&self, prompt: Prompt<'_>) -> ChatRequest<'_> {
        ChatRequest {
            model: &self.cfg.model,
            messages: vec![
                ChatMessage {
                    role: "system",
                    content: SYSTEM_PROMPT.to_owned(),
                },
                ChatMessage {
                    role: "user",
                    content: prompt.user_message(self.cfg.max_summary_chars),
                },
            ],
            temperature: self.cfg.temperature,
            max_tokens: self.cfg.max_tokens,
        }
    }

    /// One prompt: the bounded summary it is answered with, or why not.
    /// Sent again after a `Retry-After` wait that ends within the budget.
    async fn complete(
        &self,
        prompt: Prompt<'_>,
        budget: &AttemptBudget,
    ) -> Result<String, StageError> {
        let request = self.request(prompt);
        let mut last: Option<String> = None;
        loop {
            budget.take_request(last.as_deref())?;
            self.gate.admit(budget).await?;
            match self.send(&request, budget).await {
                Sent::Done(result) => return result,
                Sent::RetryAfter { wait, error } => {
                    let until = self.gate.pause(wait);
                    if until > budget.deadline() {
                        return Err(budget.out_of_time(&format!(
                            "ends before the wait the LLM endpoint asked for: {error}"
                        )));
                    }
                    last = Some(error);
                }
            }
        }
    }

    /// Sends `request` once, within the request's and the attempt's time.
    async fn send(&self, request: &ChatRequest<'_>, budget: &AttemptBudget) -> Sent {
        let left = budget.left();
        let by_budget = left < self.cfg.timeout;
        let mut req = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.cfg.timeout.min(left))
            .json(request);
        if let Some(key) = &self.cfg.api_key {
            req = req.bearer_auth(key);
        }
        // The request joins the record's trace when traces are exported.
        let (span, trace) = otel::client("POST", self.endpoint.as_str());
        for (name, value) in trace {
            req = req.header(name, value);
        }
        let started = Instant::now();
        let exchanged = self.exchange(req).instrument(span.clone()).await;
        if let Ok((status, ..)) = &exchanged {
            span.record("http.response.status_code", status.as_u16());
        }
        let (result, sent) = match exchanged {
            Ok((status, retry_after, body, whole)) => {
                self.answered(status, retry_after.as_deref(), &body, whole)
            }
            Err(e) if e.is_timeout() && by_budget => (
                "timeout",
                Sent::Done(Err(budget.out_of_time(&format!(
                    "ran out during a request to {}",
                    self.endpoint
                )))),
            ),
            Err(e) => (
                if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                },
                Sent::Done(Err(self.transport_error(&e))),
            ),
        };
        llm_metrics::request(result, started.elapsed());
        sent
    }

    /// The status, `Retry-After` value, body (at most
    /// [`MAX_RESPONSE_BYTES`]) and whether the body was whole.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>, bool), reqwest::Error> {
        let mut response = req.send().await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (body, whole) = read_limited(&mut response, MAX_RESPONSE_BYTES).await?;
        Ok((status, retry_after, body, whole))
    }

    /// What an answer means, and its result label.
    fn answered(
        &self,
        status: StatusCode,
        retry_after_value: Option<&str>,
        body: &[u8],
        whole: bool,
    ) -> (&'static str, Sent) {
        if !status.is_success() {
            let error = classify_status(status, retry_after_value, body);
            let result = match status.as_u16() {
                429 => "rate_limited",
                408 | 500..=599 => "server_error",
                _ => "refused",
            };
            let wait = retry_after_value.and_then(|v| retry_after(v, SystemTime::now()));
            return match (error, wait) {
                (StageError::Retriable(error), Some(wait)) => {
                    (result, Sent::RetryAfter { wait, error })
                }
                (error, _) => (result, Sent::Done(Err(error))),
            };
        }
        if !whole {
            return (
                "bad_answer",
                Sent::Done(Err(StageError::Retriable(format!(
                    "the LLM endpoint answered with more than {MAX_RESPONSE_BYTES} bytes"
                )))),
            );
        }
        let summary = parse_completion(body).and_then(|content| {
            bound_summary(&content, self.cfg.max_summary_chars).ok_or_else(|| {
                StageError::Retriable("the LLM endpoint answered an empty summary".into())
            })
        });
        let result = if summary.is_ok() { "ok" } else { "bad_answer" };
        (result, Sent::Done(summary))
    }

    fn transport_error(&self, e: &reqwest::Error) -> StageError {
        let chain = error_chain(e);
        if e.is_builder() {
            StageError::Permanent(format!("cannot build the LLM request: {chain}"))
        } else if e.is_timeout() {
            StageError::Retriable(format!(
                "the LLM endpoint {} did not answer within {} ms (LLM_TIMEOUT_MS)",
                self.endpoint,
                self.cfg.timeout.as_millis()
            ))
        } else if e.is_connect() {
            StageError::Retriable(format!("cannot connect to the LLM endpoint: {chain}"))
        } else {
            StageError::Retriable(format!("the LLM request failed: {chain}"))
        }
    }
}

/// `<base>/chat/completions`, whether or not the base ends with a slash.
/// The endpoint is logged and named in failure reasons (which outcomes and
/// the read model show), so a base with credentials in it (user
/// information, or a query string, where keys are often passed) is refused:
/// the key belongs in `LLM_API_KEY`.
fn endpoint(base: &Url) -> Result<Url, String> {
    if !base.username().is_empty() || base.password().is_some() || base.query().is_some() {
        return Err(format!(
            "LLM_BASE_URL must not carry user information or a query string (it is logged and shown in failures): give {}://{}{} and put the key in LLM_API_KEY",
            base.scheme(),
            base.host_str().unwrap_or_default(),
            base.path()
        ));
    }
    let base = base.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/chat/completions"))
        .map_err(|e| format!("LLM_BASE_URL={base} gives no valid endpoint URL: {e}"))
}

/// Reads at most `limit` bytes of the body; `false` when there was more.
async fn read_limited(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// The failure for a non-success status: 408, 429 and 5xx are retriable
/// (the server is overloaded, limits the rate, or failed); any other status
/// is permanent (the request itself is refused: bad key, unknown model,
/// context too long), with the server's error message and the
/// `Retry-After` value when there is one.
fn classify_status(status: StatusCode, retry_after: Option<&str>, body: &[u8]) -> StageError {
    let mut reason = format!("the LLM endpoint answered {status}");
    if let Some(after) = retry_after {
        reason.push_str(&format!(" (Retry-After: {})", after.trim()));
    }
    let message = server_message(body);
    if !message.is_empty() {
        reason.push_str(": ");
        reason.push_str(&message);
    }
    match status.as_u16() {
        408 | 429 | 500..=599 => StageError::Retriable(reason),
        401 | 403 => StageError::Permanent(format!("{reason} (check LLM_API_KEY)")),
        404 => StageError::Permanent(format!("{reason} (check LLM_BASE_URL and LLM_MODEL)")),
        _ => StageError::Permanent(reason),
    }
}

/// The server's error message: `error.message` of an OpenAI error body, a
/// few other common shapes, or the body as text; one line, bounded.
fn server_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            [
                v.pointer("/error/message"),
                v.get("error"),
                v.get("message"),
                v.get("detail"),
            ]
            .into_iter()
            .flatten()
            .find_map(|m| m.as_str().map(str::to_owned))
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX_ERROR_CHARS {
        flat
    } else {
        let mut cut: String = flat.chars().take(MAX_ERROR_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// The text of `choices[0].message.content` of a 200 answer.
///
/// A 200 that carries no usable text is retriable: the endpoint accepted the
/// request, so the fault is on its side (a proxy's error page, a cut body, a
/// backend that returned no choice), and the runner's delivery limit still
/// ends in `failed(permanent)` if it persists. Except where the same request
/// would get the same answer again: a refusal, a content filter, or a token
/// limit reached before any text (which needs a configuration change).
fn parse_completion(body: &[u8]) -> Result<String, StageError> {
    let response: ChatResponse = serde_json::from_slice(body).map_err(|e| {
        StageError::Retriable(format!(
            "the LLM endpoint answered 200 with a body that is not a chat completion: {e}"
        ))
    })?;
    let Some(choice) = response.choices.into_iter().next() else {
        let detail = match &response.error {
            Some(_) => format!(": {}", server_message(body)),
            None => String::new(),
        };
        return Err(StageError::Retriable(format!(
            "the LLM endpoint answered 200 without choices{detail}"
        )));
    };
    let message = choice.message.unwrap_or_default();
    if let Some(refusal) = message.refusal.filter(|r| !r.trim().is_empty()) {
        return Err(StageError::Permanent(format!(
            "the model refused to summarize the text: {}",
            server_message(refusal.as_bytes())
        )));
    }
    let content = message.content.unwrap_or_default();
    if !content.trim().is_empty() {
        return Ok(content);
    }
    Err(match choice.finish_reason.as_deref() {
        Some("length") => StageError::Permanent(
            "the model reached its token limit before writing any text: raise LLM_MAX_TOKENS, \
             or set it to 0 to send no limit"
                .into(),
        ),
        Some("content_filter") => {
            StageError::Permanent("the endpoint's content filter withheld the summary".into())
        }
        other => StageError::Retriable(format!(
            "the LLM endpoint answered 200 with an empty message (finish_reason: {})",
            other.unwrap_or("none")
        )),
    })
}

/// An error and its sources, one after the other, without repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> LlmConfig {
        LlmConfig {
            base_url: Url::parse("http://127.0.0.1:1/v1/").unwrap(),
            model: "test-model".into(),
            api_key: Some("secret-key".into()),
            timeout: Duration::from_secs(5),
            chunk_chars: 1000,
            max_chunks: 10,
            concurrency: 2,
            max_tokens: Some(256),
            temperature: Some(0.0),
            max_summary_chars: 300,
            attempt: BudgetLimits {
                time: Duration::from_secs(5),
                requests: 20,
            },
            rate_per_second: 10.0,
        }
    }

    fn reason(e: &StageError) -> &str {
        match e {
            StageError::Retriable(r) | StageError::Permanent(r) => r,
        }
    }

    #[test]
    fn endpoint_appends_chat_completions_with_or_without_slash() {
        for base in [
            "http://h:8000/v1",
            "http://h:8000/v1/",
            "http://h:8000/v1//",
        ] {
            let url = endpoint(&Url::parse(base).unwrap()).unwrap();
            assert_eq!(url.as_str(), "http://h:8000/v1/chat/completions");
        }
        let url = endpoint(&Url::parse("https://api.example.com").unwrap()).unwrap();
        assert_eq!(url.as_str(), "https://api.example.com/chat/completions");
    }

    #[test]
    fn a_base_with_credentials_in_it_is_refused_without_repeating_them() {
        for base in [
            "https://user:s3cret@api.example.com/v1",
            "https://api.example.com/v1?key=s3cret",
        ] {
            let err = endpoint(&Url::parse(base).unwrap()).unwrap_err();
            assert!(err.contains("LLM_API_KEY"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("https://api.example.com/v1"), "{err}");
        }
    }

    #[test]
    fn request_json_shape() {
        let s = LlmSummarizer::new(config()).unwrap();
        let body = serde_json::to_value(s.request(Prompt::Whole("The text."))).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "test-model",
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content":
                        "Summarize the following text in at most 300 characters.\n\nThe text."},
                ],
                "temperature": 0.0,
                "max_tokens": 256,
            })
        );
        assert_eq!(s.method(), "llm:test-model");
    }

    #[test]
    fn request_omits_unset_temperature_and_max_tokens() {
        let s = LlmSummarizer::new(LlmConfig {
            max_tokens: None,
            temperature: None,
            ..config()
        })
        .unwrap();
        let body = serde_json::to_value(s.request(Prompt::Combine("a\n\nb"))).unwrap();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["messages", "model"]);
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.starts_with("The following are summaries"), "{user}");
        assert!(user.ends_with("\n\na\n\nb"), "{user}");
    }

    #[test]
    fn debug_hides_the_api_key() {
        let text = format!("{:?}", LlmSummarizer::new(config()).unwrap());
        assert!(!text.contains("secret-key"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn status_classification() {
        let body = br#"{"error":{"message":"Rate limit reached","type":"rate_limit_error"}}"#;
        for code in [408, 429, 500, 502, 503, 504, 599] {
            let e = classify_status(StatusCode::from_u16(code).unwrap(), None, body);
            assert!(matches!(e, StageError::Retriable(_)), "{code}: {e:?}");
            assert!(reason(&e).contains(&code.to_string()), "{e:?}");
            assert!(reason(&e).ends_with("Rate limit reached"), "{e:?}");
        }
        for code in [300, 400, 401, 403, 404, 409, 413, 422] {
            let e = classify_status(StatusCode::from_u16(code).unwrap(), None, body);
            assert!(matches!(e, StageError::Permanent(_)), "{code}: {e:?}");
        }
        let e = classify_status(StatusCode::UNAUTHORIZED, None, b"");
        assert_eq!(
            reason(&e),
            "the LLM endpoint answered 401 Unauthorized (check LLM_API_KEY)"
        );
    }

    #[test]
    fn retry_after_is_quoted() {
        let e = classify_status(StatusCode::TOO_MANY_REQUESTS, Some(" 7 "), b"slow down");
        assert_eq!(
            e,
            StageError::Retriable(
                "the LLM endpoint answered 429 Too Many Requests (Retry-After: 7): slow down"
                    .into()
            )
        );
    }

    #[test]
    fn server_messages_in_common_shapes() {
        let cases: [(&[u8], &str); 6] = [
            (
                br#"{"error":{"message":"bad model","code":null}}"#,
                "bad model",
            ),
            (br#"{"error":"plain error"}"#, "plain error"),
            (br#"{"message":"top-level"}"#, "top-level"),
            (br#"{"detail":"fastapi style"}"#, "fastapi style"),
            (
                b"<html>\n  Bad   gateway\n</html>",
                "<html> Bad gateway </html>",
            ),
            (br#"{"other":1}"#, r#"{"other":1}"#),
        ];
        for (body, want) in cases {
            assert_eq!(server_message(body), want);
        }
        let long = "x".repeat(2000);
        assert_eq!(
            server_message(long.as_bytes()).chars().count(),
            MAX_ERROR_CHARS
        );
    }

    #[test]
    fn completion_content_is_read() {
        let body = json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "The summary."}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        });
        assert_eq!(
            parse_completion(body.to_string().as_bytes()).unwrap(),
            "The summary."
        );
    }

    #[test]
    fn unusable_200_answers() {
        let retriable = [
            "not json".to_owned(),
            json!({"choices": []}).to_string(),
            json!({"error": {"message": "upstream down"}}).to_string(),
            json!({"choices": [{"message": {"content": null}, "finish_reason": "stop"}]})
                .to_string(),
            json!({"choices": [{"message": {"content": "  "}}]}).to_string(),
        ];
        for body in retriable {
            let e = parse_completion(body.as_bytes()).unwrap_err();
            assert!(matches!(e, StageError::Retriable(_)), "{body}: {e:?}");
        }
        let e = parse_completion(
            json!({"error": {"message": "upstream down"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert!(reason(&e).ends_with("upstream down"), "{e:?}");

        let permanent = [
            json!({"choices": [{"message": {"content": ""}, "finish_reason": "length"}]}),
            json!({"choices": [{"message": {"content": null}, "finish_reason": "content_filter"}]}),
            json!({"choices": [{"message": {"content": null, "refusal": "I can't."}}]}),
        ];
        for body in permanent {
            let e = parse_completion(body.to_string().as_bytes()).unwrap_err();
            assert!(matches!(e, StageError::Permanent(_)), "{body}: {e:?}");
        }
    }
}
