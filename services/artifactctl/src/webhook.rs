//! `webhook add|list|remove`: webhook subscriptions, through artifact-api.

use crate::api::Api;
use crate::read::{Output, print_json};
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Subscribes a URL to status changes (the final states unless
    /// `--state` says); prints the id and the signing secret, which is not
    /// shown again.
    Add {
        /// Where deliveries go (https).
        url: String,
        /// A state to deliver (repeatable): PENDING, IN_PROGRESS,
        /// COMPLETED, FAILED, CANCELLED.
        #[arg(long = "state")]
        states: Vec<String>,
        /// The signing secret (`whsec_<base64>`); generated when left out.
        #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Lists subscriptions and how their deliveries went.
    List,
    /// Removes a subscription.
    Remove {
        /// Subscription id.
        id: String,
    },
}

/// Runs a webhook command.
pub async fn run(api: &Api, output: Option<Output>, command: WebhookCommand) -> anyhow::Result<()> {
    let json = output == Some(Output::Json);
    match command {
        WebhookCommand::Add {
            url,
            states,
            secret,
        } => {
            let mut body = json!({"url": url});
            if !states.is_empty() {
                body["states"] = json!(states);
            }
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            let created: Value = api
                .answer(
                    api.http()
                        .post(format!("{}/v1/webhooks", api.url))
                        .json(&body),
                    "webhook add",
                )
                .await?;
            if json {
                print_json(&created)?;
            } else {
                println!("id      {}", created["id"].as_str().unwrap_or_default());
                println!("secret  {}", created["secret"].as_str().unwrap_or_default());
            }
        }
        WebhookCommand::List => {
            let list: Value = api
                .answer(
                    api.http().get(format!("{}/v1/webhooks", api.url)),
                    "webhook list",
                )
                .await?;
            if json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<36}  {:>9}  {:>8}  {:<28}  url",
                    "id", "delivered", "failures", "states"
                );
                for w in list["webhooks"].as_array().into_iter().flatten() {
                    let d = &w["deliveries"];
                    let states: Vec<&str> = w["states"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<36}  {:>9}  {:>8}  {:<28}  {}",
                        w["id"].as_str().unwrap_or_default(),
                        d["delivered"],
                        d["failures"],
                        states.join(","),
                        w["url"].as_str().unwrap_or_default()
                    );
                    if let Some(e) = d["last_error"].as_str() {
                        println!("  last error: {e}");
                    }
                }
            }
        }
        WebhookCommand::Remove { id } => {
            api.answer::<Value>(
                api.http().delete(format!("{}/v1/webhooks/{id}", api.url)),
                &format!("webhook remove {id}"),
            )
            .await?;
            if json {
                print_json(&json!({"id": id, "removed": true}))?;
            } else {
                println!("{id}: removed");
            }
        }
    }
    Ok(())
}
