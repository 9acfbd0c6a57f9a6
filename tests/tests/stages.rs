//! The four stage binaries chained against the real broker and registry,
//! on real files made at test time (ReportLab PDFs from
//! `scripts/fixtures/make-pdfs.sh`, a PNG rendered from one by pdftoppm, a
//! truncated PDF, a generated text file): each artifact ends in exactly one
//! final state, read through the domain's read-model fold.

use artifact_domain::*;
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    let dir = repo().join("target/fixtures/pdf");
    let ok = Command::new("bash")
        .arg(repo().join("scripts/fixtures/make-pdfs.sh"))
        .arg(&dir)
        .status()
        .expect("scripts/fixtures/make-pdfs.sh runs")
        .success();
    assert!(
        ok,
        "scripts/fixtures/make-pdfs.sh failed; see its header for the tools it needs"
    );
    dir
}

fn pdf_pages(path: &Path) -> i32 {
    let out = Command::new("pdfinfo")
        .arg(path)
        .output()
        .expect("pdfinfo runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Pages:").map(|n| n.trim().parse().unwrap()))
        .expect("pdfinfo prints Pages")
}

struct Blobs {
    root: PathBuf,
}

impl Blobs {
    fn new() -> Self {
        let root =
            std::env::temp_dir().join(format!("stage-blobs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(root.join("uploads")).unwrap();
        Blobs { root }
    }
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }
    fn put(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.root.join("uploads").join(name);
        std::fs::write(&p, bytes).unwrap();
        format!("file://{}", p.display())
    }
}

fn created(location: String, declared: Option<&str>, name: &str) -> ArtifactCreated {
    ArtifactCreated {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        storage_location: location,
        declared_content_type: declared.map(str::to_owned),
        filename: Some(name.to_owned()),
        size_bytes: None,
        sha256: None,
        created_at: 1,
    }
}

async fn statuses(env: &TestEnv) -> anyhow::Result<HashMap<ArtifactId, ArtifactStatus>> {
    let mut events: Vec<PipelineEvent> = vec![];
    for e in env
        .read_decoded::<ArtifactCreated>(&env.names.created())
        .await?
    {
        events.push(PipelineEvent::Created(e));
    }
    for e in env
        .read_decoded(&env.names.output(Stage::MimeDetector))
        .await?
    {
        events.push(PipelineEvent::MimeDetected(e));
    }
    for e in env
        .read_decoded(&env.names.output(Stage::LocationLogger))
        .await?
    {
        events.push(PipelineEvent::LocationVerified(e));
    }
    for e in env
        .read_decoded(&env.names.output(Stage::PdfParser))
        .await?
    {
        events.push(PipelineEvent::Parsed(e));
    }
    for e in env
        .read_decoded(&env.names.output(Stage::Summarizer))
        .await?
    {
        events.push(PipelineEvent::Summarized(e));
    }
    let mut by_id: HashMap<ArtifactId, Vec<PipelineEvent>> = HashMap::new();
    for e in events {
        by_id.entry(e.artifact_id()).or_default().push(e);
    }
    Ok(by_id
        .into_iter()
        .filter_map(|(id, ev)| Some((id, ArtifactStatus::fold(ev)?)))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_flow_through_all_four_stages() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let fx = fixtures();
    let env = TestEnv::new(2).await?;
    let blobs = Blobs::new();
    let bin = |name: &str| PathBuf::from(env!("CARGO_BIN_EXE_test-stage")).with_file_name(name);
    let vars = vec![
        ("BLOB_STORE_URL", blobs.url()),
        ("RETRY_INLINE_ATTEMPTS", "1".to_owned()),
        ("RETRY_MAX_DELIVERIES", "2".to_owned()),
        ("RETRY_DELAY_MS", "200".to_owned()),
    ];
    let mut stages = vec![];
    for name in [
        "mime-detector",
        "location-logger",
        "pdf-parser",
        "summarizer",
    ] {
        let path = bin(name);
        anyhow::ensure!(
            path.exists(),
            "{} is not built (cargo build --workspace)",
            path.display()
        );
        stages.push(StageProcess::start(&env, &path, &vars)?);
    }

    let pdf_path = fx.join("text/reportlab-3.pdf");
    let pdf = created(
        blobs.put("report.pdf", &std::fs::read(&pdf_path)?),
        Some("application/pdf"),
        "report.pdf",
    );
    let text = created(
        blobs.put(
            "notes.txt",
            "Kafka transactions make the outputs atomic. The dedup state skips replays. \
             Compacted topics keep the latest state per artifact. Each stage runs alone."
                .as_bytes(),
        ),
        Some("text/plain"),
        "notes.txt",
    );
    let png_prefix = blobs.root.join("render");
    let ok = Command::new("pdftoppm")
        .args(["-png", "-r", "150", "-f", "1", "-l", "1", "-singlefile"])
        .arg(&pdf_path)
        .arg(&png_prefix)
        .status()?
        .success();
    anyhow::ensure!(ok, "pdftoppm failed (apt-get install poppler-utils)");
    let image = created(
        blobs.put(
            "page.png",
            &std::fs::read(png_prefix.with_extension("png"))?,
        ),
        None,
        "page.png",
    );
    let corrupt = created(
        blobs.put(
            "broken.pdf",
            &std::fs::read(fx.join("malformed/truncated.pdf"))?,
        ),
        Some("application/pdf"),
        "broken.pdf",
    );
    let missing = created(
        format!("{}/uploads/never-written.pdf", blobs.url()),
        None,
        "missing.pdf",
    );
    let outside = created("file:///etc/hostname".into(), None, "outside");
    env.produce_created(&[
        pdf.clone(),
        text.clone(),
        image.clone(),
        corrupt.clone(),
        missing.clone(),
        outside.clone(),
    ])
    .await?;

    let ids = [
        pdf.artifact_id,
        text.artifact_id,
        image.artifact_id,
        corrupt.artifact_id,
        missing.artifact_id,
        outside.artifact_id,
    ];
    wait_until(
        "every artifact in a final state",
        Duration::from_secs(120),
        || async {
            statuses(&env).await.is_ok_and(|s| {
                ids.iter()
                    .all(|id| s.get(id).is_some_and(|st| st.state().is_terminal()))
            })
        },
    )
    .await?;
    let s = statuses(&env).await?;

    // Multi-page PDF: parsed with its real page count, summarized.
    let st = &s[&pdf.artifact_id];
    assert_eq!(st.state(), ArtifactState::Completed);
    let Some(PipelineEvent::Parsed(p)) = st.stage_event(Stage::PdfParser) else {
        panic!("no parse")
    };
    let r = p.result.as_ref().expect("parse result");
    assert_eq!(r.page_count, Some(pdf_pages(&pdf_path)));
    assert!(r.word_count > 100 && !r.preview.is_empty());
    let stored = std::fs::read_to_string(r.text_location.trim_start_matches("file://"))?;
    assert_eq!(stored.chars().count() as i64, r.char_count);
    let Some(PipelineEvent::Summarized(sum)) = st.stage_event(Stage::Summarizer) else {
        panic!("no summary")
    };
    let summary = &sum.result.as_ref().expect("summary").summary;
    assert!(!summary.is_empty() && summary.len() <= 600, "{summary}");
    assert!(stored.contains(summary.split_whitespace().next().unwrap()));
    let Some(PipelineEvent::LocationVerified(lv)) = st.stage_event(Stage::LocationLogger) else {
        panic!()
    };
    assert_eq!(
        lv.result.as_ref().unwrap().size_bytes,
        std::fs::metadata(&pdf_path)?.len() as i64
    );

    // Text: passed through and summarized, no page count.
    let st = &s[&text.artifact_id];
    assert_eq!(st.state(), ArtifactState::Completed);
    let Some(PipelineEvent::Parsed(p)) = st.stage_event(Stage::PdfParser) else {
        panic!()
    };
    assert_eq!(p.result.as_ref().unwrap().page_count, None);
    assert_eq!(
        st.stage_outcome(Stage::Summarizer),
        Some(&Outcome::Succeeded)
    );

    // Image: detected from the bytes (nothing declared), its text read by
    // OCR and summarized.
    let st = &s[&image.artifact_id];
    assert_eq!(st.state(), ArtifactState::Completed);
    assert_eq!(
        st.context().unwrap().detected_content_type.as_deref(),
        Some("image/png")
    );
    assert_eq!(
        st.stage_outcome(Stage::PdfParser),
        Some(&Outcome::Succeeded)
    );
    assert_eq!(
        st.stage_outcome(Stage::Summarizer),
        Some(&Outcome::Succeeded)
    );

    // Corrupt PDF: permanent failure at pdf-parser; the summarizer never runs.
    let st = &s[&corrupt.artifact_id];
    assert_eq!(st.state(), ArtifactState::Failed);
    assert_eq!(st.failure().map(|f| f.0), Some(Stage::PdfParser));
    assert!(st.stage_event(Stage::Summarizer).is_none());

    // Missing blob: retried, then permanent at the first stage that reads it.
    let st = &s[&missing.artifact_id];
    assert_eq!(st.state(), ArtifactState::Failed);
    let (stage, reason) = st.failure().unwrap();
    assert_eq!(stage, Stage::MimeDetector);
    assert!(
        reason.contains("gave up after 2 deliveries") && reason.contains("no blob"),
        "{reason}"
    );

    // A location outside the storage root: permanent at once.
    let st = &s[&outside.artifact_id];
    let (stage, reason) = st.failure().unwrap();
    assert_eq!(stage, Stage::MimeDetector);
    assert!(reason.contains("outside the storage root"), "{reason}");

    for s in &mut stages {
        assert!(s.is_running(), "no stage crashed");
    }
    Ok(())
}
