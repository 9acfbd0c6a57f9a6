//! Which backend writes the summaries, and the LLM backend's settings, from
//! flags or environment variables, checked at start with messages that say
//! what to fix.

use crate::budget::{BudgetLimits, most_requests};
use crate::gate::burst;
use crate::llm::LlmConfig;
use clap::{Args, ValueEnum};
use reqwest::Url;
use std::str::FromStr;
use std::time::Duration;

/// Which summarizer writes the summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The built-in extractive summarizer: deterministic, no network.
    Extractive,
    /// An OpenAI-compatible chat-completions endpoint (`LLM_*` settings).
    Llm,
}

/// The backend settings. The `LLM_*` settings are read only with
/// `SUMMARIZER_BACKEND=llm`.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Which summarizer writes the summaries: `extractive` (built in, no
    /// network) or `llm` (an OpenAI-compatible chat-completions endpoint).
    #[arg(
        long = "summarizer-backend",
        env = "SUMMARIZER_BACKEND",
        value_enum,
        default_value = "extractive"
    )]
    pub backend: BackendKind,

    /// Base URL of the OpenAI-compatible API, including its version path
    /// (e.g. `https://api.openai.com/v1`, `http://127.0.0.1:8000/v1`);
    /// requests go to `<LLM_BASE_URL>/chat/completions`. A trailing slash
    /// is ignored.
    #[arg(long, env = "LLM_BASE_URL")]
    pub llm_base_url: Option<String>,

    /// The model name sent with each request; outcomes record the method
    /// `llm:<model>`.
    #[arg(long, env = "LLM_MODEL")]
    pub llm_model: Option<String>,

    /// API key, sent as `Authorization: Bearer <key>`; without it no
    /// Authorization header is sent (local servers).
    #[arg(long, env = "LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<ApiKey>,

    /// Time limit of one request, in milliseconds, from sending it to the
    /// last byte of the answer; at most LLM_ATTEMPT_BUDGET_MS.
    #[arg(long, env = "LLM_TIMEOUT_MS", default_value_t = 20_000)]
    pub llm_timeout_ms: u64,

    /// Time one processing attempt may spend on its LLM requests and the
    /// waits before them, in milliseconds; past it the attempt fails
    /// retriably. At most PROCESSING_TIMEOUT_MS, which also covers reading
    /// the text.
    #[arg(long, env = "LLM_ATTEMPT_BUDGET_MS", default_value_t = 25_000)]
    pub llm_attempt_budget_ms: u64,

    /// Requests one processing attempt may send, re-sends after a
    /// `Retry-After` included; at least what a text of LLM_MAX_CHUNKS
    /// chunks needs. Past it the attempt fails retriably.
    #[arg(long, env = "LLM_ATTEMPT_MAX_REQUESTS", default_value_t = 48)]
    pub llm_attempt_max_requests: u32,

    /// Requests per second this replica sends at most, shared by all the
    /// records it processes at once, in bursts of up to one second's worth.
    /// With N replicas the endpoint sees up to N times this: set it to the
    /// key's limit divided by N.
    #[arg(long, env = "LLM_RATE_PER_SECOND", default_value_t = 5.0)]
    pub llm_rate_per_second: f64,

    /// Largest piece of text sent in one request, in characters; longer
    /// texts are summarized in parts, then the parts' summaries together.
    #[arg(long, env = "LLM_CHUNK_CHARS", default_value_t = 12_000)]
    pub llm_chunk_chars: usize,

    /// Most chunks a text may have; a longer text fails permanently rather
    /// than costing more requests.
    #[arg(long, env = "LLM_MAX_CHUNKS", default_value_t = 32)]
    pub llm_max_chunks: usize,

    /// Requests under way at once for one artifact (each record processed
    /// concurrently, up to STAGE_CONCURRENCY, has its own).
    #[arg(long, env = "LLM_CONCURRENCY", default_value_t = 4)]
    pub llm_concurrency: usize,

    /// `max_tokens` of each request; 0 sends none (for models that refuse
    /// the parameter).
    #[arg(long, env = "LLM_MAX_TOKENS", default_value_t = 512)]
    pub llm_max_tokens: u32,

    /// `temperature` of each request, from 0 to 2, or `none` to send none
    /// (for models that accept only their default).
    #[arg(long, env = "LLM_TEMPERATURE", default_value = "0")]
    pub llm_temperature: Temperature,
}

/// An API key; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ApiKey(s.to_owned()))
    }
}

/// A sampling temperature, or none sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature(pub Option<f32>);

impl FromStr for Temperature {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") {
            return Ok(Temperature(None));
        }
        match s.parse::<f32>() {
            Ok(t) if (0.0..=2.0).contains(&t) => Ok(Temperature(Some(t))),
            _ => Err(format!(
                "{s:?} is not a temperature: give a number from 0 to 2, or none"
            )),
        }
    }
}

/// Treats an empty or blank value like an unset one (a Kubernetes Secret
/// key may exist and be empty).
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl BackendArgs {
    /// The LLM backend's settings when `SUMMARIZER_BACKEND=llm`, `None` for
    /// the extractive backend, or what to fix. `summary_max_chars` is
    /// `SUMMARY_MAX_CHARS`; `processing_timeout_ms` is the runner's
    /// `PROCESSING_TIMEOUT_MS`.
    pub fn llm_config(
        &self,
        summary_max_chars: usize,
        processing_timeout_ms: u64,
    ) -> Result<Option<LlmConfig>, String> {
        if self.backend == BackendKind::Extractive {
            return Ok(None);
        }
        let base = given(&self.llm_base_url).ok_or(
            "SUMMARIZER_BACKEND=llm needs LLM_BASE_URL: the OpenAI-compatible API's base URL \
             including its version path, e.g. https://api.openai.com/v1",
        )?;
        let base_url = Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                format!(
                    "LLM_BASE_URL={base} is not an http:// or https:// URL \
                     (e.g. https://api.openai.com/v1)"
                )
            })?;
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(format!(
                "LLM_BASE_URL={base} has a query or fragment; give the API's base URL only"
            ));
        }
        if base_url
            .path()
            .trim_end_matches('/')
            .ends_with("/chat/completions")
        {
            return Err(format!(
                "LLM_BASE_URL={base} should be the API's base URL without /chat/completions \
                 (e.g. https://api.openai.com/v1): the summarizer appends it"
            ));
        }
        let model = given(&self.llm_model).ok_or(
            "SUMMARIZER_BACKEND=llm needs LLM_MODEL: the model name the endpoint serves \
             (e.g. gpt-4o-mini)",
        )?;
        let at_least_one = |name: &str, v: u64| {
            if v == 0 {
                Err(format!("{name}=0 is not valid: must be at least 1"))
            } else {
                Ok(())
            }
        };
        at_least_one("LLM_TIMEOUT_MS", self.llm_timeout_ms)?;
        at_least_one("LLM_CONCURRENCY", self.llm_concurrency as u64)?;
        at_least_one("LLM_MAX_CHUNKS", self.llm_max_chunks as u64)?;
        at_least_one("SUMMARY_MAX_CHARS", summary_max_chars as u64)?;
        let rate = self.llm_rate_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "LLM_RATE_PER_SECOND={rate} is not valid: give the requests per second of one \
                 replica, more than 0 (e.g. 0.5 or 5)"
            ));
        }
        let budget_ms = self.llm_attempt_budget_ms;
        if self.llm_timeout_ms > budget_ms {
            return Err(format!(
                "LLM_TIMEOUT_MS={} is more than LLM_ATTEMPT_BUDGET_MS={budget_ms}: one request \
                 would not fit in the attempt's budget; lower LLM_TIMEOUT_MS or raise \
                 LLM_ATTEMPT_BUDGET_MS",
                self.llm_timeout_ms
            ));
        }
        if budget_ms > processing_timeout_ms {
            return Err(format!(
                "LLM_ATTEMPT_BUDGET_MS={budget_ms} is more than \
                 PROCESSING_TIMEOUT_MS={processing_timeout_ms}: the runner would cut the attempt \
                 off before its budget ends; lower LLM_ATTEMPT_BUDGET_MS or raise \
                 PROCESSING_TIMEOUT_MS (leaving time to read the text)"
            ));
        }
        let min_chunk = 2 * summary_max_chars + 2;
        if self.llm_chunk_chars < min_chunk {
            return Err(format!(
                "LLM_CHUNK_CHARS={} is less than 2 × SUMMARY_MAX_CHARS + 2 = {min_chunk}: a chunk \
                 must hold at least two partial summaries for them to be combined; raise \
                 LLM_CHUNK_CHARS or lower SUMMARY_MAX_CHARS",
                self.llm_chunk_chars
            ));
        }
        let most = most_requests(self.llm_max_chunks, self.llm_chunk_chars, summary_max_chars);
        if u64::from(self.llm_attempt_max_requests) < most {
            return Err(format!(
                "LLM_ATTEMPT_MAX_REQUESTS={} is less than the {most} requests a text of \
                 LLM_MAX_CHUNKS={} chunks may need; raise LLM_ATTEMPT_MAX_REQUESTS or lower \
                 LLM_MAX_CHUNKS",
                self.llm_attempt_max_requests, self.llm_max_chunks
            ));
        }
        // Past the burst, the rate spaces requests 1/rate apart.
        let paced_ms = most.saturating_sub(u64::from(burst(rate))) as f64 * 1000.0 / rate;
        if paced_ms > budget_ms as f64 {
            return Err(format!(
                "at LLM_RATE_PER_SECOND={rate} the {most} requests a text of LLM_MAX_CHUNKS={} \
                 chunks may need take at least {} ms, more than LLM_ATTEMPT_BUDGET_MS={budget_ms}; \
                 raise the rate or the budget, or lower LLM_MAX_CHUNKS",
                self.llm_max_chunks,
                paced_ms.ceil()
            ));
        }
        Ok(Some(LlmConfig {
            base_url,
            model: model.to_owned(),
            api_key: self
                .llm_api_key
                .as_ref()
                .map(|k| k.0.trim().to_owned())
                .filter(|k| !k.is_empty()),
            timeout: Duration::from_millis(self.llm_timeout_ms),
            chunk_chars: self.llm_chunk_chars,
            max_chunks: self.llm_max_chunks,
            concurrency: self.llm_concurrency,
            max_tokens: (self.llm_max_tokens > 0).then_some(self.llm_max_tokens),
            temperature: self.llm_temperature.0,
            max_summary_chars: summary_max_chars,
            attempt: BudgetLimits {
                time: Duration::from_millis(budget_ms),
                requests: self.llm_attempt_max_requests,
            },
            rate_per_second: rate,
        }))
    }

    /// The `LLM_*` settings given although the backend is extractive (they
    /// are not used), to warn about.
    pub fn ignored_llm_settings(&self) -> Vec<&'static str> {
        if self.backend != BackendKind::Extractive {
            return vec![];
        }
        [
            ("LLM_BASE_URL", given(&self.llm_base_url).is_some()),
            ("LLM_MODEL", given(&self.llm_model).is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        backend: BackendArgs,
    }

    fn parse(args: &[&str]) -> Result<BackendArgs, String> {
        let mut argv = vec!["summarizer"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map(|c| c.backend)
            .map_err(|e| e.to_string())
    }

    fn llm(args: &[&str]) -> Result<Option<LlmConfig>, String> {
        parse(args)?.llm_config(600, 30_000)
    }

    const OK: [&str; 4] = [
        "--summarizer-backend=llm",
        "--llm-base-url=http://127.0.0.1:8000/v1/",
        "--llm-model=m",
        "--llm-api-key=k",
    ];

    #[test]
    fn extractive_by_default_and_llm_settings_ignored() {
        assert_eq!(llm(&[]).unwrap().map(|_| ()), None);
        let args = parse(&["--llm-base-url=http://x/v1", "--llm-model=m"]).unwrap();
        assert_eq!(args.llm_config(600, 30_000).unwrap().map(|_| ()), None);
        assert_eq!(args.ignored_llm_settings(), ["LLM_BASE_URL", "LLM_MODEL"]);
        assert!(parse(&OK).unwrap().ignored_llm_settings().is_empty());
    }

    #[test]
    fn llm_settings_with_defaults() {
        let cfg = llm(&OK).unwrap().unwrap();
        assert_eq!(cfg.base_url.as_str(), "http://127.0.0.1:8000/v1/");
        assert_eq!(cfg.model, "m");
        assert_eq!(cfg.api_key.as_deref(), Some("k"));
        assert_eq!(cfg.timeout, Duration::from_secs(20));
        assert_eq!(cfg.chunk_chars, 12_000);
        assert_eq!(cfg.max_chunks, 32);
        assert_eq!(cfg.concurrency, 4);
        assert_eq!(cfg.max_tokens, Some(512));
        assert_eq!(cfg.temperature, Some(0.0));
        assert_eq!(cfg.max_summary_chars, 600);
        assert_eq!(
            cfg.attempt,
            BudgetLimits {
                time: Duration::from_secs(25),
                requests: 48
            }
        );
        assert_eq!(cfg.rate_per_second, 5.0);
    }

    #[test]
    fn a_budget_that_cannot_fit_in_the_processing_timeout_is_refused() {
        let args = parse(&OK).unwrap();
        let err = args.llm_config(600, 20_000).unwrap_err();
        assert!(
            err.contains("LLM_ATTEMPT_BUDGET_MS=25000 is more than PROCESSING_TIMEOUT_MS=20000"),
            "{err}"
        );
        let err = llm(&[&OK[..], &["--llm-attempt-budget-ms=30001"]].concat()).unwrap_err();
        assert!(err.contains("PROCESSING_TIMEOUT_MS=30000"), "{err}");
        let fits = llm(&[&OK[..], &["--llm-attempt-budget-ms=30000"]].concat());
        assert_eq!(fits.unwrap().unwrap().attempt.time, Duration::from_secs(30));
        // The requests a longest text needs, at the rate, must fit in the time.
        let err = llm(&[&OK[..], &["--llm-rate-per-second=1"]].concat()).unwrap_err();
        assert!(
            err.contains(
                "at LLM_RATE_PER_SECOND=1 the 35 requests a text of LLM_MAX_CHUNKS=32 chunks may \
                 need take at least 34000 ms, more than LLM_ATTEMPT_BUDGET_MS=25000"
            ),
            "{err}"
        );
        let args = [&OK[..], &["--llm-rate-per-second=1", "--llm-max-chunks=20"]].concat();
        assert_eq!(llm(&args).unwrap().unwrap().rate_per_second, 1.0);
    }

    #[test]
    fn zero_max_tokens_and_none_temperature_send_nothing() {
        let mut args = OK.to_vec();
        args.extend(["--llm-max-tokens=0", "--llm-temperature=none"]);
        let cfg = llm(&args).unwrap().unwrap();
        assert_eq!(cfg.max_tokens, None);
        assert_eq!(cfg.temperature, None);
        let mut args = OK.to_vec();
        args.push("--llm-temperature=0.3");
        assert_eq!(llm(&args).unwrap().unwrap().temperature, Some(0.3));
    }

    #[test]
    fn blank_key_is_no_key() {
        let args = [&OK[..3], &["--llm-api-key= "]].concat();
        assert_eq!(llm(&args).unwrap().unwrap().api_key, None);
        assert_eq!(llm(&OK[..3]).unwrap().unwrap().api_key, None);
    }

    #[test]
    fn errors_say_what_to_fix() {
        let cases: [(&[&str], &str); 15] = [
            (
                &["--summarizer-backend=llm", "--llm-model=m"],
                "needs LLM_BASE_URL",
            ),
            (
                &["--summarizer-backend=llm", "--llm-base-url=http://h/v1"],
                "needs LLM_MODEL",
            ),
            (
                &[
                    "--summarizer-backend=llm",
                    "--llm-base-url=  ",
                    "--llm-model=m",
                ],
                "needs LLM_BASE_URL",
            ),
            (
                &[
                    "--summarizer-backend=llm",
                    "--llm-base-url=api.openai.com/v1",
                    "--llm-model=m",
                ],
                "is not an http:// or https:// URL",
            ),
            (
                &[
                    "--summarizer-backend=llm",
                    "--llm-base-url=ftp://h/v1",
                    "--llm-model=m",
                ],
                "is not an http:// or https:// URL",
            ),
            (
                &[
                    "--summarizer-backend=llm",
                    "--llm-base-url=https://h/v1/chat/completions",
                    "--llm-model=m",
                ],
                "without /chat/completions",
            ),
            (
                &[
                    "--summarizer-backend=llm",
                    "--llm-base-url=https://h/v1?x=1",
                    "--llm-model=m",
                ],
                "query or fragment",
            ),
            (
                &[&OK[..], &["--llm-timeout-ms=0"]].concat(),
                "LLM_TIMEOUT_MS=0",
            ),
            (
                &[&OK[..], &["--llm-concurrency=0"]].concat(),
                "LLM_CONCURRENCY=0",
            ),
            (
                &[&OK[..], &["--llm-timeout-ms=25001"]].concat(),
                "LLM_TIMEOUT_MS=25001 is more than LLM_ATTEMPT_BUDGET_MS=25000",
            ),
            (
                &[&OK[..], &["--llm-attempt-max-requests=34"]].concat(),
                "LLM_ATTEMPT_MAX_REQUESTS=34 is less than the 35 requests a text of \
                 LLM_MAX_CHUNKS=32 chunks may need",
            ),
            (
                &[&OK[..], &["--llm-rate-per-second=0"]].concat(),
                "LLM_RATE_PER_SECOND=0 is not valid",
            ),
            (
                &[&OK[..], &["--llm-rate-per-second=inf"]].concat(),
                "LLM_RATE_PER_SECOND=inf is not valid",
            ),
            (
                &[&OK[..], &["--llm-rate-per-second=NaN"]].concat(),
                "LLM_RATE_PER_SECOND=NaN is not valid",
            ),
            (
                &[&OK[..], &["--llm-chunk-chars=1201"]].concat(),
                "LLM_CHUNK_CHARS=1201 is less than 2 × SUMMARY_MAX_CHARS + 2 = 1202",
            ),
        ];
        for (args, want) in cases {
            let err = llm(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(err.contains(want), "{args:?}: {err}");
        }
        // Two partial summaries per chunk: 32 chunks would need 63 requests.
        let err = llm(&[&OK[..], &["--llm-chunk-chars=1202"]].concat()).unwrap_err();
        assert!(err.contains("less than the 63 requests"), "{err}");
        let args = [&OK[..], &["--llm-chunk-chars=1202", "--llm-max-chunks=8"]].concat();
        assert!(llm(&args).is_ok());
        let err = parse(&["--llm-temperature=3"]).unwrap_err();
        assert!(err.contains("from 0 to 2, or none"), "{err}");
        let err = parse(&["--summarizer-backend=gpt"]).unwrap_err();
        assert!(err.contains("extractive") && err.contains("llm"), "{err}");
    }

    #[test]
    fn debug_hides_the_key() {
        let text = format!("{:?}", parse(&OK).unwrap());
        assert!(!text.contains("\"k\""), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
