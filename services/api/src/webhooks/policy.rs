//! Where deliveries may go. By default only `https` URLs whose host
//! resolves to public addresses: a subscription must not make the API a
//! way into the network it runs in. The check runs when a subscription is
//! made and again on every connection, in the HTTP client's resolver, so a
//! name that later resolves to a private address is refused then too.

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What the policy lets through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `WEBHOOK_ALLOW_PRIVATE`: loopback, private and link-local
    /// addresses too (and `http`).
    pub allow_private: bool,
    /// `WEBHOOK_ALLOW_HTTP`: plain `http` URLs too.
    pub allow_http: bool,
}

/// Why a URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Not a URL.
    #[error("not a URL: {0}")]
    Malformed(String),
    /// Not https (or http when allowed).
    #[error("webhook URLs must use https (set WEBHOOK_ALLOW_HTTP=true to allow http); got {0}")]
    Scheme(String),
    /// Credentials in the URL would be sent with every delivery and shown
    /// by `GET /v1/webhooks`.
    #[error("a webhook URL must not carry a user name or password")]
    Credentials,
    /// The host does not resolve.
    #[error("the webhook URL's host {0} does not resolve")]
    Unresolved(String),
    /// The host resolves to an address the policy refuses.
    #[error(
        "the webhook URL's host resolves to {0}, a loopback, private or link-local address (set WEBHOOK_ALLOW_PRIVATE=true to allow it)"
    )]
    Private(IpAddr),
}

impl UrlPolicy {
    /// Checks the URL's form: scheme, no credentials, a host.
    pub fn check_form(&self, url: &str) -> Result<Url, UrlError> {
        let parsed = Url::parse(url).map_err(|e| UrlError::Malformed(e.to_string()))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http || self.allow_private => {}
            other => return Err(UrlError::Scheme(other.to_owned())),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(UrlError::Credentials);
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::Malformed(format!("{url} has no host")));
        }
        Ok(parsed)
    }

    /// Checks one address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), UrlError> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(UrlError::Private(ip))
        }
    }

    /// Checks the URL's form and every address its host resolves to now.
    pub async fn check(&self, url: &str) -> Result<Url, UrlError> {
        let parsed = self.check_form(url)?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|_| UrlError::Unresolved(host.clone()))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(UrlError::Unresolved(host));
        }
        for a in addrs {
            self.check_ip(a.ip())?;
        }
        Ok(parsed)
    }
}

/// Whether an address is reachable on the public internet: not loopback,
/// private (RFC 1918, unique local), link-local, shared (RFC 6598),
/// unspecified, broadcast, multicast, documentation or reserved, nor an
/// IPv4-mapped IPv6 address of one of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || first == 0x0064 && ip.segments()[1] == 0xff9b)
}

/// The delivery client's resolver: the system's, keeping only the
/// addresses the policy allows, so a connection never reaches a refused
/// address whatever the name resolved to at subscription time.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver(pub UrlPolicy);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.check_ip(a.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                let refused = addrs.first().map(|a| a.ip());
                return Err(match refused {
                    Some(ip) => UrlError::Private(ip),
                    None => UrlError::Unresolved(host),
                }
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_need_https_and_a_public_host_unless_allowed() {
        let strict = UrlPolicy::default();
        assert_eq!(
            strict.check("http://93.184.216.34/hook").await,
            Err(UrlError::Scheme("http".into()))
        );
        assert_eq!(
            strict.check("https://127.0.0.1:9/hook").await,
            Err(UrlError::Private("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            strict.check("https://[::1]/hook").await,
            Err(UrlError::Private("::1".parse().unwrap()))
        );
        // localhost resolves through the system to loopback.
        assert!(matches!(
            strict.check("https://localhost/hook").await,
            Err(UrlError::Private(_))
        ));
        assert!(strict.check("https://93.184.216.34/hook").await.is_ok());
        assert_eq!(
            strict.check("https://u:p@93.184.216.34/").await,
            Err(UrlError::Credentials)
        );
        assert!(matches!(
            strict.check("ftp://93.184.216.34/").await,
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            strict.check("not a url").await,
            Err(UrlError::Malformed(_))
        ));

        let http = UrlPolicy {
            allow_http: true,
            ..UrlPolicy::default()
        };
        assert!(http.check("http://93.184.216.34/hook").await.is_ok());
        assert!(http.check("http://127.0.0.1/hook").await.is_err());

        let private = UrlPolicy {
            allow_private: true,
            ..UrlPolicy::default()
        };
        assert!(private.check("http://127.0.0.1:9/hook").await.is_ok());
    }
}
