//! `bench-peers`: latency and machine CPU per artifact of this project's
//! pipeline beside a Kafka Streams chain of the same shape, at the same
//! rates and partition counts, in one run. Shapes:
//!
//! - `streams`: `benches/peers/kafka-streams`, four hops, each a keyed dedup
//!   over a RocksDB store with a changelog, exactly-once v2 (build it first:
//!   `mvn -q -f benches/peers/kafka-streams/pom.xml package`);
//! - `noop`: four `noop-stage` processes, the runtime's four hops with no
//!   work of their own;
//! - `stages`: the four real stages and the API, a tiny text uploaded and
//!   followed to its COMPLETED status snapshot (five hops, the projector's
//!   fold included).
//!
//! Latency is the time from the send (the produce call, or the upload
//! request's start) until a `read_committed` consumer of the chain's last
//! topic reads the artifact's end record. CPU per artifact is the CPU time
//! of the chain's processes, the local stack's (`STACK_HOME`) and this one
//! from the first send until the last end record, over the artifacts done;
//! machine CPU is `/proc/stat`'s busy time over the same span, which counts
//! everything else the machine runs too.
//!
//! Usage: `bench-peers [--rates 100,250,500] [--partitions 1,6,24]
//! [--seconds 20] [--shapes streams,noop,stages] [--streams-commit-ms 100]`
//! with the local stack up. Results and method: docs/BENCHMARKS.md.

use anyhow::{Context, bail};
use artifact_benches::{machine_busy_seconds, processes_cpu_seconds, stack_pids};
use artifact_domain::{ArtifactCreated, ArtifactId, ArtifactState, Generation, Stage, StatusView};
use artifact_kafka::client::{admin_client, consumer_config, producer_config};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::pipeline::{Pipeline, TOKEN};
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use clap::{Parser, ValueEnum};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Offered loads, artifacts per second.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500")]
    rates: Vec<u32>,
    /// Partitions of every topic, one set of runs per count.
    #[arg(long, value_delimiter = ',', default_value = "1,6,24")]
    partitions: Vec<usize>,
    /// Seconds of load per rate.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The chains to run, in this order at each partition count.
    #[arg(long, value_delimiter = ',', default_value = "streams,noop,stages")]
    shapes: Vec<Shape>,
    /// `commit.interval.ms` of the Kafka Streams chain; one `streams` run
    /// per value.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    streams_commit_ms: Vec<u32>,
    /// The Kafka Streams chain's Maven project (built).
    #[arg(long, default_value = "benches/peers/kafka-streams")]
    streams_dir: PathBuf,
    /// Seconds of load at the first rate, not measured, before a chain's
    /// measured loads.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// RUST_LOG of this project's services: their production default, so
    /// each record's span is formatted as in production.
    #[arg(long, default_value = "info")]
    service_log: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Shape {
    Streams,
    Noop,
    Stages,
}

/// The 150-byte text the `stages` chain uploads.
const TEXT: &str = "Quarterly report. Revenue grew in every region. Costs fell. \
The board approved the plan for next year and thanked the staff for their work.\n";

/// A running chain: how to send an artifact into it, and where it ends.
enum Chain {
    Streams {
        child: Child,
        producer: FutureProducer,
        topics: Vec<String>,
        app: String,
        state_dir: PathBuf,
    },
    Noop {
        env: Box<TestEnv>,
        stages: Vec<StageProcess>,
    },
    Stages {
        pipeline: Arc<Pipeline>,
    },
}

impl Chain {
    async fn start(
        shape: Shape,
        partitions: usize,
        commit_ms: u32,
        args: &Args,
    ) -> anyhow::Result<Self> {
        let bin_dir = std::env::current_exe()?.parent().unwrap().to_owned();
        match shape {
            Shape::Streams => start_streams(partitions, commit_ms, args).await,
            Shape::Noop => {
                let env = TestEnv::new(partitions).await?;
                let mut stages = Vec::new();
                for stage in Stage::ALL {
                    let group = format!("{}.{}", env.conn.topic_prefix, stage.name());
                    let vars = [
                        ("NOOP_STAGE", stage.name().to_owned()),
                        ("CONSUMER_GROUP", group),
                    ];
                    stages.push(StageProcess::start(
                        &env,
                        &bin_dir.join("noop-stage"),
                        &vars,
                    )?);
                }
                for s in &stages {
                    wait_until("a noop stage ready", Duration::from_secs(120), || {
                        s.is_ready()
                    })
                    .await?;
                }
                Ok(Chain::Noop {
                    env: Box::new(env),
                    stages,
                })
            }
            Shape::Stages => {
                let pipeline = Pipeline::start_partitioned(&bin_dir, partitions).await?;
                for (name, stage) in &pipeline.stages {
                    wait_until(&format!("{name} ready"), Duration::from_secs(120), || {
                        stage.is_ready()
                    })
                    .await?;
                }
                Ok(Chain::Stages {
                    pipeline: Arc::new(pipeline),
                })
            }
        }
    }

    fn conn(&self) -> ConnectionConfig {
        match self {
            Chain::Streams { app, .. } => ConnectionConfig::local(app),
            Chain::Noop { env, .. } => env.conn.clone(),
            Chain::Stages { pipeline } => pipeline.env.conn.clone(),
        }
    }

    /// The topic whose records mark an artifact done, and whether those are
    /// status snapshots (done when COMPLETED) rather than plain outputs.
    fn end(&self) -> (String, Option<AvroCodec>) {
        match self {
            Chain::Streams { topics, .. } => (topics.last().unwrap().clone(), None),
            Chain::Noop { env, .. } => (env.names.output(Stage::Summarizer), None),
            Chain::Stages { pipeline } => (
                pipeline.env.names.status(),
                AvroCodec::new(&pipeline.env.conn.schema_registry_url).ok(),
            ),
        }
    }

    /// The processes whose CPU an artifact costs, in three sets: the
    /// chain's, the local stack's (broker, registry, S3Proxy) and this load
    /// generator.
    fn pids(&self) -> [Vec<u32>; 3] {
        let chain: Vec<u32> = match self {
            Chain::Streams { child, .. } => vec![child.id()],
            Chain::Noop { stages, .. } => stages.iter().map(StageProcess::pid).collect(),
            Chain::Stages { pipeline } => pipeline
                .stages
                .values()
                .chain(pipeline.api.as_ref())
                .map(StageProcess::pid)
                .collect(),
        };
        let stack = stack_pids().into_iter().map(|(_, pid)| pid).collect();
        [chain, stack, vec![std::process::id()]]
    }

    /// Sends one artifact; `sent` gets its key and send time once the chain
    /// accepted it.
    async fn send(&self, sent: &Arc<Mutex<HashMap<String, Instant>>>) -> anyhow::Result<()> {
        let at = Instant::now();
        match self {
            Chain::Streams {
                producer, topics, ..
            } => {
                let key = uuid::Uuid::new_v4().to_string();
                let value = TEXT.as_bytes();
                let rec = FutureRecord::to(&topics[0]).key(&key).payload(value);
                let delivery = producer.send_result(rec).map_err(|(e, _)| e)?;
                sent.lock().unwrap().insert(key, at);
                tokio::spawn(async move {
                    if let Ok(Err((e, _))) = delivery.await {
                        eprintln!("a send failed: {e}");
                    }
                });
            }
            Chain::Noop { env, .. } => {
                let event = ArtifactCreated {
                    artifact_id: ArtifactId::new_random(),
                    generation: Generation::FIRST,
                    storage_location: "file:///nowhere".into(),
                    declared_content_type: Some("text/plain".into()),
                    filename: Some("peer.txt".into()),
                    size_bytes: Some(TEXT.len() as i64),
                    sha256: None,
                    created_at: now_ms(),
                };
                let topic = env.names.created();
                let payload = env
                    .codec
                    .encode(&topic, EventSchema::ArtifactCreated, &event)
                    .await?;
                let key = event.artifact_id.to_string();
                let rec = FutureRecord::to(&topic).key(&key).payload(&payload);
                let delivery = env.producer.send_result(rec).map_err(|(e, _)| e)?;
                sent.lock().unwrap().insert(key, at);
                tokio::spawn(async move {
                    if let Ok(Err((e, _))) = delivery.await {
                        eprintln!("a send failed: {e}");
                    }
                });
            }
            Chain::Stages { pipeline } => {
                let (p, sent) = (pipeline.clone(), sent.clone());
                tokio::spawn(async move {
                    let resp = p
                        .http
                        .post(p.url("/v1/artifacts?filename=note.txt"))
                        .bearer_auth(TOKEN)
                        .header("content-type", "text/plain")
                        .body(TEXT)
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == 202 => {
                            if let Ok(v) = r.json::<serde_json::Value>().await
                                && let Some(id) = v["artifact_id"].as_str()
                            {
                                sent.lock().unwrap().insert(id.to_owned(), at);
                            }
                        }
                        Ok(r) => eprintln!("an upload was refused: {}", r.status()),
                        Err(e) => eprintln!("an upload failed: {e}"),
                    }
                });
            }
        }
        Ok(())
    }

    async fn stop(self) {
        match self {
            Chain::Streams {
                mut child,
                app,
                state_dir,
                ..
            } => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(state_dir);
                if let Err(e) = delete_topics_with_prefix(&app).await {
                    eprintln!("warning: could not delete the chain's topics: {e}");
                }
            }
            Chain::Noop { env, stages } => {
                drop(stages);
                if let Err(e) = env.delete_topics().await {
                    eprintln!("warning: could not delete the chain's topics: {e}");
                }
            }
            Chain::Stages { pipeline } => {
                if let Ok(mut p) = Arc::try_unwrap(pipeline) {
                    p.stop();
                    if let Err(e) = p.env.delete_topics().await {
                        eprintln!("warning: could not delete the chain's topics: {e}");
                    }
                }
            }
        }
    }
}

async fn start_streams(partitions: usize, commit_ms: u32, args: &Args) -> anyhow::Result<Chain> {
    let app = format!("peers{}", uuid::Uuid::new_v4().simple());
    let conn = ConnectionConfig::local(&app);
    let topics: Vec<String> = (0..=4).map(|i| format!("{app}.{i}")).collect();
    let admin = admin_client(&conn)?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions as i32, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let dir = args.streams_dir.join("target");
    let jar = dir.join("streams-chain-0.1.0.jar");
    if !jar.exists() {
        bail!(
            "{} is missing: mvn -q -f {}/pom.xml package",
            jar.display(),
            args.streams_dir.display()
        );
    }
    let classpath = format!("{}:{}/lib/*", jar.display(), dir.display());
    let state_dir = std::env::temp_dir().join(&app);
    let mut child = Command::new("java")
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .args(["-cp", &classpath, "pipeline.peers.Chain"])
        .env("KAFKA_BOOTSTRAP_SERVERS", &conn.kafka_bootstrap_servers)
        .env("CHAIN_TOPICS", topics.join(","))
        .env("CHAIN_APP_ID", &app)
        .env("CHAIN_COMMIT_INTERVAL_MS", commit_ms.to_string())
        .env("CHAIN_STATE_DIR", &state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the Kafka Streams chain (is java on the PATH?)")?;
    let stdout = child.stdout.take().context("the chain's stdout")?;
    let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = running.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.trim() == "RUNNING" {
                flag.store(true, std::sync::atomic::Ordering::Release);
            }
        }
    });
    wait_until(
        "the Kafka Streams chain running",
        Duration::from_secs(120),
        || {
            let r = running.load(std::sync::atomic::Ordering::Acquire);
            async move { r }
        },
    )
    .await?;
    let producer: FutureProducer = producer_config(&conn, "bench-peers").create()?;
    Ok(Chain::Streams {
        child,
        producer,
        topics,
        app,
        state_dir,
    })
}

/// Deletes every topic whose name starts with `prefix` (the chain's own and
/// the changelog and repartition topics Kafka Streams made for it).
async fn delete_topics_with_prefix(prefix: &str) -> anyhow::Result<()> {
    let conn = ConnectionConfig::local(prefix);
    let consumer: BaseConsumer = consumer_config(&conn, "bench-peers", "bench-peers").create()?;
    let meta = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let names: Vec<&str> = meta
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    for r in admin_client(&conn)?
        .delete_topics(&names, &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("deleting {t}: {e}"))?;
    }
    Ok(())
}

/// Follows the chain's end topic from its current end, noting when each
/// artifact's end record is first read.
fn follow_end(
    chain: &Chain,
    partitions: usize,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let conn = chain.conn();
    let (topic, status_codec) = chain.end();
    let group = format!("bench-peers-{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = consumer_config(&conn, "bench-peers-end", &group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let (_, end) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(&topic, p, Offset::Offset(end))?;
    }
    consumer.assign(&tpl)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(m) = consumer.recv().await else {
                continue;
            };
            let at = Instant::now();
            let Some(key) = m.key().map(|k| String::from_utf8_lossy(k).into_owned()) else {
                continue;
            };
            if let Some(codec) = &status_codec {
                match codec.decode::<StatusView>(m.payload()).await {
                    Ok(v) if v.state == ArtifactState::Completed => {}
                    _ => continue,
                }
            }
            seen.lock().unwrap().entry(key).or_insert(at);
        }
    }))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One load: `rate` artifacts per second for `seconds`, then the wait for
/// the last; returns the table row's cells after the shape.
async fn load(
    chain: &Chain,
    seen: &Arc<Mutex<HashMap<String, Instant>>>,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<String> {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let pids = chain.pids();
    let machine_before = machine_busy_seconds().unwrap_or(f64::NAN);
    let cpu = || pids.each_ref().map(|p| processes_cpu_seconds(p));
    let processes_before = cpu();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = u64::from(rate) * seconds;
    for i in 0..total {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        chain.send(&sent).await?;
    }
    let all_done = || {
        let sent = sent.lock().unwrap();
        let seen = seen.lock().unwrap();
        let r = sent.keys().all(|k| seen.contains_key(k));
        async move { r }
    };
    // Uploads still in flight join `sent` shortly; wait for those first.
    let _ = wait_until("every send answered", Duration::from_secs(30), || {
        let n = sent.lock().unwrap().len() as u64;
        async move { n >= total }
    })
    .await;
    if let Err(e) = wait_until("every artifact done", Duration::from_secs(180), all_done).await {
        eprintln!("warning: {e}");
    }
    let machine_after = machine_busy_seconds().unwrap_or(f64::NAN);
    let processes_after = cpu();
    let sent = sent.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(k, s)| {
            seen.get(k)
                .map(|e| e.duration_since(*s).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let done = lat.len();
    let per_artifact = |secs: f64| secs * 1000.0 / done.max(1) as f64;
    Ok(format!(
        "{} | {done} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
        sent.len(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        per_artifact(processes_after.iter().sum::<f64>() - processes_before.iter().sum::<f64>()),
        per_artifact(processes_after[0] - processes_before[0]),
        per_artifact(processes_after[1] - processes_before[1]),
        per_artifact(machine_after - machine_before),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: no other thread exists yet: the runtime is built below.
    unsafe { artifact_benches::service_env(&args.service_log) };
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    println!(
        "| partitions | load /s | chain | sent | done | p50 ms | p99 ms | CPU ms per artifact | of which chain | of which stack | machine CPU ms per artifact |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &partitions in &args.partitions {
        let mut runs: Vec<(Shape, u32)> = Vec::new();
        for &shape in &args.shapes {
            if shape == Shape::Streams {
                runs.extend(args.streams_commit_ms.iter().map(|&c| (shape, c)));
            } else {
                runs.push((shape, 0));
            }
        }
        for (shape, commit_ms) in runs {
            let label = match shape {
                Shape::Streams => format!("Kafka Streams, commit {commit_ms} ms"),
                Shape::Noop => "runtime, no-op stages".to_owned(),
                Shape::Stages => "pipeline, API to COMPLETED".to_owned(),
            };
            let chain = Chain::start(shape, partitions, commit_ms, &args).await?;
            let seen: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
            let follower = follow_end(&chain, partitions, seen.clone())?;
            // Warm-up: the first seconds pay for connections, schema
            // look-ups, the JIT and the first transactions; not measured.
            if args.warmup > 0 {
                load(&chain, &seen, args.rates[0], args.warmup).await?;
            }
            for &rate in &args.rates {
                let cells = load(&chain, &seen, rate, args.seconds).await?;
                let row = format!("| {partitions} | {rate} | {label} | {cells}");
                println!("{row}");
                rows.push(row);
            }
            follower.abort();
            chain.stop().await;
        }
    }
    Ok(())
}
