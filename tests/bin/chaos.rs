//! `chaos`: the fault campaign on a replicated cluster (`scripts/chaos`
//! starts one and runs this). Topics get replication factor 3 and
//! min.insync.replicas 2; the four stages run two replicas each, and
//! artifact-api with its projector one. A steady stream of PDFs, texts,
//! images and corrupt PDFs goes in through the API and through an external
//! producer writing `<prefix>.created` directly (with now and then a record
//! no stage can decode, sent on purpose to the dead-letter topic), while two
//! tracks of faults run:
//!
//! - brokers, one at a time, each once the cluster is whole again: a broker
//!   restarted with SIGTERM (in turn: a rolling restart), the leader of a
//!   partition of a stage's input topic killed with SIGKILL, the
//!   transaction coordinator of a stage replica's transactional id killed
//!   with SIGKILL;
//! - processes: a stage replica killed with SIGKILL, the registry
//!   restarted, the API restarted (SIGTERM and SIGKILL in turn).
//!
//! A process that exits by itself is started again, as an orchestrator
//! would. Once the duration has passed and every kind of fault happened at
//! least `--faults` times, the stream stops, everything is up again, every
//! artifact sent must reach its final state and every consumer group its
//! end, and `artifact_pipeline_tests::chaos::check` compares what a
//! `read_committed` reader finds with what was sent. The report (stdout and
//! `<out>/report.json`) counts artifacts, faults, duplicates and losses,
//! the longest stall and each fault's recovery time. Exit status 1 when the
//! check found anything.

use anyhow::{Context, bail};
use artifact_domain::{ArtifactCreated, ArtifactId, Generation, Stage, StatusView};
use artifact_kafka::client::{QuietEof, consumer_config};
use artifact_kafka::schemas::{EventSchema, RegistryAdmin};
use artifact_pipeline_tests::chaos::{
    self, CheckReport, Kind, Sent, Via, cluster_view, partition_leader, transaction_coordinator,
};
use artifact_pipeline_tests::pipeline::fixtures;
use artifact_pipeline_tests::{StageProcess, TestEnv, free_port};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "chaos", about = "The fault campaign on a replicated cluster")]
struct Cli {
    /// How long artifacts are sent and faults made, e.g. 3m or 30m; the
    /// campaign goes on past it until every kind of fault happened
    /// `--faults` times.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    duration: Duration,
    /// Faults of each kind, at least.
    #[arg(long, default_value_t = 1)]
    faults: usize,
    /// Artifacts sent per second, through the API and the external producer
    /// in turn.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Brokers the cluster must have.
    #[arg(long, default_value_t = 3)]
    brokers: usize,
    /// Replication factor of the topics (min.insync.replicas is min(2, it)).
    #[arg(long, default_value_t = 3)]
    replication_factor: i32,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 6)]
    partitions: usize,
    /// Every Nth external record is one no stage can decode (0: none).
    #[arg(long, default_value_t = 40)]
    poison_every: usize,
    /// The longest the end waits for every artifact to be final and every
    /// group to reach the end of its topics.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    settle: Duration,
    /// Seed of the random choices (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the processes' logs and report.json go.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Where the service binaries are (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number and s, m or h"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: a number and s, m or h")),
    }
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Fault {
    /// A broker stopped with SIGTERM and started again.
    BrokerRestart,
    /// The leader of a partition of a stage's input topic, SIGKILLed.
    LeaderKill,
    /// The coordinator of a stage replica's transactional id, SIGKILLed.
    CoordinatorKill,
    /// A stage replica, SIGKILLed.
    StageKill,
    /// The registry stopped and started again.
    RegistryRestart,
    /// artifact-api stopped (SIGTERM or SIGKILL) and started again.
    ApiRestart,
}

const BROKER_FAULTS: [Fault; 3] = [
    Fault::BrokerRestart,
    Fault::LeaderKill,
    Fault::CoordinatorKill,
];
const PROCESS_FAULTS: [Fault; 3] = [Fault::StageKill, Fault::RegistryRestart, Fault::ApiRestart];

/// One fault made.
#[derive(Debug, Clone, Serialize)]
struct FaultRecord {
    kind: Fault,
    /// What was hit.
    target: String,
    /// Seconds from the campaign's start.
    at_s: f64,
    /// Seconds the component was down.
    down_s: f64,
    /// Brokers: seconds from the fault until every replica was in sync again.
    whole_again_s: Option<f64>,
    /// Seconds from the fault until an artifact sent after it reached its
    /// final state.
    recovery_s: Option<f64>,
}

const REPLICAS: [&str; 2] = ["a", "b"];

/// The processes the campaign runs, and which are down on purpose.
struct Procs {
    stages: HashMap<(Stage, &'static str), StageProcess>,
    api: Option<StageProcess>,
    /// Processes down on purpose (not to be restarted by the supervisor).
    held: std::collections::HashSet<String>,
    /// Exits nobody asked for, by process name.
    self_exits: BTreeMap<String, usize>,
    api_starts: usize,
}

struct Campaign {
    cli: Cli,
    env: TestEnv,
    start: Instant,
    bin_dir: PathBuf,
    blobs: PathBuf,
    logs: PathBuf,
    api_port: u16,
    http: reqwest::Client,
    procs: Mutex<Procs>,
    sent: Mutex<Vec<(Sent, Instant)>>,
    poison: Mutex<Vec<String>>,
    failed_sends: Mutex<Vec<String>>,
    finals: Mutex<HashMap<ArtifactId, Instant>>,
    faults: Mutex<Vec<FaultRecord>>,
    counts: Mutex<BTreeMap<Fault, usize>>,
    stop_load: AtomicBool,
    /// A fault track failed: the other one stops too.
    track_failed: AtomicBool,
    documents: Documents,
}

/// The bytes of each kind of document.
struct Documents {
    pdf: Vec<u8>,
    image: Vec<u8>,
    corrupt: Vec<u8>,
}

impl Documents {
    fn make(scratch: &Path) -> anyhow::Result<Self> {
        let fx = fixtures();
        let pdf_path = fx.join("text/reportlab-3.pdf");
        let png = scratch.join("page");
        let ok = Command::new("pdftoppm")
            .args(["-png", "-r", "20", "-singlefile"])
            .arg(&pdf_path)
            .arg(&png)
            .status()
            .context("running pdftoppm (poppler-utils)")?
            .success();
        anyhow::ensure!(ok, "pdftoppm failed");
        Ok(Documents {
            pdf: std::fs::read(&pdf_path)?,
            image: std::fs::read(png.with_extension("png"))?,
            corrupt: std::fs::read(fx.join("malformed/truncated.pdf"))?,
        })
    }

    /// Bytes, content type and file name of the `n`th document of a kind.
    fn get(&self, kind: Kind, n: usize) -> (Vec<u8>, &'static str, String) {
        match kind {
            Kind::Pdf => (self.pdf.clone(), "application/pdf", format!("doc-{n}.pdf")),
            Kind::Text => (
                format!(
                    "Document {n} of the fault campaign. Brokers restart and leaders move while it travels. \
                     Every stage reports once for it, whatever fails around it."
                )
                .into_bytes(),
                "text/plain",
                format!("doc-{n}.txt"),
            ),
            Kind::Image => (self.image.clone(), "image/png", format!("page-{n}.png")),
            Kind::Corrupt => (
                self.corrupt.clone(),
                "application/pdf",
                format!("broken-{n}.pdf"),
            ),
        }
    }
}

const TOKEN: &str = "chaos-token";

impl Campaign {
    fn secs(&self, t: Instant) -> f64 {
        t.duration_since(self.start).as_secs_f64()
    }

    fn log_file(&self, name: &str) -> anyhow::Result<Stdio> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))?;
        Ok(Stdio::from(f))
    }

    fn stage_vars(&self, stage: Stage, replica: &str) -> Vec<(&'static str, String)> {
        vec![
            ("BLOB_STORE_URL", format!("file://{}", self.blobs.display())),
            (
                "CONSUMER_GROUP",
                format!("{}.{}", self.env.conn.topic_prefix, stage.name()),
            ),
            ("INSTANCE_ID", format!("chaos-{}-{replica}", stage.name())),
            (
                "RUST_LOG",
                std::env::var("STAGE_LOG").unwrap_or_else(|_| "info".into()),
            ),
            // Images stay skipped (the check expects it): the campaign is
            // about faults, not OCR, whose time would only slow it.
            ("PARSE_OCR_LANGUAGES", String::new()),
        ]
    }

    /// The transactional id of a stage replica (`<group>-<instance>`).
    fn transactional_id(&self, stage: Stage, replica: &str) -> String {
        format!(
            "{}.{}-chaos-{}-{replica}",
            self.env.conn.topic_prefix,
            stage.name(),
            stage.name()
        )
    }

    fn start_stage(
        &self,
        procs: &mut Procs,
        stage: Stage,
        replica: &'static str,
    ) -> anyhow::Result<()> {
        let name = format!("{}-{replica}", stage.name());
        let p = StageProcess::start_with_logs(
            &self.env,
            &self.bin_dir.join(stage.name()),
            &self.stage_vars(stage, replica),
            self.log_file(&name)?,
        )?;
        procs.stages.insert((stage, replica), p);
        Ok(())
    }

    fn start_api(&self, procs: &mut Procs) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.api_port);
        let vars = vec![
            ("BLOB_STORE_URL", format!("file://{}", self.blobs.display())),
            ("API_TOKENS", TOKEN.to_owned()),
            // The check reads every artifact's status at once, past what
            // one caller may by default.
            ("API_RATE_LIMIT_PER_SECOND", "0".to_owned()),
            (
                "PROJECTOR_GROUP",
                format!("{}.projector", self.env.conn.topic_prefix),
            ),
            ("HTTP_ADDR", addr.clone()),
            (
                "RUST_LOG",
                std::env::var("STAGE_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        let mut p = StageProcess::start_with_logs(
            &self.env,
            &self.bin_dir.join("artifact-api"),
            &vars,
            self.log_file("artifact-api")?,
        )?;
        p.http = format!("http://{addr}");
        procs.api = Some(p);
        procs.api_starts += 1;
        Ok(())
    }

    fn api_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    async fn api_ready(&self) -> bool {
        self.http
            .get(self.api_url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Restarts whatever exited without being asked to, every second,
    /// until aborted.
    async fn supervise(self: Arc<Self>) {
        loop {
            {
                let mut guard = self.procs.lock().expect("procs");
                let procs = &mut *guard;
                let mut exited = vec![];
                for ((stage, replica), p) in procs.stages.iter_mut() {
                    let name = format!("{}-{replica}", stage.name());
                    if !procs.held.contains(&name) && !p.is_running() {
                        exited.push((*stage, *replica, name));
                    }
                }
                for (stage, replica, name) in exited {
                    eprintln!("chaos: {name} exited by itself; starting it again");
                    *procs.self_exits.entry(name).or_default() += 1;
                    if let Err(e) = self.start_stage(procs, stage, replica) {
                        eprintln!("chaos: cannot start {}: {e:#}", stage.name());
                    }
                }
                let api_exited = !procs.held.contains("artifact-api")
                    && procs.api.as_mut().is_some_and(|a| !a.is_running());
                if api_exited {
                    eprintln!("chaos: artifact-api exited by itself; starting it again");
                    *procs.self_exits.entry("artifact-api".into()).or_default() += 1;
                    if let Err(e) = self.start_api(procs) {
                        eprintln!("chaos: cannot start artifact-api: {e:#}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Sends artifacts at the rate until told to stop; each send retries
    /// until it is accepted.
    async fn load(self: Arc<Self>) {
        let period = Duration::from_secs_f64(1.0 / self.cli.rate.max(0.01));
        let mut tick = tokio::time::interval(period);
        let mut tasks = tokio::task::JoinSet::new();
        let mut n = 0usize;
        let mut externals = 0usize;
        while !self.stop_load.load(Ordering::Relaxed) {
            tick.tick().await;
            let kind = Kind::ALL[(n / 2) % Kind::ALL.len()];
            let via = if n.is_multiple_of(2) {
                Via::Api
            } else {
                Via::External
            };
            let me = self.clone();
            if via == Via::External {
                externals += 1;
                if self.cli.poison_every > 0 && externals.is_multiple_of(self.cli.poison_every) {
                    tasks.spawn(async move { me.send_poison().await });
                    continue;
                }
            }
            let i = n;
            tasks.spawn(async move { me.send(kind, via, i).await });
            n += 1;
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn send(self: Arc<Self>, kind: Kind, via: Via, n: usize) {
        let at = Instant::now();
        let result = match via {
            Via::Api => self.upload(kind, n).await,
            Via::External => self.produce(kind, n).await,
        };
        match result {
            Ok(id) => self
                .sent
                .lock()
                .expect("sent")
                .push((Sent { id, kind, via }, at)),
            Err(e) => {
                eprintln!("chaos: sending {kind:?} {n} via {via:?} failed for good: {e:#}");
                self.failed_sends
                    .lock()
                    .expect("failed")
                    .push(format!("{kind:?} {n} via {via:?}: {e:#}"));
            }
        }
    }

    /// An upload with an idempotency key, retried (same key) until the API
    /// accepts it: while the API restarts, or Kafka moves a leader.
    async fn upload(&self, kind: Kind, n: usize) -> anyhow::Result<ArtifactId> {
        let (bytes, content_type, name) = self.documents.get(kind, n);
        let key = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut last = String::new();
        while Instant::now() < deadline {
            let resp = self
                .http
                .post(self.api_url(&format!("/v1/artifacts?filename={name}")))
                .bearer_auth(TOKEN)
                .header("content-type", content_type)
                .header("idempotency-key", &key)
                .timeout(Duration::from_secs(60))
                .body(bytes.clone())
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 202 => {
                    let v: serde_json::Value = r.json().await?;
                    let id = v["artifact_id"].as_str().context("no artifact_id")?;
                    return Ok(id.parse()?);
                }
                Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("not accepted within 300 s: {last}")
    }

    /// An external producer's ArtifactCreated (its blob written first),
    /// sent again until acknowledged.
    async fn produce(&self, kind: Kind, n: usize) -> anyhow::Result<ArtifactId> {
        let (bytes, content_type, name) = self.documents.get(kind, n);
        let id = ArtifactId::new_random();
        let path = self.blobs.join("external").join(id.to_string());
        std::fs::write(&path, &bytes)?;
        let event = ArtifactCreated {
            artifact_id: id,
            generation: Generation::FIRST,
            storage_location: format!("file://{}", path.display()),
            declared_content_type: Some(content_type.to_owned()),
            filename: Some(name),
            size_bytes: Some(bytes.len() as i64),
            sha256: Some(hex::encode(sha2::Sha256::digest(&bytes))),
            created_at: artifact_kafka::now_ms(),
        };
        let topic = self.env.names.created();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let attempt = async {
                let payload = self
                    .env
                    .codec
                    .encode(&topic, EventSchema::ArtifactCreated, &event)
                    .await?;
                let key = id.to_string();
                self.env
                    .producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)?;
                anyhow::Ok(())
            };
            match attempt.await {
                Ok(()) => return Ok(id),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("chaos: producing {id} failed ({e:#}); sending it again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A record on `<prefix>.created` that is not Avro: its stage must send
    /// it to the dead-letter topic, once.
    async fn send_poison(self: Arc<Self>) {
        let key = format!("poison-{}", uuid::Uuid::new_v4());
        let topic = self.env.names.created();
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            let r = self
                .env
                .producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&key)
                        .payload(b"not avro: sent to the dead letters on purpose".as_slice()),
                    Duration::from_secs(30),
                )
                .await;
            if r.is_ok() {
                self.poison.lock().expect("poison").push(key);
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.failed_sends
            .lock()
            .expect("failed")
            .push(format!("poison {key} not acknowledged"));
    }

    /// Notes when each artifact's first final snapshot appears in the
    /// status topic, until aborted.
    async fn watch_finals(self: Arc<Self>) -> anyhow::Result<()> {
        let group = format!("chaos-watch-{}", uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer<QuietEof> =
            consumer_config(&self.env.conn, "chaos-watch", &group).create_with_context(QuietEof)?;
        let topic = self.env.names.status();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.cli.partitions as i32 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        loop {
            let m = match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                Err(_) => continue,
                Ok(Err(_)) => continue,
                Ok(Ok(m)) => m,
            };
            let Ok(v) = self.env.codec.decode::<StatusView>(m.payload()).await else {
                continue;
            };
            if v.generation == Generation::FIRST && v.state.is_terminal() {
                self.finals
                    .lock()
                    .expect("finals")
                    .entry(v.artifact_id)
                    .or_insert_with(Instant::now);
            }
        }
    }

    fn count(&self, kind: Fault) -> usize {
        self.counts
            .lock()
            .expect("counts")
            .get(&kind)
            .copied()
            .unwrap_or_default()
    }

    fn record(&self, rec: FaultRecord) {
        eprintln!(
            "chaos: {:>7.1}s {:?} {} (down {:.1}s{})",
            rec.at_s,
            rec.kind,
            rec.target,
            rec.down_s,
            rec.whole_again_s
                .map(|s| format!(", whole again after {s:.1}s"))
                .unwrap_or_default()
        );
        *self
            .counts
            .lock()
            .expect("counts")
            .entry(rec.kind)
            .or_default() += 1;
        self.faults.lock().expect("faults").push(rec);
    }

    /// Writes every stage's and the API's threads' stacks (gdb, if the
    /// machine has it) beside their logs, as `<name>.stacks-<tag>.txt`.
    async fn dump_stacks(&self, tag: &str) {
        let pids: Vec<(String, u32)> = {
            let procs = self.procs.lock().expect("procs");
            let mut v: Vec<(String, u32)> = procs
                .stages
                .iter()
                .map(|((s, r), p)| (format!("{}-{r}", s.name()), p.pid()))
                .collect();
            if let Some(a) = &procs.api {
                v.push(("artifact-api".into(), a.pid()));
            }
            v
        };
        eprintln!(
            "chaos: no artifact became final for 2 minutes; dumping stacks next to the logs ({tag})"
        );
        for (name, pid) in pids {
            let out = tokio::process::Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt",
                ])
                .output()
                .await;
            if let Ok(out) = out {
                let _ = std::fs::write(
                    self.logs.join(format!("{name}.stacks-{tag}.txt")),
                    out.stdout,
                );
            }
        }
    }

    /// Dumps the stacks when no artifact became final for 2 minutes while
    /// some were in flight (at most every 10 minutes), until aborted.
    async fn watch_stalls(self: Arc<Self>) {
        let mut last_dump: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let (in_flight, last_final) = {
                let sent = self.sent.lock().expect("sent");
                let finals = self.finals.lock().expect("finals");
                let in_flight = sent
                    .iter()
                    .filter(|(s, _)| !finals.contains_key(&s.id))
                    .count();
                (
                    in_flight,
                    finals.values().max().copied().unwrap_or(self.start),
                )
            };
            let stalled = in_flight > 0 && last_final.elapsed() > Duration::from_secs(120);
            if stalled && last_dump.is_none_or(|t| t.elapsed() > Duration::from_secs(600)) {
                last_dump = Some(Instant::now());
                self.dump_stacks(&format!("{:.0}s", self.start.elapsed().as_secs_f64()))
                    .await;
            }
        }
    }

    /// Whether a track is done: the duration passed and each of its kinds
    /// happened often enough, or the other track failed.
    fn track_done(&self, kinds: &[Fault]) -> bool {
        self.track_failed.load(Ordering::Relaxed)
            || (self.start.elapsed() >= self.cli.duration
                && kinds.iter().all(|k| self.count(*k) >= self.cli.faults))
    }

    /// Waits until every broker is up and every replica in sync.
    async fn wait_whole(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let conn = self.env.conn.clone();
            let brokers = self.cli.brokers;
            let whole = tokio::task::spawn_blocking(move || cluster_view(&conn))
                .await?
                .is_ok_and(|v| v.is_whole(brokers));
            if whole {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the cluster was not whole again within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn broker_track(self: Arc<Self>, seed: u64) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut i = 0usize;
        let mut next_restart = 0usize;
        while !self.track_done(&BROKER_FAULTS) {
            self.wait_whole(Duration::from_secs(600)).await?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(1000..5000))).await;
            let kind = BROKER_FAULTS[i % BROKER_FAULTS.len()];
            i += 1;
            let stage = Stage::ALL[rng.random_range(0..Stage::ALL.len())];
            let (node, target) = match kind {
                Fault::BrokerRestart => {
                    let node = (next_restart % self.cli.brokers) as i32 + 1;
                    next_restart += 1;
                    (node, format!("broker {node}"))
                }
                Fault::LeaderKill => {
                    let topic = self.env.names.input(stage);
                    let p = rng.random_range(0..self.cli.partitions) as i32;
                    let conn = self.env.conn.clone();
                    let t = topic.clone();
                    let leader =
                        tokio::task::spawn_blocking(move || partition_leader(&conn, &t, p))
                            .await??
                            .with_context(|| format!("{topic}/{p} has no leader"))?;
                    (leader, format!("broker {leader}, leader of {topic}/{p}"))
                }
                _ => {
                    let replica = REPLICAS[rng.random_range(0..REPLICAS.len())];
                    let tid = self.transactional_id(stage, replica);
                    let conn = self.env.conn.clone();
                    let t = tid.clone();
                    let c = tokio::task::spawn_blocking(move || transaction_coordinator(&conn, &t))
                        .await??
                        .with_context(|| format!("{tid} has no coordinator"))?;
                    (c, format!("broker {c}, coordinator of {tid}"))
                }
            };
            let at = Instant::now();
            if kind == Fault::BrokerRestart {
                stack(&["stop-kafka", &node.to_string()]).await?;
            } else {
                stack(&["kill-kafka", &node.to_string()]).await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..6000))).await;
            }
            stack(&["start-kafka", &node.to_string()]).await?;
            let down = at.elapsed();
            self.wait_whole(Duration::from_secs(600)).await?;
            self.record(FaultRecord {
                kind,
                target,
                at_s: self.secs(at),
                down_s: down.as_secs_f64(),
                whole_again_s: Some(at.elapsed().as_secs_f64()),
                recovery_s: None,
            });
        }
        Ok(())
    }

    async fn process_track(self: Arc<Self>, seed: u64) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(seed);
        let per_kind = self.cli.faults.max(1) * PROCESS_FAULTS.len();
        let mean = (self.cli.duration.as_secs_f64() / per_kind as f64).max(4.0);
        let mut i = 0usize;
        while !self.track_done(&PROCESS_FAULTS) {
            tokio::time::sleep(Duration::from_secs_f64(mean * rng.random_range(0.5..1.5))).await;
            let kind = PROCESS_FAULTS[i % PROCESS_FAULTS.len()];
            let at = Instant::now();
            let target = match kind {
                Fault::StageKill => {
                    let stage = Stage::ALL[(i / PROCESS_FAULTS.len()) % Stage::ALL.len()];
                    let replica = REPLICAS[rng.random_range(0..REPLICAS.len())];
                    let name = format!("{}-{replica}", stage.name());
                    {
                        let mut procs = self.procs.lock().expect("procs");
                        procs.held.insert(name.clone());
                        if let Some(p) = procs.stages.get_mut(&(stage, replica)) {
                            p.kill9();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..3000))).await;
                    let mut procs = self.procs.lock().expect("procs");
                    self.start_stage(&mut procs, stage, replica)?;
                    procs.held.remove(&name);
                    drop(procs);
                    name
                }
                Fault::RegistryRestart => {
                    stack(&["stop-registry"]).await?;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1000..5000))).await;
                    stack(&["start-registry"]).await?;
                    "registry".into()
                }
                _ => {
                    let kill = self.count(Fault::ApiRestart) % 2 == 1;
                    let api = {
                        let mut procs = self.procs.lock().expect("procs");
                        procs.held.insert("artifact-api".into());
                        procs.api.take()
                    };
                    if let Some(mut api) = api {
                        if kill {
                            api.kill9();
                        } else {
                            tokio::task::spawn_blocking(move || {
                                api.terminate(Duration::from_secs(30));
                            })
                            .await?;
                        }
                    }
                    {
                        let mut procs = self.procs.lock().expect("procs");
                        self.start_api(&mut procs)?;
                        procs.held.remove("artifact-api");
                    }
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !self.api_ready().await && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    format!(
                        "artifact-api ({})",
                        if kill { "SIGKILL" } else { "SIGTERM" }
                    )
                }
            };
            self.record(FaultRecord {
                kind,
                target,
                at_s: self.secs(at),
                down_s: at.elapsed().as_secs_f64(),
                whole_again_s: None,
                recovery_s: None,
            });
            i += 1;
        }
        Ok(())
    }
}

/// Runs `deploy/local/stack ARGS` with this process's environment (its
/// STACK_HOME and ports).
async fn stack(args: &[&str]) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack");
    let out = tokio::process::Command::new(&script)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "deploy/local/stack {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct KindSummary {
    count: usize,
    recovery_p50_s: Option<f64>,
    recovery_max_s: Option<f64>,
    whole_again_max_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    prefix: String,
    duration_s: f64,
    settle_s: f64,
    artifacts: usize,
    by_kind: BTreeMap<String, usize>,
    poison_sent: usize,
    sends_failed: Vec<String>,
    faults: BTreeMap<Fault, KindSummary>,
    fault_log: Vec<FaultRecord>,
    self_exits: BTreeMap<String, usize>,
    duplicates: usize,
    losses: usize,
    longest_stall_s: f64,
    end_to_end_p50_s: Option<f64>,
    unread_at_end: Vec<chaos::Backlog>,
    check: CheckReport,
}

fn percentile(mut v: Vec<f64>, q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    Some(v[i])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(|| artifact_kafka::now_ms() as u64);
    let conn = artifact_kafka::config::ConnectionConfig::local("chaos-probe");
    let view = cluster_view(&conn).context("asking the cluster for its brokers")?;
    if view.brokers.len() < cli.brokers {
        bail!(
            "the cluster at {} has {} broker(s), the campaign needs {}: run it with scripts/chaos, \
             or on `deploy/local/stack up --brokers {}`",
            conn.kafka_bootstrap_servers,
            view.brokers.len(),
            cli.brokers,
            cli.brokers
        );
    }
    let env = TestEnv::replicated(cli.partitions, cli.replication_factor).await?;
    RegistryAdmin::new(&env.conn.schema_registry_url)
        .register_all(&env.names)
        .await
        .context("registering the schemas")?;
    // Absolute: the services take file:/// URLs of it.
    let run_dir = std::path::absolute(cli.out.join(&env.conn.topic_prefix))?;
    let blobs = run_dir.join("blobs");
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(blobs.join("external"))?;
    std::fs::create_dir_all(&logs)?;
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .to_owned(),
    };
    eprintln!(
        "chaos: prefix {}, seed {seed}, {} brokers, replication factor {}, logs in {}",
        env.conn.topic_prefix,
        view.brokers.len(),
        cli.replication_factor,
        logs.display()
    );
    let documents = Documents::make(&run_dir)?;
    let c = Arc::new(Campaign {
        env,
        start: Instant::now(),
        bin_dir,
        blobs,
        logs,
        api_port: free_port(),
        http: reqwest::Client::new(),
        procs: Mutex::new(Procs {
            stages: HashMap::new(),
            api: None,
            held: Default::default(),
            self_exits: BTreeMap::new(),
            api_starts: 0,
        }),
        sent: Mutex::new(vec![]),
        poison: Mutex::new(vec![]),
        failed_sends: Mutex::new(vec![]),
        finals: Mutex::new(HashMap::new()),
        faults: Mutex::new(vec![]),
        counts: Mutex::new(BTreeMap::new()),
        stop_load: AtomicBool::new(false),
        track_failed: AtomicBool::new(false),
        documents,
        cli,
    });
    {
        let mut procs = c.procs.lock().expect("procs");
        for stage in Stage::ALL {
            for replica in REPLICAS {
                c.start_stage(&mut procs, stage, replica)?;
            }
        }
        c.start_api(&mut procs)?;
    }
    let ready_deadline = Instant::now() + Duration::from_secs(180);
    while !c.api_ready().await {
        let exited = c
            .procs
            .lock()
            .expect("procs")
            .api
            .as_mut()
            .is_some_and(|a| !a.is_running());
        anyhow::ensure!(
            !exited,
            "artifact-api exited at its start; see {}",
            c.logs.join("artifact-api.log").display()
        );
        anyhow::ensure!(
            Instant::now() < ready_deadline,
            "the API is not ready after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let supervisor = tokio::spawn(c.clone().supervise());
    let watcher = tokio::spawn(c.clone().watch_finals());
    let stalls = tokio::spawn(c.clone().watch_stalls());
    let load = tokio::spawn(c.clone().load());
    let track = |c: Arc<Campaign>, r: anyhow::Result<()>| {
        if r.is_err() {
            c.track_failed.store(true, Ordering::Relaxed);
        }
        r
    };
    let brokers = tokio::spawn({
        let c = c.clone();
        async move { track(c.clone(), c.broker_track(seed).await) }
    });
    let processes = tokio::spawn({
        let c = c.clone();
        async move { track(c.clone(), c.process_track(seed.wrapping_add(1)).await) }
    });
    let broker_result = brokers.await?;
    let process_result = processes.await?;
    c.stop_load.store(true, Ordering::Relaxed);
    let duration = c.start.elapsed();
    eprintln!(
        "chaos: faults done after {:.0}s; waiting for the last sends",
        duration.as_secs_f64()
    );
    load.await?;
    broker_result.context("broker faults")?;
    process_result.context("process faults")?;

    // Everything up again.
    stack(&["start-kafka"]).await?;
    stack(&["start-registry"]).await?;
    c.wait_whole(Duration::from_secs(600)).await?;
    // The supervisor keeps restarting what exits by itself until the end.

    let settle_start = Instant::now();
    let settle_deadline = settle_start + c.cli.settle;
    let sent: Vec<(Sent, Instant)> = c.sent.lock().expect("sent").clone();
    eprintln!(
        "chaos: {} artifacts sent; waiting for their final states",
        sent.len()
    );
    loop {
        let left = {
            let finals = c.finals.lock().expect("finals");
            sent.iter()
                .filter(|(s, _)| !finals.contains_key(&s.id))
                .count()
        };
        if left == 0 || Instant::now() >= settle_deadline {
            if left > 0 {
                eprintln!("chaos: {left} artifacts not final after {:?}", c.cli.settle);
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let groups: Vec<(String, Vec<String>)> = Stage::ALL
        .iter()
        .map(|s| {
            (
                format!("{}.{}", c.env.conn.topic_prefix, s.name()),
                vec![c.env.names.input(*s), c.env.names.retry(*s)],
            )
        })
        .collect();
    // (The projector commits no offsets: it reads its topics from the start
    // at every start. That it caught up shows in the check: the API's
    // status of every artifact equals the fold.)
    let unread_at_end = loop {
        let conn = c.env.conn.clone();
        let g = groups.clone();
        let partitions = c.cli.partitions;
        let unread = tokio::task::spawn_blocking(move || {
            let mut all = vec![];
            for (group, topics) in &g {
                all.extend(chaos::unread(&conn, group, topics, partitions)?);
            }
            anyhow::Ok(all)
        })
        .await??;
        if unread.is_empty() || Instant::now() >= settle_deadline {
            break unread;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let settle = settle_start.elapsed();

    let poison = c.poison.lock().expect("poison").clone();
    let sent_only: Vec<Sent> = sent.iter().map(|(s, _)| s.clone()).collect();
    let check = chaos::check(
        &c.env,
        &sent_only,
        &poison,
        c.cli.replication_factor,
        |id| {
            let url = c.api_url(&format!("/v1/artifacts/{id}"));
            let http = c.http.clone();
            async move {
                let r = http.get(url).bearer_auth(TOKEN).send().await?;
                if r.status() == 404 {
                    return Ok(None);
                }
                anyhow::ensure!(r.status().is_success(), "GET status: {}", r.status());
                Ok(Some(r.json::<StatusView>().await?))
            }
        },
    )
    .await?;
    watcher.abort();
    supervisor.abort();
    stalls.abort();

    // Times: recovery after each fault, the longest stall, end to end.
    let finals = c.finals.lock().expect("finals").clone();
    let mut faults = c.faults.lock().expect("faults").clone();
    for f in &mut faults {
        let at = c.start + Duration::from_secs_f64(f.at_s);
        f.recovery_s = sent
            .iter()
            .filter(|(_, t)| *t >= at)
            .filter_map(|(s, _)| finals.get(&s.id))
            .min()
            .map(|t| t.duration_since(at).as_secs_f64());
    }
    let mut timeline: Vec<(Instant, i64)> = sent.iter().map(|(_, t)| (*t, 1)).collect();
    timeline.extend(finals.values().map(|t| (*t, -1)));
    timeline.sort_by_key(|(t, d)| (*t, -*d));
    let (mut in_flight, mut last_progress, mut longest) = (0i64, c.start, Duration::ZERO);
    for (t, d) in &timeline {
        if *d < 0 {
            if in_flight > 0 {
                longest = longest.max(t.duration_since(last_progress));
            }
            last_progress = *t;
        } else if in_flight == 0 {
            last_progress = *t;
        }
        in_flight += d;
    }
    let e2e: Vec<f64> = sent
        .iter()
        .filter_map(|(s, t)| {
            finals
                .get(&s.id)
                .map(|f| f.duration_since(*t).as_secs_f64())
        })
        .collect();
    let mut summary: BTreeMap<Fault, KindSummary> = BTreeMap::new();
    for kind in BROKER_FAULTS.iter().chain(&PROCESS_FAULTS) {
        let of: Vec<&FaultRecord> = faults.iter().filter(|f| f.kind == *kind).collect();
        let rec: Vec<f64> = of.iter().filter_map(|f| f.recovery_s).collect();
        summary.insert(
            *kind,
            KindSummary {
                count: of.len(),
                recovery_p50_s: percentile(rec.clone(), 0.5),
                recovery_max_s: percentile(rec, 1.0),
                whole_again_max_s: percentile(
                    of.iter().filter_map(|f| f.whole_again_s).collect(),
                    1.0,
                ),
            },
        );
    }
    let mut by_kind = BTreeMap::new();
    for (s, _) in &sent {
        *by_kind
            .entry(format!("{:?}/{:?}", s.kind, s.via).to_lowercase())
            .or_insert(0usize) += 1;
    }
    let procs = c.procs.lock().expect("procs");
    let report = Report {
        seed,
        prefix: c.env.conn.topic_prefix.clone(),
        duration_s: duration.as_secs_f64(),
        settle_s: settle.as_secs_f64(),
        artifacts: sent.len(),
        by_kind,
        poison_sent: poison.len(),
        sends_failed: c.failed_sends.lock().expect("failed").clone(),
        faults: summary,
        fault_log: faults,
        self_exits: procs.self_exits.clone(),
        duplicates: check.duplicates.len(),
        losses: check.losses.len(),
        longest_stall_s: longest.as_secs_f64(),
        end_to_end_p50_s: percentile(e2e, 0.5),
        unread_at_end,
        check,
    };
    drop(procs);
    let path = run_dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    print_summary(&report);
    println!("report: {}", path.display());
    c.procs.lock().expect("procs").stages.clear();
    c.procs.lock().expect("procs").api = None;

    let short: Vec<String> = report
        .faults
        .iter()
        .filter(|(_, s)| s.count < c.cli.faults)
        .map(|(k, s)| format!("{k:?}: {}", s.count))
        .collect();
    if !report.check.is_clean()
        || !report.unread_at_end.is_empty()
        || !report.sends_failed.is_empty()
        || !short.is_empty()
    {
        eprintln!("chaos: FAILED (faults short of --faults: {short:?})");
        std::process::exit(1);
    }
    println!("chaos: exactly once held");
    Ok(())
}

fn print_summary(r: &Report) {
    println!(
        "chaos {}: {:.0}s of faults, {:.0}s to settle, seed {}",
        r.prefix, r.duration_s, r.settle_s, r.seed
    );
    println!(
        "artifacts: {} ({}), {} undecodable sent on purpose, {} sends failed",
        r.artifacts,
        r.by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.poison_sent,
        r.sends_failed.len()
    );
    println!("faults:");
    for (k, s) in &r.faults {
        println!(
            "  {:<17} {:>3}  recovery p50 {}  max {}{}",
            serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            s.count,
            fmt_s(s.recovery_p50_s),
            fmt_s(s.recovery_max_s),
            s.whole_again_max_s
                .map(|w| format!("  in sync again within {w:.1}s"))
                .unwrap_or_default()
        );
    }
    if !r.self_exits.is_empty() {
        println!("exits nobody asked for: {:?}", r.self_exits);
    }
    println!(
        "duplicates {}, losses {}, extra outcomes {}, wrong ends {}, API mismatches {}, dead-letter findings {}, strangers {}, topic findings {}, unread at the end {}",
        r.check.duplicates.len(),
        r.check.losses.len(),
        r.check.extra.len(),
        r.check.wrong_ends.len(),
        r.check.api_mismatches.len(),
        r.check.dead_letters.len(),
        r.check.strangers.len(),
        r.check.topics.len(),
        r.unread_at_end.len()
    );
    println!(
        "longest stall {:.1}s, end to end p50 {}",
        r.longest_stall_s,
        fmt_s(r.end_to_end_p50_s)
    );
    for f in r
        .check
        .duplicates
        .iter()
        .chain(&r.check.losses)
        .chain(&r.check.extra)
        .chain(&r.check.wrong_ends)
        .chain(&r.check.api_mismatches)
        .chain(&r.check.dead_letters)
        .chain(&r.check.strangers)
        .chain(&r.check.topics)
        .take(40)
    {
        println!("  {}: {}", f.id, f.what);
    }
}

fn fmt_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.1}s"))
}
