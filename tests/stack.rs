//! Whether the local stack answers, for tests that need it. Under plain
//! `cargo test` on a machine without the stack, such a test prints that it
//! is skipped, by name, and returns; `scripts/test` sets
//! `ARTIFACT_STACK=required`, and there a missing stack fails the test.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Duration;

/// What a test returns when it is skipped.
pub trait Skipped {
    /// The passing result of a test that did not run.
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() {}
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// Skips the calling test, saying so by name, when the local stack does
/// not answer (and `ARTIFACT_STACK` is not `required`).
#[macro_export]
macro_rules! needs_stack {
    () => {{
        fn here() {}
        if $crate::stack::missing(::std::any::type_name_of_val(&here)) {
            return $crate::stack::Skipped::skipped();
        }
    }};
}

/// Whether the test at `path` (a function path, as `type_name_of_val`
/// gives it) must be skipped for want of the stack; panics when the stack
/// is required and missing.
pub fn missing(path: &str) -> bool {
    static DOWN: OnceLock<Option<String>> = OnceLock::new();
    let Some(down) = DOWN.get_or_init(first_down) else {
        return false;
    };
    let name = path
        .trim_end_matches("::here")
        .trim_end_matches("::{{closure}}");
    if std::env::var("ARTIFACT_STACK").is_ok_and(|v| v == "required") {
        panic!("{name}: the local stack is required (ARTIFACT_STACK=required) but {down}");
    }
    // Straight to stderr: the test harness captures `eprintln!` of a
    // passing test, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {name}: {down}; start the stack with deploy/local/stack up, or run scripts/test"
    );
    true
}

/// The first of the stack's services that does not accept a connection.
fn first_down() -> Option<String> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let kafka = var(
        "KAFKA_BOOTSTRAP_SERVERS",
        artifact_kafka::config::DEFAULT_KAFKA_BOOTSTRAP_SERVERS,
    );
    let registry = var(
        "SCHEMA_REGISTRY_URL",
        artifact_kafka::config::DEFAULT_SCHEMA_REGISTRY_URL,
    );
    let s3 = var("AWS_ENDPOINT_URL", "http://127.0.0.1:9000");
    [
        (
            "Kafka",
            kafka.split(',').next().unwrap_or_default().to_owned(),
        ),
        ("the schema registry", host_port(&registry)),
        ("S3", host_port(&s3)),
    ]
    .into_iter()
    .find(|(_, addr)| !answers(addr))
    .map(|(what, addr)| format!("{what} at {addr} does not answer"))
}

/// `host:port` of an http(s) URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains(':') {
        authority.to_owned()
    } else if url.starts_with("https") {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    }
}

fn answers(addr: &str) -> bool {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn urls_name_their_host_and_port() {
        assert_eq!(
            host_port("http://127.0.0.1:8081/apis/ccompat/v7"),
            "127.0.0.1:8081"
        );
        assert_eq!(
            host_port("https://registry.example"),
            "registry.example:443"
        );
        assert_eq!(host_port("http://s3.local/"), "s3.local:80");
    }
}
