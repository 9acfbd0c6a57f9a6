//! `artifactctl`: the operator's command line for the artifact pipeline.

use anyhow::Context;
use artifact_runtime::config::ConnectionConfig;
use artifact_runtime::schemas::RegistryAdmin;
use artifact_runtime::topics::{TopicNames, ensure_topics};
use clap::{Parser, Subcommand};

/// Operate the artifact pipeline: topics, schemas.
#[derive(Debug, Parser)]
#[command(name = "artifactctl", version, about)]
struct Cli {
    #[command(flatten)]
    conn: ConnectionConfig,
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
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Creates every topic of the design that is missing (idempotent) and
    /// checks that existing ones have the same partition count and policy.
    Create {
        /// Partitions of every topic; all topics share it (co-partitioning).
        #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..))]
        partitions: u16,
        /// Replication factor of new topics.
        #[arg(long, env = "TOPIC_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: i32,
    },
    /// Lists the topics of the design.
    List,
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Registers every schema under `<topic>-value` with BACKWARD compatibility.
    Register,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.conn.validate()?;
    let names = TopicNames::from_config(&cli.conn);
    match cli.command {
        Command::Topics {
            command:
                TopicsCommand::Create {
                    partitions,
                    replication_factor,
                },
        } => {
            let report = ensure_topics(
                &cli.conn,
                &names.catalogue(),
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
                "{} topics ready with {partitions} partitions ({} created)",
                report.created.len() + report.existing.len(),
                report.created.len()
            );
        }
        Command::Topics {
            command: TopicsCommand::List,
        } => {
            for t in names.catalogue() {
                println!("{:<8} {}", t.cleanup.policy(), t.name);
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
    }
    Ok(())
}
