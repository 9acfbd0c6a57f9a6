//! Sets `ARTIFACT_BUILD_COMMIT` (the `commit` label of
//! `artifact_pipeline_build_info`) from git when the build environment does
//! not; a build outside a git checkout says `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=ARTIFACT_BUILD_COMMIT");
    if std::env::var_os("ARTIFACT_BUILD_COMMIT").is_some() {
        return;
    }
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // Moves with every commit and checkout.
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=ARTIFACT_BUILD_COMMIT={commit}");
    }
}
