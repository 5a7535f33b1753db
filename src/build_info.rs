//! What was built: the version, git commit, compiler and profile, from `build.rs`.
//!
//! Shown by `authd --version` and exported as the `authd_build_info` gauge (always 1; the
//! information is in its labels), so that a dashboard can tell which build each instance runs.

/// The crate version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The short git commit of the build, or "unknown" outside a git checkout.
pub const COMMIT: &str = env!("AUTHD_GIT_COMMIT");
/// `rustc --version` of the compiler that built authd.
pub const RUSTC: &str = env!("AUTHD_RUSTC_VERSION");
/// Cargo's profile: "release" or "debug".
pub const PROFILE: &str = env!("AUTHD_BUILD_PROFILE");

/// `authd --version`'s long form.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("AUTHD_GIT_COMMIT"),
    "\nrustc: ",
    env!("AUTHD_RUSTC_VERSION"),
    "\nprofile: ",
    env!("AUTHD_BUILD_PROFILE"),
);

/// The gauge's name.
pub const BUILD_INFO: &str = "authd_build_info";

/// Describes and sets `authd_build_info{version,commit,rustc} 1` on the installed recorder.
pub fn record() {
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels tell the version, git commit and compiler of the running build."
    );
    metrics::gauge!(BUILD_INFO, "version" => VERSION, "commit" => COMMIT, "rustc" => RUSTC)
        .set(1.0);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_long_version_starts_with_the_version() {
        assert!(super::LONG_VERSION.starts_with(super::VERSION));
        assert!(super::LONG_VERSION.contains("\ncommit: "));
    }
}
