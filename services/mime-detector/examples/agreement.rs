//! Measures how often [`mime_detector::detect`] agrees with libmagic.
//!
//! Walks directories of real files (by default every file under
//! `/usr/share` and `/usr/lib`: files shipped by Debian packages), asks
//! `file --mime-type -b` for each, runs our detector on the first
//! `SNIFF_BYTES` bytes, and prints a Markdown table per libmagic type:
//! count, agreement, top disagreements.
//!
//! ```text
//! cargo run --release -p mime-detector --example agreement -- \
//!     [--max-per-root N] [--show TYPE] [--cache FILE] [DIR...]
//! ```
//!
//! `--cache FILE` keeps libmagic's answers (`path<TAB>type` lines) in FILE
//! and reuses them on the next run: asking libmagic is most of the time.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const DEFAULT_ROOTS: [&str; 2] = ["/usr/share", "/usr/lib"];

/// Types the pipeline cares about most; their agreement is summarised.
const COMMON: [&str; 13] = [
    "application/pdf",
    "image/png",
    "image/jpeg",
    "image/gif",
    "application/zip",
    "application/gzip",
    "text/xml",
    "text/html",
    "application/json",
    "text/plain",
    "application/x-sharedlib",
    "application/x-pie-executable",
    "application/x-executable",
];

fn walk(dir: &Path, out: &mut Vec<PathBuf>, max: usize, depth: usize) {
    if out.len() >= max || depth > 12 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if out.len() >= max {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out, max, depth + 1);
        } else if meta.is_file() && !path.to_string_lossy().contains(['\n', '\t']) {
            out.push(path);
        }
    }
}

fn head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(mime_detector::SNIFF_BYTES);
    File::open(path)?
        .take(mime_detector::SNIFF_BYTES as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Runs `file --mime-type -b -f -` once over all paths, one answer a line.
fn libmagic(paths: &[PathBuf]) -> Vec<String> {
    let mut child = Command::new("file")
        .args(["--mime-type", "-b", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run `file` (apt-get install file)");
    let mut stdin = child.stdin.take().expect("stdin");
    let list: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    let writer = std::thread::spawn(move || stdin.write_all(list.as_bytes()));
    let answers: Vec<String> = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map(|l| l.expect("read file output"))
        .collect();
    writer.join().expect("writer").expect("write paths");
    child.wait().expect("wait for file");
    answers
}

/// [`libmagic`]'s answers, those for paths already in `cache` read from it.
fn cached_libmagic(paths: &[PathBuf], cache: &Path) -> Vec<String> {
    let mut known: HashMap<PathBuf, String> = std::fs::read_to_string(cache)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, m)| (PathBuf::from(p), m.to_owned()))
        .collect();
    let missing: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !known.contains_key(*p))
        .cloned()
        .collect();
    for (path, mime) in missing.iter().zip(libmagic(&missing)) {
        known.insert(path.clone(), mime);
    }
    let answers: Vec<String> = paths.iter().map(|p| known[p].clone()).collect();
    let lines: String = paths
        .iter()
        .zip(&answers)
        .map(|(p, m)| format!("{}\t{m}\n", p.display()))
        .collect();
    std::fs::write(cache, lines).expect("write the cache");
    answers
}

#[derive(Default)]
struct Row {
    count: usize,
    agree: usize,
    wrong: BTreeMap<String, usize>,
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut max_per_root = usize::MAX;
    if let Some(i) = args.iter().position(|a| a == "--max-per-root") {
        max_per_root = args[i + 1].parse().expect("--max-per-root N");
        args.drain(i..i + 2);
    }
    // `--show TYPE` lists the files of that libmagic type we disagree on.
    let mut show = None;
    if let Some(i) = args.iter().position(|a| a == "--show") {
        show = Some(args[i + 1].clone());
        args.drain(i..i + 2);
    }
    let mut cache = None;
    if let Some(i) = args.iter().position(|a| a == "--cache") {
        cache = Some(PathBuf::from(&args[i + 1]));
        args.drain(i..i + 2);
    }
    let roots: Vec<String> = if args.is_empty() {
        DEFAULT_ROOTS.iter().map(|s| s.to_string()).collect()
    } else {
        args
    };
    let mut paths = Vec::new();
    for root in &roots {
        let mut found = Vec::new();
        walk(Path::new(root), &mut found, max_per_root, 0);
        paths.extend(found);
    }
    paths.sort();
    paths.dedup();
    let answers = match &cache {
        Some(cache) => cached_libmagic(&paths, cache),
        None => libmagic(&paths),
    };
    assert_eq!(answers.len(), paths.len(), "file printed one line per path");

    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for (path, magic) in paths.iter().zip(&answers) {
        let Ok(bytes) = head(path) else { continue };
        let ours = mime_detector::detect(&bytes, Some(magic));
        let row = rows.entry(magic.clone()).or_default();
        row.count += 1;
        if ours.agrees {
            row.agree += 1;
        } else {
            if show.as_deref() == Some(magic.as_str()) {
                eprintln!(
                    "{}: ours {} ({})",
                    path.display(),
                    ours.detected,
                    ours.method
                );
            }
            *row.wrong.entry(ours.detected).or_default() += 1;
        }
    }

    let mut sorted: Vec<(&String, &Row)> = rows.iter().collect();
    sorted.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    println!("files: {} under {}\n", paths.len(), roots.join(" "));
    println!("| libmagic type | files | agree | top disagreements (ours: count) |");
    println!("| --- | ---: | ---: | --- |");
    let (mut all, mut all_agree, mut common, mut common_agree) = (0, 0, 0, 0);
    for (mime, row) in sorted {
        let mut wrong: Vec<(&String, &usize)> = row.wrong.iter().collect();
        wrong.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = wrong
            .iter()
            .take(3)
            .map(|(m, n)| format!("{m}: {n}"))
            .collect();
        println!(
            "| {mime} | {} | {:.1}% | {} |",
            row.count,
            100.0 * row.agree as f64 / row.count as f64,
            top.join(", ")
        );
        all += row.count;
        all_agree += row.agree;
        if COMMON.contains(&mime.as_str()) {
            common += row.count;
            common_agree += row.agree;
        }
    }
    println!(
        "\nall types: {all_agree}/{all} = {:.2}%; common types: {common_agree}/{common} = {:.2}%",
        100.0 * all_agree as f64 / all.max(1) as f64,
        100.0 * common_agree as f64 / common.max(1) as f64
    );
}
