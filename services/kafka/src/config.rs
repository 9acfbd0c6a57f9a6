//! Configuration shared by every binary: where Kafka and the Schema Registry
//! are, and how topics are named. Each binary flattens these
//! into its own clap struct, so every value comes from a flag or an env var.

use clap::Args;
use std::fmt;

/// Default Kafka bootstrap servers (the local stack's broker).
pub const DEFAULT_KAFKA_BOOTSTRAP_SERVERS: &str = "127.0.0.1:9092";
/// Default Schema Registry URL (the local stack's Apicurio, Confluent API).
pub const DEFAULT_SCHEMA_REGISTRY_URL: &str = "http://127.0.0.1:8081/apis/ccompat/v7";
/// Default topic prefix.
pub const DEFAULT_TOPIC_PREFIX: &str = "artifact";

/// How to reach Kafka and the Schema Registry.
#[derive(Debug, Clone, Args)]
pub struct ConnectionConfig {
    /// Kafka bootstrap servers, comma-separated host:port pairs.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = DEFAULT_KAFKA_BOOTSTRAP_SERVERS)]
    pub kafka_bootstrap_servers: String,

    /// Extra librdkafka client properties, comma-separated key=value pairs
    /// (e.g. `security.protocol=SASL_SSL,sasl.mechanism=PLAIN`). Applied to
    /// every Kafka client this binary creates.
    #[arg(long, env = "KAFKA_PROPERTIES", default_value = "", value_parser = parse_properties)]
    pub kafka_properties: KafkaProperties,

    /// Base URL of a Confluent-compatible Schema Registry API.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", default_value = DEFAULT_SCHEMA_REGISTRY_URL)]
    pub schema_registry_url: String,

    /// Prefix of every topic name: `<prefix>.created`, `<prefix>.parsed`, ….
    #[arg(long, env = "TOPIC_PREFIX", default_value = DEFAULT_TOPIC_PREFIX)]
    pub topic_prefix: String,
}

impl ConnectionConfig {
    /// The configuration the local stack answers on, with a topic prefix.
    pub fn local(topic_prefix: &str) -> Self {
        ConnectionConfig {
            kafka_bootstrap_servers: std::env::var("KAFKA_BOOTSTRAP_SERVERS")
                .unwrap_or_else(|_| DEFAULT_KAFKA_BOOTSTRAP_SERVERS.into()),
            kafka_properties: KafkaProperties::default(),
            schema_registry_url: std::env::var("SCHEMA_REGISTRY_URL")
                .unwrap_or_else(|_| DEFAULT_SCHEMA_REGISTRY_URL.into()),
            topic_prefix: topic_prefix.into(),
        }
    }

    /// Checks the values and says what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka_bootstrap_servers.split(',').any(|s| {
            let s = s.trim();
            s.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(ConfigError::Invalid {
                name: "KAFKA_BOOTSTRAP_SERVERS",
                value: self.kafka_bootstrap_servers.clone(),
                expected: "comma-separated host:port pairs, e.g. 127.0.0.1:9092",
            });
        }
        if !(self.schema_registry_url.starts_with("http://")
            || self.schema_registry_url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                name: "SCHEMA_REGISTRY_URL",
                value: self.schema_registry_url.clone(),
                expected: "an http:// or https:// URL, e.g. http://127.0.0.1:8081/apis/ccompat/v7",
            });
        }
        for (key, value) in &self.kafka_properties.0 {
            let Some(allowed) = crate::client::guaranteed_property(key) else {
                continue;
            };
            if !allowed.contains(&value.as_str()) {
                return Err(ConfigError::Guaranteed {
                    key: key.clone(),
                    value: value.clone(),
                    allowed: if allowed.is_empty() {
                        "it set by the pipeline alone".to_owned()
                    } else {
                        allowed.join(" or ")
                    },
                });
            }
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.topic_prefix.is_empty() || !self.topic_prefix.chars().all(legal) {
            return Err(ConfigError::Invalid {
                name: "TOPIC_PREFIX",
                value: self.topic_prefix.clone(),
                expected: "a non-empty name of ASCII letters, digits, '.', '_' and '-'",
            });
        }
        Ok(())
    }
}

/// Extra librdkafka properties, in the order given.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub Vec<(String, String)>);

impl fmt::Debug for KafkaProperties {
    /// Shows keys only: values may be secrets (SASL passwords).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=***")))
            .finish()
    }
}

fn parse_properties(s: &str) -> Result<KafkaProperties, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("{p:?} is not a key=value pair")),
        })
        .collect::<Result<_, _>>()
        .map(KafkaProperties)
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value has the wrong form.
    #[error("{name}={value:?} is not valid: expected {expected}")]
    Invalid {
        /// The env var (and, lowercased with dashes, the flag).
        name: &'static str,
        /// What was given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// KAFKA_PROPERTIES changes a property the delivery guarantees rest on.
    #[error(
        "KAFKA_PROPERTIES sets {key}={value}, but the pipeline's delivery guarantees need {allowed}: remove it"
    )]
    Guaranteed {
        /// The property.
        key: String,
        /// The value given.
        value: String,
        /// What it may be.
        allowed: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        conn: ConnectionConfig,
    }

    #[test]
    fn defaults_are_the_local_stack() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        // Env may override in CI; only check the shape when unset.
        if std::env::var("KAFKA_BOOTSTRAP_SERVERS").is_err() {
            assert_eq!(
                cli.conn.kafka_bootstrap_servers,
                DEFAULT_KAFKA_BOOTSTRAP_SERVERS
            );
        }
        assert!(cli.conn.validate().is_ok());
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let cli = Cli::try_parse_from(["x", "--kafka-bootstrap-servers", "localhost"]).unwrap();
        let err = cli.conn.validate().unwrap_err().to_string();
        assert!(
            err.contains("KAFKA_BOOTSTRAP_SERVERS") && err.contains("host:port"),
            "{err}"
        );

        let cli = Cli::try_parse_from(["x", "--schema-registry-url", "127.0.0.1:8081"]).unwrap();
        assert!(
            cli.conn
                .validate()
                .unwrap_err()
                .to_string()
                .contains("http://")
        );

        let cli = Cli::try_parse_from(["x", "--topic-prefix", "a b"]).unwrap();
        assert!(
            cli.conn
                .validate()
                .unwrap_err()
                .to_string()
                .contains("TOPIC_PREFIX")
        );
    }

    #[test]
    fn kafka_properties_cannot_weaken_the_guarantees() {
        for bad in [
            "acks=1",
            "enable.idempotence=false",
            "isolation.level=read_uncommitted",
            "enable.auto.commit=true",
            "transactional.id=mine",
        ] {
            let cli = Cli::try_parse_from(["x", "--kafka-properties", bad]).unwrap();
            let err = cli.conn.validate().unwrap_err().to_string();
            let key = bad.split('=').next().unwrap();
            assert!(
                err.contains(bad) && err.contains("guarantees") && err.contains(key),
                "{bad}: {err}"
            );
        }
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-properties",
            "acks=all,acks=-1,enable.idempotence=true,isolation.level=read_committed,enable.auto.commit=false,security.protocol=SSL",
        ])
        .unwrap();
        assert!(cli.conn.validate().is_ok());
    }

    #[test]
    fn kafka_properties_parse_and_hide_values() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-properties",
            "security.protocol=SASL_SSL, sasl.password=hunter2",
        ])
        .unwrap();
        assert_eq!(cli.conn.kafka_properties.0.len(), 2);
        let shown = format!("{:?}", cli.conn.kafka_properties);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(Cli::try_parse_from(["x", "--kafka-properties", "novalue"]).is_err());
    }
}
