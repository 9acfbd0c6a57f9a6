//! Webhook subscriptions: `POST /v1/webhooks`, `GET /v1/webhooks`,
//! `DELETE /v1/webhooks/{id}`. Each is a record of the compacted
//! `<prefix>.webhooks` topic (a tombstone removes it), so every API
//! replica sees it; a secret is shown once, in the answer that creates it.

use super::auth::Writer;
use super::problem::Problem;
use super::{AppState, PublishError};
use crate::webhooks::signing::Secret;
use crate::webhooks::{DEFAULT_STATES, DeliveryStats, Subscription, state_name};
use artifact_domain::ArtifactState;
use artifact_kafka::schemas::EventSchema;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// Most subscriptions kept: each change is delivered to each.
pub const MAX_SUBSCRIPTIONS: usize = 100;

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where deliveries go: https, on a public address (see
    /// WEBHOOK_ALLOW_HTTP, WEBHOOK_ALLOW_PRIVATE).
    pub url: String,
    /// `whsec_` and the base64 of 24 to 64 random bytes; generated when
    /// left out.
    pub secret: Option<String>,
    /// The states whose changes are delivered (default: COMPLETED, FAILED,
    /// CANCELLED).
    pub states: Option<Vec<String>>,
}

/// A subscription created; its secret is not shown again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    /// The subscription's id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The states delivered.
    pub states: Vec<String>,
    /// The signing secret (`whsec_...`).
    pub secret: String,
}

/// A subscription as listed: no secret, and how its deliveries went on
/// the replica that answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookListed {
    /// The subscription's id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The states delivered.
    pub states: Vec<String>,
    /// When it was created (epoch ms).
    pub created_at: i64,
    /// Its deliveries as this replica saw them.
    pub deliveries: DeliveryStats,
}

/// Every subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// By id.
    pub webhooks: Vec<WebhookListed>,
}

/// Subscribes a URL to status changes, signed with a secret.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = WebhookRequest,
    responses((status = 201, description = "Created; the secret is in this answer only", body = WebhookCreated), (status = 400, description = "Bad URL, secret or state, or a URL the policy refuses"), (status = 401, description = "No valid bearer token"), (status = 409, description = "As many subscriptions as allowed exist"), (status = 503, description = "Kafka or the registry unavailable, or subscriptions still loading; retry")))]
pub async fn create_webhook(
    State(st): State<AppState>,
    _writer: Writer,
    body: Result<Json<WebhookRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<WebhookCreated>), Problem> {
    let Json(req) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let subs = &st.webhooks.subscriptions;
    if !subs.is_caught_up() {
        return Err(Problem::unavailable(
            "webhook subscriptions are still loading after a start; retry in a moment",
        ));
    }
    if subs.list().len() >= MAX_SUBSCRIPTIONS {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Too many subscriptions",
            format!("at most {MAX_SUBSCRIPTIONS} webhook subscriptions; remove one first"),
        ));
    }
    st.webhooks
        .policy
        .check(&req.url)
        .await
        .map_err(|e| Problem::bad_request(e.to_string()))?;
    let secret = match &req.secret {
        Some(s) => Secret::parse(s).map_err(|e| Problem::bad_request(e.to_string()))?,
        None => Secret::generate(),
    };
    let states = parse_states(req.states.as_deref())?;
    let sub = Subscription {
        id: uuid::Uuid::new_v4().to_string(),
        url: req.url,
        secret: secret.to_text(),
        states,
        created_at: artifact_kafka::now_ms(),
    };
    st.write_subscription(&sub.id, Some(&sub))
        .await
        .map_err(unavailable)?;
    subs.apply(&sub.id, Some(sub.clone()));
    tracing::info!(subscription = %sub.id, url = %sub.url, "webhook subscription created");
    Ok((
        StatusCode::CREATED,
        Json(WebhookCreated {
            id: sub.id,
            url: sub.url,
            states: sub.states,
            secret: sub.secret,
        }),
    ))
}

/// Every subscription, without secrets, with its deliveries' outcome.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The subscriptions", body = WebhookList), (status = 401, description = "No valid bearer token")))]
pub async fn list_webhooks(State(st): State<AppState>, _writer: Writer) -> Json<WebhookList> {
    let subs = &st.webhooks.subscriptions;
    let webhooks = subs
        .list()
        .into_iter()
        .map(|s| WebhookListed {
            deliveries: subs.stats(&s.id),
            id: s.id,
            url: s.url,
            states: s.states,
            created_at: s.created_at,
        })
        .collect();
    Json(WebhookList { webhooks })
}

/// Removes a subscription: nothing more is delivered to it.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Subscription id")),
    responses((status = 204, description = "Removed"), (status = 401, description = "No valid bearer token"), (status = 404, description = "No such subscription"), (status = 503, description = "Kafka unavailable; retry")))]
pub async fn delete_webhook(
    State(st): State<AppState>,
    _writer: Writer,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let subs = &st.webhooks.subscriptions;
    if subs.get(&id).is_none() {
        return Err(Problem::not_found(format!("no webhook subscription {id}")));
    }
    st.write_subscription(&id, None)
        .await
        .map_err(unavailable)?;
    subs.apply(&id, None);
    tracing::info!(subscription = %id, "webhook subscription removed");
    Ok(StatusCode::NO_CONTENT)
}

fn parse_states(given: Option<&[String]>) -> Result<Vec<String>, Problem> {
    let Some(given) = given else {
        return Ok(DEFAULT_STATES.map(state_name).to_vec());
    };
    if given.is_empty() {
        return Err(Problem::bad_request(
            "states is empty: name at least one, or leave it out for the final states",
        ));
    }
    let mut states = Vec::new();
    for s in given {
        let state: ArtifactState = serde_json::from_value(serde_json::json!(s.to_uppercase()))
            .map_err(|_| {
                Problem::bad_request(format!(
                    "unknown state {s}: one of PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED"
                ))
            })?;
        let name = state_name(state);
        if !states.contains(&name) {
            states.push(name);
        }
    }
    Ok(states)
}

fn unavailable(e: PublishError) -> Problem {
    Problem::unavailable(format!("{}; retry", e.public())).caused_by(e)
}

impl AppState {
    /// Writes a subscription's record (or, with `None`, its tombstone) and
    /// waits for the broker.
    async fn write_subscription(
        &self,
        id: &str,
        sub: Option<&Subscription>,
    ) -> Result<(), PublishError> {
        let topic = self.names.webhooks();
        let payload = match sub {
            Some(s) => Some(
                self.codec
                    .encode(&topic, EventSchema::WebhookSubscription, s)
                    .await?,
            ),
            None => None,
        };
        let mut record = FutureRecord::<str, Vec<u8>>::to(&topic).key(id);
        if let Some(p) = &payload {
            record = record.payload(p);
        }
        self.producer
            .send(record, Duration::from_secs(15))
            .await
            .map_err(|(e, _)| PublishError::Kafka(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::{TOKEN, api, call};
    use axum::body::Body;

    async fn post(a: &crate::http::tests::Api, token: Option<&str>, url: &str) -> (u16, String) {
        let mut req =
            axum::http::Request::post("/v1/webhooks").header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Body::from(serde_json::json!({"url": url}).to_string()))
            .unwrap();
        let resp = call(a.app.clone(), req).await;
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn subscriptions_need_a_token_a_loaded_topic_and_a_url_the_policy_allows() {
        let a = api(true);
        assert_eq!(post(&a, None, "https://93.184.216.34/").await.0, 401);
        let (status, body) = post(&a, Some(TOKEN), "https://93.184.216.34/").await;
        assert_eq!(status, 503, "{body}");
        a.state.webhooks.subscriptions.mark_caught_up();
        let (status, body) = post(&a, Some(TOKEN), "https://127.0.0.1:8443/hook").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("WEBHOOK_ALLOW_PRIVATE"), "{body}");
        let (status, body) = post(&a, Some(TOKEN), "http://93.184.216.34/hook").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("WEBHOOK_ALLOW_HTTP"), "{body}");
        assert!(a.state.webhooks.subscriptions.list().is_empty());
    }

    #[test]
    fn states_default_to_the_final_ones_and_unknown_ones_are_refused() {
        assert_eq!(
            parse_states(None).unwrap(),
            ["COMPLETED", "FAILED", "CANCELLED"]
        );
        assert_eq!(
            parse_states(Some(&["failed".into(), "FAILED".into()])).unwrap(),
            ["FAILED"]
        );
        assert!(parse_states(Some(&["DONE".into()])).is_err());
        assert!(parse_states(Some(&[])).is_err());
    }
}
