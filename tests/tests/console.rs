//! The console (/ui) in a real browser: Debian's Chromium driven by
//! playwright-core (tests/browser/console.mjs) against the four stages and
//! the API as processes. Screenshots go to target/ui-screenshots/. A record
//! mime-detector cannot decode is written straight to its input topic: the
//! browser finds its dead letter and replays it, and the record is back in
//! the input topic afterwards.

use artifact_pipeline_tests::pipeline::{Pipeline, TOKEN, fixtures, repo};
use rdkafka::Message;
use std::path::Path;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

/// What the browser test needs and lacks: Chromium, Node, playwright-core
/// (scripts/install-deps installs them).
fn browser_missing() -> Option<String> {
    let script = repo().join("tests/browser/node_modules/playwright-core");
    [
        (Path::new("/usr/bin/chromium").exists(), "chromium"),
        (which("node"), "node"),
        (script.exists(), "tests/browser/node_modules (npm ci)"),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .reduce(|a, _| a)
    .map(str::to_owned)
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_browser() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    if let Some(what) = browser_missing() {
        if std::env::var("ARTIFACT_STACK").is_ok_and(|v| v == "required") {
            panic!("the browser test needs {what}: run scripts/install-deps");
        }
        eprintln!("skipped the_console_in_a_browser: no {what} (scripts/install-deps)");
        return Ok(());
    }
    let fx = fixtures();
    let p = Pipeline::start(Path::new(BIN_DIR_OF).parent().unwrap()).await?;
    // Chromium keeps a Secure cookie of http://localhost (a secure context).
    let url = p.api_url.replace("127.0.0.1", "localhost");
    let shots = repo().join("target/ui-screenshots");
    let created = p.env.names.created();
    let poison = uuid::Uuid::new_v4().to_string();
    let bytes: &[u8] = b"not avro: a dead letter for the console";
    p.env.produce_raw(&created, &poison, bytes).await?;
    let status = tokio::process::Command::new("node")
        .arg(repo().join("tests/browser/console.mjs"))
        .env("CONSOLE_URL", url)
        .env("API_TOKEN", TOKEN)
        .env("GOOD_PDF", fx.join("text/fpdf2-3.pdf"))
        .env("CORRUPT_PDF", fx.join("malformed/truncated.pdf"))
        .env("SHOTS", &shots)
        .env("POISON_ID", &poison)
        .status()
        .await?;
    assert!(
        status.success(),
        "tests/browser/console.mjs failed ({status}); screenshots in {}",
        shots.display()
    );
    // The replay wrote the record back where it came from.
    let copies = p
        .env
        .read_all(&created)?
        .iter()
        .filter(|m| m.key() == Some(poison.as_bytes()) && m.payload() == Some(bytes))
        .count();
    assert_eq!(
        copies, 2,
        "the poison record and its replayed copy in {created}"
    );
    Ok(())
}
