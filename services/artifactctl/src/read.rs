//! `get` and `list`, and how every read command prints: `--output json`
//! (one JSON document on stdout) or `--output table` (aligned text).

use crate::api::Api;
use artifact_domain::StatusView;
use std::fmt::Write;

/// How a read command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One JSON document.
    Json,
    /// Aligned text for people.
    Table,
}

/// A page of the API's list, as it answers it.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Page {
    /// The artifacts, by id.
    pub items: Vec<StatusView>,
    /// The cursor of the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// The list's filters, as the API takes them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListFilters {
    /// Only artifacts in this state: PENDING, IN_PROGRESS, COMPLETED,
    /// FAILED or CANCELLED.
    #[arg(long)]
    pub state: Option<String>,
    /// Artifacts per page (1–500).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// The `next_cursor` of the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

impl Api {
    /// One page of `GET /v1/artifacts`.
    pub async fn list_page(&self, f: &ListFilters, cursor: Option<&str>) -> anyhow::Result<Page> {
        let mut url = format!("{}/v1/artifacts?limit={}", self.url, f.limit);
        if let Some(s) = &f.state {
            url.push_str(&format!("&state={}", crate::api::percent_encode(s)));
        }
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={}", crate::api::percent_encode(c)));
        }
        self.answer(self.http().get(url), "listing artifacts").await
    }

    /// The first page, or with `all` every page (then without a cursor).
    pub async fn list(&self, f: &ListFilters) -> anyhow::Result<Page> {
        let mut page = self.list_page(f, f.cursor.as_deref()).await?;
        while f.all
            && let Some(c) = page.next_cursor.take()
        {
            let next = self.list_page(f, Some(&c)).await?;
            page.items.extend(next.items);
            page.next_cursor = next.next_cursor;
        }
        Ok(page)
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds.
pub fn time(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// One artifact for people: its state, each stage with its attempts, last
/// error and pending retry, its dead letters and earlier generations.
pub fn status_table(v: &StatusView) -> String {
    let mut out = String::new();
    let opt = |s: Option<&str>| s.unwrap_or("-").to_owned();
    let _ = writeln!(out, "artifact    {}", v.artifact_id);
    let _ = writeln!(out, "file        {}", opt(v.context.filename.as_deref()));
    let _ = writeln!(out, "generation  {}", v.generation);
    let _ = writeln!(out, "state       {}", state_name(v));
    if let Some(stage) = v.current_stage {
        let _ = writeln!(out, "waiting on  {stage}");
    }
    if let Some(t) = v.next_retry_at {
        let _ = writeln!(out, "next retry  {}", time(t));
    }
    if let (Some(stage), Some(why)) = (v.failed_stage, &v.failure_reason) {
        let _ = writeln!(out, "failed at   {stage}: {why}");
    }
    if let Some(t) = &v.context.detected_content_type {
        let _ = writeln!(out, "type        {t}");
    }
    if let Some(m) = &v.summary_method {
        let _ = writeln!(out, "summary     ({m}) {}", opt(v.summary.as_deref()));
    }
    let _ = writeln!(out, "updated     {}", time(v.updated_at));
    let _ = writeln!(
        out,
        "\n{:<16} {:<17} {:>8} {:<24} {:<24} LAST ERROR",
        "STAGE", "OUTCOME", "ATTEMPTS", "AT", "NEXT RETRY"
    );
    for r in &v.timeline {
        let _ = writeln!(
            out,
            "{:<16} {:<17} {:>8} {:<24} {:<24} {}",
            r.stage.name(),
            if r.is_retry_pending() {
                "retrying"
            } else {
                r.outcome.label()
            },
            r.attempts.map_or("-".into(), |a| a.to_string()),
            time(r.processed_at),
            r.next_retry_at.map_or("-".into(), time),
            opt(r.last_error.as_deref())
        );
    }
    if !v.dead_letters.is_empty() {
        let _ = writeln!(
            out,
            "\nDEAD LETTER (topic/partition@offset)            STAGE            ERROR"
        );
        for d in &v.dead_letters {
            let _ = writeln!(
                out,
                "{:<48} {:<16} {}",
                format!("{}/{}@{}", d.topic, d.partition, d.offset),
                d.stage.name(),
                d.error
            );
        }
    }
    if !v.history.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<10} {:<11} {:<24} {:<20} FAILURE",
            "GENERATION", "STATE", "UPDATED", "SUMMARY METHOD"
        );
        for h in &v.history {
            let failure = match (h.failed_stage, &h.failure_reason) {
                (Some(s), Some(why)) => format!("{s}: {why}"),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<10} {:<11} {:<24} {:<20} {failure}",
                h.generation.get(),
                serde_name(&h.state),
                time(h.updated_at),
                opt(h.summary_method.as_deref())
            );
        }
    }
    out
}

/// A page of artifacts for people, one line each.
pub fn list_table(page: &Page) -> String {
    let mut out = format!(
        "{:<36} {:>3} {:<11} {:<15} {:<24} FILE\n",
        "ID", "GEN", "STATE", "STAGE", "UPDATED"
    );
    for v in &page.items {
        let _ = writeln!(
            out,
            "{:<36} {:>3} {:<11} {:<15} {:<24} {}",
            v.artifact_id,
            v.generation,
            state_name(v),
            v.current_stage.or(v.failed_stage).map_or("-", |s| s.name()),
            time(v.updated_at),
            v.context.filename.as_deref().unwrap_or("-")
        );
    }
    if let Some(c) = &page.next_cursor {
        let _ = writeln!(out, "more: --cursor {c}");
    }
    out
}

/// The state's name, `RETRYING` while a retry is pending.
fn state_name(v: &StatusView) -> String {
    if v.next_retry_at.is_some() && !v.state.is_terminal() {
        "RETRYING".into()
    } else {
        serde_name(&v.state)
    }
}

fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(time(1_796_660_646_007), "2026-12-07T16:24:06.007Z");
    }
}
