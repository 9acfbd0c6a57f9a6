//! Console sessions. Logging in with an API token sets a cookie
//! `<who>.<expires>.<nonce>.<mac>`, an HMAC-SHA256 over the rest keyed by
//! the token's digest: nothing is stored server-side, every replica accepts
//! it, and it ends when it expires or its token is removed. The CSRF token
//! of a session is another HMAC of its nonce; every form carries it, and a
//! POST must also come from this origin (`Sec-Fetch-Site`, `Origin`).

use crate::http::auth::{Access, Caller};
use artifact_kafka::now_ms;
use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::sync::OnceLock;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "artifact_console";
/// How long a session lasts.
pub const LIFETIME_MS: i64 = 12 * 3600 * 1000;

/// A verified session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Whose it is.
    pub caller: Caller,
    /// The token its forms carry.
    pub csrf: String,
}

/// Signs anonymous sessions (an API without tokens): random, per process.
fn anonymous_key() -> [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    *KEY.get_or_init(rand::random)
}

fn key(access: &Access, caller: Caller) -> [u8; 32] {
    access.session_key(caller).unwrap_or_else(anonymous_key)
}

fn mac(key: &[u8; 32], parts: &[&str]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"\n");
    }
    m.finalize().into_bytes().into()
}

fn who(caller: Caller) -> String {
    match caller {
        Caller::Token(i) => i.to_string(),
        Caller::Unauthenticated => "a".into(),
    }
}

/// A new session's cookie value for `caller`, valid from `now_ms`.
pub fn issue(access: &Access, caller: Caller, now_ms: i64) -> String {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let who = who(caller);
    let expires = (now_ms + LIFETIME_MS).to_string();
    let mac = mac(&key(access, caller), &["session", &who, &expires, &nonce]);
    format!("{who}.{expires}.{nonce}.{}", hex::encode(mac))
}

/// The session of a cookie value, if its MAC holds and it has not expired.
pub fn verify(access: &Access, value: &str, now_ms: i64) -> Option<Session> {
    let mut parts = value.split('.');
    let (who, expires, nonce, given) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let caller = match who {
        "a" => Caller::Unauthenticated,
        i => Caller::Token(i.parse().ok()?),
    };
    // A token index no longer configured has no key; an anonymous session
    // of an API that now has tokens is not honoured either.
    let key = match caller {
        Caller::Token(_) => access.session_key(caller)?,
        Caller::Unauthenticated if access.is_anonymous() => anonymous_key(),
        Caller::Unauthenticated => return None,
    };
    let want = mac(&key, &["session", who, expires, nonce]);
    let given = hex::decode(given).ok()?;
    if !bool::from(want.as_slice().ct_eq(&given)) {
        return None;
    }
    if expires.parse::<i64>().ok()? <= now_ms {
        return None;
    }
    let csrf = hex::encode(mac(&key, &["csrf", nonce]));
    Some(Session { caller, csrf })
}

/// The value of the session cookie among `headers`' cookies.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The caller of a request's valid session cookie.
pub fn cookie_caller(access: &Access, headers: &HeaderMap) -> Option<Caller> {
    verify(access, cookie_value(headers)?, now_ms()).map(|s| s.caller)
}

/// The `Set-Cookie` value that stores a session.
pub fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        LIFETIME_MS / 1000
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// Whether a form's CSRF token is the session's.
pub fn csrf_matches(session: &Session, given: &str) -> bool {
    bool::from(session.csrf.as_bytes().ct_eq(given.as_bytes()))
}

/// Whether a state-changing request comes from this origin: a browser's
/// `Sec-Fetch-Site` must say `same-origin`, and an `Origin` must name the
/// host the request was sent to. A request with neither header (not a
/// browser's) still needs the CSRF token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && site != "same-origin"
    {
        return false;
    }
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::Tokens;

    fn access(list: &str) -> Access {
        Access::new(Tokens::parse(list), false, None).unwrap()
    }

    #[test]
    fn a_session_is_its_token_holders_until_it_expires() {
        let a = access("alpha,beta");
        let cookie = issue(&a, Caller::Token(1), 1_000);
        let s = verify(&a, &cookie, 2_000).expect("valid");
        assert_eq!(s.caller, Caller::Token(1));
        assert!(verify(&a, &cookie, 1_000 + LIFETIME_MS).is_none());
        // Another deployment's tokens, or the token removed: no session.
        assert!(verify(&access("alpha,gamma"), &cookie, 2_000).is_none());
        assert!(verify(&access("alpha"), &cookie, 2_000).is_none());
    }

    #[test]
    fn a_changed_cookie_is_refused() {
        let a = access("alpha,beta");
        let cookie = issue(&a, Caller::Token(1), 1_000);
        let parts: Vec<&str> = cookie.split('.').collect();
        let forged = [
            format!("0.{}.{}.{}", parts[1], parts[2], parts[3]),
            format!("1.{}.{}.{}", i64::MAX, parts[2], parts[3]),
            format!("a.{}.{}.{}", parts[1], parts[2], parts[3]),
            format!("1.{}.{}.{}", parts[1], parts[2], "00".repeat(32)),
            format!("{cookie}.x"),
            String::new(),
        ];
        for f in forged {
            assert!(verify(&a, &f, 2_000).is_none(), "{f:?}");
        }
    }

    #[test]
    fn csrf_tokens_differ_per_session() {
        let a = access("alpha");
        let s1 = verify(&a, &issue(&a, Caller::Token(0), 0), 1).unwrap();
        let s2 = verify(&a, &issue(&a, Caller::Token(0), 0), 1).unwrap();
        assert_ne!(s1.csrf, s2.csrf);
        assert!(csrf_matches(&s1, &s1.csrf.clone()));
        assert!(!csrf_matches(&s1, &s2.csrf));
        assert!(!csrf_matches(&s1, ""));
    }

    #[test]
    fn cross_site_posts_are_told_apart() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(same_origin(&h(&[("host", "localhost:8080")])));
        assert!(same_origin(&h(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "localhost:8080"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin(&h(&[
            ("host", "localhost:8080"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "localhost:8080"),
            ("origin", "null")
        ])));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            "x=1; artifact_console=abc.def; y=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), Some("abc.def"));
        h.insert("cookie", "artifact_consolex=1".parse().unwrap());
        assert_eq!(cookie_value(&h), None);
    }
}
