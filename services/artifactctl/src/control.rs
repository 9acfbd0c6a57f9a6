//! `cancel` and `erase`: through artifact-api, which records them in the
//! artifact-control topic.

use crate::api::Api;
use anyhow::bail;
use artifact_domain::StatusView;

/// What the API answered to a cancel or an erase.
#[derive(Debug, serde::Deserialize)]
pub struct Controlled {
    /// `CANCELLED` or `ERASED`.
    pub action: String,
    /// The generation it covers.
    pub generation: u32,
}

/// A page of the API's list.
#[derive(Debug, serde::Deserialize)]
struct Page {
    items: Vec<StatusView>,
    next_cursor: Option<String>,
}

impl Api {
    /// Cancels an artifact's current generation.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<Controlled> {
        let url = format!("{}/v1/artifacts/{id}/cancel", self.url);
        self.control(self.http().post(url), "cancel", id).await
    }

    /// Erases an artifact.
    pub async fn erase(&self, id: &str) -> anyhow::Result<Controlled> {
        let url = format!("{}/v1/artifacts/{id}", self.url);
        self.control(self.http().delete(url), "erase", id).await
    }

    async fn control(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
        id: &str,
    ) -> anyhow::Result<Controlled> {
        self.answer(rb, &format!("{what} of {id} refused")).await
    }

    /// The ids of every artifact in `state` (any case), a page at a time.
    pub async fn ids_in_state(&self, state: &str) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/artifacts?limit=500&state={state}", self.url);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Page = self
                .answer(
                    self.http().get(url),
                    &format!("listing artifacts in state {state}"),
                )
                .await?;
            ids.extend(page.items.into_iter().map(|v| v.artifact_id.to_string()));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(ids),
            }
        }
    }
}

/// Erases `ids` and, with `state`, every artifact in that state; prints a
/// line per artifact and fails if any erase failed.
pub async fn erase(api: &Api, mut ids: Vec<String>, state: Option<&str>) -> anyhow::Result<()> {
    if let Some(state) = state {
        ids.extend(api.ids_in_state(state).await?);
    }
    if ids.is_empty() {
        return Err(crate::exit::Failure::Usage(
            "nothing to erase: name artifact ids or --state".into(),
        )
        .into());
    }
    let mut failed = 0;
    for id in &ids {
        match api.erase(id).await {
            Ok(c) => println!("{id}: {} (generation {})", c.action, c.generation),
            Err(e) => {
                failed += 1;
                eprintln!("{e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} erases failed", ids.len());
    }
    Ok(())
}
