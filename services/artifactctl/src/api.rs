//! Talking to artifact-api: uploads, status, and waiting with a progress
//! display.

use anyhow::Context;
use artifact_domain::StatusView;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long an upload may go without sending a byte or getting its answer.
pub const STALLED: Duration = Duration::from_secs(120);

/// Bytes read from a file at a time when uploading it.
const CHUNK: usize = 256 << 10;

/// An API endpoint and its token.
pub struct Api {
    /// Base URL, e.g. http://127.0.0.1:8080.
    pub url: String,
    /// Bearer token, if any.
    pub token: Option<String>,
    http: reqwest::Client,
    /// Without a total timeout, which would cut off large uploads.
    upload_http: reqwest::Client,
}

/// What an upload answered.
#[derive(Debug, serde::Deserialize)]
pub struct Accepted {
    /// The artifact.
    pub artifact_id: String,
    /// Its generation.
    pub generation: u32,
}

fn guess_type(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "pdf" => Some("application/pdf"),
        "txt" => Some("text/plain"),
        "md" => Some("text/markdown"),
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "json" => Some("application/json"),
        _ => None,
    }
}

impl Api {
    /// A client.
    pub fn new(url: &str, token: Option<String>) -> Self {
        Api {
            url: url.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .expect("HTTP client builds"),
            upload_http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client builds"),
        }
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `rb` with the bearer token, if any.
    pub fn authorized(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        self.auth(rb)
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Uploads a file as a raw body streamed from disk (with its
    /// Content-Length), the declared type from `content_type` or the
    /// extension; `progress` counts the bytes as they go out. No total timeout:
    /// an upload fails when no byte went out and no answer came for
    /// [`STALLED`].
    pub async fn upload(
        &self,
        path: &Path,
        content_type: Option<&str>,
        idempotency_key: Option<&str>,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<Accepted> {
        use futures::TryStreamExt;
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let meta = file
            .metadata()
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(meta.is_file(), "{} is not a file", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("upload");
        progress.set_length(meta.len());
        let counter = progress.clone();
        let chunks = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map_ok(move |c| {
            counter.inc(c.len() as u64);
            http_body::Frame::data(c)
        });
        let body = reqwest::Body::wrap(http_body_util::StreamBody::new(chunks));
        let mut rb = self
            .upload_http
            .post(format!(
                "{}/v1/artifacts?filename={}",
                self.url,
                percent_encode(name)
            ))
            .header("content-length", meta.len())
            .body(body);
        if let Some(t) = content_type.or_else(|| guess_type(path)) {
            rb = rb.header("content-type", t);
        }
        if let Some(k) = idempotency_key {
            rb = rb.header("idempotency-key", k);
        }
        let send = self.auth(rb).send();
        tokio::pin!(send);
        let mut seen = (progress.position(), Instant::now());
        let resp = loop {
            tokio::select! {
                r = &mut send => break r.with_context(|| format!("artifact-api at {} did not answer", self.url))?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let now = progress.position();
                    if now != seen.0 {
                        seen = (now, Instant::now());
                    } else if seen.1.elapsed() > STALLED {
                        return Err(crate::exit::Failure::Unavailable(format!(
                            "upload of {}: artifact-api at {} took no byte and gave no answer for {STALLED:?}",
                            path.display(), self.url
                        )).into());
                    }
                }
            }
        };
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(crate::exit::http(
                &format!("upload of {} refused", path.display()),
                status,
                &body,
            ));
        }
        serde_json::from_str(&body)
            .with_context(|| format!("upload of {}: not the API's answer: {body}", path.display()))
    }

    /// Sends an authorized request and reads its JSON answer (an empty body
    /// reads as null); an answer other than 2xx is an error with the exit
    /// code its status calls for, `what` saying what was refused.
    pub async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let resp = self
            .auth(rb)
            .send()
            .await
            .with_context(|| format!("artifact-api at {} did not answer", self.url))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(crate::exit::http(what, status, &body));
        }
        Ok(serde_json::from_str(if body.is_empty() {
            "null"
        } else {
            &body
        })?)
    }

    /// An artifact's status, `None` while the API does not know it yet.
    pub async fn status(&self, id: &str) -> anyhow::Result<Option<StatusView>> {
        let resp = self
            .auth(self.http.get(format!("{}/v1/artifacts/{id}", self.url)))
            .send()
            .await
            .with_context(|| format!("artifact-api at {} did not answer", self.url))?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.json().await?)),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => Err(crate::exit::http(
                &format!("status of {id}"),
                s,
                &resp.text().await.unwrap_or_default(),
            )),
        }
    }

    /// Waits until every artifact reached a final state of at least its
    /// generation, printing a line whenever one moves on. It follows the
    /// API's event stream and looks each artifact up at the start, when the
    /// stream fell behind, and every few seconds; without a stream (an API
    /// that has none) it looks them up four times a second. Lines go to
    /// stderr if `to_stderr` (stdout is for a JSON document).
    pub async fn wait(
        &self,
        ids: &[(String, u32, String)],
        timeout: Duration,
        to_stderr: bool,
    ) -> anyhow::Result<Waited> {
        let deadline = Instant::now() + timeout;
        let mut w = Waiting::new(ids, to_stderr);
        // Subscribed before the first look, so no change falls in between.
        let mut events = self.events().await.ok();
        let mut look = true;
        loop {
            if look {
                for id in w.pending() {
                    if let Some(v) = self.status(&id).await? {
                        w.saw(v);
                    }
                }
                look = false;
            }
            let timed_out = Instant::now() > deadline;
            if w.pending().is_empty() || timed_out {
                return Ok(Waited {
                    done: w.done,
                    latest: w.latest,
                    timed_out,
                });
            }
            let Some(stream) = events.as_mut() else {
                tokio::time::sleep(Duration::from_millis(250)).await;
                look = true;
                continue;
            };
            let until = deadline.min(Instant::now() + Duration::from_secs(5));
            match tokio::time::timeout_at(until.into(), stream.next()).await {
                Ok(Ok(Some((event, data)))) if event == "status" => {
                    if let Ok(v) = serde_json::from_str::<StatusView>(&data) {
                        w.saw(v);
                    }
                }
                Ok(Ok(Some(_))) | Err(_) => look = true,
                Ok(Ok(None) | Err(_)) => {
                    events = None;
                    look = true;
                }
            }
        }
    }

    /// The API's stream of every change (`/v1/events`).
    async fn events(&self) -> anyhow::Result<EventStream> {
        let resp = self
            .auth(self.http.get(format!("{}/v1/events", self.url)))
            .send()
            .await?
            .error_for_status()?;
        Ok(EventStream {
            resp,
            buf: Vec::new(),
        })
    }
}

/// What a wait saw.
pub struct Waited {
    /// The final snapshots, in the order they were reached.
    pub done: Vec<StatusView>,
    /// The latest snapshot of each artifact, by id.
    pub latest: BTreeMap<String, StatusView>,
    /// Whether the time ran out before every artifact was final.
    pub timed_out: bool,
}

/// The artifacts waited for: which final snapshot each reached, and the
/// line last printed for it.
struct Waiting<'a> {
    ids: &'a [(String, u32, String)],
    last: BTreeMap<String, String>,
    latest: BTreeMap<String, StatusView>,
    done: Vec<StatusView>,
    to_stderr: bool,
}

impl<'a> Waiting<'a> {
    fn new(ids: &'a [(String, u32, String)], to_stderr: bool) -> Self {
        Waiting {
            ids,
            last: BTreeMap::new(),
            latest: BTreeMap::new(),
            done: Vec::new(),
            to_stderr,
        }
    }

    fn pending(&self) -> Vec<String> {
        self.ids
            .iter()
            .filter(|(id, _, _)| !self.done.iter().any(|v| v.artifact_id.to_string() == *id))
            .map(|(id, _, _)| id.clone())
            .collect()
    }

    /// Prints a snapshot of one of the artifacts if it moved on, and keeps
    /// it once final.
    fn saw(&mut self, v: StatusView) {
        let id = v.artifact_id.to_string();
        let Some((_, generation, name)) = self.ids.iter().find(|(i, _, _)| *i == id) else {
            return;
        };
        if v.generation.get() < *generation
            || self.done.iter().any(|d| d.artifact_id == v.artifact_id)
        {
            return;
        }
        let line = progress_line(&v, name);
        if self.last.get(&id) != Some(&line) {
            if self.to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            self.last.insert(id.clone(), line);
        }
        if v.state.is_terminal() {
            self.done.push(v.clone());
        }
        self.latest.insert(id, v);
    }
}

/// A server-sent-events body, read an event at a time.
struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event's name and data; `None` once the stream ended.
    async fn next(&mut self) -> anyhow::Result<Option<(String, String)>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block);
                let field = |name: &str| {
                    block
                        .lines()
                        .filter_map(|l| l.strip_prefix(name))
                        .map(|v| v.strip_prefix(' ').unwrap_or(v))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let (event, data) = (field("event:"), field("data:"));
                if !event.is_empty() || !data.is_empty() {
                    return Ok(Some((event, data)));
                }
                continue;
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// `id name: stage=outcome … -> STATE`
pub fn progress_line(v: &StatusView, name: &str) -> String {
    let stages: Vec<String> = v
        .timeline
        .iter()
        .map(|r| format!("{}={}", r.stage.name(), r.outcome.label()))
        .collect();
    format!(
        "{} {name} (gen {}): {} -> {:?}",
        v.artifact_id,
        v.generation,
        if stages.is_empty() {
            "waiting".to_owned()
        } else {
            stages.join(" ")
        },
        v.state
    )
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(percent_encode("a b&c.pdf"), "a%20b%26c.pdf");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
