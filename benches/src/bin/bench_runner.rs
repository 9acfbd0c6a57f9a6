//! `bench-runner`: measures the stage runner against its baselines, in one
//! run, on the same broker, with the same records:
//!
//! 1. raw: a plain rdkafka consumer + producer pair copying each record to
//!    an output topic (no decode, no dedup, no transactions), and the same
//!    pair writing two copies of each record, as a stage writes an outcome
//!    and a dedup record;
//! 2. the no-op `test-stage` in at-least-once mode;
//! 3. the same stage in exactly-once mode (transactions);
//!
//! each rate taken from the output records' broker append times (first to
//! last), so process start-up is not counted. Then the dedup restore: 1 000 000 keys in
//! one partition of a dedup topic, restore time and resident memory per key,
//! with the stages' default retention, without one, and all expired.
//!
//! Usage: `bench-runner [--records N] [--restore-keys N] [--restore-only]` with the local
//! stack up (KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL).

use anyhow::Context;
use artifact_benches::process_cpu_seconds;
use artifact_domain::dedup::DedupEntry;
use artifact_domain::outcome::OutcomeStatus;
use artifact_domain::{ArtifactId, Generation, Stage};
use artifact_kafka::client::{FETCH_QUEUE_BACKOFF_MS, client_config, producer_config};
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::{StageProcess, TestEnv};
use artifact_runtime::dedup::{RestoreProgress, restore_partition};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, TopicPartitionList};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Records per throughput run. A run much shorter than a second
    /// measures a burst: 100 000 records fit in the consumers' prefetch
    /// buffers, and the raw pair then only appends what it already holds.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Keys for the restore measurement.
    #[arg(long, default_value_t = 1_000_000)]
    restore_keys: usize,
    /// Partitions of the throughput topics.
    #[arg(long, default_value_t = 6)]
    partitions: usize,
    /// The stage binary (default: `test-stage` beside this one); e.g. a
    /// wrapper that runs it under a profiler.
    #[arg(long)]
    stage_bin: Option<PathBuf>,
    /// Runs only the dedup restore measurement.
    #[arg(long)]
    restore_only: bool,
    /// Runs only the stage in this delivery mode (no baselines, no restore).
    #[arg(long, value_parser = ["exactly-once", "at-least-once"])]
    only: Option<String>,
    /// With `--only`: each round also runs the stage with
    /// `POISON_MAX_CRASHES=0` (no in-flight marker per batch), alternating,
    /// to measure what the poison-record watch costs.
    #[arg(long, requires = "only")]
    poison_baseline: bool,
    /// Rounds of each throughput variant; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// RUST_LOG of the stage: by default the stages' own default, so each
    /// record's span is formatted as in production.
    #[arg(long, default_value = "info")]
    stage_log: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of the measured values (NaN if none was measured).
fn median_measured(v: Vec<f64>) -> f64 {
    let v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() { f64::NAN } else { median(v) }
}

fn default_stage_bin() -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name("test-stage")
}

/// Records per second between the first and the last output timestamp.
fn rate_from_timestamps(env: &TestEnv, topic: &str) -> anyhow::Result<(usize, f64)> {
    let msgs = env.read_all(topic)?;
    let ts: Vec<i64> = msgs
        .iter()
        .filter_map(|m| m.timestamp().to_millis())
        .collect();
    let (min, max) = (
        ts.iter().min().copied().unwrap_or(0),
        ts.iter().max().copied().unwrap_or(0),
    );
    let secs = ((max - min) as f64 / 1000.0).max(0.001);
    Ok((msgs.len(), msgs.len() as f64 / secs))
}

async fn fill(env: &TestEnv, n: usize) -> anyhow::Result<()> {
    let events: Vec<_> = (0..n)
        .map(|i| TestEnv::created(&format!("bench-{i}")))
        .collect();
    for chunk in events.chunks(5_000) {
        env.produce_created(chunk).await?;
    }
    Ok(())
}

/// Records the raw pair writes per record it reads.
#[derive(Clone, Copy)]
enum RawOut {
    /// A copy to the output topic.
    One,
    /// A copy to the output topic and one to a second topic (the stage's
    /// dedup topic): the two records a stage writes per record, without
    /// decoding, encoding or transactions.
    Two,
}

async fn raw_pair(env: &TestEnv, n: usize, out: RawOut) -> anyhow::Result<f64> {
    fill(env, n).await?;
    let out_topic = env.names.output(Stage::MimeDetector);
    let second_topic = env.names.dedup(Stage::MimeDetector);
    env.use_append_time(&out_topic).await?;
    let targets: &[&str] = match out {
        RawOut::One => &[&out_topic],
        RawOut::Two => &[&out_topic, &second_topic],
    };
    // The stage's consumer fetch setting: with librdkafka's default of 1 s
    // the pair, once its local queue is full, idles up to a second after
    // draining it, and a run longer than one queue's worth measures that.
    let consumer: BaseConsumer = client_config(&env.conn, "raw-bench")
        .set("group.id", format!("{}.raw", env.conn.topic_prefix))
        .set("auto.offset.reset", "earliest")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .create()?;
    consumer.subscribe(&[&env.names.created()])?;
    let producer: FutureProducer = producer_config(&env.conn, "raw-bench")
        .set("linger.ms", "5")
        .create()?;
    let mut copied = 0;
    let mut pending = std::collections::VecDeque::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(300);
    while copied < n {
        anyhow::ensure!(Instant::now() < deadline, "raw pair stalled at {copied}");
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        for topic in targets {
            let mut rec = FutureRecord::to(topic)
                .key(m.key().unwrap_or_default())
                .payload(m.payload().unwrap_or_default());
            loop {
                match producer.send_result(rec) {
                    Ok(delivery) => break pending.push_back(delivery),
                    // The producer's queue is full: wait for the oldest
                    // delivery, then try again.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        let oldest = pending.pop_front().context("queue full, nothing pending")?;
                        oldest.await?.map_err(|(e, _)| e)?;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        copied += 1;
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    let (count, rate) = rate_from_timestamps(env, &out_topic)?;
    anyhow::ensure!(count == n, "raw pair wrote {count} of {n}");
    Ok(rate)
}

/// What one run of the stage measured.
struct StageRun {
    /// Records per second, from the output's append times.
    rate: f64,
    /// The stage process's CPU time per record, in microseconds, over the
    /// records committed after its progress was first seen (NaN if none).
    cpu_us: f64,
}

/// Offsets the stage's group has committed on its input, summed.
fn committed_total(reader: &BaseConsumer, topic: &str, partitions: usize) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = reader.committed_offsets(tpl, Duration::from_secs(5))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw())
        .filter(|o| *o > 0)
        .sum())
}

async fn stage_run(
    env: &TestEnv,
    bin: &std::path::Path,
    n: usize,
    partitions: usize,
    delivery: &str,
    log: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<StageRun> {
    fill(env, n).await?;
    let out_topic = env.names.output(Stage::MimeDetector);
    env.use_append_time(&out_topic).await?;
    // Progress is read from the group's committed offsets: cheap, unlike
    // reading the output, which would take CPU from the stage it measures.
    let reader: BaseConsumer = client_config(&env.conn, "bench-progress")
        .set("group.id", env.stage_group())
        .set("enable.auto.commit", "false")
        .create()?;
    let input = env.names.created();
    // The first look finds the group's coordinator, which takes a while: done
    // before the stage starts, so later looks see its progress in time. On a
    // broker just started the coordinator may not be there yet
    // (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE): asked again until then.
    let found_by = Instant::now() + Duration::from_secs(60);
    while let Err(e) = committed_total(&reader, &input, partitions) {
        if Instant::now() >= found_by {
            return Err(e.context("no group coordinator after 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut vars = vec![
        ("DELIVERY", delivery.to_owned()),
        ("RUST_LOG", log.to_owned()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let stage = StageProcess::start(env, bin, &vars)?;
    // The stage's CPU time and its committed records when progress was
    // first seen: CPU per record counts only the records committed after.
    let mut start: Option<(f64, i64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // A failed look (the coordinator moving) is looked again.
        let done = committed_total(&reader, &input, partitions).unwrap_or(0);
        if done > 0 && start.is_none() {
            start = process_cpu_seconds(stage.pid()).map(|cpu| (cpu, done));
        }
        if done >= n as i64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{delivery}: {done} of {n} records committed after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not measured (NaN) when the first look already found every record.
    let cpu_us = match (start, process_cpu_seconds(stage.pid())) {
        (Some((cpu0, done0)), Some(cpu1)) if done0 < n as i64 => {
            (cpu1 - cpu0) * 1e6 / (n as i64 - done0) as f64
        }
        _ => f64::NAN,
    };
    drop(stage);
    let (count, rate) = rate_from_timestamps(env, &out_topic)?;
    anyhow::ensure!(
        count == n,
        "{delivery} wrote {count} outcomes for {n} inputs"
    );
    Ok(StageRun { rate, cpu_us })
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// What a restore took: seconds, resident-set growth per key, the state's
/// own heap bytes per key, keys kept and expired.
struct Restore {
    label: &'static str,
    secs: f64,
    rss_per_key: f64,
    map_per_key: f64,
    keys: usize,
    expired: usize,
}

/// Writes `keys` dedup entries, processed in the last few minutes, to one
/// partition, then restores it three times: with a 7-day retention (the
/// stages' default: every entry kept), with none (the baseline: no
/// processing times looked at), and with every entry expired. Resident-set
/// growth is measured for the first only; the later ones reuse its freed
/// memory.
async fn restore_bench(env: &TestEnv, keys: usize) -> anyhow::Result<Vec<Restore>> {
    let topic = env.names.dedup(Stage::MimeDetector);
    let producer: FutureProducer = producer_config(&env.conn, "restore-bench")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut pending = Vec::with_capacity(10_000);
    let written_at = now_ms();
    for i in 0..keys {
        let e = DedupEntry {
            artifact_id: ArtifactId::new_random(),
            generation: Generation::FIRST,
            outcome_status: OutcomeStatus::Succeeded,
            processed_at: written_at - (i as i64 % 600_000),
        };
        let payload = env
            .codec
            .encode(&topic, EventSchema::DedupEntry, &e)
            .await?;
        let key = e.artifact_id.to_string();
        pending.push(
            producer
                .send_result(
                    FutureRecord::to(&topic)
                        .partition(0)
                        .key(&key)
                        .payload(&payload),
                )
                .map_err(|(e, _)| e)?,
        );
        if pending.len() == 10_000 {
            for p in pending.drain(..) {
                p.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for p in pending.drain(..) {
        p.await?.map_err(|(e, _)| e)?;
    }
    const WEEK_MS: i64 = 7 * 86_400_000;
    let variants: [(&'static str, Option<i64>); 3] = [
        ("7-day retention, none expired", Some(now_ms() - WEEK_MS)),
        ("no retention (baseline)", None),
        ("retention, every entry expired", Some(now_ms() + 1)),
    ];
    let mut out = Vec::new();
    for (label, expire_before_ms) in variants {
        let before = rss_bytes();
        let started = Instant::now();
        let restored = restore_partition(
            &env.conn,
            &env.codec,
            &topic,
            0,
            expire_before_ms,
            &RestoreProgress::default(),
            &AtomicBool::new(false),
        )
        .await
        .context("restoring")?;
        let secs = started.elapsed().as_secs_f64();
        let after = rss_bytes();
        let (n, expired) = (restored.entries.len(), restored.expired.len());
        anyhow::ensure!(
            n + expired == keys,
            "restored {n} and expired {expired} of {keys} keys"
        );
        // The hash table's own allocation: one (key, value) slot and one control
        // byte per bucket, whatever the allocator and the fetch buffers do.
        let slot = std::mem::size_of::<(ArtifactId, Generation)>() + 1;
        // (A table of capacity c has about c·8/7 buckets, a power of two.)
        let buckets = (restored.entries.capacity() * 8 / 7).next_power_of_two();
        drop(restored);
        out.push(Restore {
            label,
            secs,
            rss_per_key: (after.saturating_sub(before)) as f64 / keys as f64,
            map_per_key: (buckets * slot) as f64 / n.max(1) as f64,
            keys: n,
            expired,
        });
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.records;
    let bin = args.stage_bin.clone().unwrap_or_else(default_stage_bin);
    if args.restore_only {
        return restore_report(args.restore_keys).await;
    }
    if let Some(mode) = &args.only {
        let variants: &[(&str, &[(&str, &str)])] = if args.poison_baseline {
            &[
                ("", &[]),
                (", POISON_MAX_CRASHES=0", &[("POISON_MAX_CRASHES", "0")]),
            ]
        } else {
            &[("", &[])]
        };
        let rounds = if args.poison_baseline { args.rounds } else { 1 };
        let mut rates = vec![vec![]; variants.len()];
        for round in 1..=rounds {
            for (v, (name, extra)) in variants.iter().enumerate() {
                let r = TestEnv::scoped(args.partitions, async |env| {
                    stage_run(env, &bin, n, args.partitions, mode, &args.stage_log, extra).await
                })
                .await?;
                println!(
                    "round {round}: no-op stage, {mode}{name}: {:.0} records/s, {:.1} µs of stage CPU per record",
                    r.rate, r.cpu_us
                );
                rates[v].push(r.rate);
            }
        }
        if args.poison_baseline {
            let (on, off) = (median(rates[0].clone()), median(rates[1].clone()));
            println!(
                "median {mode}: {on:.0} records/s with the poison watch, {off:.0} without ({:.0}%)",
                100.0 * on / off
            );
        }
        return Ok(());
    }
    println!(
        "records per run: {n}, partitions: {}, rounds: {}",
        args.partitions, args.rounds
    );
    let (mut raw, mut raw2, mut alo, mut eos) = (vec![], vec![], vec![], vec![]);
    let (mut alo_cpu, mut eos_cpu) = (vec![], vec![]);
    // Interleaved rounds, so drift on the machine touches every variant alike.
    for round in 1..=args.rounds {
        let p = args.partitions;
        raw.push(TestEnv::scoped(p, async |env| raw_pair(env, n, RawOut::One).await).await?);
        raw2.push(TestEnv::scoped(p, async |env| raw_pair(env, n, RawOut::Two).await).await?);
        let log = &args.stage_log;
        let a = TestEnv::scoped(p, async |env| {
            stage_run(env, &bin, n, p, "at-least-once", log, &[]).await
        })
        .await?;
        let e = TestEnv::scoped(p, async |env| {
            stage_run(env, &bin, n, p, "exactly-once", log, &[]).await
        })
        .await?;
        println!(
            "round {round}: raw {:.0}, raw two out {:.0}, at-least-once {:.0} ({:.1} µs CPU/record), exactly-once {:.0} ({:.1} µs CPU/record) records/s",
            raw[round - 1],
            raw2[round - 1],
            a.rate,
            a.cpu_us,
            e.rate,
            e.cpu_us
        );
        alo.push(a.rate);
        alo_cpu.push(a.cpu_us);
        eos.push(e.rate);
        eos_cpu.push(e.cpu_us);
    }
    let (raw, raw2, alo, eos) = (median(raw), median(raw2), median(alo), median(eos));
    println!("median raw consume+produce pair:   {raw:>9.0} records/s");
    println!("median raw pair, two records out:  {raw2:>9.0} records/s");
    println!(
        "median no-op stage, at-least-once: {alo:>9.0} records/s, {:.1} µs of stage CPU per record",
        median_measured(alo_cpu)
    );
    println!(
        "median no-op stage, exactly-once:  {eos:>9.0} records/s, {:.1} µs of stage CPU per record",
        median_measured(eos_cpu)
    );
    println!(
        "exactly-once / raw = {:.0}%, exactly-once / raw two out = {:.0}%, exactly-once / at-least-once = {:.0}%",
        100.0 * eos / raw,
        100.0 * eos / raw2,
        100.0 * eos / alo
    );
    restore_report(args.restore_keys).await
}

async fn restore_report(keys: usize) -> anyhow::Result<()> {
    let runs = TestEnv::scoped(1, async |env| restore_bench(env, keys).await).await?;
    for (i, r) in runs.iter().enumerate() {
        let rss = if i == 0 {
            format!(
                "; {:.0} bytes of resident-set growth per key read",
                r.rss_per_key
            )
        } else {
            String::new()
        };
        let table = if r.keys > 0 {
            format!("; per key kept: {:.0} bytes of hash table", r.map_per_key)
        } else {
            String::new()
        };
        println!(
            "dedup restore, {}: {} keys kept, {} expired, in {:.2} s ({:.0} records/s){table}{rss}",
            r.label,
            r.keys,
            r.expired,
            r.secs,
            (r.keys + r.expired) as f64 / r.secs,
        );
    }
    Ok(())
}
