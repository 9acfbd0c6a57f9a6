//! Helpers for tests against the real local stack: a fresh topic prefix per
//! test, producing events, running stage binaries as child processes,
//! reading committed outputs, and waiting on conditions with deadlines.

pub mod chaos;
pub mod pipeline;
pub mod s3;
pub mod stack;

use anyhow::{Context, bail};
use artifact_domain::{ArtifactCreated, ArtifactId, Generation};
use artifact_kafka::client::{client_config, consumer_config, producer_config};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::topics::{TopicNames, ensure_topics};
use artifact_runtime::stage::StageInput;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits until `cond` holds, checking every 100 ms, or fails after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One test's world: its own topic prefix on the real broker and registry.
pub struct TestEnv {
    /// Connection with this test's prefix.
    pub conn: ConnectionConfig,
    /// Topic names.
    pub names: TopicNames,
    /// Codec on the real registry.
    pub codec: AvroCodec,
    /// A producer (murmur2_random, idempotent).
    pub producer: FutureProducer,
    /// Partitions of every topic.
    pub partitions: usize,
}

impl TestEnv {
    /// The consumer group of the stage processes started on this env
    /// (`CONSUMER_GROUP`).
    pub fn stage_group(&self) -> String {
        format!("{}.group", self.conn.topic_prefix)
    }

    /// Creates every topic under a fresh prefix with `partitions` partitions.
    pub async fn new(partitions: usize) -> anyhow::Result<Self> {
        Self::replicated(partitions, 1).await
    }

    /// Like [`TestEnv::new`], every topic with `replication` replicas (and
    /// `min.insync.replicas` of min(2, `replication`)).
    pub async fn replicated(partitions: usize, replication: i32) -> anyhow::Result<Self> {
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let conn = ConnectionConfig::local(&prefix);
        let names = TopicNames::from_config(&conn);
        ensure_topics(&conn, &names.catalogue(), partitions, replication)
            .await
            .context("creating test topics (is the stack up? deploy/local/stack up)")?;
        let codec = AvroCodec::new(&conn.schema_registry_url)?;
        let producer = producer_config(&conn, "test-producer").create()?;
        Ok(TestEnv {
            conn,
            names,
            codec,
            producer,
            partitions,
        })
    }

    /// A creation event for a fresh artifact with a behaviour `filename`.
    pub fn created(filename: &str) -> ArtifactCreated {
        ArtifactCreated {
            artifact_id: ArtifactId::new_random(),
            generation: Generation::FIRST,
            storage_location: "file:///nowhere".into(),
            declared_content_type: None,
            filename: Some(filename.into()),
            size_bytes: None,
            sha256: None,
            created_at: 0,
        }
    }

    /// Produces creation events to `<prefix>.created`, keyed by artifact id.
    pub async fn produce_created(&self, events: &[ArtifactCreated]) -> anyhow::Result<()> {
        self.produce_events(&self.names.created(), EventSchema::ArtifactCreated, events)
            .await
    }

    /// Produces events of one schema to `topic`, keyed by artifact id, and
    /// waits until every one is acknowledged.
    pub async fn produce_events<'a, T: StageInput + serde::Serialize>(
        &self,
        topic: &str,
        schema: EventSchema,
        events: impl IntoIterator<Item = &'a T>,
    ) -> anyhow::Result<()> {
        let mut futures = Vec::new();
        for e in events {
            let payload = self.codec.encode(topic, schema, e).await?;
            let key = e.artifact_id().to_string();
            let rec = FutureRecord::to(topic).key(&key).payload(&payload);
            futures.push(self.producer.send_result(rec).map_err(|(e, _)| e)?);
        }
        for f in futures {
            f.await?
                .map_err(|(e, _)| e)
                .context("producing a test event")?;
        }
        Ok(())
    }

    /// Produces one creation event carrying a `traceparent` header.
    pub async fn produce_created_traced(
        &self,
        e: &ArtifactCreated,
        traceparent: &str,
    ) -> anyhow::Result<()> {
        self.produce_one(
            &self.names.created(),
            EventSchema::ArtifactCreated,
            e,
            None,
            &[("traceparent", traceparent)],
        )
        .await
    }

    /// Produces one event of one schema to `topic`, keyed by artifact id,
    /// with `headers`, on `partition` when given (else the key's partition),
    /// and waits until it is acknowledged.
    pub async fn produce_one<T: StageInput + serde::Serialize>(
        &self,
        topic: &str,
        schema: EventSchema,
        e: &T,
        partition: Option<i32>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let payload = self.codec.encode(topic, schema, e).await?;
        let key = e.artifact_id().to_string();
        let mut owned = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            owned = owned.insert(rdkafka::message::Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut rec = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(owned);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    /// Produces raw bytes to a topic under a key.
    pub async fn produce_raw(&self, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    /// Makes the broker stamp every record of `topic` with its append time
    /// (`message.timestamp.type=LogAppendTime`), so rates taken from output
    /// timestamps are timed by one clock, at one place.
    pub async fn use_append_time(&self, topic: &str) -> anyhow::Result<()> {
        self.set_topic_configs(topic, &[("message.timestamp.type", "LogAppendTime")])
            .await
    }

    /// Sets a catalogue topic's configuration overrides to `configs` plus
    /// those it was created with (`TopicSpec::configs`; `configs` wins for
    /// the same key). The admin client's `AlterConfigs` replaces every
    /// override of the topic, so the creation's are set again each time and
    /// any other earlier override goes back to the broker's default.
    pub async fn set_topic_configs(
        &self,
        topic: &str,
        configs: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
        let spec = self
            .names
            .catalogue()
            .into_iter()
            .find(|t| t.name == topic)
            .with_context(|| format!("{topic} is not in the catalogue"))?;
        let admin = artifact_kafka::client::admin_client(&self.conn)?;
        let created = spec.configs();
        let mut cfg = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (k, v) in &created {
            if !configs.iter().any(|(key, _)| key == k) {
                cfg = cfg.set(k, v);
            }
        }
        for (k, v) in configs {
            cfg = cfg.set(k, v);
        }
        for r in admin.alter_configs(&[cfg], &AdminOptions::new()).await? {
            r.map_err(|(_, e)| anyhow::anyhow!("altering {topic}: {e}"))?;
        }
        Ok(())
    }

    /// Runs `run` in a fresh env whose topics are deleted afterwards (for
    /// benchmarks, which make many envs: a run of a million records leaves
    /// about a gigabyte on the broker otherwise). A failed deletion is
    /// reported as a warning; `run`'s result is returned.
    pub async fn scoped<T>(
        partitions: usize,
        run: impl AsyncFnOnce(&TestEnv) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let env = TestEnv::new(partitions).await?;
        let result = run(&env).await;
        if let Err(e) = env.delete_topics().await {
            eprintln!(
                "warning: could not delete the topics of {}: {e}",
                env.conn.topic_prefix
            );
        }
        result
    }

    /// Deletes every topic of this env's catalogue (for runs that make many
    /// envs and would otherwise leave their topics on the broker).
    pub async fn delete_topics(&self) -> anyhow::Result<()> {
        use rdkafka::admin::AdminOptions;
        let admin = artifact_kafka::client::admin_client(&self.conn)?;
        let names: Vec<String> = self.names.catalogue().into_iter().map(|t| t.name).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        for r in admin.delete_topics(&refs, &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("deleting {t}: {e}"))?;
        }
        Ok(())
    }

    /// The first and end offsets of a partition of `topic` (`read_committed`).
    pub fn watermarks(&self, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
        let consumer: BaseConsumer = client_config(&self.conn, "test-watermarks")
            .set("isolation.level", "read_committed")
            .create()?;
        Ok(consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?)
    }

    /// Whether the stage processes' group has committed every record of
    /// `topic` (written without transactions): on each partition, its
    /// committed offset is the end.
    pub fn group_caught_up(&self, topic: &str) -> anyhow::Result<bool> {
        self.caught_up_in(&self.stage_group(), topic)
    }

    /// Whether `group` has committed every record of `topic` (written
    /// without transactions).
    pub fn caught_up_in(&self, group: &str, topic: &str) -> anyhow::Result<bool> {
        let consumer: BaseConsumer = consumer_config(&self.conn, "test-lag", group).create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions as i32 {
            tpl.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        for e in committed.elements() {
            let (_, end) =
                consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
            if e.offset().to_raw().unwrap_or(0).max(0) < end {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every committed record of `topic` (`read_committed`), from the start to
    /// the current end.
    pub fn read_all(&self, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
        let group = format!("reader-{}", uuid::Uuid::new_v4());
        let consumer: BaseConsumer = consumer_config(&self.conn, "test-reader", &group)
            .set("enable.partition.eof", "true")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let mut eof = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while eof.len() < self.partitions {
            if Instant::now() > deadline {
                bail!("reading {topic} did not reach the end within 60 s");
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => {
                    eof.remove(&m.partition());
                    out.push(m.detach());
                }
            }
        }
        Ok(out)
    }

    /// Every committed record of `topic`, decoded.
    pub async fn read_decoded<T: DeserializeOwned + 'static>(
        &self,
        topic: &str,
    ) -> anyhow::Result<Vec<T>> {
        let mut out = vec![];
        for m in self.read_all(topic)? {
            out.push(self.codec.decode(m.payload()).await?);
        }
        Ok(out)
    }
}

/// A successful parse of a plain text whose extracted text is at
/// `text_location`: a summarizer's input.
pub fn parsed_text(text_location: String) -> artifact_domain::Parsed {
    use artifact_domain::{ArtifactContext, Outcome, ParseResult, StageEvent};
    StageEvent {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        context: ArtifactContext {
            storage_location: "file:///uploads/notes.txt".into(),
            declared_content_type: Some("text/plain".into()),
            detected_content_type: Some("text/plain".into()),
            text_location: Some(text_location.clone()),
            ..ArtifactContext::default()
        },
        outcome: Outcome::Succeeded,
        result: Some(ParseResult::text_only(text_location, 10, 60)),
        processed_at: 1,
    }
}

/// The body of an OpenAI-compatible chat-completions answer holding
/// `content`, as the loopback LLM servers of the tests send it.
pub fn chat_completion(model: &str, content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }]
    })
    .to_string()
}

/// A header's value as text.
pub fn header(msg: &OwnedMessage, name: &str) -> Option<String> {
    artifact_kafka::client::header(msg, name).map(str::to_owned)
}

/// Runs `deploy/local/stack <cmd>` (e.g. `stop-registry`), failing the
/// test if it fails.
pub fn stack(cmd: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack");
    let ok = Command::new(&script)
        .arg(cmd)
        .status()
        .expect("the stack script runs")
        .success();
    assert!(ok, "deploy/local/stack {cmd} failed");
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range
/// (32768-60999), which outgoing connections draw from.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free loopback port for a child process to listen on. The port is free
/// when checked and is then handed to the child; a port from the kernel's
/// ephemeral range could meanwhile be taken by one of the many outgoing
/// connections of the Kafka clients, and the child would fail to listen.
/// Ports come in turn from a range below it, starting at a place that
/// depends on the process id, so test processes do not pick the same ones.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORTS.start + u16::try_from(offset).expect("offset within the range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
}

/// A stage process.
pub struct StageProcess {
    child: Child,
    /// Its metrics/health address.
    pub http: String,
}

impl StageProcess {
    /// Starts `bin` with the env's connection and extra env vars; its logs
    /// (stderr) go to this process's stderr.
    pub fn start(
        env: &TestEnv,
        bin: &std::path::Path,
        vars: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        Self::start_with_logs(env, bin, vars, Stdio::inherit())
    }

    /// Starts `bin` like [`StageProcess::start`], under `prlimit` with an
    /// address space of `bytes` (as a memory limit stops a process).
    pub fn start_limited(
        env: &TestEnv,
        bin: &std::path::Path,
        vars: &[(&str, String)],
        bytes: u64,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--as={bytes}")).arg("--").arg(bin);
        Self::spawn(env, cmd, vars, Stdio::inherit())
    }

    /// Starts `bin` with arguments `args`, like [`StageProcess::start`]
    /// (e.g. `artifactctl lag-exporter`).
    pub fn start_args(
        env: &TestEnv,
        bin: &std::path::Path,
        args: &[&str],
        vars: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Self::spawn(env, cmd, vars, Stdio::inherit())
    }

    /// Starts `bin` like [`StageProcess::start`], its logs going to `logs`.
    pub fn start_with_logs(
        env: &TestEnv,
        bin: &std::path::Path,
        vars: &[(&str, String)],
        logs: Stdio,
    ) -> anyhow::Result<Self> {
        Self::spawn(env, Command::new(bin), vars, logs)
    }

    fn spawn(
        env: &TestEnv,
        mut cmd: Command,
        vars: &[(&str, String)],
        logs: Stdio,
    ) -> anyhow::Result<Self> {
        let port = free_port();
        cmd.env("KAFKA_BOOTSTRAP_SERVERS", &env.conn.kafka_bootstrap_servers)
            .env("SCHEMA_REGISTRY_URL", &env.conn.schema_registry_url)
            .env("TOPIC_PREFIX", &env.conn.topic_prefix)
            .env("CONSUMER_GROUP", env.stage_group())
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("STAGE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logs);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        Ok(StageProcess {
            child,
            http: format!("http://127.0.0.1:{port}"),
        })
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; true if it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.send_sigterm();
        let exited = self.wait_exit(timeout);
        if exited.is_none() {
            self.kill9();
        }
        exited.is_some_and(|s| s.success())
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; its exit status, or
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its peak resident set size so far, in bytes (`VmHWM` in
    /// `/proc/<pid>/status`); `None` once it has exited or off Linux.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmHWM:").map(|k| k * 1024)
    }

    /// Its resident set size now, in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmRSS:").map(|k| k * 1024)
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The `/metrics` text, if it answers.
    pub async fn metrics(&self) -> Option<String> {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// The sum of a metric's samples whose labels contain every `label`
    /// (0 when none is exported).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.exported_metric(name, labels).await.unwrap_or(0.0)
    }

    /// Like [`StageProcess::metric`], but `None` when no such sample is
    /// exported (or `/metrics` does not answer).
    pub async fn exported_metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = self.metrics().await?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Whether `/readyz` answers 200.
    pub async fn is_ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.http))
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
