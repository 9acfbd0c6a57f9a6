//! `bench-stages`: the throughput of each stage on its own, for a 1-page and
//! a 100-page PDF, and pdf-parser's peak memory on the largest documents.
//!
//! Each measured run gets a fresh topic prefix and one stage process (a
//! release binary beside this one, default settings). The stage is started
//! on an empty input topic and waited for until it is ready (partitions
//! assigned, dedup state restored); then all its input events are written in
//! one Kafka transaction, so the stage sees them at once. The rate is the
//! number of artifacts divided by the time from that commit to the broker
//! append time of the stage's last output record. (The first output record
//! is not a usable start: a stage writes a batch's outputs when the batch
//! commits, and a batch holds up to 5 000 records, so with few slow
//! artifacts every output lands in one commit.)
//!
//! Inputs are made by the real upstream stages: the bench writes one blob per
//! artifact (a copy of the PDF, as the API stores uploads) and an
//! `ArtifactCreated` for each, runs mime-detector on them, feeds its outputs
//! to location-logger, and so on; each stage's outputs are kept and fed,
//! re-encoded for the next prefix, to the next stage. Every output must be a
//! success, or the run fails.
//!
//! Peak memory is `VmHWM` of the stage process (`/proc/<pid>/status`): once
//! when it is ready and idle, once after its last output.
//!
//! Usage: `bench-stages [--records N] [--records-100 N] [--records-100-parse N]
//! [--stages a,b] [--rounds N] [--pdf-1 FILE] [--pdf-100 FILE]
//! [--memory-pdfs A,B] [--only throughput|memory]` with the local stack up;
//! see docs/BENCHMARKS.md.

use anyhow::{Context, bail, ensure};
use artifact_blob::BlobStore;
use artifact_domain::{ArtifactCreated, ArtifactId, Generation, PipelineEvent, Stage};
use artifact_kafka::client::producer_config;
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::pipeline::fixtures;
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use clap::Parser;
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "bench-stages",
    about = "Each stage's throughput on its own (1-page and 100-page PDFs) and pdf-parser's peak memory"
)]
struct Args {
    /// The 1-page PDF [default: reportlab-1-page.pdf of the fixture set].
    #[arg(long)]
    pdf_1: Option<PathBuf>,
    /// The 100-page PDF [default: reportlab-100-pages.pdf of the fixture set].
    #[arg(long)]
    pdf_100: Option<PathBuf>,
    /// Artifacts per run with the 1-page PDF.
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Artifacts per run with the 100-page PDF in mime-detector and
    /// location-logger.
    #[arg(long, default_value_t = 2_000)]
    records_100: usize,
    /// Artifacts per run with the 100-page PDF in pdf-parser and summarizer
    /// (the first ones of the above), whose rates are far lower.
    #[arg(long, default_value_t = 200)]
    records_100_parse: usize,
    /// Stages to measure. The stages before the last one named also run
    /// (once per document) to make its inputs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mime-detector,location-logger,pdf-parser,summarizer"
    )]
    stages: Vec<Stage>,
    /// Runs of each stage and document; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 6)]
    partitions: usize,
    /// PDFs on which pdf-parser's peak memory is measured [default: the
    /// largest PDF of the fixture set outside malformed/].
    #[arg(long, value_delimiter = ',')]
    memory_pdfs: Vec<PathBuf>,
    /// Artifacts of each memory PDF given to pdf-parser together (it parses
    /// up to STAGE_CONCURRENCY at once).
    #[arg(long, default_value_t = 1)]
    memory_copies: usize,
    /// Runs only the throughput or only the memory measurement.
    #[arg(long, value_parser = ["throughput", "memory"])]
    only: Option<String>,
    /// An extra environment variable for every stage process, KEY=VALUE
    /// (repeatable), e.g. PARSE_MAX_PAGES=2000.
    #[arg(long = "stage-env", value_parser = parse_env)]
    stage_env: Vec<(String, String)>,
    /// RUST_LOG of the stage processes (info is the stages' default).
    #[arg(long, default_value = "info")]
    stage_log: String,
    /// Directory of the stage binaries [default: the one of this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Longest wait for one stage run's outputs.
const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// How the stage processes are started.
struct Runner {
    bin_dir: PathBuf,
    partitions: usize,
    vars: Vec<(String, String)>,
}

/// One stage run.
struct Run {
    /// Artifacts per second, from the input commit to the last output.
    rate: f64,
    /// Milliseconds from the input commit to the first and the last output.
    first_ms: i64,
    last_ms: i64,
    /// `VmHWM` when ready and idle, and after the last output.
    idle_rss: u64,
    peak_rss: u64,
    /// The outputs, in no particular order.
    outputs: Vec<PipelineEvent>,
}

fn input_schema(e: &PipelineEvent) -> EventSchema {
    match e {
        PipelineEvent::Created(_) => EventSchema::ArtifactCreated,
        PipelineEvent::MimeDetected(_) => EventSchema::MimeDetected,
        PipelineEvent::LocationVerified(_) => EventSchema::LocationVerified,
        PipelineEvent::Parsed(_) => EventSchema::Parsed,
        PipelineEvent::Summarized(_) => EventSchema::Summarized,
    }
}

async fn encode(env: &TestEnv, topic: &str, e: &PipelineEvent) -> anyhow::Result<Vec<u8>> {
    let (c, s) = (&env.codec, input_schema(e));
    Ok(match e {
        PipelineEvent::Created(x) => c.encode(topic, s, x).await?,
        PipelineEvent::MimeDetected(x) => c.encode(topic, s, x).await?,
        PipelineEvent::LocationVerified(x) => c.encode(topic, s, x).await?,
        PipelineEvent::Parsed(x) => c.encode(topic, s, x).await?,
        PipelineEvent::Summarized(x) => c.encode(topic, s, x).await?,
    })
}

async fn decode_output(
    env: &TestEnv,
    stage: Stage,
    payload: Option<&[u8]>,
) -> anyhow::Result<PipelineEvent> {
    let c = &env.codec;
    Ok(match stage {
        Stage::MimeDetector => PipelineEvent::MimeDetected(c.decode(payload).await?),
        Stage::LocationLogger => PipelineEvent::LocationVerified(c.decode(payload).await?),
        Stage::PdfParser => PipelineEvent::Parsed(c.decode(payload).await?),
        Stage::Summarizer => PipelineEvent::Summarized(c.decode(payload).await?),
    })
}

/// Writes `records` to `topic` in one transaction; returns the time (epoch
/// ms) its commit returned, before which a `read_committed` reader sees none
/// of them.
async fn produce_committed(
    env: &TestEnv,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> anyhow::Result<i64> {
    let producer: FutureProducer = producer_config(&env.conn, "bench-input")
        .set(
            "transactional.id",
            format!("{}.bench-input", env.conn.topic_prefix),
        )
        .set("linger.ms", "5")
        .create()?;
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30))).await??;
    producer.begin_transaction()?;
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload) in records {
        let rec = FutureRecord::to(topic).key(key).payload(payload);
        pending.push(producer.send_result(rec).map_err(|(e, _)| e)?);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e).context("producing an input")?;
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.commit_transaction(Duration::from_secs(60))).await??;
    Ok(now_ms())
}

impl Runner {
    /// Runs `stage` on its own, on a fresh prefix, over `inputs`.
    async fn run(
        &self,
        stage: Stage,
        blobs: &Path,
        inputs: &[PipelineEvent],
    ) -> anyhow::Result<Run> {
        TestEnv::scoped(self.partitions, async |env| {
            self.run_in(env, stage, blobs, inputs).await
        })
        .await
    }

    async fn run_in(
        &self,
        env: &TestEnv,
        stage: Stage,
        blobs: &Path,
        inputs: &[PipelineEvent],
    ) -> anyhow::Result<Run> {
        let n = inputs.len();
        let (in_topic, out_topic) = (env.names.input(stage), env.names.output(stage));
        env.use_append_time(&out_topic).await?;
        let mut records = Vec::with_capacity(n);
        for e in inputs {
            records.push((
                e.artifact_id().to_string(),
                encode(env, &in_topic, e).await?,
            ));
        }
        let mut vars = vec![("BLOB_STORE_URL", format!("file://{}", blobs.display()))];
        vars.extend(self.vars.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let bin = self.bin_dir.join(stage.name());
        // Its logs are formatted as in production (RUST_LOG) and dropped.
        let mut proc = StageProcess::start_with_logs(env, &bin, &vars, Stdio::null())?;
        wait_until(&format!("{stage} ready"), Duration::from_secs(120), || {
            proc.is_ready()
        })
        .await?;
        let idle_rss = proc.peak_rss_bytes().unwrap_or(0);
        let committed = produce_committed(env, &in_topic, &records).await?;
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let done = proc.metric("artifact_stage_outcomes_total", &[]).await;
            if done >= n as f64 {
                break;
            }
            ensure!(
                proc.is_running(),
                "{stage} exited after {done} of {n} outcomes"
            );
            ensure!(
                Instant::now() < deadline,
                "{stage} wrote {done} of {n} outcomes within {RUN_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let peak_rss = proc.peak_rss_bytes().unwrap_or(0);
        proc.terminate(Duration::from_secs(15));
        let msgs = env.read_all(&out_topic)?;
        ensure!(
            msgs.len() == n,
            "{stage} wrote {} outcomes for {n} inputs",
            msgs.len()
        );
        let stamps: Vec<i64> = msgs
            .iter()
            .filter_map(|m| m.timestamp().to_millis())
            .collect();
        let first = stamps.iter().min().copied().unwrap_or(committed);
        let last = stamps.iter().max().copied().unwrap_or(committed);
        let mut outputs = Vec::with_capacity(n);
        for m in &msgs {
            outputs.push(decode_output(env, stage, m.payload()).await?);
        }
        Ok(Run {
            rate: n as f64 / ((last - committed) as f64 / 1000.0).max(0.001),
            first_ms: first - committed,
            last_ms: last - committed,
            idle_rss,
            peak_rss,
            outputs,
        })
    }
}

/// A document given to the stages as `copies` artifacts, with the input
/// events of each stage once they have been made.
struct Doc {
    label: String,
    /// Artifacts given to pdf-parser and summarizer (at most all copies).
    parse_copies: usize,
    path: PathBuf,
    bytes: u64,
    /// The blob root: `uploads/<id>` per artifact, `texts/…` by pdf-parser.
    blobs: PathBuf,
    /// Pages as counted by pdf-parser, once it ran.
    pages: Option<i32>,
    inputs: BTreeMap<Stage, Vec<PipelineEvent>>,
}

impl Doc {
    /// Stores `copies` copies of `path` as uploads and makes their
    /// `ArtifactCreated` events.
    async fn new(
        label: &str,
        path: &Path,
        copies: usize,
        parse_copies: usize,
        root: &Path,
    ) -> anyhow::Result<Doc> {
        let pdf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let blobs = root.join(format!("{label}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(blobs.join("uploads"))?;
        let store = BlobStore::from_url(&format!("file://{}", blobs.display()))?;
        let mut created = Vec::with_capacity(copies);
        let mut sha256 = None;
        for _ in 0..copies {
            let id = ArtifactId::new_random();
            let rel = format!("uploads/{id}");
            std::fs::write(blobs.join(&rel), &pdf)?;
            let location = store.location(&rel);
            if sha256.is_none() {
                sha256 = Some(store.digest(&location).await?.sha256);
            }
            created.push(PipelineEvent::Created(ArtifactCreated {
                artifact_id: id,
                generation: Generation::FIRST,
                storage_location: location,
                declared_content_type: Some("application/pdf".into()),
                filename: path.file_name().map(|f| f.to_string_lossy().into_owned()),
                size_bytes: Some(pdf.len() as i64),
                sha256: sha256.clone(),
                created_at: now_ms(),
            }));
        }
        Ok(Doc {
            label: label.to_owned(),
            parse_copies,
            path: std::fs::canonicalize(path)?,
            bytes: pdf.len() as u64,
            blobs,
            pages: None,
            inputs: BTreeMap::from([(Stage::MimeDetector, created)]),
        })
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn note_pages(&mut self, outputs: &[PipelineEvent]) {
        for e in outputs {
            if let PipelineEvent::Parsed(p) = e
                && let Some(r) = &p.result
            {
                self.pages = r.page_count;
            }
        }
    }

    /// Runs `stage` over its inputs, making them first by running the stages
    /// before it (each on its own) if needed. With `all_succeed`, any other
    /// outcome fails the run.
    async fn run(&mut self, r: &Runner, stage: Stage, all_succeed: bool) -> anyhow::Result<Run> {
        if !self.inputs.contains_key(&stage) {
            let prev = stage
                .previous()
                .expect("mime-detector's inputs are made up front");
            let run = Box::pin(self.run(r, prev, true)).await?;
            eprintln!(
                "  {prev} made {} inputs for {stage} ({:.0} artifacts/s)",
                run.outputs.len(),
                run.rate
            );
        }
        let mut inputs = self.inputs[&stage].as_slice();
        if matches!(stage, Stage::PdfParser | Stage::Summarizer) {
            inputs = &inputs[..inputs.len().min(self.parse_copies)];
        }
        let run = r.run(stage, &self.blobs, inputs).await?;
        if all_succeed {
            let mut other: BTreeMap<&str, (usize, String)> = BTreeMap::new();
            for e in &run.outputs {
                let o = e.outcome().expect("stage outputs carry an outcome");
                if o.label() != "succeeded" {
                    let entry = other.entry(o.label()).or_default();
                    entry.0 += 1;
                    entry.1 = o.reason().unwrap_or_default().to_owned();
                }
            }
            if !other.is_empty() {
                bail!(
                    "{stage} on {}: outcomes other than success: {other:?}",
                    self.name()
                );
            }
        }
        self.note_pages(&run.outputs);
        if let Some(next) = stage.next() {
            self.inputs
                .entry(next)
                .or_insert_with(|| run.outputs.clone());
        }
        Ok(run)
    }
}

/// The largest PDF of the fixture set, malformed/ (hostile probes) aside.
fn largest_fixture(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for sub in [dir.to_owned(), dir.join("text")] {
        for entry in std::fs::read_dir(&sub)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "pdf") {
                let len = std::fs::metadata(&path)?.len();
                if best.as_ref().is_none_or(|(b, _)| len > *b) {
                    best = Some((len, path));
                }
            }
        }
    }
    best.map(|(_, p)| p).context("no PDF in the fixture set")
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn throughput(args: &Args, r: &Runner, root: &Path) -> anyhow::Result<()> {
    let fx = if args.pdf_1.is_none() || args.pdf_100.is_none() {
        fixtures()
    } else {
        PathBuf::new()
    };
    let pdf_1 = args
        .pdf_1
        .clone()
        .unwrap_or_else(|| fx.join("reportlab-1-page.pdf"));
    let pdf_100 = args
        .pdf_100
        .clone()
        .unwrap_or_else(|| fx.join("reportlab-100-pages.pdf"));
    let mut docs = vec![
        Doc::new("1-page", &pdf_1, args.records, args.records, root).await?,
        Doc::new(
            "100-page",
            &pdf_100,
            args.records_100,
            args.records_100_parse,
            root,
        )
        .await?,
    ];
    let mut stages = args.stages.clone();
    stages.sort();
    stages.dedup();
    // rates[(doc, stage)] per round; peak memory the highest of the rounds.
    let mut rates: BTreeMap<(usize, Stage), Vec<f64>> = BTreeMap::new();
    let mut peaks: BTreeMap<(usize, Stage), u64> = BTreeMap::new();
    let mut counts: BTreeMap<(usize, Stage), usize> = BTreeMap::new();
    // Interleaved rounds, so drift on the machine touches every run alike.
    for round in 1..=args.rounds {
        for (d, doc) in docs.iter_mut().enumerate() {
            for &stage in &stages {
                let run = doc.run(r, stage, true).await?;
                counts.insert((d, stage), run.outputs.len());
                eprintln!(
                    "round {round}, {stage}, {} x {}: {:.1} artifacts/s (outputs from {} to {} ms after the input commit), peak RSS {:.1} MiB (idle {:.1})",
                    run.outputs.len(),
                    doc.name(),
                    run.rate,
                    run.first_ms,
                    run.last_ms,
                    mib(run.peak_rss),
                    mib(run.idle_rss),
                );
                rates.entry((d, stage)).or_default().push(run.rate);
                let peak = peaks.entry((d, stage)).or_default();
                *peak = (*peak).max(run.peak_rss);
            }
        }
    }
    println!();
    for doc in &docs {
        println!(
            "- {}: {} ({} bytes, page count by pdf-parser: {})",
            doc.label,
            doc.path.display(),
            doc.bytes,
            doc.pages.map_or("?".into(), |p| p.to_string()),
        );
    }
    println!();
    let rounds: String = (1..=args.rounds).map(|i| format!(" round {i} |")).collect();
    let aligns: String = (1..=args.rounds).map(|_| " ---: |").collect();
    println!(
        "| stage | PDF | artifacts per run |{rounds} median artifacts/s | pages/s | peak RSS MiB |"
    );
    println!("| --- | --- | ---: |{aligns} ---: | ---: | ---: |");
    for &stage in &stages {
        for (d, doc) in docs.iter().enumerate() {
            let v = &rates[&(d, stage)];
            let cells: String = v.iter().map(|x| format!(" {x:.1} |")).collect();
            let m = median(v.clone());
            // Pages per second is pdf-parser's unit (docs/PDF-QUALITY.md).
            let pages = match (stage, doc.pages) {
                (Stage::PdfParser, Some(p)) => format!("{:.0}", m * f64::from(p)),
                _ => "–".into(),
            };
            println!(
                "| {stage} | {} | {} |{cells} **{m:.1}** | {pages} | {:.1} |",
                doc.label,
                counts[&(d, stage)],
                mib(peaks[&(d, stage)])
            );
        }
    }
    Ok(())
}

async fn memory(args: &Args, r: &Runner, root: &Path) -> anyhow::Result<()> {
    let pdfs = if args.memory_pdfs.is_empty() {
        vec![largest_fixture(&fixtures())?]
    } else {
        args.memory_pdfs.clone()
    };
    let mut rows = Vec::new();
    for path in pdfs {
        let copies = args.memory_copies;
        let mut doc = Doc::new("memory", &path, copies, copies, root).await?;
        let run = doc.run(r, Stage::PdfParser, false).await?;
        let outcome = run
            .outputs
            .first()
            .and_then(|e| e.outcome())
            .map(|o| match o.reason() {
                None => o.label().to_owned(),
                Some(reason) => format!("{}: {reason}", o.label()),
            })
            .unwrap_or_default();
        eprintln!(
            "memory, {} x {}: {outcome}, peak RSS {:.1} MiB (idle {:.1}), last output {} ms after the input commit",
            args.memory_copies,
            doc.name(),
            mib(run.peak_rss),
            mib(run.idle_rss),
            run.last_ms
        );
        rows.push(format!(
            "| {} | {} | {} | {} | {outcome} | {:.1} | **{:.1}** | {} |",
            doc.path.display(),
            doc.bytes,
            doc.pages.map_or("?".into(), |p| p.to_string()),
            args.memory_copies,
            mib(run.idle_rss),
            mib(run.peak_rss),
            run.last_ms
        ));
    }
    println!();
    println!(
        "| document | bytes | pages | artifacts | pdf-parser outcome | peak RSS idle MiB | peak RSS after MiB | ms to last output |"
    );
    println!("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        [
            args.rounds,
            args.records,
            args.records_100,
            args.records_100_parse,
            args.memory_copies
        ]
        .iter()
        .all(|&n| n > 0),
        "--rounds, --records, --records-100, --records-100-parse and --memory-copies must be positive"
    );
    ensure!(!args.stages.is_empty(), "--stages names no stage");
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary's directory")?
            .to_owned(),
    };
    let mut vars = vec![("RUST_LOG".to_owned(), args.stage_log.clone())];
    vars.extend(args.stage_env.iter().cloned());
    let r = Runner {
        bin_dir,
        partitions: args.partitions,
        vars,
    };
    let root = TempDir(
        std::env::temp_dir().join(format!("bench-stages-{}", uuid::Uuid::new_v4().simple())),
    );
    std::fs::create_dir_all(&root.0)?;
    println!(
        "cores: {}, load average at start: {}, partitions: {}, rounds: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        args.partitions,
        args.rounds
    );
    if args.only.as_deref() != Some("memory") {
        throughput(&args, &r, &root.0).await?;
    }
    if args.only.as_deref() != Some("throughput") {
        memory(&args, &r, &root.0).await?;
    }
    println!();
    println!("load average at the end: {}", load_average());
    Ok(())
}
