//! `artifactctl stage pause|resume|status`: the operator's records in the
//! compacted `<prefix>.stage-control` topic, which every replica of a stage
//! follows, and the breakers' reports written there by the replicas
//! (`artifact_kafka::stage_control`).

use artifact_domain::Stage;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::stage_control::{OPERATOR, StageControl, read, write};
use clap::Subcommand;
use std::collections::BTreeMap;

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Pauses a stage on every replica: it keeps its partitions and stays
    /// ready, finishes what it has started and reads no new input.
    Pause {
        /// mime-detector, location-logger, pdf-parser or summarizer.
        stage: Stage,
        /// Why, shown by `stage status`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resumes a paused stage; it works off the backlog.
    Resume {
        /// mime-detector, location-logger, pdf-parser or summarizer.
        stage: Stage,
    },
    /// Shows whether each stage is paused by the operator and which
    /// replicas' circuit breakers are open, with the cause.
    Status,
}

/// Runs a `stage` subcommand.
pub async fn run(conn: &ConnectionConfig, command: StageCommand) -> anyhow::Result<()> {
    match command {
        StageCommand::Pause { stage, reason } => {
            write(conn, stage, true, reason).await?;
            println!("{stage} paused");
        }
        StageCommand::Resume { stage } => {
            write(conn, stage, false, None).await?;
            println!("{stage} resumed");
        }
        StageCommand::Status => {
            let records = read(conn).await?;
            print!("{}", status_table(&records));
        }
    }
    Ok(())
}

/// One line per stage: running or paused by the operator (with the reason),
/// then one line per replica whose breaker reported it opened.
pub fn status_table(records: &BTreeMap<String, StageControl>) -> String {
    let mut out = format!(
        "{:<16} {:<8} {:<9} {}\n",
        "STAGE", "STATE", "CAUSE", "REASON"
    );
    for stage in Stage::ALL {
        let name = stage.name();
        let operator = records.get(name).filter(|c| c.paused);
        let (state, cause, reason) = match operator {
            Some(c) => ("paused", OPERATOR, c.reason.clone().unwrap_or_default()),
            None => ("running", "", String::new()),
        };
        out.push_str(&format!("{name:<16} {state:<8} {cause:<9} {reason}\n"));
        for c in records
            .values()
            .filter(|c| c.stage == name && c.instance.is_some() && c.paused)
        {
            out.push_str(&format!(
                "{:<16} {:<8} {:<9} {} (replica {})\n",
                "",
                "tripped",
                c.cause,
                c.reason.as_deref().unwrap_or(""),
                c.instance.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stage: &str, paused: bool, instance: Option<&str>, reason: &str) -> StageControl {
        StageControl {
            stage: stage.into(),
            paused,
            cause: if instance.is_some() {
                "breaker"
            } else {
                OPERATOR
            }
            .into(),
            reason: Some(reason.into()),
            instance: instance.map(str::to_owned),
            updated_at: 1,
        }
    }

    #[test]
    fn status_shows_operator_pauses_and_open_breakers() {
        let mut r = BTreeMap::new();
        for c in [
            record("summarizer", true, None, "LLM provider maintenance"),
            record("pdf-parser", false, None, ""),
            record("summarizer", true, Some("summarizer-1"), "LLM answered 503"),
            record("summarizer", false, Some("summarizer-0"), ""),
        ] {
            r.insert(c.key(), c);
        }
        let t = status_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 1 + 4 + 1, "{t}");
        let summarizer = lines
            .iter()
            .position(|l| l.starts_with("summarizer"))
            .unwrap();
        assert!(lines[summarizer].contains("paused"), "{t}");
        assert!(
            lines[summarizer].contains("LLM provider maintenance"),
            "{t}"
        );
        assert!(lines[summarizer + 1].contains("tripped"), "{t}");
        assert!(lines[summarizer + 1].contains("summarizer-1"), "{t}");
        assert!(
            !t.contains("summarizer-0"),
            "a closed breaker is not shown: {t}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("pdf-parser") && l.contains("running")),
            "{t}"
        );
    }
}
