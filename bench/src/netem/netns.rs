//! Running inside a network namespace: a thread (until a guard drops) or a whole tokio
//! runtime, so that the sockets of what runs there are on that side of an emulated link.

use std::time::Duration;

/// This thread inside a network namespace until dropped.
pub struct NetnsGuard {
    home: std::fs::File,
}

impl NetnsGuard {
    pub fn enter(netns: &str) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        let target = std::fs::File::open(format!("/var/run/netns/{netns}"))?;
        // SAFETY: setns on a namespace descriptor we hold; it affects this thread only.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { home })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in enter, back to the namespace the thread came from.
        if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // The thread would go on in the emulated namespace, where traffic it makes
            // for the host would be measured as shaped: nothing after this can be trusted.
            eprintln!(
                "error: leaving a network namespace failed ({}); stopping",
                std::io::Error::last_os_error()
            );
            std::process::exit(70);
        }
    }
}

/// A tokio runtime whose threads all live in one network namespace (see [`runtime_in`]).
pub struct NetnsRuntime {
    rt: tokio::runtime::Runtime,
    netns: String,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl std::ops::Deref for NetnsRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &Self::Target {
        &self.rt
    }
}

impl NetnsRuntime {
    /// An error if any of its threads (workers, or blocking threads started since) could
    /// not enter the namespace: its sockets would bypass the emulated link.
    pub fn check(&self) -> std::io::Result<()> {
        let f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match f.first() {
            None => Ok(()),
            Some(e) => Err(std::io::Error::other(format!(
                "a runtime thread could not enter network namespace {}: {e} (its traffic would bypass the emulated link)",
                self.netns
            ))),
        }
    }
}

const NETNS_WORKERS: usize = 2;

/// A tokio runtime whose threads all live in `netns`: the sockets of everything it runs
/// are on that side of the link. A thread that cannot enter it is an error: at once for the
/// workers, from [`NetnsRuntime::check`] for blocking threads started later.
pub fn runtime_in(netns: &str) -> std::io::Result<NetnsRuntime> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let path = format!("/var/run/netns/{netns}");
    std::fs::metadata(&path)?;
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let (f, s) = (failures.clone(), started.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(NETNS_WORKERS)
        .enable_all()
        .on_thread_start(move || {
            use std::os::fd::AsRawFd;
            let entered = std::fs::File::open(&path).and_then(|ns| {
                // SAFETY: setns on a namespace descriptor; this thread only.
                match unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
            if let Err(e) = entered {
                f.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(e.to_string());
            }
            s.fetch_add(1, Ordering::SeqCst);
        })
        .build()?;
    // The workers start with the runtime; wait for their hooks to have run.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while started.load(Ordering::SeqCst) < NETNS_WORKERS && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = NetnsRuntime {
        rt,
        netns: netns.to_owned(),
        failures,
    };
    r.check()?;
    if started.load(Ordering::SeqCst) < NETNS_WORKERS {
        return Err(std::io::Error::other(format!(
            "the runtime's threads for network namespace {netns} did not start within 5 s"
        )));
    }
    Ok(r)
}
