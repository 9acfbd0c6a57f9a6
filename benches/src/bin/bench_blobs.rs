//! `bench-blobs`: what the file blob store costs per blob, against the same
//! file-system steps taken one Tokio call at a time (each `tokio::fs` call is
//! a trip to the blocking pool: a thread hand-off and a wake-up).
//!
//! Two operations, each as the pipeline does them:
//! - an upload: stage the body under `tmp/`, sync it, move it into place if
//!   the place is free (the API, for every upload);
//! - a put: write a blob atomically, replacing what was there (pdf-parser,
//!   for every extracted text).
//!
//! `--concurrency` operations run at once on a multi-threaded runtime; the
//! bench reports wall time, process CPU time (user + system) and the
//! machine's CPU time (every process and kernel thread: a sync's write-back
//! may run in the kernel's flusher threads) per operation. No Kafka, no
//! registry; run it on an otherwise idle machine.
//!
//! Usage: `bench-blobs [--ops N] [--size BYTES] [--concurrency N] [--rounds N]`

use anyhow::Context;
use artifact_benches::{machine_busy_seconds, process_cpu_seconds};
use artifact_blob::BlobStore;
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
struct Args {
    /// Blobs per variant and round.
    #[arg(long, default_value_t = 4000)]
    ops: usize,
    /// Bytes per blob (a 1-page PDF is about 2 KB).
    #[arg(long, default_value_t = 3000)]
    size: usize,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Directory to write under (default: a fresh one under target/).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    UploadSteps,
    UploadStore,
    PutSteps,
    PutStore,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::UploadSteps => "upload, tokio::fs step by step",
            Variant::UploadStore => "upload, BlobStore",
            Variant::PutSteps => "put, tokio::fs step by step",
            Variant::PutStore => "put, BlobStore",
        }
    }
}

/// The upload's steps, one `tokio::fs` call each.
async fn upload_steps(root: &Path, i: usize, body: Bytes) -> anyhow::Result<()> {
    let tmp = root
        .join("tmp")
        .join(format!("{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::create_dir_all(tmp.parent().unwrap()).await?;
    let mut f = tokio::fs::File::create(&tmp).await?;
    f.write_all(&body).await?;
    f.sync_all().await?;
    drop(f);
    let to = root.join("uploads").join(format!("u{i}"));
    anyhow::ensure!(
        !tokio::fs::try_exists(&to).await?,
        "{} exists",
        to.display()
    );
    tokio::fs::create_dir_all(to.parent().unwrap()).await?;
    tokio::fs::rename(&tmp, &to).await?;
    sync_dir(to.parent().unwrap()).await
}

async fn upload_store(store: &BlobStore, i: usize, body: Bytes) -> anyhow::Result<()> {
    let mut w = store.begin_staging().await?;
    w.write(body).await?;
    let staged = w.finish().await?;
    let to = store.location(&format!("uploads/s{i}"));
    anyhow::ensure!(store.move_if_absent(&staged, &to).await?, "{to} exists");
    Ok(())
}

/// The put's steps, one `tokio::fs` call each.
async fn put_steps(root: &Path, i: usize, body: Bytes) -> anyhow::Result<()> {
    let path = root.join("texts").join(format!("p{i}")).join("1.txt");
    let dir = path.parent().unwrap();
    tokio::fs::create_dir_all(dir).await?;
    sync_dir(dir.parent().unwrap()).await?;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = tokio::fs::File::create(&tmp).await?;
    f.write_all(&body).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, &path).await?;
    sync_dir(dir).await
}

/// Flushes a directory, as the store did after creating or renaming into
/// it before one `syncfs` of the file system replaced its `fsync`s.
async fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await?;
    Ok(())
}

async fn put_store(store: &BlobStore, i: usize, body: Bytes) -> anyhow::Result<()> {
    store
        .put(&store.location(&format!("texts/q{i}/1.txt")), &body)
        .await?;
    Ok(())
}

/// Runs `ops` operations of `v`; returns (wall µs, process CPU µs, machine
/// CPU µs) per operation.
async fn run(v: Variant, args: &Args, root: &Path) -> anyhow::Result<(f64, f64, f64)> {
    let store = BlobStore::from_url(&format!("file://{}", root.display()))?;
    let body = Bytes::from(vec![b'%'; args.size]);
    let pid = std::process::id();
    let cpu0 = process_cpu_seconds(pid).context("reading /proc/self/stat")?;
    let busy0 = machine_busy_seconds().context("reading /proc/stat")?;
    let t0 = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.ops)
        .map(|i| {
            let (store, body) = (&store, body.clone());
            async move {
                match v {
                    Variant::UploadSteps => upload_steps(root, i, body).await,
                    Variant::UploadStore => upload_store(store, i, body).await,
                    Variant::PutSteps => put_steps(root, i, body).await,
                    Variant::PutStore => put_store(store, i, body).await,
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid).context("reading /proc/self/stat")? - cpu0;
    let busy = machine_busy_seconds().context("reading /proc/stat")? - busy0;
    for r in results {
        r?;
    }
    let n = args.ops as f64;
    Ok((wall * 1e6 / n, cpu * 1e6 / n, busy * 1e6 / n))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .ancestors()
            .nth(2)
            .context("no target directory")?
            .join("bench-blobs"),
    };
    let variants = [
        Variant::UploadSteps,
        Variant::UploadStore,
        Variant::PutSteps,
        Variant::PutStore,
    ];
    let mut results: Vec<[Vec<f64>; 3]> = vec![Default::default(); variants.len()];
    for round in 0..args.rounds {
        // Variants alternate within a round, so a slow spell of the machine
        // falls on all of them.
        for (k, v) in variants.iter().enumerate() {
            let root = base.join(format!("r{round}-{k}"));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root)?;
            let (wall, cpu, busy) = run(*v, &args, &root).await?;
            eprintln!(
                "round {round}: {}: {wall:.1} µs wall, {cpu:.1} µs CPU, {busy:.1} µs machine CPU",
                v.name()
            );
            for (r, x) in results[k].iter_mut().zip([wall, cpu, busy]) {
                r.push(x);
            }
        }
    }
    // Removed at the end only: on ext4 without a journal, creating a file
    // scans past recently freed inodes, so deleting between rounds would
    // slow the rounds after.
    std::fs::remove_dir_all(&base)?;
    println!(
        "{} blobs of {} bytes, {} at once, median of {} rounds",
        args.ops, args.size, args.concurrency, args.rounds
    );
    println!("| operation | wall µs per blob | CPU µs per blob | machine CPU µs per blob |");
    println!("| --- | ---: | ---: | ---: |");
    for (k, v) in variants.iter().enumerate() {
        let [wall, cpu, busy] = &results[k];
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            v.name(),
            median(wall.clone()),
            median(cpu.clone()),
            median(busy.clone())
        );
    }
    Ok(())
}
