//! The built `artifactctl` binary: exit codes, flags before or after the
//! subcommand, JSON output, completions, the man page, and how uploads to an
//! API that does not answer fail. Nothing here needs the stack
//! (tests/tests/attempts.rs and artifactctl_upload.rs run it against a real
//! API).

use std::process::{Command, Output};

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_artifactctl"))
        .args(args)
        // No setting from the environment running the tests.
        .env_remove("ARTIFACT_API_URL")
        .env_remove("ARTIFACT_API_TOKEN")
        .env_remove("TOPIC_PREFIX")
        .output()
        .expect("artifactctl runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code")
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["no-such-command"],
        &["status"],
        &["list", "--limit", "x"],
    ] {
        let out = ctl(args);
        assert_eq!(code(&out), 2, "{args:?}: {out:?}");
    }
    // Arguments clap takes that name nothing to do.
    let out = ctl(&["erase"]);
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to erase"));
}

#[test]
fn an_api_that_does_not_answer_exits_5_whichever_side_the_flags_are_on() {
    let id = "6f1c1c52-8d7e-4c3a-9a55-0d4a3c0b9e11";
    let closed = "http://127.0.0.1:1";
    for args in [
        vec!["--api-url", closed, "get", id],
        vec!["get", id, "--api-url", closed],
        vec!["status", "--output", "json", id, "--api-url", closed],
        vec!["list", "--api-url", closed, "--state", "FAILED"],
    ] {
        let out = ctl(&args);
        assert_eq!(code(&out), 5, "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"));
    }
}

#[test]
fn read_commands_print_json_with_connection_flags_after_the_subcommand() {
    let out = ctl(&[
        "topics",
        "list",
        "--topic-prefix",
        "cli-test",
        "--output",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{out:?}");
    let topics: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = topics
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"cli-test.created"), "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("cli-test.")),
        "{names:?}"
    );
    // The same as a table, the prefix before the subcommand.
    let out = ctl(&["--topic-prefix", "cli-test", "topics", "list"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli-test.created"));
}

#[test]
fn completions_and_the_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ctl(&["completions", shell]);
        assert_eq!(code(&out), 0, "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("artifactctl"), "{shell}");
        assert!(
            script.contains("completions"),
            "{shell}: names the subcommands"
        );
    }
    assert_eq!(code(&ctl(&["completions", "tcsh"])), 2);
    let out = ctl(&["man"]);
    assert_eq!(code(&out), 0);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH artifactctl"),
        "{page}"
    );
    assert!(page.contains("\\-\\-output"), "documents the global flags");
}

#[test]
fn uploads_report_each_file_and_exit_with_the_failures_code() {
    let closed = "http://127.0.0.1:1";
    assert_eq!(code(&ctl(&["upload", "--parallel", "0", "x.txt"])), 2);
    let dir = std::env::temp_dir().join(format!("artifactctl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.txt");
    std::fs::write(&file, "some text").unwrap();
    let file = file.to_str().unwrap();
    let missing = dir.join("missing.txt");
    let missing = missing.to_str().unwrap();
    // Every upload failed the same way: that failure's code.
    let out = ctl(&["upload", file, file, "--api-url", closed]);
    assert_eq!(code(&out), 5, "{out:?}");
    let out = ctl(&["upload", missing, "--api-url", closed]);
    assert_eq!(code(&out), 1, "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.txt"), "{stderr}");
    // Failures of different kinds: 1, and each file's outcome in the JSON.
    let out = ctl(&[
        "upload",
        file,
        missing,
        "--api-url",
        closed,
        "--output",
        "json",
    ]);
    assert_eq!(code(&out), 1, "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let errors: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["error"].as_str().unwrap_or_default())
        .collect();
    assert!(errors[0].contains("did not answer"), "{errors:?}");
    assert!(errors[1].contains("missing.txt"), "{errors:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reprocess_without_a_selector_is_a_usage_error() {
    let out = ctl(&[
        "reprocess",
        "--from",
        "summarizer",
        "--api-url",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to reprocess"));
}
