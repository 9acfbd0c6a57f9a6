//! Bounds on what callers may make the API hold, in time and in number:
//! a per-token rate on `/v1` (tower_governor: 429 with `Retry-After`), a
//! limit on uploads received at once (503 with `Retry-After`), an idle
//! timeout on request bodies (tower-http), and a total deadline per upload.
//! Header read timeouts are the server's (see `server`).

use crate::http::auth::Caller;
use crate::http::problem::Problem;
use crate::metrics::{self, Refusal};
use axum::extract::ConnectInfo;
use axum::http::Request;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

/// The bounds, from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
    /// Uploads received at once.
    pub concurrent_uploads: usize,
    /// Event streams open at once.
    pub event_streams: usize,
    /// Total time an upload's body may take.
    pub upload_deadline: Duration,
    /// Longest wait for the next piece of a body.
    pub body_idle_timeout: Duration,
    /// Longest wait for a request's headers.
    pub header_timeout: Duration,
    /// Requests per second per caller; 0: no limit.
    pub rate_per_second: u32,
    /// Requests a caller may send at once above its rate.
    pub rate_burst: u32,
}

impl Limits {
    /// Generous bounds for tests.
    pub fn for_tests(max_upload_bytes: u64) -> Self {
        Limits {
            max_upload_bytes,
            concurrent_uploads: 64,
            event_streams: 8,
            upload_deadline: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            rate_per_second: 0,
            rate_burst: 1,
        }
    }
}

/// Permits for uploads being received.
#[derive(Debug, Clone)]
pub struct UploadSlots(Arc<Semaphore>);

impl UploadSlots {
    /// `n` uploads at once.
    pub fn new(n: usize) -> Self {
        UploadSlots(Arc::new(Semaphore::new(n)))
    }

    /// A permit, or 503 when every one is taken: a waiting upload would
    /// hold its connection and buffers for nothing.
    pub fn take(&self) -> Result<OwnedSemaphorePermit, Problem> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            metrics::refused(Refusal::Busy);
            Problem::unavailable(
                "as many uploads as API_MAX_CONCURRENT_UPLOADS allows are being received; retry in a moment",
            )
            .retry_after(1)
        })
    }
}

/// What the rate limit counts requests by: the caller's token, or the
/// peer's address for requests without a valid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A configured token.
    Token(usize),
    /// A peer without a valid token.
    Peer(IpAddr),
    /// No token and no known peer (a request served in process).
    Unknown,
}

/// Extracts a [`RateKey`] from the [`Caller`] the auth middleware named.
#[derive(Debug, Clone, Copy)]
pub struct CallerKey;

impl KeyExtractor for CallerKey {
    type Key = RateKey;

    fn extract<T>(&self, req: &Request<T>) -> Result<RateKey, GovernorError> {
        let ext = req.extensions();
        Ok(match ext.get::<Caller>() {
            Some(Caller::Token(i)) => RateKey::Token(*i),
            _ => ext
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(RateKey::Unknown, |c| RateKey::Peer(c.0.ip())),
        })
    }
}

/// The rate limit's configuration, or `None` without a limit.
pub fn rate_limit(
    limits: &Limits,
) -> Option<Arc<GovernorConfig<CallerKey, governor::middleware::NoOpMiddleware>>> {
    if limits.rate_per_second == 0 {
        return None;
    }
    let period = Duration::from_nanos(1_000_000_000 / u64::from(limits.rate_per_second));
    GovernorConfigBuilder::default()
        .period(period)
        .burst_size(limits.rate_burst)
        .key_extractor(CallerKey)
        .finish()
        .map(Arc::new)
}

/// The answer to a request over its rate: a problem with `Retry-After` (at
/// least 1 s: governor rounds the wait down).
pub fn over_rate(e: GovernorError) -> axum::response::Response {
    use axum::response::IntoResponse;
    match e {
        GovernorError::TooManyRequests { wait_time, .. } => {
            metrics::refused(Refusal::RateLimited);
            Problem::too_many_requests(wait_time.max(1)).into_response()
        }
        e => Problem::internal("the rate limit failed")
            .caused_by(e)
            .into_response(),
    }
}

/// Whether a body error, or any error it wraps, is the idle timeout of
/// tower-http's body timeout.
pub fn is_idle_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_token_else_by_peer() {
        let mut req = Request::new(());
        assert_eq!(CallerKey.extract(&req).unwrap(), RateKey::Unknown);
        let peer: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(Caller::Unauthenticated);
        assert_eq!(CallerKey.extract(&req).unwrap(), RateKey::Peer(peer.ip()));
        req.extensions_mut().insert(Caller::Token(2));
        assert_eq!(CallerKey.extract(&req).unwrap(), RateKey::Token(2));
    }

    #[tokio::test]
    async fn the_idle_timeout_is_found_inside_wrapping_errors() {
        use futures::StreamExt;
        let stalled = axum::body::Body::from_stream(futures::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        let timed = tower_http::timeout::TimeoutBody::new(Duration::from_millis(1), stalled);
        let mut chunks = axum::body::Body::new(timed).into_data_stream();
        let e = chunks
            .next()
            .await
            .expect("an item")
            .expect_err("timed out");
        assert!(is_idle_timeout(&e), "{e}");
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!is_idle_timeout(&other));
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let mut l = Limits::for_tests(1);
        assert!(rate_limit(&l).is_none());
        l.rate_per_second = 10;
        assert!(rate_limit(&l).is_some());
    }
}
