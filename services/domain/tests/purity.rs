//! The domain crate stays pure: no Kafka, async runtime, Avro, HTTP or PDF
//! library anywhere in its (non-dev) dependency tree.

use std::process::Command;

#[test]
fn dependency_tree_has_no_infrastructure_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "artifact-domain",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"artifact-domain"),
        "unexpected cargo tree output: {tree}"
    );
    for forbidden in [
        "tokio",
        "rdkafka",
        "rdkafka-sys",
        "apache-avro",
        "schema_registry_converter",
        "axum",
        "hyper",
        "reqwest",
        "lopdf",
    ] {
        assert!(
            !crates.contains(&forbidden),
            "artifact-domain depends on {forbidden}:\n{tree}"
        );
    }
}
