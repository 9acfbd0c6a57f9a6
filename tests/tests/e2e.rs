//! End to end on the real stack, every service as its own process: the four
//! stages and artifact-api (with its projector), documents made at test
//! time, uploads through the HTTP API and an external producer's event
//! through artifactctl.

use artifact_domain::{ArtifactState, Outcome, Parsed, Stage};
use artifact_pipeline_tests::pipeline::{MAX_UPLOAD, Pipeline, TOKEN, fixtures};
use artifact_pipeline_tests::wait_until;
use rdkafka::message::Message;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

async fn start() -> anyhow::Result<Pipeline> {
    Pipeline::start(Path::new(BIN_DIR_OF).parent().unwrap()).await
}

fn bin(name: &str) -> PathBuf {
    Path::new(BIN_DIR_OF).with_file_name(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_reach_their_final_states_through_the_api() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let fx = fixtures();
    let p = start().await?;
    let pdf_path = fx.join("text/fpdf2-3.pdf");

    // Multipart upload of a multi-page PDF.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(&pdf_path)?)
            .file_name("../../etc/report.pdf")
            .mime_str("application/pdf")?,
    );
    let resp = p
        .http
        .post(p.url("/v1/artifacts"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await?;
    let pdf = Pipeline::accepted_id(resp).await?;
    // An image, rendered from the PDF by pdftoppm.
    let png = p.blobs.join("page");
    assert!(
        Command::new("pdftoppm")
            .args(["-png", "-r", "150", "-singlefile"])
            .arg(&pdf_path)
            .arg(&png)
            .status()?
            .success()
    );
    let image = Pipeline::accepted_id(
        p.upload_raw(
            std::fs::read(png.with_extension("png"))?,
            "image/png",
            "page.png",
            None,
        )
        .await?,
    )
    .await?;
    // A corrupt PDF.
    let corrupt = Pipeline::accepted_id(
        p.upload_raw(
            std::fs::read(fx.join("malformed/truncated.pdf"))?,
            "application/pdf",
            "broken.pdf",
            None,
        )
        .await?,
    )
    .await?;
    // An external producer's event, through artifactctl.
    let ext_path = p.blobs.join("external/notes.txt");
    std::fs::create_dir_all(ext_path.parent().unwrap())?;
    std::fs::write(
        &ext_path,
        "External producers write ArtifactCreated events themselves. The pipeline treats them like uploads. Their status shows in the same read model.",
    )?;
    let out = Command::new(bin("artifactctl"))
        .env("TOPIC_PREFIX", &p.env.conn.topic_prefix)
        .args([
            "produce",
            "--storage-location",
            &format!("file://{}", ext_path.display()),
            "--filename",
            "notes.txt",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let external = String::from_utf8(out.stdout)?.trim().to_owned();

    let v = p.wait_final(&pdf, 1).await?;
    assert_eq!(v.state, ArtifactState::Completed);
    assert_eq!(
        v.context.detected_content_type.as_deref(),
        Some("application/pdf")
    );
    assert!(v.page_count.unwrap() >= 2);
    assert!(v.summary.as_deref().is_some_and(|s| !s.is_empty()));
    assert_eq!(
        v.context.filename.as_deref(),
        Some("../../etc/report.pdf"),
        "kept for display"
    );
    assert!(
        v.context
            .storage_location
            .ends_with(&format!("/uploads/{pdf}")),
        "the server chose the path"
    );
    assert_eq!(
        v.context.size_bytes,
        Some(std::fs::metadata(&pdf_path)?.len() as i64)
    );
    assert_eq!(v.timeline.len(), 4);
    let text = p
        .http
        .get(p.url(&format!("/v1/artifacts/{pdf}/text")))
        .send()
        .await?
        .text()
        .await?;
    assert!(text.contains('\u{c}'), "pages separated by form feeds");
    assert_eq!(
        text.split_whitespace().count() as i64,
        v.word_count.unwrap()
    );

    // The image's text is read by OCR and summarized.
    let v = p.wait_final(&image, 1).await?;
    assert_eq!(v.state, ArtifactState::Completed);
    assert!(
        matches!(v.timeline[2].outcome, Outcome::Succeeded),
        "{:?}",
        v.timeline
    );
    assert!(v.summary.is_some(), "{:?}", v.timeline);

    let v = p.wait_final(&corrupt, 1).await?;
    assert_eq!(v.state, ArtifactState::Failed);
    assert_eq!(v.failed_stage, Some(Stage::PdfParser));
    assert!(v.timeline[2].outcome.is_permanent_failure());

    let v = p.wait_final(&external, 1).await?;
    assert_eq!(v.state, ArtifactState::Completed);
    assert!(v.summary.is_some());

    // Listing by state, a page at a time.
    assert_eq!(
        p.listed("/v1/artifacts?state=FAILED").await?,
        [corrupt.as_str()]
    );
    let first: Value = p.get_json("/v1/artifacts?limit=2").await?;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    let second: Value = p
        .get_json(&format!("/v1/artifacts?limit=2&cursor={cursor}"))
        .await?;
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    assert!(second["next_cursor"].is_null());

    // Reprocess: generation 2 with its own timeline.
    let before = p.status(&pdf).await.unwrap();
    let resp = p
        .http
        .post(p.url(&format!("/v1/artifacts/{pdf}/reprocess")))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    let after = p.wait_final(&pdf, 2).await?;
    assert_eq!(after.state, ArtifactState::Completed);
    assert_eq!(after.timeline.len(), 4);
    assert!(after.timeline[0].processed_at > before.timeline[3].processed_at);

    // Exactly one pdf-parser outcome per (artifact, generation).
    let parsed: Vec<Parsed> = p
        .env
        .read_decoded(&p.env.names.output(Stage::PdfParser))
        .await?;
    let mut seen = HashMap::new();
    for e in &parsed {
        *seen.entry((e.artifact_id, e.generation)).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(seen.len(), 5, "four artifacts, one of them twice");

    // Every artifact is final: the projector holds no fold any more, the
    // read model holds no snapshot in memory (every one is in its file), and
    // the reprocessed artifact still reads as generation 2.
    let api = p.api.as_ref().expect("the API runs");
    for (what, gauge) in [
        (
            "the projector drops settled folds",
            "artifact_api_projector_folds",
        ),
        (
            "the read model holds no snapshot in memory",
            "artifact_api_read_model_in_flight",
        ),
    ] {
        wait_until(what, Duration::from_secs(30), || async {
            api.exported_metric(gauge, &[]).await == Some(0.0)
        })
        .await?;
    }
    assert_eq!(p.status(&pdf).await.unwrap().generation.get(), 2);
    let file_bytes = api
        .exported_metric("artifact_api_read_model_file_bytes", &[])
        .await;
    assert!(file_bytes.is_some_and(|b| b > 0.0), "{file_bytes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_limits_idempotency_restart_and_a_killed_stage() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let mut p = start().await?;

    // No token, or a wrong one: 401 as problem+json, on writes and reads.
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .post(p.url("/v1/artifacts"))
        .body("x")
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = anonymous.get(p.url("/v1/artifacts")).send().await?;
    assert_eq!(r.status(), 401, "reads are protected by default");
    let r = anonymous
        .post(p.url("/v1/artifacts"))
        .bearer_auth("nope")
        .body("x")
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    // Oversized: 413, nothing stored.
    let big = vec![b'a'; MAX_UPLOAD as usize + 1];
    let r = p.upload_raw(big, "text/plain", "big.txt", None).await?;
    assert_eq!(r.status(), 413);
    let problem: Value = r.json().await?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("MAX_UPLOAD_BYTES")
    );
    let uploads = p.blobs.join("uploads");
    assert!(!uploads.exists() || std::fs::read_dir(&uploads)?.next().is_none());

    // The same Idempotency-Key twice: one artifact. Other bytes: 409.
    let body = b"Idempotent uploads return the same artifact. A retry is safe.".to_vec();
    let a = Pipeline::accepted_id(
        p.upload_raw(body.clone(), "text/plain", "a.txt", Some("key-1"))
            .await?,
    )
    .await?;
    let b = Pipeline::accepted_id(
        p.upload_raw(body.clone(), "text/plain", "a.txt", Some("key-1"))
            .await?,
    )
    .await?;
    assert_eq!(a, b);
    let r = p
        .upload_raw(
            b"other bytes".to_vec(),
            "text/plain",
            "a.txt",
            Some("key-1"),
        )
        .await?;
    assert_eq!(r.status(), 409);
    let v = p.wait_final(&a, 1).await?;
    assert_eq!(v.state, ArtifactState::Completed);
    let list: Value = p.get_json("/v1/artifacts").await?;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // The OpenAPI document lists every route, the probes and metrics
    // included.
    let doc: Value = p.get_json("/openapi.json").await?;
    assert_eq!(doc["info"]["title"], "artifact-pipeline API");
    for path in [
        "/v1/artifacts",
        "/v1/artifacts/{id}",
        "/v1/artifacts/{id}/text",
        "/v1/artifacts/{id}/reprocess",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
    // Each stage documents its own probes and metrics, under its name.
    for (name, stage) in &p.stages {
        let doc: Value = p
            .http
            .get(format!("{}/openapi.json", stage.http))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(doc["info"]["title"], *name, "{name}'s /openapi.json");
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert!(
                doc["paths"][path]["get"].is_object(),
                "{path} missing from {name}'s /openapi.json"
            );
        }
    }

    // API restarted: the read model is restored from the status topic, and
    // the projector, reading every event again, skips those of the artifact
    // whose settled snapshot is there: nothing is folded or written again.
    p.api.take().unwrap().kill9();
    p.start_api().await?;
    assert_eq!(
        p.status(&a).await.map(|v| v.state),
        Some(ArtifactState::Completed)
    );
    let mut events = p.env.read_all(&p.env.names.created())?.len();
    for stage in Stage::ALL {
        events += p.env.read_all(&p.env.names.output(stage))?.len();
    }
    let api = p.api.as_ref().expect("api running");
    wait_until(
        "the projector read every event again",
        Duration::from_secs(60),
        || async { api.metric("artifact_api_projector_events_total", &[]).await >= events as f64 },
    )
    .await?;
    for (metric, expected) in [
        ("artifact_api_status_snapshots_total", 0.0),
        ("artifact_api_projector_folds", 0.0),
        ("artifact_api_projector_late_events_total", 0.0),
    ] {
        assert_eq!(
            api.exported_metric(metric, &[]).await,
            Some(expected),
            "{metric}"
        );
    }

    // A stage killed mid-run and restarted: every artifact reaches one final state.
    let mut ids = vec![];
    for i in 0..20 {
        let text = format!("Document {i} talks about exactly once delivery. It has two sentences.");
        ids.push(
            Pipeline::accepted_id(
                p.upload_raw(text.into_bytes(), "text/plain", "d.txt", None)
                    .await?,
            )
            .await?,
        );
    }
    p.stages.get_mut("pdf-parser").unwrap().kill9();
    p.start_stage("pdf-parser")?;
    for id in &ids {
        let v = p.wait_final(id, 1).await?;
        assert_eq!(v.state, ArtifactState::Completed, "{id}");
    }
    let parsed: Vec<Parsed> = p
        .env
        .read_decoded(&p.env.names.output(Stage::PdfParser))
        .await?;
    let mut seen: HashMap<_, usize> = HashMap::new();
    for e in &parsed {
        *seen.entry(e.artifact_id).or_default() += 1;
    }
    assert_eq!(seen.len(), 21);
    assert!(
        seen.values().all(|n| *n == 1),
        "one pdf-parser outcome each"
    );

    // SIGTERM while an upload is arriving: the API refuses new connections,
    // finishes that upload (202, its event published) and exits cleanly.
    let addr = p.api_url.trim_start_matches("http://").to_owned();
    let body = vec![b'd'; 3 << 19];
    let mut conn = std::net::TcpStream::connect(&addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        conn,
        "POST /v1/artifacts?filename=drain.txt HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    // Past the file store's 1 MiB buffer: the staged blob shows on disk.
    let (first, rest) = body.split_at((1 << 20) + 1);
    conn.write_all(first)?;
    let tmp = p.blobs.join("tmp");
    wait_until(
        "the upload staged on disk",
        Duration::from_secs(30),
        || async { std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some()) },
    )
    .await?;
    let api = p.api.as_mut().expect("the API runs");
    api.send_sigterm();
    wait_until(
        "the API refusing new connections",
        Duration::from_secs(30),
        || async { std::net::TcpStream::connect(&addr).is_err() },
    )
    .await?;
    conn.write_all(rest)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let json = &answer[answer.find('{').unwrap()..=answer.rfind('}').unwrap()];
    let id = serde_json::from_str::<Value>(json)?["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let exit = api.wait_exit(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    assert!(p.blobs.join("uploads").join(&id).exists());
    let created = p.env.read_all(&p.env.names.created())?;
    assert!(
        created.iter().any(|m| m.key() == Some(id.as_bytes())),
        "the drained upload's event was published"
    );
    Ok(())
}
