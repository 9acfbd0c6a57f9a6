//! `artifactctl`: the operator's command line for the artifact pipeline.
//! Every flag before the subcommand may also come after it; exit codes are
//! in `exit` (docs/OPERATIONS.md lists them).

mod api;
mod control;
mod exit;
mod lag_exporter;
mod ops;
mod read;
mod reprocess;
mod stage;
mod upload;
mod webhook;

use anyhow::Context;
use artifact_domain::Stage;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::dead_letters;
use artifact_kafka::schemas::RegistryAdmin;
use artifact_kafka::topics::{
    DEFAULT_COMPACTED_SEGMENT_MS, DEFAULT_DLQ_RETENTION_MS, TopicNames, ensure_topics,
    min_insync_replicas, set_compacted_segment_ms, set_dlq_retention_ms,
};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use read::Output;
use std::process::ExitCode;
use std::time::Duration;

/// Operate the artifact pipeline: topics, schemas, uploads, status, lag, dead letters.
#[derive(Debug, Parser)]
#[command(name = "artifactctl", version, about)]
struct Cli {
    #[command(flatten)]
    conn: ConnectionConfig,
    /// Base URL of artifact-api.
    #[arg(
        long,
        env = "ARTIFACT_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api_url: String,
    /// Bearer token for artifact-api's write endpoints.
    #[arg(
        long,
        env = "ARTIFACT_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// How read commands print: json or table (`status` prints json
    /// unless told, the others a table).
    #[arg(long, value_enum, global = true)]
    output: Option<Output>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kafka topics of the pipeline.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Avro schemas in the Schema Registry.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Uploads files through artifact-api, streamed from disk, several at
    /// once (`--parallel`); one file's failure does not stop the others.
    Upload(upload::UploadArgs),
    /// Shows an artifact's status (JSON unless `--output table`).
    Status {
        /// Artifact id.
        id: String,
    },
    /// Writes an ArtifactCreated straight to Kafka, as an external producer would.
    Produce {
        /// Where the bytes are (file:///… under the blob store root).
        #[arg(long)]
        storage_location: String,
        /// Declared MIME type.
        #[arg(long)]
        content_type: Option<String>,
        /// File name, for display.
        #[arg(long)]
        filename: Option<String>,
    },
    /// Consumer lag of every stage on its input and retry topics.
    Lag {
        /// Prefix of the stages' consumer groups (groups are `<prefix><stage>`).
        #[arg(long, default_value = "")]
        group_prefix: String,
    },
    /// Serves the stages' consumer lag to Prometheus (kafka_exporter's
    /// names) on /metrics, read from Kafka every interval.
    LagExporter {
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9308")]
        listen: std::net::SocketAddr,
        /// Seconds between reads of the offsets.
        #[arg(long, env = "LAG_EXPORTER_INTERVAL_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
        /// Seconds of consumption the time-to-drain estimate averages over.
        #[arg(long, env = "LAG_EXPORTER_RATE_WINDOW_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        rate_window: u64,
        /// Prefix of the stages' consumer groups (groups are `<prefix><stage>`).
        #[arg(long, env = "LAG_EXPORTER_GROUP_PREFIX", default_value = "")]
        group_prefix: String,
    },
    /// A stage's dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Cancels an artifact's current generation: stages skip its inputs
    /// and it ends CANCELLED (a reprocess starts a new one).
    Cancel {
        /// Artifact id.
        id: String,
    },
    /// Erases artifacts: blobs deleted, tombstones on every compacted topic
    /// holding them, and the API answers 404 (docs/OPERATIONS.md says what
    /// remains, and for how long).
    Erase {
        /// Artifact ids.
        ids: Vec<String>,
        /// Also every artifact in this state (e.g. FAILED).
        #[arg(long)]
        state: Option<String>,
    },
    /// Starts a new generation of every artifact a selector picks, from a
    /// stage (e.g. `--state FAILED --stage summarizer --from summarizer`),
    /// as a durable operation artifact-api runs; `--dry-run` only counts.
    Reprocess(reprocess::ReprocessArgs),
    /// Pauses and resumes stages; shows paused stages and open breakers.
    Stage {
        #[command(subcommand)]
        command: stage::StageCommand,
    },
    /// Shows an artifact: state, each stage's attempts, last error and
    /// pending retry, dead letters, earlier generations (a table unless
    /// `--output json`).
    Get {
        /// Artifact id.
        id: String,
    },
    /// Lists artifacts, with the API's filters.
    List {
        #[command(flatten)]
        filters: read::ListFilters,
    },
    /// Webhook subscriptions: signed deliveries of status changes.
    Webhook {
        #[command(subcommand)]
        command: webhook::WebhookCommand,
    },
    /// Prints a shell completion script (e.g. `artifactctl completions
    /// bash > /etc/bash_completion.d/artifactctl`).
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff) on stdout.
    Man,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Creates every topic of the design that is missing (idempotent) and
    /// checks that existing ones have the same partition count, replication
    /// factor, policy and min.insync.replicas.
    Create {
        /// Partitions of every topic; all topics share it (co-partitioning).
        #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..))]
        partitions: u16,
        /// Replication factor of every topic; each gets min.insync.replicas
        /// = min(2, replication factor), so that with acks=all a write is on
        /// two brokers before it is acknowledged.
        #[arg(long, env = "TOPIC_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: i32,
        /// `segment.ms` of new compacted topics: the longest the newest
        /// records stay out of compaction's reach (restores read them one
        /// by one); the in-flight topics roll within a minute whatever it
        /// is. Existing topics keep theirs.
        #[arg(long, env = "TOPIC_COMPACTED_SEGMENT_MS", default_value_t = DEFAULT_COMPACTED_SEGMENT_MS, value_parser = clap::value_parser!(u64).range(1..))]
        compacted_segment_ms: u64,
        /// `retention.ms` of new dead-letter topics; -1 (the default) keeps
        /// dead letters until they are replayed or deleted.
        #[arg(long, env = "TOPIC_DLQ_RETENTION_MS", default_value_t = DEFAULT_DLQ_RETENTION_MS, allow_negative_numbers = true, value_parser = parse_retention_ms)]
        dlq_retention_ms: i64,
    },
    /// Lists the topics of the design.
    List,
}

/// A `retention.ms`: -1 (for good) or a positive number of milliseconds.
fn parse_retention_ms(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(ms) if ms == -1 || ms > 0 => Ok(ms),
        _ => Err(format!(
            "{s:?} is not a retention: give -1 (for good) or milliseconds above 0"
        )),
    }
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Registers every schema under `<topic>-value` with BACKWARD compatibility.
    Register,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Lists the dead letters of a stage with their errors.
    List {
        /// mime-detector, location-logger, pdf-parser or summarizer.
        stage: Stage,
    },
    /// Produces a stage's dead letters back to the topics they came from:
    /// those no earlier replay wrote back, or with `--all` every one.
    Replay {
        /// mime-detector, location-logger, pdf-parser or summarizer.
        stage: Stage,
        /// Replays the letters that earlier replays wrote back too.
        #[arg(long)]
        all: bool,
    },
}

/// The command line, with every top-level flag global: accepted before or
/// after the subcommand.
fn command() -> clap::Command {
    Cli::command().mut_args(|a| if a.is_positional() { a } else { a.global(true) })
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::code(&e))
        }
    }
}

/// Runs the command; the exit code of a command that ran to its end.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let mut code = exit::OK;
    cli.conn.validate()?;
    let names = TopicNames::from_config(&cli.conn);
    let api = api::Api::new(&cli.api_url, cli.token.clone());
    match cli.command {
        Command::Topics {
            command:
                TopicsCommand::Create {
                    partitions,
                    replication_factor,
                    compacted_segment_ms,
                    dlq_retention_ms,
                },
        } => {
            let mut catalogue = names.catalogue();
            set_compacted_segment_ms(&mut catalogue, compacted_segment_ms);
            set_dlq_retention_ms(&mut catalogue, dlq_retention_ms);
            let report = ensure_topics(
                &cli.conn,
                &catalogue,
                usize::from(partitions),
                replication_factor,
            )
            .await
            .context("topics create")?;
            for t in &report.created {
                println!("created  {t}");
            }
            for t in &report.existing {
                println!("exists   {t}");
            }
            println!(
                "{} topics ready with {partitions} partitions, replication factor {replication_factor}, min.insync.replicas {} ({} created)",
                report.created.len() + report.existing.len(),
                min_insync_replicas(replication_factor),
                report.created.len()
            );
        }
        Command::Topics {
            command: TopicsCommand::List,
        } if cli.output == Some(Output::Json) => {
            let topics: Vec<serde_json::Value> = names
                .catalogue()
                .iter()
                .map(|t| {
                    let configs: serde_json::Map<String, serde_json::Value> = t
                        .configs()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.into()))
                        .collect();
                    serde_json::json!({"name": t.name, "configs": configs})
                })
                .collect();
            read::print_json(&topics)?;
        }
        Command::Topics {
            command: TopicsCommand::List,
        } => {
            for t in names.catalogue() {
                let settings: Vec<String> = t
                    .configs()
                    .into_iter()
                    .filter(|(k, _)| *k != "cleanup.policy")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let line = format!(
                    "{:<8} {:<40} {}",
                    t.cleanup.policy(),
                    t.name,
                    settings.join(" ")
                );
                println!("{}", line.trim_end());
            }
        }
        Command::Schemas {
            command: SchemasCommand::Register,
        } => {
            let admin = RegistryAdmin::new(&cli.conn.schema_registry_url);
            let registered = admin
                .register_all(&names)
                .await
                .context("schemas register")?;
            for r in &registered {
                println!("id {:<5} {}", r.id, r.subject);
            }
            println!(
                "{} subjects registered with BACKWARD compatibility",
                registered.len()
            );
        }
        Command::Upload(args) => {
            code = upload::run(&api, args, cli.output == Some(Output::Json)).await?;
        }
        Command::Status { id } => match api.status(&id).await? {
            Some(v) if cli.output == Some(Output::Table) => print!("{}", read::status_table(&v)),
            Some(v) => println!("{}", serde_json::to_string_pretty(&v)?),
            None => return Err(exit::Failure::NotFound(format!("no artifact {id} (yet)")).into()),
        },
        Command::Get { id } => match api.status(&id).await? {
            Some(v) if cli.output == Some(Output::Json) => read::print_json(&v)?,
            Some(v) => print!("{}", read::status_table(&v)),
            None => return Err(exit::Failure::NotFound(format!("no artifact {id} (yet)")).into()),
        },
        Command::List { filters } => {
            let page = api.list(&filters).await?;
            match cli.output {
                Some(Output::Json) => read::print_json(&page)?,
                _ => print!("{}", read::list_table(&page)),
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "artifactctl", &mut std::io::stdout());
        }
        Command::Man => clap_mangen::Man::new(command()).render(&mut std::io::stdout())?,
        Command::Produce {
            storage_location,
            content_type,
            filename,
        } => {
            let event = ops::external_event(&storage_location, content_type, filename);
            ops::produce(&cli.conn, &event).await?;
            println!("{}", event.artifact_id);
        }
        Command::Lag { group_prefix } => {
            let conn = cli.conn.clone();
            let rows = tokio::task::spawn_blocking(move || {
                artifact_kafka::lag::LagReader::new(
                    &conn,
                    artifact_kafka::lag::stage_groups(&conn, &group_prefix),
                )?
                .read()
            })
            .await??;
            if cli.output == Some(Output::Json) {
                let rows: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({"group": r.group, "topic": r.topic, "partition": r.partition,
                            "committed": r.committed, "end": r.high, "lag": r.lag})
                    })
                    .collect();
                read::print_json(&rows)?;
                return Ok(code);
            }
            println!(
                "{:<18} {:<36} {:>9} {:>10} {:>10} {:>8}",
                "GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
            );
            for r in &rows {
                let committed = r.committed.map_or("-".to_owned(), |c| c.to_string());
                println!(
                    "{:<18} {:<36} {:>9} {:>10} {:>10} {:>8}",
                    r.group, r.topic, r.partition, committed, r.high, r.lag
                );
            }
            println!("total lag: {}", rows.iter().map(|r| r.lag).sum::<i64>());
        }
        Command::LagExporter {
            listen,
            interval,
            rate_window,
            group_prefix,
        } => {
            lag_exporter::run(
                cli.conn.clone(),
                lag_exporter::ExporterConfig {
                    listen,
                    interval: Duration::from_secs(interval),
                    rate_window: Duration::from_secs(rate_window),
                    group_prefix,
                },
            )
            .await?;
        }
        Command::Dlq {
            command: DlqCommand::List { stage },
        } => {
            let conn = cli.conn.clone();
            let dead =
                tokio::task::spawn_blocking(move || dead_letters::read_dlq(&conn, stage)).await??;
            if cli.output == Some(Output::Json) {
                use rdkafka::Message;
                let letters: Vec<serde_json::Value> = dead
                    .letters
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
                            "replayed": dead.is_replayed(m),
                            "key": m.key().map(String::from_utf8_lossy),
                            "error_kind": dead_letters::header(m, "x-error-kind"),
                            "error": dead_letters::header(m, "x-error"),
                            "source_topic": dead_letters::header(m, "x-source-topic"),
                            "source_partition": dead_letters::header(m, "x-source-partition"),
                            "source_offset": dead_letters::header(m, "x-source-offset"),
                            "payload_omitted_bytes": dead_letters::header(m, "x-payload-omitted"),
                        })
                    })
                    .collect();
                read::print_json(&letters)?;
                return Ok(code);
            }
            for m in &dead.letters {
                use rdkafka::Message;
                println!(
                    "{}:{}{}{} key={} kind={} source={}/{}@{} error={}",
                    m.partition(),
                    m.offset(),
                    if dead.is_replayed(m) { " replayed" } else { "" },
                    dead_letters::header(m, "x-payload-omitted")
                        .map(|n| format!(" (its {n} bytes not kept)"))
                        .unwrap_or_default(),
                    m.key().map(String::from_utf8_lossy).unwrap_or_default(),
                    dead_letters::header(m, "x-error-kind").unwrap_or_default(),
                    dead_letters::header(m, "x-source-topic").unwrap_or_default(),
                    dead_letters::header(m, "x-source-partition").unwrap_or_default(),
                    dead_letters::header(m, "x-source-offset").unwrap_or_default(),
                    dead_letters::header(m, "x-error").unwrap_or_default(),
                );
            }
            let waiting = dead.waiting().count();
            println!(
                "{} dead letters in {} ({waiting} not replayed)",
                dead.letters.len(),
                names.dlq(stage)
            );
        }
        Command::Dlq {
            command: DlqCommand::Replay { stage, all },
        } => {
            let conn = cli.conn.clone();
            let dead =
                tokio::task::spawn_blocking(move || dead_letters::read_dlq(&conn, stage)).await??;
            let letters: Vec<&rdkafka::message::OwnedMessage> = if all {
                dead.letters.iter().collect()
            } else {
                dead.waiting().collect()
            };
            for m in &letters {
                if let Some(why) = dead_letters::not_replayable(m) {
                    use rdkafka::Message;
                    println!("skipped {}:{}: {why}", m.partition(), m.offset());
                }
            }
            let n = dead_letters::replay(&cli.conn, &letters).await?;
            dead_letters::mark_replayed(&cli.conn, stage, &letters)?;
            println!("replayed {n} dead letters of {stage} to their source topics");
        }
        Command::Cancel { id } => {
            let c = api.cancel(&id).await?;
            println!("{id}: {} (generation {})", c.action, c.generation);
        }
        Command::Erase { ids, state } => control::erase(&api, ids, state.as_deref()).await?,
        Command::Stage {
            command: stage::StageCommand::Status,
        } if cli.output == Some(Output::Json) => {
            read::print_json(&artifact_kafka::stage_control::read(&cli.conn).await?)?;
        }
        Command::Stage { command } => stage::run(&cli.conn, command).await?,
        Command::Reprocess(args) => {
            code = reprocess::run(&api, args, cli.output == Some(Output::Json)).await?;
        }
        Command::Webhook { command } => webhook::run(&api, cli.output, command).await?,
    }
    Ok(code)
}
