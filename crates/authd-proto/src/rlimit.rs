//! The open-file limit of a process that holds many gRPC connections.
//!
//! Every connection is a file descriptor, and the usual soft limit (1024) refuses connections long
//! before memory runs out. Both the server and the load tool raise it at start-up; it lives here
//! because this is the one crate both depend on (the load tool must not depend on the server).

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (old soft, new soft).
pub fn raise_open_file_limit() -> Result<(u64, u64), String> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("setrlimit(RLIMIT_NOFILE, {hard}): {e}"))?;
    }
    Ok((soft, hard.max(soft)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_reaches_the_hard_limit() {
        let (_, new) = super::raise_open_file_limit().unwrap_or((0, 0));
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap_or((0, 0));
        assert_eq!(soft, new);
    }
}
