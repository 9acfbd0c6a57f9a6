//! Bearer tokens from configuration, compared in constant time.

use axum::http::HeaderMap;

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens(Vec<Vec<u8>>);

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
                .map(|t| t.as_bytes().to_vec())
                .collect(),
        )
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the request carries a configured token. With no tokens
    /// configured every request is allowed.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(given) = headers
            .get("authorization")
            .and_then(|v| bearer_token(v.as_bytes()))
        else {
            return false;
        };
        // Compare against every token, always, so timing says nothing about
        // which one (or how much of one) matched.
        self.0
            .iter()
            .fold(false, |ok, t| ok | constant_time_eq(t, given))
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

/// Equality whose running time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    }

    #[test]
    fn only_configured_bearer_tokens_pass() {
        let t = Tokens::parse("alpha, beta,,");
        assert!(t.allows(&headers("Bearer alpha")));
        assert!(t.allows(&headers("Bearer beta")));
        assert!(!t.allows(&headers("Bearer alph")));
        assert!(!t.allows(&headers("Bearer alphaa")));
        assert!(!t.allows(&headers("Basic alpha")));
        assert!(!t.allows(&HeaderMap::new()));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let t = Tokens::parse("alpha");
        for v in [
            "bearer alpha",
            "BEARER alpha",
            "BeArEr alpha",
            "Bearer   alpha ",
        ] {
            assert!(t.allows(&headers(v)), "{v:?}");
        }
        for v in ["Bearers alpha", "Bearer", "Bearer ", "bearer alph", "alpha"] {
            assert!(!t.allows(&headers(v)), "{v:?}");
        }
    }

    #[test]
    fn no_tokens_means_open() {
        assert!(Tokens::parse("").allows(&HeaderMap::new()));
        assert!(format!("{:?}", Tokens::parse("secret")).contains("1 configured"));
        assert!(!format!("{:?}", Tokens::parse("secret")).contains("secret"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
