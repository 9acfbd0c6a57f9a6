//! Webhooks on the real stack, every service as its own process, with
//! receivers on loopback run by this test (so the API runs with
//! `WEBHOOK_ALLOW_PRIVATE=true`):
//!
//! - each completion reaches a subscriber once, signed: the signature is
//!   checked here with an HMAC written apart from the API's (and that
//!   check fails on a tampered body); a receiver that answers 500 first
//!   gets the delivery again with the same `webhook-id`;
//! - the API is killed while a receiver refuses deliveries; once it is
//!   back and the receiver accepts, every change arrives: offsets are
//!   committed only after a delivery, so none is lost.

use artifact_domain::ArtifactState;
use artifact_pipeline_tests::pipeline::{Pipeline, TOKEN};
use artifact_pipeline_tests::wait_until;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

/// One request a receiver got, and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
    answered: u16,
}

/// A receiver: answers 500 to the first `fail_first` requests, and to
/// every request while `refuse` is set; 204 otherwise.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    fail_first: usize,
    seen: Arc<AtomicUsize>,
    refuse: Arc<AtomicBool>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = r.seen.fetch_add(1, Ordering::SeqCst);
    let status = if n < r.fail_first || r.refuse.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    r.got.lock().unwrap().push(Received {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
        answered: status.as_u16(),
    });
    status
}

impl Receiver {
    /// Serves on loopback; the URL to subscribe.
    async fn serve(self) -> anyhow::Result<String> {
        let app = Router::new().route("/hook", post(receive)).with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(url)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Accepted deliveries by artifact id.
    fn accepted_by_artifact(&self) -> BTreeMap<String, Vec<Received>> {
        let mut by = BTreeMap::<String, Vec<Received>>::new();
        for r in self.got().into_iter().filter(|r| r.answered < 300) {
            let body: Value = serde_json::from_slice(&r.body).expect("a JSON body");
            let id = body["data"]["artifact_id"].as_str().unwrap().to_owned();
            by.entry(id).or_default().push(r);
        }
        by
    }
}

/// The Standard Webhooks check, written apart from the API's signer: the
/// secret's key signs `id.timestamp.body`, and one `v1,` entry must match.
fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64 after whsec_");
    signature.split(' ').any(|entry| {
        let Some(tag) = entry
            .strip_prefix("v1,")
            .and_then(|b| STANDARD.decode(b).ok())
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    })
}

async fn subscribe(p: &Pipeline, body: Value) -> anyhow::Result<(u16, Value)> {
    let resp = p
        .http
        .post(p.url("/v1/webhooks"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

async fn upload_text(p: &Pipeline, name: &str) -> anyhow::Result<String> {
    let text = format!("Webhook test {name}: each stage commits its outputs and offsets at once.");
    Pipeline::accepted_id(
        p.upload_raw(text.into_bytes(), "text/plain", name, None)
            .await?,
    )
    .await
}

fn api_settings() -> Vec<(&'static str, String)> {
    vec![
        ("WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ("WEBHOOK_RETRY_BASE_MS", "100".into()),
        ("WEBHOOK_RETRY_MAX_MS", "400".into()),
        ("WEBHOOK_MAX_ATTEMPTS", "1000".into()),
        ("WEBHOOK_TIMEOUT_MS", "5000".into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn each_completion_is_delivered_once_signed_and_a_refused_one_again_with_its_id()
-> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let p = Pipeline::start_with(Path::new(BIN_DIR_OF).parent().unwrap(), &api_settings()).await?;
    let doc: Value = p
        .http
        .get(p.url("/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    assert!(doc["paths"]["/v1/webhooks"]["post"].is_object());
    assert!(doc["paths"]["/v1/webhooks"]["get"].is_object());
    assert!(doc["paths"]["/v1/webhooks/{id}"]["delete"].is_object());

    let steady = Receiver::default();
    let steady_url = steady.clone().serve().await?;
    let flaky = Receiver {
        fail_first: 1,
        ..Receiver::default()
    };
    let flaky_url = flaky.clone().serve().await?;

    // Bad subscriptions are refused, and need a token.
    let (status, _) = subscribe(&p, json!({"url": "ftp://127.0.0.1/x"})).await?;
    assert_eq!(status, 400);
    let (status, _) = subscribe(&p, json!({"url": steady_url, "secret": "short"})).await?;
    assert_eq!(status, 400);
    let (status, _) = subscribe(&p, json!({"url": steady_url, "states": ["DONE"]})).await?;
    assert_eq!(status, 400);
    let anonymous = reqwest::Client::new()
        .post(p.url("/v1/webhooks"))
        .json(&json!({"url": steady_url}))
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401);

    // The steady one through artifactctl, the flaky one through the API
    // with a secret of its own.
    let out = std::process::Command::new(Path::new(BIN_DIR_OF).with_file_name("artifactctl"))
        .args([
            "--api-url",
            &p.api_url,
            "--token",
            TOKEN,
            "--output",
            "json",
        ])
        .args(["webhook", "add", &steady_url])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steady_sub: Value = serde_json::from_slice(&out.stdout)?;
    let steady_secret = steady_sub["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        steady_sub["states"],
        json!(["COMPLETED", "FAILED", "CANCELLED"])
    );
    let flaky_secret = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    let (status, flaky_sub) = subscribe(
        &p,
        json!({"url": flaky_url, "secret": flaky_secret, "states": ["completed"]}),
    )
    .await?;
    assert_eq!(status, 201, "{flaky_sub}");
    assert_eq!(flaky_sub["secret"], json!(flaky_secret));

    let mut ids = BTreeSet::new();
    for i in 0..3 {
        ids.insert(upload_text(&p, &format!("hook-{i}.txt")).await?);
    }
    for id in &ids {
        assert_eq!(p.wait_final(id, 1).await?.state, ArtifactState::Completed);
    }
    wait_until(
        "each completion delivered to both receivers",
        Duration::from_secs(60),
        || async {
            let keys = |r: &Receiver| {
                r.accepted_by_artifact()
                    .into_keys()
                    .collect::<BTreeSet<_>>()
            };
            keys(&steady) == ids && keys(&flaky) == ids
        },
    )
    .await?;

    // Once each, signed; a tampered body fails the check.
    for (artifact, got) in steady.accepted_by_artifact() {
        assert_eq!(got.len(), 1, "{artifact}: {got:?}");
        let r = &got[0];
        assert!(
            verify(&steady_secret, &r.id, &r.timestamp, &r.body, &r.signature),
            "{r:?}"
        );
        let mut tampered = r.body.to_vec();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 1;
        assert!(!verify(
            &steady_secret,
            &r.id,
            &r.timestamp,
            &tampered,
            &r.signature
        ));
        assert!(!verify(
            &flaky_secret,
            &r.id,
            &r.timestamp,
            &r.body,
            &r.signature
        ));
        let age = artifact_kafka::now_ms() / 1000 - r.timestamp.parse::<i64>()?;
        assert!(
            (0..300).contains(&age),
            "timestamp {} is {age} s old",
            r.timestamp
        );
        let body: Value = serde_json::from_slice(&r.body)?;
        assert_eq!(body["type"], "artifact.completed");
        assert_eq!(body["data"]["state"], "COMPLETED");
    }
    assert_eq!(steady.got().len(), 3, "{:?}", steady.got());

    // The flaky receiver's 500 was followed by the same delivery, same id.
    let flaky_got = flaky.got();
    let refused = &flaky_got[0];
    assert_eq!(refused.answered, 500);
    let again: Vec<&Received> = flaky_got[1..]
        .iter()
        .filter(|r| r.id == refused.id)
        .collect();
    assert_eq!(again.len(), 1, "{flaky_got:?}");
    assert_eq!(again[0].answered, 204);
    assert_eq!(again[0].body, refused.body);
    for r in &flaky_got {
        assert!(verify(
            &flaky_secret,
            &r.id,
            &r.timestamp,
            &r.body,
            &r.signature
        ));
    }

    // The list shows both, no secret, and how their deliveries went.
    let list: Value = p
        .http
        .get(p.url("/v1/webhooks"))
        .send()
        .await?
        .json()
        .await?;
    let listed = list["webhooks"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{list}");
    assert!(!list.to_string().contains("whsec_"), "{list}");
    let flaky_row = listed.iter().find(|w| w["id"] == flaky_sub["id"]).unwrap();
    assert_eq!(flaky_row["deliveries"]["delivered"], 3, "{flaky_row}");
    assert!(
        flaky_row["deliveries"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{flaky_row}"
    );
    let api = p.api.as_ref().unwrap();
    assert_eq!(
        api.metric(
            "artifact_api_webhook_deliveries_total",
            &["outcome=\"delivered\""]
        )
        .await,
        6.0
    );

    // Removed: nothing more reaches it.
    let flaky_id = flaky_sub["id"].as_str().unwrap();
    let resp = p
        .http
        .delete(p.url(&format!("/v1/webhooks/{flaky_id}")))
        .send()
        .await?;
    assert_eq!(resp.status(), 204);
    let resp = p
        .http
        .delete(p.url(&format!("/v1/webhooks/{flaky_id}")))
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    let late = upload_text(&p, "late.txt").await?;
    p.wait_final(&late, 1).await?;
    wait_until(
        "the late completion delivered",
        Duration::from_secs(60),
        || async { steady.accepted_by_artifact().contains_key(&late) },
    )
    .await?;
    assert!(!flaky.accepted_by_artifact().contains_key(&late));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_restart_while_a_receiver_refuses_loses_no_delivery() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let mut p =
        Pipeline::start_with(Path::new(BIN_DIR_OF).parent().unwrap(), &api_settings()).await?;
    let receiver = Receiver::default();
    receiver.refuse.store(true, Ordering::SeqCst);
    let url = receiver.clone().serve().await?;
    let (status, sub) = subscribe(&p, json!({"url": url})).await?;
    assert_eq!(status, 201, "{sub}");

    let mut ids = BTreeSet::new();
    for i in 0..4 {
        ids.insert(upload_text(&p, &format!("before-{i}.txt")).await?);
    }
    for id in &ids {
        p.wait_final(id, 1).await?;
    }
    wait_until("a refused delivery", Duration::from_secs(60), || async {
        !receiver.got().is_empty()
    })
    .await?;

    // Killed while retrying: nothing was delivered, so nothing committed.
    p.api.as_mut().unwrap().kill9();
    receiver.refuse.store(false, Ordering::SeqCst);
    p.start_api().await?;
    for i in 0..2 {
        ids.insert(upload_text(&p, &format!("after-{i}.txt")).await?);
    }
    wait_until(
        "every completion delivered after the restart",
        Duration::from_secs(90),
        || async {
            receiver
                .accepted_by_artifact()
                .into_keys()
                .collect::<BTreeSet<_>>()
                == ids
        },
    )
    .await?;
    // A redelivery carries the id of the first attempt.
    for (artifact, got) in receiver.accepted_by_artifact() {
        let distinct: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(distinct.len(), 1, "{artifact}: {got:?}");
    }

    // What was delivered is committed: killed once that is so, the API
    // sends none of it again.
    let (group, status) = (
        format!("{}.webhooks", p.env.conn.topic_prefix),
        p.env.names.status(),
    );
    wait_until(
        "the delivered changes committed",
        Duration::from_secs(30),
        || async { p.env.caught_up_in(&group, &status).unwrap_or(false) },
    )
    .await?;
    let delivered = receiver.accepted_by_artifact();
    p.api.as_mut().unwrap().kill9();
    p.start_api().await?;
    let last = upload_text(&p, "last.txt").await?;
    wait_until(
        "the last completion delivered",
        Duration::from_secs(90),
        || async { receiver.accepted_by_artifact().contains_key(&last) },
    )
    .await?;
    let mut now = receiver.accepted_by_artifact();
    now.remove(&last);
    assert_eq!(now, delivered, "delivered again after the restart");
    Ok(())
}
