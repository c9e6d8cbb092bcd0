//! File-descriptor limit: 5000 connections need 5000+ descriptors, above the common default
//! soft limit of 1024.

/// Descriptors kept free beyond the connections (stdio, the runtime, /proc reads, admin).
pub const HEADROOM: u64 = 100;

/// Raises the soft RLIMIT_NOFILE to the hard limit. Errors (with advice) if even the hard
/// limit is below `connections` + `HEADROOM`. Returns the new soft limit.
pub fn raise_nofile(connections: u64) -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        ));
    }
    let needed = connections + HEADROOM;
    let hard = effective_hard(lim.rlim_max);
    if hard < needed {
        return Err(advice(hard, needed));
    }
    if lim.rlim_cur < hard {
        lim.rlim_cur = hard;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(format!(
                "setrlimit(RLIMIT_NOFILE, {hard}): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(hard)
}

/// An unlimited hard limit still cannot exceed the kernel's fs.nr_open.
fn effective_hard(max: libc::rlim_t) -> u64 {
    if max != libc::RLIM_INFINITY {
        return max;
    }
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

fn advice(hard: u64, needed: u64) -> String {
    format!(
        "the open-file hard limit is {hard}, but this run needs {needed} descriptors.\n\
         Raise it, then run loadgen again:\n\
         \x20 - in this shell (as root, or if the hard limit allows): ulimit -n {needed}\n\
         \x20 - for a user, in /etc/security/limits.conf: <user> hard nofile {needed} (log in again)\n\
         \x20 - for a systemd service: LimitNOFILE={needed}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_need_succeeds_and_huge_need_explains() {
        assert!(raise_nofile(10).is_ok());
        let err = raise_nofile(u64::MAX / 2).unwrap_err();
        assert!(err.contains("ulimit -n"), "{err}");
        assert!(err.contains("limits.conf"), "{err}");
    }
}
