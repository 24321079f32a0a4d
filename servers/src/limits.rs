//! The process's open-files limit, raised for thousands of connections.
//!
//! Every TCP connection and every QUIC endpoint's socket is a file descriptor. Many
//! systems start processes with a soft limit of 1,024 and a hard limit far above it; the
//! servers and the bench raise the soft limit to the hard one at start, as servers built
//! for many connections do, so a few thousand streams are not refused by `EMFILE`.

/// Raises the soft open-files limit to the hard one; returns the limit now in force
/// (`None` where it cannot be read).
#[cfg(unix)]
pub fn raise_open_files() -> Option<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above. macOS refuses more than OPEN_MAX; the old limit then stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Some(lim.rlim_cur)
}

#[cfg(not(unix))]
pub fn raise_open_files() -> Option<u64> {
    None
}
