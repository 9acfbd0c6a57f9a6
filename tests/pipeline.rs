//! The whole pipeline as processes: the four stages and artifact-api on one
//! topic prefix and blob root (a `file://` directory, or a prefix of the
//! stack's S3 bucket), with helpers to upload and wait.

use crate::s3::S3Prefix;
use crate::{StageProcess, TestEnv, wait_until};
use artifact_domain::StatusView;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The stages and the API on one topic prefix and blob root.
/// The bearer token the API accepts.
pub const TOKEN: &str = "e2e-token";
/// The API's upload limit.
pub const MAX_UPLOAD: u64 = 2 << 20;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The generated PDF fixtures (made on first use).
pub fn fixtures() -> PathBuf {
    let dir = repo().join("target/fixtures/pdf");
    let ok = Command::new("bash")
        .arg(repo().join("scripts/fixtures/make-pdfs.sh"))
        .arg(&dir)
        .status()
        .expect("make-pdfs.sh runs")
        .success();
    assert!(ok, "scripts/fixtures/make-pdfs.sh failed");
    dir
}

/// An HTTP client that sends [`TOKEN`] with every request.
pub fn authorised_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let auth = format!("Bearer {TOKEN}");
    headers.insert(
        reqwest::header::AUTHORIZATION,
        auth.parse().expect("a header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

pub struct Pipeline {
    /// Topics and codec.
    pub env: TestEnv,
    /// A scratch directory; the blob store root unless `s3` is set.
    pub blobs: PathBuf,
    /// The blob store, when it is a prefix of the stack's S3 bucket.
    pub s3: Option<S3Prefix>,
    /// The stage processes by name.
    pub stages: HashMap<&'static str, StageProcess>,
    /// The API process.
    pub api: Option<StageProcess>,
    /// The API's base URL.
    pub api_url: String,
    /// An HTTP client that sends [`TOKEN`] with every request (reads are
    /// protected too).
    pub http: reqwest::Client,
    bin_dir: PathBuf,
    /// Settings the API gets besides the usual ones.
    api_vars: Vec<(&'static str, String)>,
    /// Settings every process gets besides the usual ones.
    common_vars: Vec<(&'static str, String)>,
}

impl Drop for Pipeline {
    /// Stops the processes, then removes the scratch directory, so runs do
    /// not fill the disk with uploads and texts.
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.blobs);
    }
}

impl Pipeline {
    /// Kills every stage and the API.
    pub fn stop(&mut self) {
        self.stages.clear();
        self.api = None;
    }

    /// Starts the four stages and the API from the binaries in `bin_dir`,
    /// on a `file://` blob store, with 3 partitions per topic.
    pub async fn start(bin_dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(bin_dir, None, 3).await
    }

    /// Like [`Pipeline::start`], with `partitions` partitions per topic.
    pub async fn start_partitioned(bin_dir: &Path, partitions: usize) -> anyhow::Result<Self> {
        Self::start_on(bin_dir, None, partitions).await
    }

    /// Like [`Pipeline::start`], on a fresh prefix of the stack's S3 bucket.
    pub async fn start_s3(bin_dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(bin_dir, Some(S3Prefix::fresh("e2e")), 3).await
    }

    /// Like [`Pipeline::start`], every process with `settings` besides the
    /// usual ones.
    pub async fn start_with(
        bin_dir: &Path,
        settings: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        Self::start_on_with(bin_dir, None, 3, settings).await
    }

    async fn start_on(
        bin_dir: &Path,
        s3: Option<S3Prefix>,
        partitions: usize,
    ) -> anyhow::Result<Self> {
        Self::start_on_with(bin_dir, s3, partitions, &[]).await
    }

    async fn start_on_with(
        bin_dir: &Path,
        s3: Option<S3Prefix>,
        partitions: usize,
        settings: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        let env = TestEnv::new(partitions).await?;
        let blobs = std::env::temp_dir().join(format!("e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&blobs)?;
        let mut p = Pipeline {
            env,
            blobs,
            s3,
            stages: HashMap::new(),
            api: None,
            api_url: String::new(),
            http: authorised_client(),
            bin_dir: bin_dir.to_owned(),
            api_vars: Vec::new(),
            common_vars: settings.to_vec(),
        };
        for name in [
            "mime-detector",
            "location-logger",
            "pdf-parser",
            "summarizer",
        ] {
            p.start_stage(name)?;
        }
        p.start_api().await?;
        Ok(p)
    }

    /// Starts the API alone (no stage) with `settings` besides the usual
    /// ones, on a `file://` blob store or, with `s3`, on a fresh prefix of
    /// the stack's bucket; every topic has 3 partitions.
    pub async fn start_api_only(
        bin_dir: &Path,
        s3: bool,
        settings: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        let env = TestEnv::new(3).await?;
        let blobs = std::env::temp_dir().join(format!("api-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&blobs)?;
        let mut p = Pipeline {
            env,
            blobs,
            s3: s3.then(|| S3Prefix::fresh("api")),
            stages: HashMap::new(),
            api: None,
            api_url: String::new(),
            http: authorised_client(),
            bin_dir: bin_dir.to_owned(),
            api_vars: settings.to_vec(),
            common_vars: Vec::new(),
        };
        p.start_api().await?;
        Ok(p)
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = match &self.s3 {
            Some(s3) => s3.vars(),
            None => vec![("BLOB_STORE_URL", format!("file://{}", self.blobs.display()))],
        };
        vars.push(("RETRY_INLINE_ATTEMPTS", "2".into()));
        vars.push(("RETRY_DELAY_MS", "300".into()));
        vars.extend(self.common_vars.iter().cloned());
        vars
    }

    /// Starts (or restarts) one stage.
    pub fn start_stage(&mut self, name: &'static str) -> anyhow::Result<()> {
        let mut vars = self.vars();
        // Each stage's group is its own, under this test's prefix.
        vars.push((
            "CONSUMER_GROUP",
            format!("{}.{name}", self.env.conn.topic_prefix),
        ));
        vars.push(("INSTANCE_ID", format!("e2e-{name}")));
        let p = StageProcess::start(&self.env, &self.bin_dir.join(name), &vars)?;
        self.stages.insert(name, p);
        Ok(())
    }

    /// Starts (or restarts) the API and waits until it is ready.
    pub async fn start_api(&mut self) -> anyhow::Result<()> {
        let bin = self.bin_dir.join("artifact-api");
        self.start_api_from(&bin).await
    }

    /// Starts (or restarts) the API from the binary `bin` and waits until
    /// it is ready.
    pub async fn start_api_from(&mut self, bin: &Path) -> anyhow::Result<()> {
        let mut vars = self.vars();
        vars.push(("API_TOKENS", format!("other-token,{TOKEN}")));
        vars.push(("MAX_UPLOAD_BYTES", MAX_UPLOAD.to_string()));
        vars.push((
            "PROJECTOR_GROUP",
            format!("{}.projector", self.env.conn.topic_prefix),
        ));
        vars.push((
            "REPROCESS_GROUP",
            format!("{}.reprocess", self.env.conn.topic_prefix),
        ));
        // The console reads the stages' groups as start_stage names them.
        vars.push((
            "CONSOLE_STAGE_GROUP_PREFIX",
            format!("{}.", self.env.conn.topic_prefix),
        ));
        vars.push((
            "WEBHOOK_GROUP",
            format!("{}.webhooks", self.env.conn.topic_prefix),
        ));
        vars.extend(self.api_vars.iter().cloned());
        let api = StageProcess::start(&self.env, bin, &vars)?;
        wait_until("the API ready", Duration::from_secs(60), || api.is_ready()).await?;
        self.api_url = api.http.clone();
        self.api = Some(api);
        Ok(())
    }

    /// An API URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_url)
    }

    /// Runs `artifactctl` against the API, with the token.
    pub fn artifactctl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(self.bin_dir.join("artifactctl"))
            .args(["--api-url", &self.api_url, "--token", TOKEN])
            .args(args)
            .output()?)
    }

    /// The JSON an API path answers (with the token).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.http.get(self.url(path)).send().await?.json().await?)
    }

    /// The ids of the artifacts a `/v1/artifacts` page lists.
    pub async fn listed(&self, path: &str) -> anyhow::Result<Vec<String>> {
        let page = self.get_json(path).await?;
        Ok(page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["artifact_id"].as_str().map(str::to_owned))
            .collect())
    }

    /// Uploads a raw body with the token.
    pub async fn upload_raw(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
        name: &str,
        key: Option<&str>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut rb = self
            .http
            .post(self.url(&format!("/v1/artifacts?filename={name}")))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(bytes);
        if let Some(k) = key {
            rb = rb.header("idempotency-key", k);
        }
        Ok(rb.send().await?)
    }

    /// The artifact id of a 202 answer.
    pub async fn accepted_id(resp: reqwest::Response) -> anyhow::Result<String> {
        anyhow::ensure!(
            resp.status() == 202,
            "upload answered {}: {}",
            resp.status(),
            resp.text().await?
        );
        let v: Value = resp.json().await?;
        Ok(v["artifact_id"].as_str().unwrap().to_owned())
    }

    /// An artifact's status, if the API knows it.
    pub async fn status(&self, id: &str) -> Option<StatusView> {
        let r = self
            .http
            .get(self.url(&format!("/v1/artifacts/{id}")))
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    /// Waits until an artifact is final at a generation.
    pub async fn wait_final(&self, id: &str, generation: u32) -> anyhow::Result<StatusView> {
        wait_until(
            &format!("{id} final at generation {generation}"),
            Duration::from_secs(120),
            || async {
                self.status(id)
                    .await
                    .is_some_and(|v| v.generation.get() == generation && v.state.is_terminal())
            },
        )
        .await?;
        Ok(self.status(id).await.expect("status"))
    }
}
