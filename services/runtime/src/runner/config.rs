//! The runner's configuration: batching, concurrency, timeouts, retries,
//! delivery mode and shutdown.

use crate::retry::RetryPolicy;
use clap::{Args, ValueEnum};
use std::time::Duration;

/// How outputs and offsets are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Delivery {
    /// Outputs, dedup state and offsets in one Kafka transaction.
    ExactlyOnce,
    /// Outputs flushed, then offsets committed: a crash in between repeats
    /// outputs (dedup state still skips what was recorded). For comparison.
    AtLeastOnce,
}

/// Runner settings shared by every stage binary.
#[derive(Debug, Clone, Args)]
pub struct RunnerConfig {
    /// Consumer group (default: the stage name).
    #[arg(long, env = "CONSUMER_GROUP")]
    pub consumer_group: Option<String>,

    /// Stable id of this instance; the transactional id is
    /// `<group>-<instance id>`, so a restarted instance fences its previous
    /// incarnation at once. Default: `$HOSTNAME`, else a random id.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Delivery guarantee.
    #[arg(long, env = "DELIVERY", value_enum, default_value = "exactly-once")]
    pub delivery: Delivery,

    /// A transaction closes after this many input records…
    #[arg(long, env = "TRANSACTION_MAX_RECORDS", default_value_t = 10000)]
    pub transaction_max_records: usize,

    /// …or this many milliseconds after its first record, whichever is
    /// first; it closes earlier when no more records are buffered.
    #[arg(long, env = "TRANSACTION_MAX_MS", default_value_t = 100)]
    pub transaction_max_ms: u64,

    /// When the stage is busy (its recent input rate brings at least two
    /// records per linger and its last batch took less than this to
    /// process), a batch closes no sooner than this many milliseconds after
    /// the previous one closed, collecting what arrives meanwhile; 0 takes
    /// only what is already buffered. Fewer, larger transactions cost the
    /// broker and the stage less per record, for up to this much added
    /// latency per stage under load. At lower rates a record never waits.
    #[arg(long, env = "TRANSACTION_LINGER_MS", default_value_t = 25)]
    pub transaction_linger_ms: u64,

    /// The longest a busy stage's window may grow to at lower input rates,
    /// to collect `TRANSACTION_TARGET_RECORDS` records per transaction;
    /// equal to `TRANSACTION_LINGER_MS`, the window stays fixed. A longer
    /// bound trades up to this much latency per stage for fewer
    /// transactions at moderate load.
    #[arg(long, env = "TRANSACTION_LINGER_MAX_MS", default_value_t = 25)]
    pub transaction_linger_max_ms: u64,

    /// Records a busy stage's window aims to collect; 0 keeps the window
    /// at `TRANSACTION_LINGER_MS`.
    #[arg(long, env = "TRANSACTION_TARGET_RECORDS", default_value_t = 10)]
    pub transaction_target_records: u32,

    /// Records of one batch processed concurrently.
    #[arg(long, env = "STAGE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,

    /// Time limit of one processing attempt, in milliseconds; past it the
    /// attempt counts as a retriable failure.
    #[arg(long, env = "PROCESSING_TIMEOUT_MS", default_value_t = 30_000)]
    pub processing_timeout_ms: u64,

    /// In-process attempts per delivery.
    #[arg(long, env = "RETRY_INLINE_ATTEMPTS", default_value_t = 3)]
    pub retry_inline_attempts: u32,

    /// Backoff before the first in-process retry, in milliseconds (doubles).
    #[arg(long, env = "RETRY_INLINE_BACKOFF_MS", default_value_t = 100)]
    pub retry_inline_backoff_ms: u64,

    /// Deliveries in total, counting the first and those through the retry
    /// topic; past them the outcome is `failed(permanent)`.
    #[arg(long, env = "RETRY_MAX_DELIVERIES", default_value_t = 4)]
    pub retry_max_deliveries: u32,

    /// Delay before the first retry-topic delivery, in milliseconds (doubles).
    #[arg(long, env = "RETRY_DELAY_MS", default_value_t = 5_000)]
    pub retry_delay_ms: u64,

    /// Cap of the retry-topic delay, in milliseconds.
    #[arg(long, env = "RETRY_DELAY_MAX_MS", default_value_t = 300_000)]
    pub retry_delay_max_ms: u64,

    /// How long an artifact's dedup entry is kept after it was processed, in
    /// milliseconds: at least this and less than twice this. An expired
    /// entry leaves memory and is tombstoned in the dedup topic, so memory
    /// and restore time follow the artifacts of the last retention; a
    /// duplicate arriving later than that is processed again. 0 keeps
    /// entries for good.
    #[arg(long, env = "DEDUP_RETENTION_MS", default_value_t = 604_800_000)]
    pub dedup_retention_ms: u64,

    /// A record during whose processing the stage's process ended (killed,
    /// out of memory, aborted) this many times fails permanently without
    /// being processed again; 0 turns the watch off (and its write per
    /// batch).
    #[arg(long, env = "POISON_MAX_CRASHES", default_value_t = 3)]
    pub poison_max_crashes: u32,

    /// Input bodies held at once, in bytes, as the stage counts them
    /// (`StageLogic::input_bytes`); a record larger alone fails
    /// permanently. 0: no limit.
    #[arg(long, env = "STAGE_MAX_INFLIGHT_BYTES", default_value_t = 256 << 20)]
    pub max_inflight_bytes: u64,

    /// After SIGTERM/SIGINT, time to finish the open batch and leave the
    /// group before exiting anyway, in milliseconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// The circuit breaker looks at this many recent processing attempts
    /// (in-process retries included); 0 turns it off.
    #[arg(long, env = "BREAKER_WINDOW", default_value_t = 20)]
    pub breaker_window: usize,

    /// The breaker opens when more than this share of a full window of
    /// attempts failed retriably (a dependency failing).
    #[arg(long, env = "BREAKER_THRESHOLD", default_value_t = 0.5)]
    pub breaker_threshold: f64,

    /// Wait before an open breaker's first probe, in milliseconds; doubles
    /// after each failed probe.
    #[arg(long, env = "BREAKER_PROBE_MS", default_value_t = 1_000)]
    pub breaker_probe_ms: u64,

    /// Longest wait between probes, in milliseconds.
    #[arg(long, env = "BREAKER_PROBE_MAX_MS", default_value_t = 30_000)]
    pub breaker_probe_max_ms: u64,
}

impl RunnerConfig {
    /// The dedup retention; `None` keeps entries for good.
    pub fn dedup_retention(&self) -> Option<Duration> {
        (self.dedup_retention_ms > 0).then(|| Duration::from_millis(self.dedup_retention_ms))
    }

    /// How a busy stage paces its transactions.
    pub(crate) fn pacing(&self) -> super::pace::Pacing {
        super::pace::Pacing {
            linger: Duration::from_millis(self.transaction_linger_ms),
            linger_max: Duration::from_millis(self.transaction_linger_max_ms),
            target_records: self.transaction_target_records,
        }
    }
}

/// A runner setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} = {value} is not valid: {expected}")]
pub struct RunnerConfigError {
    /// The env var.
    pub name: &'static str,
    /// The value given.
    pub value: String,
    /// What would work.
    pub expected: &'static str,
}

impl RunnerConfig {
    /// Checks the values and says what to fix.
    pub fn validate(&self) -> Result<(), RunnerConfigError> {
        let positive = |name, v: u64| {
            if v == 0 {
                Err(RunnerConfigError {
                    name,
                    value: v.to_string(),
                    expected: "must be at least 1",
                })
            } else {
                Ok(())
            }
        };
        positive(
            "TRANSACTION_MAX_RECORDS",
            self.transaction_max_records as u64,
        )?;
        positive("TRANSACTION_MAX_MS", self.transaction_max_ms)?;
        if self.transaction_linger_ms > self.transaction_max_ms {
            return Err(RunnerConfigError {
                name: "TRANSACTION_LINGER_MS",
                value: self.transaction_linger_ms.to_string(),
                expected: "must not be above TRANSACTION_MAX_MS",
            });
        }
        if self.transaction_linger_max_ms < self.transaction_linger_ms
            || self.transaction_linger_max_ms > self.transaction_max_ms
        {
            return Err(RunnerConfigError {
                name: "TRANSACTION_LINGER_MAX_MS",
                value: self.transaction_linger_max_ms.to_string(),
                expected: "must be between TRANSACTION_LINGER_MS and TRANSACTION_MAX_MS",
            });
        }
        if self.dedup_retention_ms != 0 && self.dedup_retention_ms < 1_000 {
            return Err(RunnerConfigError {
                name: "DEDUP_RETENTION_MS",
                value: self.dedup_retention_ms.to_string(),
                expected: "must be 0 (keep entries for good) or at least 1000",
            });
        }
        positive("STAGE_CONCURRENCY", self.concurrency as u64)?;
        positive("PROCESSING_TIMEOUT_MS", self.processing_timeout_ms)?;
        positive(
            "RETRY_INLINE_ATTEMPTS",
            u64::from(self.retry_inline_attempts),
        )?;
        positive("RETRY_MAX_DELIVERIES", u64::from(self.retry_max_deliveries))?;
        if self.retry_delay_max_ms < self.retry_delay_ms {
            return Err(RunnerConfigError {
                name: "RETRY_DELAY_MAX_MS",
                value: self.retry_delay_max_ms.to_string(),
                expected: "must not be below RETRY_DELAY_MS",
            });
        }
        if !(0.0..1.0).contains(&self.breaker_threshold) {
            return Err(RunnerConfigError {
                name: "BREAKER_THRESHOLD",
                value: self.breaker_threshold.to_string(),
                expected: "a share from 0 (inclusive) to 1 (exclusive), e.g. 0.5",
            });
        }
        positive("BREAKER_PROBE_MS", self.breaker_probe_ms)?;
        if self.breaker_probe_max_ms < self.breaker_probe_ms {
            return Err(RunnerConfigError {
                name: "BREAKER_PROBE_MAX_MS",
                value: self.breaker_probe_max_ms.to_string(),
                expected: "must not be below BREAKER_PROBE_MS",
            });
        }
        if let Some(id) = &self.instance_id
            && (id.is_empty() || id.contains(char::is_whitespace))
        {
            return Err(RunnerConfigError {
                name: "INSTANCE_ID",
                value: id.clone(),
                expected: "a non-empty id without spaces, stable across restarts (e.g. the pod name)",
            });
        }
        Ok(())
    }

    /// The circuit breaker these settings describe.
    pub(crate) fn breaker(&self) -> super::breaker::BreakerConfig {
        super::breaker::BreakerConfig {
            window: self.breaker_window,
            threshold: self.breaker_threshold,
            probe_backoff: Duration::from_millis(self.breaker_probe_ms),
            probe_backoff_max: Duration::from_millis(self.breaker_probe_max_ms),
        }
    }

    /// The retry policy these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            inline_attempts: self.retry_inline_attempts,
            inline_backoff: Duration::from_millis(self.retry_inline_backoff_ms),
            inline_backoff_max: Duration::from_secs(2),
            max_deliveries: self.retry_max_deliveries,
            topic_delay: Duration::from_millis(self.retry_delay_ms),
            topic_delay_max: Duration::from_millis(self.retry_delay_max_ms),
        }
    }

    /// The longest one record can keep a batch busy: every in-process
    /// attempt at its time limit, with the longest backoffs between them.
    pub fn worst_record_time(&self) -> Duration {
        let p = self.retry_policy();
        let attempts = p.inline_attempts.max(1);
        let backoffs: Duration = (1..attempts)
            .map(|n| crate::retry::exponential(p.inline_backoff, p.inline_backoff_max, n))
            .sum();
        Duration::from_millis(self.processing_timeout_ms).saturating_mul(attempts) + backoffs
    }

    /// librdkafka's `max.poll.interval.ms` for the stage's consumers when
    /// the operator sets none: its default (5 minutes), or more if one
    /// record can take longer than half of that, so that a batch can
    /// always finish the records it started (see
    /// [`RunnerConfig::start_budget`]).
    pub fn max_poll_interval(&self) -> Duration {
        Duration::from_secs(300)
            .max(self.worst_record_time().saturating_mul(2) + Duration::from_secs(30))
            // librdkafka's largest.
            .min(Duration::from_millis(86_400_000))
    }

    /// How long after a batch's processing began it may still start
    /// records, given the consumers' `max.poll.interval.ms`: the consumer
    /// is not polled while a batch is processed, and past that interval it
    /// leaves its group and the batch cannot commit. Half of what the
    /// interval leaves once the last record started has had its worst
    /// time; records not started by then are read again for the next
    /// batch.
    pub fn start_budget(&self, max_poll_interval: Duration) -> Duration {
        max_poll_interval.saturating_sub(self.worst_record_time()) / 2
    }

    /// The instance id: configured, else `$HOSTNAME`, else random.
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        r: RunnerConfig,
    }

    #[test]
    fn defaults_validate_and_describe_the_policy() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        cli.r.validate().unwrap();
        assert_eq!(cli.r.delivery, Delivery::ExactlyOnce);
        assert_eq!(cli.r.retry_policy().max_deliveries, 4);
    }

    #[test]
    fn a_batch_starts_records_only_while_it_can_still_finish_them() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        // 3 attempts of 30 s, backoffs of 100 and 200 ms.
        assert_eq!(cli.r.worst_record_time(), Duration::from_millis(90_300));
        assert_eq!(cli.r.max_poll_interval(), Duration::from_secs(300));
        let budget = cli.r.start_budget(cli.r.max_poll_interval());
        assert_eq!(budget, Duration::from_millis(104_850));
        assert!(budget + cli.r.worst_record_time() < cli.r.max_poll_interval());

        // A record that may take 10 minutes raises the interval with it.
        let cli = Cli::try_parse_from(["x", "--processing-timeout-ms", "600000"]).unwrap();
        let interval = cli.r.max_poll_interval();
        assert!(interval > cli.r.worst_record_time() * 2);
        assert!(cli.r.start_budget(interval) + cli.r.worst_record_time() < interval);
        // librdkafka takes no interval over a day.
        let cli = Cli::try_parse_from(["x", "--processing-timeout-ms", "86400000"]).unwrap();
        assert_eq!(cli.r.max_poll_interval(), Duration::from_millis(86_400_000));
        let cli = Cli::try_parse_from(["x", "--processing-timeout-ms", "600000"]).unwrap();
        // An operator's interval shorter than one record leaves no budget.
        assert_eq!(cli.r.start_budget(Duration::from_secs(60)), Duration::ZERO);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cli = Cli::try_parse_from(["x", "--transaction-max-records", "0"]).unwrap();
        assert!(
            cli.r
                .validate()
                .unwrap_err()
                .to_string()
                .contains("TRANSACTION_MAX_RECORDS")
        );
        let cli = Cli::try_parse_from(["x", "--retry-delay-ms", "10", "--retry-delay-max-ms", "5"])
            .unwrap();
        assert!(
            cli.r
                .validate()
                .unwrap_err()
                .to_string()
                .contains("RETRY_DELAY_MAX_MS")
        );
        let cli = Cli::try_parse_from(["x", "--transaction-linger-ms", "101"]).unwrap();
        assert!(
            cli.r
                .validate()
                .unwrap_err()
                .to_string()
                .contains("TRANSACTION_LINGER_MS")
        );
        for bad in [
            ["--transaction-linger-max-ms", "10"],
            ["--transaction-linger-max-ms", "101"],
        ] {
            let cli = Cli::try_parse_from(["x", bad[0], bad[1]]).unwrap();
            assert!(
                cli.r
                    .validate()
                    .unwrap_err()
                    .to_string()
                    .contains("TRANSACTION_LINGER_MAX_MS")
            );
        }
        let cli = Cli::try_parse_from(["x", "--instance-id", "a b"]).unwrap();
        assert!(
            cli.r
                .validate()
                .unwrap_err()
                .to_string()
                .contains("INSTANCE_ID")
        );
        assert!(Cli::try_parse_from(["x", "--delivery", "maybe"]).is_err());
    }

    #[test]
    fn dedup_retention_is_a_week_by_default_zero_for_good_else_at_least_a_second() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(
            cli.r.dedup_retention(),
            Some(Duration::from_secs(7 * 86_400))
        );
        let cli = Cli::try_parse_from(["x", "--dedup-retention-ms", "0"]).unwrap();
        cli.r.validate().unwrap();
        assert_eq!(cli.r.dedup_retention(), None);
        let cli = Cli::try_parse_from(["x", "--dedup-retention-ms", "999"]).unwrap();
        assert!(
            cli.r
                .validate()
                .unwrap_err()
                .to_string()
                .contains("DEDUP_RETENTION_MS")
        );
        let cli = Cli::try_parse_from(["x", "--dedup-retention-ms", "1000"]).unwrap();
        cli.r.validate().unwrap();
    }
}
