//! Who may call what. Bearer tokens from configuration are kept as SHA-256
//! digests and compared digest to digest in constant time, so the time an
//! answer takes says nothing about a token's bytes or length. A middleware
//! names each request's [`Caller`]; handlers take [`Writer`] or [`Reader`],
//! so a handler's signature says what it needs and none can forget the check.

use crate::http::AppState;
use crate::http::problem::Problem;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured tokens, as digests.
#[derive(Clone, Default)]
pub struct Tokens(Vec<[u8; 32]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Tokens from a comma-separated list (empty entries ignored).
    pub fn parse(list: &str) -> Self {
        Tokens(
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        )
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Which configured token `given` is, if any. Every configured digest
    /// is compared, always, so timing says nothing about which one (or how
    /// much of one) matched.
    fn find(&self, given: &[u8]) -> Option<usize> {
        let given: [u8; 32] = Sha256::digest(given).into();
        let mut found = None;
        for (i, t) in self.0.iter().enumerate() {
            if bool::from(t.ct_eq(&given)) {
                found = Some(i);
            }
        }
        found
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110 §11.1): `bearer x` and `BEARER x` are valid.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The holder of the configured token with this index.
    Token(usize),
    /// No token, or one that is not configured.
    Unauthenticated,
}

/// Why tokens and settings cannot start the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No token, and anonymity not asked for.
    #[error(
        "no API token configured: set API_TOKENS or API_TOKENS_FILE, or set API_ALLOW_ANONYMOUS=true \
         (with API_PROTECT_READS=false) to let anyone who reaches the API upload and read"
    )]
    NoTokens,
    /// Anonymity asked for, with tokens too.
    #[error(
        "API_ALLOW_ANONYMOUS=true with tokens configured: unset it to require the tokens, or drop the tokens"
    )]
    AnonymousWithTokens,
    /// Anonymity without saying whether reads are open.
    #[error(
        "API_ALLOW_ANONYMOUS=true needs API_PROTECT_READS=false, set explicitly: without tokens no read could be authorised"
    )]
    ReadsUnsaid,
}

/// What callers may do.
#[derive(Debug, Clone)]
pub struct Access {
    tokens: Tokens,
    anonymous: bool,
    protect_reads: bool,
}

impl Access {
    /// The policy of `tokens`, API_ALLOW_ANONYMOUS and API_PROTECT_READS
    /// (`None`: unset, which protects reads). Closed by default: without
    /// tokens, only an explicit anonymity with explicitly open reads starts.
    pub fn new(
        tokens: Tokens,
        allow_anonymous: bool,
        protect_reads: Option<bool>,
    ) -> Result<Self, AccessError> {
        match (tokens.is_empty(), allow_anonymous, protect_reads) {
            (true, false, _) => Err(AccessError::NoTokens),
            (false, true, _) => Err(AccessError::AnonymousWithTokens),
            (true, true, Some(false)) => Ok(Access {
                tokens,
                anonymous: true,
                protect_reads: false,
            }),
            (true, true, _) => Err(AccessError::ReadsUnsaid),
            (false, false, protect) => Ok(Access {
                tokens,
                anonymous: false,
                protect_reads: protect.unwrap_or(true),
            }),
        }
    }

    /// Whether anyone may write (API_ALLOW_ANONYMOUS).
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// Who sent a request with these headers.
    pub fn caller(&self, headers: &HeaderMap) -> Caller {
        headers
            .get("authorization")
            .and_then(|v| bearer_token(v.as_bytes()))
            .and_then(|t| self.tokens.find(t))
            .map_or(Caller::Unauthenticated, Caller::Token)
    }

    /// Who holds `token`, for the console's login: a configured token's
    /// holder, or anyone when the API is anonymous.
    pub(crate) fn login(&self, token: &[u8]) -> Option<Caller> {
        match self.tokens.find(token) {
            Some(i) => Some(Caller::Token(i)),
            None if self.anonymous => Some(Caller::Unauthenticated),
            None => None,
        }
    }

    /// The key that signs `caller`'s console sessions: its token's digest,
    /// so a session holds on every replica and ends with its token. `None`
    /// for an anonymous caller.
    pub(crate) fn session_key(&self, caller: Caller) -> Option<[u8; 32]> {
        match caller {
            Caller::Token(i) => self.tokens.0.get(i).copied(),
            Caller::Unauthenticated => None,
        }
    }

    pub(crate) fn may_write(&self, caller: Caller) -> bool {
        self.anonymous || caller != Caller::Unauthenticated
    }

    pub(crate) fn may_read(&self, caller: Caller) -> bool {
        !self.protect_reads || self.may_write(caller)
    }
}

/// Names the request's [`Caller`] (an extension the rate limit keys on and
/// the extractors read).
pub async fn identify(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let mut caller = st.access.caller(req.headers());
    // The console's pages carry their session in a cookie instead.
    if caller == Caller::Unauthenticated && req.uri().path().starts_with("/ui") {
        caller = crate::ui::session::cookie_caller(&st.access, req.headers()).unwrap_or(caller);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn caller_of(parts: &Parts, st: &AppState) -> Caller {
    parts
        .extensions
        .get::<Caller>()
        .copied()
        .unwrap_or_else(|| st.access.caller(&parts.headers))
}

/// A caller allowed to write: upload and reprocess.
#[derive(Debug, Clone, Copy)]
pub struct Writer(pub Caller);

impl FromRequestParts<AppState> for Writer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Problem> {
        let caller = caller_of(parts, st);
        if st.access.may_write(caller) {
            Ok(Writer(caller))
        } else {
            Err(Problem::unauthorized())
        }
    }
}

/// A caller allowed to read.
#[derive(Debug, Clone, Copy)]
pub struct Reader(pub Caller);

impl FromRequestParts<AppState> for Reader {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Problem> {
        let caller = caller_of(parts, st);
        if st.access.may_read(caller) {
            Ok(Reader(caller))
        } else {
            Err(Problem::unauthorized())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    }

    fn closed(list: &str) -> Access {
        Access::new(Tokens::parse(list), false, None).unwrap()
    }

    #[test]
    fn only_configured_bearer_tokens_pass() {
        let a = closed("alpha, beta,,");
        assert_eq!(a.caller(&headers("Bearer alpha")), Caller::Token(0));
        assert_eq!(a.caller(&headers("Bearer beta")), Caller::Token(1));
        for v in ["Bearer alph", "Bearer alphaa", "Basic alpha"] {
            assert_eq!(a.caller(&headers(v)), Caller::Unauthenticated, "{v:?}");
        }
        assert_eq!(a.caller(&HeaderMap::new()), Caller::Unauthenticated);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let a = closed("alpha");
        for v in [
            "bearer alpha",
            "BEARER alpha",
            "BeArEr alpha",
            "Bearer   alpha ",
        ] {
            assert_eq!(a.caller(&headers(v)), Caller::Token(0), "{v:?}");
        }
        for v in ["Bearers alpha", "Bearer", "Bearer ", "bearer alph", "alpha"] {
            assert_eq!(a.caller(&headers(v)), Caller::Unauthenticated, "{v:?}");
        }
    }

    #[test]
    fn tokens_are_kept_as_digests_of_one_length() {
        let t = Tokens::parse("secret,a-much-longer-secret-token");
        assert!(t.0.iter().all(|d| d.len() == 32));
        assert!(format!("{t:?}").contains("2 configured"));
        assert!(!format!("{t:?}").contains("secret"));
        assert_eq!(t.find(b"a-much-longer-secret-token"), Some(1));
        assert_eq!(t.find(b""), None);
    }

    #[test]
    fn closed_by_default() {
        let none = Tokens::default;
        assert_eq!(
            Access::new(none(), false, None).unwrap_err(),
            AccessError::NoTokens
        );
        assert_eq!(
            Access::new(none(), false, Some(false)).unwrap_err(),
            AccessError::NoTokens
        );
        // Anonymity needs reads opened explicitly.
        assert_eq!(
            Access::new(none(), true, None).unwrap_err(),
            AccessError::ReadsUnsaid
        );
        assert_eq!(
            Access::new(none(), true, Some(true)).unwrap_err(),
            AccessError::ReadsUnsaid
        );
        let open = Access::new(none(), true, Some(false)).unwrap();
        assert!(open.may_write(Caller::Unauthenticated));
        assert!(open.may_read(Caller::Unauthenticated));
        assert_eq!(
            Access::new(Tokens::parse("t"), true, Some(false)).unwrap_err(),
            AccessError::AnonymousWithTokens
        );
        // With tokens, reads are protected unless opened.
        let a = closed("t");
        assert!(!a.may_read(Caller::Unauthenticated));
        assert!(!a.may_write(Caller::Unauthenticated));
        assert!(a.may_read(Caller::Token(0)) && a.may_write(Caller::Token(0)));
        let reads_open = Access::new(Tokens::parse("t"), false, Some(false)).unwrap();
        assert!(reads_open.may_read(Caller::Unauthenticated));
        assert!(!reads_open.may_write(Caller::Unauthenticated));
    }
}
