//! Exit codes, so scripts can tell outcomes apart (docs/OPERATIONS.md lists
//! them): an error says which kind it is by carrying a [`Failure`], or a
//! `reqwest` error that could not reach the API.

/// Done.
pub const OK: u8 = 0;
/// The operation failed: with `upload`, some files failed (or failures of
/// different kinds), or with `--wait` an artifact ended FAILED or CANCELLED.
pub const FAILURE: u8 = 1;
/// Bad command line (clap's own code).
pub const USAGE: u8 = 2;
/// No such artifact (404).
pub const NOT_FOUND: u8 = 3;
/// No valid token, or not allowed (401, 403).
pub const UNAUTHORISED: u8 = 4;
/// The API, Kafka or the registry did not answer, or answered 502–504.
pub const UNAVAILABLE: u8 = 5;
/// `--wait` (upload, reprocess) ran out of time.
pub const TIMEOUT: u8 = 6;

/// A failure with an exit code of its own.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// See [`NOT_FOUND`].
    #[error("{0}")]
    NotFound(String),
    /// See [`UNAUTHORISED`].
    #[error("{0}")]
    Unauthorised(String),
    /// See [`UNAVAILABLE`].
    #[error("{0}")]
    Unavailable(String),
    /// See [`TIMEOUT`].
    #[error("{0}")]
    Timeout(String),
    /// See [`USAGE`]: arguments clap takes but that say nothing to do.
    #[error("{0}")]
    Usage(String),
}

/// The exit code for `err`: the first [`Failure`] in its chain, an API
/// that could not be reached, else [`FAILURE`].
pub fn code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::NotFound(_) => NOT_FOUND,
                Failure::Unauthorised(_) => UNAUTHORISED,
                Failure::Unavailable(_) => UNAVAILABLE,
                Failure::Timeout(_) => TIMEOUT,
                Failure::Usage(_) => USAGE,
            };
        }
        if let Some(e) = cause.downcast_ref::<reqwest::Error>()
            && (e.is_connect() || e.is_timeout())
        {
            return UNAVAILABLE;
        }
        if cause
            .downcast_ref::<rdkafka::error::KafkaError>()
            .is_some_and(|e| {
                matches!(
                    e.rdkafka_error_code(),
                    Some(
                        rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                            | rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                            | rdkafka::types::RDKafkaErrorCode::MessageTimedOut
                            | rdkafka::types::RDKafkaErrorCode::OperationTimedOut
                    )
                )
            })
        {
            return UNAVAILABLE;
        }
    }
    FAILURE
}

/// The error for an API answer that is not a success: `what` failed with
/// `status` and the answer's `body`.
pub fn http(what: &str, status: reqwest::StatusCode, body: &str) -> anyhow::Error {
    let message = format!("{what}: {status}: {body}");
    match status.as_u16() {
        404 | 410 => Failure::NotFound(message).into(),
        401 | 403 => Failure::Unauthorised(message).into(),
        502..=504 => Failure::Unavailable(message).into(),
        _ => anyhow::anyhow!(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_answer_has_its_code_through_any_context() {
        let code_of = |status: u16| {
            let err = Err::<(), _>(http(
                "status of x",
                reqwest::StatusCode::from_u16(status).unwrap(),
                "{}",
            ))
            .context("outer")
            .unwrap_err();
            code(&err)
        };
        assert_eq!(code_of(404), NOT_FOUND);
        assert_eq!(code_of(401), UNAUTHORISED);
        assert_eq!(code_of(403), UNAUTHORISED);
        assert_eq!(code_of(503), UNAVAILABLE);
        assert_eq!(code_of(409), FAILURE);
        assert_eq!(code_of(500), FAILURE);
        assert_eq!(code(&anyhow::anyhow!("plain")), FAILURE);
        assert_eq!(code(&Failure::Timeout("late".into()).into()), TIMEOUT);
    }
}
