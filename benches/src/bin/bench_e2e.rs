//! `bench-e2e`: end-to-end throughput and latency of the whole pipeline on
//! this machine. It starts the four stages and artifact-api (the binaries
//! beside this one), then, for each offered load, uploads 1-page PDFs
//! through the API at that rate for a while and measures, per artifact, the
//! time from the upload's 202 to the summary being visible: the broker
//! append time of the first status snapshot in the completed state, the
//! record the API's read model answers from. Completions per second over the
//! run give the sustained throughput. Per load it also prints the latency
//! per hop (to each stage's outcome, then to the read model) and the CPU
//! time per completed artifact of each process: the local broker, the API
//! and each stage; and the API's resident memory after each load.
//!
//! Optionally it then restarts the API from given binaries and measures
//! each start with every artifact of the run settled.
//!
//! Usage: `bench-e2e --pdf FILE [--loads 10,25,50,100] [--seconds 15]
//! [--partitions 3] [--service-log info] [--restart-api BIN,BIN…
//! [--restart-watch 15]]` with the local stack up.

use anyhow::Context;
use artifact_benches::{broker_pid, machine_busy_seconds, process_cpu_seconds};
use artifact_domain::{ArtifactState, Stage, StatusView, Summarized};
use artifact_kafka::now_ms;
use artifact_kafka::topics::Cleanup;
use artifact_pipeline_tests::pipeline::{Pipeline, TOKEN};
use artifact_pipeline_tests::wait_until;
use clap::Parser;
use rdkafka::Message;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The 1-page PDF to upload.
    #[arg(long)]
    pdf: PathBuf,
    /// Offered loads, artifacts per second.
    #[arg(long, value_delimiter = ',', default_value = "10,25,50,100")]
    loads: Vec<u32>,
    /// Seconds of uploads per load.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 3)]
    partitions: usize,
    /// RUST_LOG of the services: by default their own production default,
    /// so each record's span is formatted and location-logger writes its
    /// line per artifact (to this program's standard error).
    #[arg(long, default_value = "info")]
    service_log: String,
    /// After the loads, restarts the API from each of these binaries in
    /// turn (e.g. two builds, alternating) and measures its start: time to
    /// ready, status snapshots written and CPU over the next
    /// `--restart-watch` seconds, and RSS then.
    #[arg(long, value_delimiter = ',')]
    restart_api: Vec<PathBuf>,
    /// Seconds each restarted API is watched after it is ready.
    #[arg(long, default_value_t = 15)]
    restart_watch: u64,
    /// `segment.ms` of the run's compacted topics instead of the
    /// catalogue's (an hour), so that the log cleaner compacts them within
    /// the run (it looks for work every 15 s).
    #[arg(long)]
    compacted_segment_ms: Option<u64>,
}

/// Records in `topic` (the sum of its partitions' end offsets).
fn records_in(p: &Pipeline, topic: &str) -> anyhow::Result<i64> {
    let mut n = 0;
    for partition in 0..p.env.partitions as i32 {
        n += p.env.watermarks(topic, partition)?.1;
    }
    Ok(n)
}

/// Restarts the API from `bin` and prints one row of the restart table.
async fn restart_api(
    p: &mut Pipeline,
    bin: &std::path::Path,
    watch: Duration,
) -> anyhow::Result<()> {
    let status = p.env.names.status();
    if let Some(mut api) = p.api.take() {
        api.terminate(Duration::from_secs(20));
    }
    let before = records_in(p, &status)?;
    // What the restore reads: the records left after compaction.
    let on_topic = p.env.read_all(&status)?.len();
    let started = Instant::now();
    p.start_api_from(bin).await?;
    let ready = started.elapsed().as_secs_f64();
    let api = p.api.as_ref().expect("started");
    tokio::time::sleep(watch).await; // the measurement window
    let written = records_in(p, &status)? - before;
    let cpu = process_cpu_seconds(api.pid()).unwrap_or(f64::NAN);
    let rss = api.rss_bytes().unwrap_or(0) as f64 / 1048576.0;
    println!(
        "| {} | {on_topic} | {ready:.2} | {written} | {cpu:.2} | {rss:.1} |",
        bin.display()
    );
    Ok(())
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The p50 / p95 table cell of one hop: per artifact, the time from its
/// record in `from` to its record in `to`.
fn hop_cell(from: &HashMap<String, i64>, to: &HashMap<String, i64>) -> String {
    let mut d: Vec<i64> = to
        .iter()
        .filter_map(|(id, t)| from.get(id).map(|p| t - p))
        .collect();
    d.sort_unstable();
    format!(" {} / {} |", pct(&d, 0.50), pct(&d, 0.95))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: no other thread exists yet: the runtime is built below.
    unsafe { artifact_benches::service_env(&args.service_log) };
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let pdf = Arc::new(
        std::fs::read(&args.pdf).with_context(|| format!("reading {}", args.pdf.display()))?,
    );
    let bin_dir = std::env::current_exe()?.parent().unwrap().to_owned();
    let mut p = Arc::new(Pipeline::start_partitioned(&bin_dir, args.partitions).await?);
    if let Some(ms) = args.compacted_segment_ms {
        let ms = ms.to_string();
        for t in p.env.names.catalogue() {
            if t.cleanup == Cleanup::Compact {
                p.env
                    .set_topic_configs(&t.name, &[("segment.ms", &ms)])
                    .await?;
            }
        }
    }
    // The first load measures a running pipeline, not its start: a stage is
    // ready once it owns partitions and restored their dedup state.
    for (name, stage) in &p.stages {
        wait_until(&format!("{name} ready"), Duration::from_secs(120), || {
            stage.is_ready()
        })
        .await?;
    }
    let topic = p.env.names.output(Stage::Summarizer);
    let mut hops: Vec<String> = Vec::new();
    let mut cpu_rows: Vec<String> = Vec::new();
    let mut memory_rows: Vec<String> = Vec::new();
    let mut uploaded_so_far = 0usize;
    // Whose CPU time is counted per artifact: the broker, the API, the stages.
    let mut pids: Vec<(&str, u32)> = Vec::new();
    pids.extend(broker_pid().map(|pid| ("broker", pid)));
    if let Some(api) = &p.api {
        pids.push(("artifact-api", api.pid()));
    }
    for stage in Stage::ALL {
        if let Some(s) = p.stages.get(stage.name()) {
            pids.push((stage.name(), s.pid()));
        }
    }
    let cpu_now = |pids: &[(&str, u32)]| -> Vec<f64> {
        pids.iter()
            .map(|(_, pid)| process_cpu_seconds(*pid).unwrap_or(f64::NAN))
            .collect()
    };
    println!("| offered /s | uploaded | completed | throughput /s | p50 ms | p95 ms | p99 ms |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for load in args.loads {
        let accepted: Arc<tokio::sync::Mutex<HashMap<String, i64>>> = Default::default();
        let cpu_before = cpu_now(&pids);
        let machine_before = machine_busy_seconds().unwrap_or(f64::NAN);
        let started = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / f64::from(load));
        let total = u64::from(load) * args.seconds;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let due = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            let (p, pdf, accepted) = (p.clone(), pdf.clone(), accepted.clone());
            tasks.spawn(async move {
                let resp = p
                    .http
                    .post(p.url("/v1/artifacts?filename=one-page.pdf"))
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/pdf")
                    .body(pdf.as_ref().clone())
                    .send()
                    .await;
                if let Ok(r) = resp
                    && r.status() == 202
                {
                    let at = now_ms();
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        let id = v["artifact_id"].as_str().unwrap_or_default().to_owned();
                        accepted.lock().await.insert(id, at);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let uploaded = accepted.lock().await.len();
        // Wait for the stragglers (bounded), then read the summaries.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut done: HashMap<String, i64> = HashMap::new();
        while Instant::now() < deadline {
            done.clear();
            let ids = accepted.lock().await;
            for m in p.env.read_all(&topic)? {
                let Ok(s) = p.env.codec.decode::<Summarized>(m.payload()).await else {
                    continue;
                };
                let id = s.artifact_id.to_string();
                if ids.contains_key(&id) {
                    done.insert(id, m.timestamp().to_millis().unwrap_or(0));
                }
            }
            if done.len() >= ids.len() {
                break;
            }
            drop(ids);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let cpu_after = cpu_now(&pids);
        let machine_after = machine_busy_seconds().unwrap_or(f64::NAN);
        let ids = accepted.lock().await;
        // Visible: the first completed snapshot of each summarized artifact
        // (the projector may still be a little behind the summaries).
        let mut visible: HashMap<String, i64> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while visible.len() < done.len() && Instant::now() < deadline {
            visible.clear();
            for m in p.env.read_all(&p.env.names.status())? {
                let Ok(v) = p.env.codec.decode::<StatusView>(m.payload()).await else {
                    continue;
                };
                let id = v.artifact_id.to_string();
                if v.state == ArtifactState::Completed && done.contains_key(&id) {
                    visible
                        .entry(id)
                        .or_insert(m.timestamp().to_millis().unwrap_or(0));
                }
            }
            if visible.len() < done.len() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let done = visible;
        let mut lat: Vec<i64> = done.iter().map(|(id, t)| t - ids[id]).collect();
        lat.sort_unstable();
        let first = ids.values().min().copied().unwrap_or(0);
        let last = done.values().max().copied().unwrap_or(first);
        let throughput = done.len() as f64 / ((last - first) as f64 / 1000.0).max(0.001);
        println!(
            "| {load} | {uploaded} | {} | {throughput:.1} | {} | {} | {} |",
            done.len(),
            pct(&lat, 0.50),
            pct(&lat, 0.95),
            pct(&lat, 0.99)
        );
        // Where the time goes: from the 202 to each stage's outcome commit
        // (broker append times of the records keyed by the artifact id).
        let mut previous: HashMap<String, i64> = ids.clone();
        let mut row = format!("| {load} |");
        for stage in Stage::ALL {
            let mut at: HashMap<String, i64> = HashMap::new();
            for m in p.env.read_all(&p.env.names.output(stage))? {
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                if let Some(key) = key.filter(|k| ids.contains_key(k)) {
                    at.insert(key, m.timestamp().to_millis().unwrap_or(0));
                }
            }
            row.push_str(&hop_cell(&previous, &at));
            previous = at;
        }
        row.push_str(&hop_cell(&previous, &done));
        hops.push(row);
        // CPU per completed artifact, each process over the whole load
        // (uploads, then the wait for the last summaries).
        let n = done.len().max(1) as f64;
        let per: Vec<f64> = cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(b, a)| (a - b) * 1000.0 / n)
            .collect();
        let mut row = format!("| {load} |");
        for v in &per {
            row.push_str(&format!(" {v:.2} |"));
        }
        row.push_str(&format!(" {:.2} |", per.iter().sum::<f64>()));
        row.push_str(&format!(
            " {:.2} |",
            (machine_after - machine_before) * 1000.0 / n
        ));
        cpu_rows.push(row);
        // The API's memory after the load, with every artifact of the run
        // so far in its table.
        if let Some(api) = &p.api {
            uploaded_so_far += uploaded;
            let folds = match api
                .exported_metric("artifact_api_projector_folds", &[])
                .await
            {
                Some(n) => format!("{}", n + 0.0),
                None => "not exported".to_owned(),
            };
            memory_rows.push(format!(
                "| {load} | {uploaded_so_far} | {:.1} | {folds} |",
                api.rss_bytes().unwrap_or(0) as f64 / 1048576.0,
            ));
        }
    }
    println!();
    println!(
        "Per hop, p50 / p95 ms (upload 202 → mime-detected → location-verified → parsed → summarized → completed snapshot):"
    );
    println!(
        "| offered /s | → mime-detector | → location-logger | → pdf-parser | → summarizer | → read model |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in hops {
        println!("{row}");
    }
    println!();
    println!(
        "CPU ms per completed artifact (user + system, /proc/<pid>/stat; machine: every process and kernel thread, /proc/stat):"
    );
    let names: Vec<&str> = pids.iter().map(|(n, _)| *n).collect();
    println!("| offered /s | {} | total | machine |", names.join(" | "));
    println!("|{}", " ---: |".repeat(names.len() + 3));
    for row in cpu_rows {
        println!("{row}");
    }
    println!();
    println!(
        "artifact-api after each load (RSS: VmRSS of /proc/<pid>/status; folds: artifact_api_projector_folds):"
    );
    println!("| offered /s | artifacts uploaded in the run | RSS MiB | projector folds |");
    println!("| ---: | ---: | ---: | ---: |");
    for row in memory_rows {
        println!("{row}");
    }
    if !args.restart_api.is_empty() {
        println!();
        println!(
            "artifact-api restarted with every artifact of the run settled (status records: on the topic when it starts; ready: start to /readyz; snapshots written to the status topic, API CPU seconds since its start, RSS: {} s after ready):",
            args.restart_watch
        );
        println!("| binary | status records | ready s | snapshots written | CPU s | RSS MiB |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        let p = Arc::get_mut(&mut p).context("the pipeline is still shared")?;
        for bin in &args.restart_api {
            restart_api(p, bin, Duration::from_secs(args.restart_watch)).await?;
        }
    }
    // The services stop first, then the run's topics go: runs would
    // otherwise pile up partitions on the broker, which slows it down.
    if let Ok(mut p) = Arc::try_unwrap(p) {
        p.stop();
        if let Err(e) = p.env.delete_topics().await {
            eprintln!("warning: could not delete this run's topics: {e}");
        }
    }
    Ok(())
}
