//! Build information for `authd --version` and the `authd_build_info` metric.
//!
//! Sets `AUTHD_GIT_COMMIT` (the short commit from `git rev-parse`; "unknown" outside a git checkout, e.g. in a source tarball or a Docker build
//! without `.git`), `AUTHD_RUSTC_VERSION` (`rustc --version`) and `AUTHD_BUILD_PROFILE` (cargo's
//! `PROFILE`). `AUTHD_GIT_COMMIT` set in the environment wins, so that an image build can pass it in.
//! The generated code of the API lives in `crates/authd-proto`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=AUTHD_GIT_COMMIT");
    // A new commit moves the branch that HEAD names; a checkout moves HEAD itself.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(output("git", &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = output("git", &["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }

    let commit = std::env::var("AUTHD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".to_owned());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_owned());

    println!("cargo:rustc-env=AUTHD_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=AUTHD_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=AUTHD_BUILD_PROFILE={profile}");
}

/// The short commit of HEAD; None outside a git checkout.
fn git_commit() -> Option<String> {
    output("git", &["rev-parse", "--short=12", "HEAD"])
}

/// The trimmed stdout of a successful command.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
